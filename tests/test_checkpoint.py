"""safetensors I/O and checkpoint directories: round trips, sharding, errors naming the tensor."""

import json

import numpy as np
import pytest

from conftest import import_oracle

from mote_edge.errors import CheckpointError
from mote_edge.exporters.checkpoint import Checkpoint, write_checkpoint
from mote_edge.exporters.safetensors_io import (SafetensorsFile, SafetensorsWriter, bf16_bits_to_float32,
                                                float32_to_bf16_bits)
from mote_edge.exporters.synth import random_tensor
from mote_edge.presets import preset_config
from mote_edge.schema import checkpoint_tensors


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-9, -2.5, 3.0e38, np.inf], np.float32)
    bits = float32_to_bf16_bits(x)
    back = bf16_bits_to_float32(bits)
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1.0; 1 + 3*2^-9 rounds up
    assert back.tolist()[:4] == [1.0, 1.0, 1.0 + 2**-7, -2.5]
    assert np.isinf(back[5]) and np.isnan(bf16_bits_to_float32(float32_to_bf16_bits(np.array([np.nan], np.float32))))[0]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_safetensors_round_trip_and_compat_with_reference_reader(tmp_path, dtype):
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float32)}
    with SafetensorsWriter(tmp_path / "m.safetensors", [(k, v.shape) for k, v in tensors.items()], dtype) as w:
        for k, v in tensors.items():
            w.write(k, v)
    f = SafetensorsFile(tmp_path / "m.safetensors")
    tol = {"fp32": 0, "fp16": 1e-3, "bf16": 1e-2}[dtype]
    for k, v in tensors.items():
        np.testing.assert_allclose(f.get(k), v, rtol=tol, atol=tol)
    # the reference implementation reads our file identically
    safetensors_torch = import_oracle("safetensors.torch")
    ref = safetensors_torch.load_file(str(tmp_path / "m.safetensors"))
    for k in tensors:
        np.testing.assert_array_equal(ref[k].float().numpy(), f.get(k))


def test_writer_refuses_out_of_plan_and_incomplete(tmp_path):
    w = SafetensorsWriter(tmp_path / "m.safetensors", [("a", (2,)), ("b", (2,))], "fp32")
    with pytest.raises(CheckpointError, match="expected tensor a"):
        w.write("b", np.zeros(2, np.float32))
    w.write("a", np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="tensor b was never written"):
        w.close()


def _write(tmp_path, cfg, **kw):
    specs = checkpoint_tensors(cfg)
    index = {s.name: i for i, s in enumerate(specs)}
    return write_checkpoint(tmp_path, cfg, lambda s: random_tensor(s, index[s.name], 0), progress=False, **kw)


def test_sharded_checkpoint_round_trips(tmp_path):
    cfg = preset_config("tiny")
    summary = _write(tmp_path / "c", cfg, dtype="fp32", max_shard_bytes=400_000)
    assert summary.shards > 1 and (tmp_path / "c" / "model.safetensors.index.json").exists()
    ckpt = Checkpoint.open(tmp_path / "c")
    assert ckpt.config == cfg
    specs = checkpoint_tensors(cfg)
    for i, spec in enumerate(specs):
        np.testing.assert_array_equal(ckpt.tensor(spec.name), random_tensor(spec, i, 0))


def test_moe_llava_key_names_load(tmp_path):
    """A MoE-LLaVA-style file: image_tower prefix, fp experts, no shared expert, extra tensors."""
    cfg = preset_config("tiny", "fp")
    _write(tmp_path / "c", cfg, dtype="fp32")
    f = SafetensorsFile(tmp_path / "c" / "model.safetensors")
    renamed = {k.replace("model.vision_tower.vision_model.", "model.image_tower.image_tower.vision_model."): k
               for k in f.keys()}
    extra = "model.image_tower.image_tower.vision_model.post_layernorm.weight"
    plan = [(new, f.shape(old)) for new, old in renamed.items()] + [(extra, (cfg.vision.hidden_size,))]
    (tmp_path / "c" / "model.safetensors").rename(tmp_path / "orig.safetensors")
    with SafetensorsWriter(tmp_path / "c" / "model.safetensors", plan, "fp32") as w:
        for new, old in renamed.items():
            w.write(new, f.get(old))
        w.write(extra, np.ones(cfg.vision.hidden_size, np.float32))
    ckpt = Checkpoint.open(tmp_path / "c")
    assert ckpt.extra_keys == ["model.vision_tower.vision_model.post_layernorm.weight"]
    name = "model.vision_tower.vision_model.embeddings.class_embedding"
    np.testing.assert_array_equal(ckpt.tensor(name), f.get(name))
    assert any(".deepspeed_experts.3.down_proj" in s.name for s in ckpt.specs)


def _rewrite_without(src, dst, drop=None, reshape=None):
    f = SafetensorsFile(src)
    names = [k for k in f.keys() if k != drop]
    shapes = {k: (reshape[1] if reshape and k == reshape[0] else f.shape(k)) for k in names}
    with SafetensorsWriter(dst, [(k, shapes[k]) for k in names], "fp32") as w:
        for k in names:
            w.write(k, np.zeros(shapes[k], np.float32) if shapes[k] != f.shape(k) else f.get(k))


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    cfg = preset_config("tiny")
    _write(tmp_path / "c", cfg, dtype="fp32")
    st = tmp_path / "c" / "model.safetensors"
    st.rename(tmp_path / "orig.safetensors")
    victim = "model.layers.2.mlp.deepspeed_moe.experts.deepspeed_experts.1.up_proj.weight"
    _rewrite_without(tmp_path / "orig.safetensors", st, drop=victim)
    with pytest.raises(CheckpointError, match=f"missing tensor {victim} \\(expected shape \\[160, 64\\]\\)"):
        Checkpoint.open(tmp_path / "c")
    _rewrite_without(tmp_path / "orig.safetensors", st, reshape=("model.norm.weight", (65,)))
    with pytest.raises(CheckpointError, match=r"tensor model.norm.weight has shape \[65\], expected \[64\]"):
        Checkpoint.open(tmp_path / "c")


def test_bad_directories_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        Checkpoint.open(tmp_path / "nope")
    cfg = preset_config("tiny")
    (tmp_path / "d").mkdir()
    cfg.save(tmp_path / "d" / "config.json")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Checkpoint.open(tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Checkpoint.open(tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").write_bytes((12).to_bytes(8, "little") + b"{not json!!}")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        Checkpoint.open(tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").unlink()
    (tmp_path / "d" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard gone.safetensors listed in .* is missing"):
        Checkpoint.open(tmp_path / "d")


def test_truncated_safetensors_is_detected(tmp_path):
    cfg = preset_config("tiny")
    _write(tmp_path / "c", cfg, dtype="fp32")
    st = tmp_path / "c" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="bad data offsets .* truncated"):
        Checkpoint.open(tmp_path / "c")


def test_refuses_to_overwrite_without_force(tmp_path):
    cfg = preset_config("tiny")
    _write(tmp_path / "c", cfg, dtype="fp32")
    with pytest.raises(CheckpointError, match="not empty .*--force"):
        _write(tmp_path / "c", cfg, dtype="fp32")
    _write(tmp_path / "c", cfg, dtype="fp32", force=True)
