"""synth: deterministic, streamed tensor by tensor, loadable into the reference model."""

import subprocess
import sys

import numpy as np

from conftest import import_oracle
from mote_edge.exporters.checkpoint import Checkpoint
from mote_edge.exporters.synth import synthesize_preset


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    synthesize_preset("tiny", tmp_path / "a", seed=5, dtype="fp16", progress=False)
    synthesize_preset("tiny", tmp_path / "b", seed=5, dtype="fp16", progress=False)
    synthesize_preset("tiny", tmp_path / "c", seed=6, dtype="fp16", progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    a, c = Checkpoint.open(tmp_path / "a"), Checkpoint.open(tmp_path / "c")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(a.tensor(name), c.tensor(name))
    assert a.stored_dtype(name) == "F16"


def test_fp_expert_preset_is_moe_llava_shaped(tiny_fp_ckpt):
    ckpt = Checkpoint.open(tiny_fp_ckpt)
    assert ckpt.config.moe.expert_type == "fp" and not ckpt.config.moe.shared_expert
    assert not any("shared_expert" in s.name for s in ckpt.specs)
    assert ckpt.stored_dtype("model.norm.weight") == "BF16"


def test_synth_tiny_loads_and_generates(tiny_ckpt):
    torch = import_oracle("torch")
    from mote_edge.exporters.reference import load_reference_model

    model = load_reference_model(tiny_ckpt)
    cfg = model.config
    ids = [5, cfg.image_token_index, 7, 9]
    pixels = torch.zeros(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    logits = model.forward_embeds(model.embed(torch.tensor(ids), pixels)[None])
    assert logits.shape == (1, 3 + cfg.vision.num_patches, cfg.decoder.vocab_size)
    assert torch.isfinite(logits).all()
    assert len(model.generate(ids, pixels, max_new_tokens=4)) <= 4


STREAMING = """
import resource, sys
from mote_edge.config import ModelConfig
from mote_edge.presets import preset_config
from mote_edge.exporters.synth import synthesize
cfg = preset_config("tiny")
# ~200 MB of fp32 weights, the largest tensor (embed) ~8 MB
cfg.decoder.hidden_size, cfg.decoder.intermediate_size, cfg.decoder.vocab_size = 512, 1536, 4096
cfg.decoder.num_attention_heads, cfg.decoder.num_key_value_heads = 8, 2
cfg.moe.num_experts = [8, 8]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = synthesize(cfg.validate(), sys.argv[1], dtype="fp32", progress=False)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(summary.nbytes, (after - before) * 1024)
"""


def test_synth_streams_instead_of_holding_the_model(tmp_path):
    r = subprocess.run([sys.executable, "-c", STREAMING, str(tmp_path / "big")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    nbytes, growth = map(int, r.stdout.split())
    assert nbytes > 150e6
    assert growth < 60e6, f"peak RSS grew by {growth / 1e6:.0f} MB while writing {nbytes / 1e6:.0f} MB"
