"""The runtime against the faithful torch reference (tests/faithful_reference.py) on every model kind:
MoTE (ternary routed experts + shared expert) and MoE-LLaVA (fp experts, stored int-N), top-1 and top-2,
use_residual, tied and untied embeddings, each exported at --bits 16 and --bits 4; and the MoTE model
at --bits 4 under each forced kernel path (MOTE_KERNEL_PATH, in a subprocess); decode steps run the native
layer (native/layer.c), and the numpy layer (MOTE_DECODER=numpy) is held to the same reference.

Per row: the prompt embeddings (image included) agree; the logits after the prompt and after every token
of the reference's greedy sequence (teacher forced) agree to the tolerance of tests/test_runtime.py; the
runtime's argmax equals the reference's token at every step where the reference's lead over its runner-up
is more than twice that tolerance (no difference within tolerance can flip such a step); and free-running
greedy decoding agrees with the reference's sequence up to its first step that is not clear (if the two
sequences part, they part at such a step).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, import_oracle

torch = import_oracle("torch")

from faithful_reference import assert_embeddings_match, faithful_reference  # noqa: E402
from runtime_probe import runtime_outputs  # noqa: E402

from mote_edge.format import MoteFile  # noqa: E402
from mote_edge.quant import kernels  # noqa: E402

IMAGE = REPO / "examples" / "images" / "shapes.png"
PROMPT = "What color is the circle?"
STEPS = 24
MIN_CLEAR_STEPS = 12
# Relative to the step's largest |logit| (tests/test_runtime.py): fp16 weights differ from the reference
# only in float32 summation order -> 1e-4; int-N weights: a summation-order difference can flip one int8
# activation rounding, a step of 1/127 of a group's max |x| -> 2e-2.
TOLERANCE = {16: 1e-4, 4: 2e-2}

# name -> (expert type, top-k, tied embeddings, use_residual); all on the synth tiny preset's shapes
MODELS = {
    "mote-top2-untied": ("ternary", 2, False, False),
    "mote-top1-tied": ("ternary", 1, True, False),
    "moellava-top2-untied": ("fp", 2, False, False),
    "moellava-top1-tied-residual": ("fp", 1, True, True),
}
KERNEL_PATHS = ("scalar", "avx2", "avx512")


# Weight gains over the synth initialisation (std 0.02) for the rows built here: at 0.02 every layer is a
# small correction to the residual stream, so a tied head keeps predicting the input token, a router or a
# use_residual mixer sits near uniform, and swapping the mixer's two coefficients changes the logits by less
# than the int-N tolerance. With these gains such a swap fails every row (checked).
GAINS = {"router": 25.0, "residual_coef": 25.0, "attn": 4.0, "ffn": 4.0, "shared_expert": 4.0, "fp_expert": 4.0,
         "ternary_expert": 4.0, "residual_mlp": 4.0}


def synthesize_lively(cfg, out_dir, seed: int) -> None:
    from mote_edge.exporters.checkpoint import write_checkpoint
    from mote_edge.exporters.synth import random_tensor
    from mote_edge.schema import checkpoint_tensors

    specs = checkpoint_tensors(cfg)
    index = {spec.name: i for i, spec in enumerate(specs)}

    def tensor(spec):
        gain = GAINS.get(spec.role, 1.0) if spec.name.endswith("weight") else 1.0
        return random_tensor(spec, index[spec.name], seed) * np.float32(gain)

    write_checkpoint(out_dir, cfg, tensor, dtype="fp32", progress=False)


@pytest.fixture(scope="module")
def checkpoint(tiny_ckpt, tmp_path_factory):
    """name -> checkpoint directory; the plain MoTE row is the shared tiny checkpoint."""
    from mote_edge.presets import preset_config

    made = {"mote-top2-untied": tiny_ckpt}

    def get(name: str):
        if name not in made:
            expert_type, top_k, tied, residual = MODELS[name]
            cfg = preset_config("tiny", expert_type)
            cfg.moe.top_k_experts, cfg.moe.use_residual = top_k, residual
            cfg.decoder.tie_word_embeddings = tied
            made[name] = tmp_path_factory.mktemp("parity") / name
            synthesize_lively(cfg.validate(), made[name], seed=7)
        return made[name]

    return get


def _prompt_inputs(mote):
    from mote_edge.image import load_image, preprocess
    from mote_edge.runtime.engine import Engine

    with Engine.load(mote, threads=1) as engine:
        ids = engine.encode(PROMPT, has_image=True)
        pixels = preprocess(load_image(IMAGE), engine.image_config)[None]
    return ids, torch.from_numpy(pixels)


@torch.no_grad()
def reference_run(ckpt, mote) -> dict:
    """The faithful reference's greedy sequence (EOS ignored) and its logits at every step."""
    from mote_edge.exporters.reference.layers import KVCache

    ref = faithful_reference(ckpt, mote)
    ids, pixels = _prompt_inputs(mote)
    embeds = ref.embed(torch.tensor(ids), pixels)
    cache = KVCache(ref.config.decoder.num_hidden_layers)
    step = ref.forward_embeds(embeds[None], cache)[0, -1]
    logits, tokens = [], []
    for _ in range(STEPS):
        logits.append(step.numpy())
        tokens.append(int(step.argmax()))
        step = ref.forward_embeds(ref.model.embed_tokens(torch.tensor([[tokens[-1]]])), cache)[0, -1]
    return {"ids": ids, "embeds": embeds.numpy(), "logits": np.stack(logits), "tokens": tokens}


def vision_bits_for(bits: int) -> int:
    """--bits 16 rows store the vision tower fp16 too, so the decoder's fp16 tolerance holds with an image:
    an int8 tower's activation roundings can flip between two summation orders (the int-N rule, 2e-2)."""
    return 16 if bits == 16 else 8


@pytest.fixture(scope="module")
def reference_runs(checkpoint, export_once):
    done = {}

    def get(name: str, bits: int):
        if (name, bits) not in done:
            ckpt = checkpoint(name)
            mote = export_once(ckpt, bits=bits, group_size=32, vision_bits=vision_bits_for(bits))
            done[name, bits] = mote, reference_run(ckpt, mote)
        return done[name, bits]

    return get


def clear_steps(logits: np.ndarray, tol: float) -> list[bool]:
    """Steps whose top-1 leads the runner-up by more than 2 x the logit tolerance."""
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return list(top2[:, 1] - top2[:, 0] > 2 * tol * np.abs(logits).max(axis=-1))


def assert_runtime_matches(ref: dict, got: dict, tol: float, mote) -> None:
    assert list(got["ids"]) == ref["ids"]
    with MoteFile(mote) as f:
        patches = f.config.vision.num_patches + (f.config.projector.select_feature == "cls_patch")
        vision_bits = f.recipe.vision_bits
    assert_embeddings_match(got["embeds"], ref["embeds"], ref["ids"], patches, vision_bits)
    scale = np.abs(ref["logits"]).max(axis=-1, keepdims=True)
    worst = (np.abs(got["logits"] - ref["logits"]) / scale).max(axis=-1)
    assert (worst <= tol).all(), f"logits off by up to {worst.max():.2e} of the logit scale (step {worst.argmax()})"
    clear = clear_steps(ref["logits"], tol)
    assert sum(clear) >= MIN_CLEAR_STEPS, f"only {sum(clear)} clear steps: the model's logits are too flat"
    chosen = got["logits"].argmax(axis=-1)
    assert [int(c) for c, ok in zip(chosen, clear) if ok] == [t for t, ok in zip(ref["tokens"], clear) if ok]
    # free running: where the runtime's own sequence first leaves the reference's, the reference was not clear
    first_difference = next((i for i, (a, b) in enumerate(zip(got["free"], ref["tokens"])) if a != b), STEPS)
    assert first_difference == STEPS or not clear[first_difference], f"free-running differs at clear step {first_difference}"


@pytest.mark.parametrize("bits", [16, 4])
@pytest.mark.parametrize("name", list(MODELS))
def test_runtime_matches_the_reference(name, bits, reference_runs):
    mote, ref = reference_runs(name, bits)
    assert_runtime_matches(ref, runtime_outputs(mote, PROMPT, IMAGE, ref["tokens"]), TOLERANCE[bits], mote)


def probe_in_subprocess(mote, ref: dict, env: dict, tmp_path) -> dict:
    """tests/runtime_probe.py's outputs for the reference's tokens, in a process with `env` set."""
    out = tmp_path / "runtime.npz"
    r = subprocess.run([sys.executable, str(REPO / "tests" / "runtime_probe.py"), str(mote), PROMPT, str(IMAGE),
                        ",".join(map(str, ref["tokens"])), str(out)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_forced_kernel_path_matches_the_reference(path, reference_runs, tmp_path):
    if path not in kernels.available_paths():
        pytest.skip(f"this CPU cannot run the {path} kernels (available: {', '.join(kernels.available_paths())})")
    mote, ref = reference_runs("mote-top2-untied", 4)
    got = probe_in_subprocess(mote, ref, {"MOTE_KERNEL_PATH": path}, tmp_path)
    assert str(got["kernel_path"]) == path and str(got["decoder"]) == "native"
    assert_runtime_matches(ref, got, TOLERANCE[4], mote)


@pytest.mark.parametrize("bits", [16, 4])
def test_numpy_decoder_layer_matches_the_reference(bits, reference_runs, tmp_path):
    """The numpy layer (MOTE_DECODER=numpy), the reference the native decode step is tested against."""
    mote, ref = reference_runs("mote-top1-tied", bits)
    got = probe_in_subprocess(mote, ref, {"MOTE_DECODER": "numpy"}, tmp_path)
    assert str(got["decoder"]) == "numpy"
    assert_runtime_matches(ref, got, TOLERANCE[bits], mote)
