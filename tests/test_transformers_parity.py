"""Checkpoints written by transformers' own save_pretrained, exported and run by mote-edge, against
transformers' own forward (tests/hf_checkpoints.py: Qwen2ForCausalLM + CLIPVisionModel + CLIPImageProcessor
+ AutoTokenizer, with a hand-written DeepSpeed-style MoE; it imports nothing from mote_edge).

Exported at --bits 16 (every weight is fp16-exact, the vision tower at fp32): the prompt ids equal LLaVA's
tokenizer_image_token through AutoTokenizer, the first logits agree to float32 summation order, and the
runtime's greedy choice equals transformers' at every step of the reference's own sequence (teacher
forced) where the reference's top-1 lead is clear; free-running generation agrees up to the first near-tie.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO, import_oracle

import_oracle("torch")
import_oracle("transformers")

from hf_checkpoints import build_mote_llava, build_moe_llava, llava_tokenizer_image_token, oracle_generate  # noqa: E402
from PIL import Image  # noqa: E402

from mote_edge.chat import DEFAULT_SYSTEM  # noqa: E402
from mote_edge.config import IMAGE_TOKEN_INDEX  # noqa: E402
from mote_edge.exporters.export import ExportOptions, export_checkpoint  # noqa: E402
from mote_edge.runtime.engine import Engine  # noqa: E402

STEPS = 24
MIN_CLEAR_STEPS = 16
NEAR_TIE = 0.05  # logits; float32 summation order moves logits by ~1e-5 here
QUESTION = "What color is the star in the top left?"
IMAGE = REPO / "examples" / "images" / "task-0.png"

# name -> (builder, builder kwargs)
KINDS = {
    "mote-qwen-tf5-top2": (build_mote_llava, dict(top_k=2, tokenizer="qwen", rope_style="v5")),
    "mote-llama-tf4-top1-tied": (build_mote_llava, dict(top_k=1, tokenizer="llama", rope_style="v4", tied=True,
                                                        vision_keys="v4")),
    "moellava-qwen-tf5-top2": (build_moe_llava, dict(top_k=2, tokenizer="qwen", rope_style="v5")),
    "moellava-residual-top1-tower-apart": (build_moe_llava, dict(top_k=1, use_residual=True, tied=True,
                                                                 vision_in_separate_dir=True)),
}


@pytest.fixture(scope="module", params=list(KINDS))
def exported(request, tmp_path_factory):
    builder, kwargs = KINDS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    built = builder(root / "ckpt", seed=3, **kwargs)
    path = root / "model.mote"
    export_checkpoint(built.ckpt_dir, path, ExportOptions(bits=16, vision_bits=32, progress=False,
                                                          vision_tower=built.vision_tower_dir))
    return kwargs, built, path


def _template_text(engine: Engine, has_image: bool) -> str:
    """The prompt text written out by hand from MoE-LLaVA's conversation rules (not by mote_edge.chat)."""
    image = "<image>\n" if has_image else ""
    assert engine.template.name in ("v1", "qwen")
    return f"{DEFAULT_SYSTEM} USER: {image}{QUESTION} ASSISTANT:"


def _teacher_forced_choices(engine: Engine, prompt_ids: list[int], image, tokens: list[int]) -> list[int]:
    """The runtime's argmax after the prompt and after each of `tokens` (the reference's sequence)."""
    engine.decoder.reset()
    x = engine._prompt_embeddings(QUESTION, image)
    assert x.shape[0] == len(prompt_ids) - (1 if image is not None else 0) + (
        engine.config.vision.num_patches if image is not None else 0)
    vocab = engine.tokenizer.vocab_size
    choices = [int(np.argmax(engine.decoder.forward(x)[:vocab]))]
    for t in tokens[:-1]:
        choices.append(int(np.argmax(engine.decoder.forward(engine.decoder.embed(np.array([t])))[:vocab])))
    return choices


@pytest.mark.parametrize("with_image", [False, True])
def test_runtime_equals_transformers_token_for_token(exported, with_image):
    _, built, path = exported
    image = Image.open(IMAGE).convert("RGB") if with_image else None
    with Engine.load(path, threads=1) as engine:
        ids = engine.encode(QUESTION, has_image=with_image)
        # Prompt ids: mote-edge's template + BOS rule == LLaVA's tokenizer_image_token over AutoTokenizer.
        assert ids == llava_tokenizer_image_token(built.ckpt_dir, _template_text(engine, with_image))
        assert ids.count(IMAGE_TOKEN_INDEX) == (1 if with_image else 0)
        ref = oracle_generate(built.ckpt_dir, ids, image, STEPS, vision_tower_dir=built.vision_tower_dir)

        engine.decoder.reset()
        logits = engine.decoder.forward(engine._prompt_embeddings(QUESTION, image))[: len(ref.logits_first)]
        scale = float(np.abs(ref.logits_first).max())
        np.testing.assert_allclose(logits, ref.logits_first, rtol=0, atol=1e-4 * scale)

        choices = _teacher_forced_choices(engine, ids, image, ref.tokens)
        clear = [i for i, m in enumerate(ref.margins) if m >= NEAR_TIE]
        assert len(clear) >= MIN_CLEAR_STEPS, f"only {len(clear)} clear steps: the builder's weights are too tame"
        assert [choices[i] for i in clear] == [ref.tokens[i] for i in clear]

        free = list(engine.generate_ids(QUESTION, image, max_new_tokens=STEPS, ignore_eos=True))
    first_tie = next((i for i, m in enumerate(ref.margins) if m < NEAR_TIE), STEPS)
    assert free[:first_tie] == ref.tokens[:first_tie]


def test_bos_follows_the_tokenizer_not_config_json(exported):
    kwargs, built, path = exported
    with Engine.load(path, threads=1) as engine:
        ids = engine.encode(QUESTION, has_image=False)
        bos = engine.tokenizer.token_to_id("<s>")
        if kwargs.get("tokenizer", "qwen") == "llama":  # its post-processor puts <s> first, as AutoTokenizer does
            assert engine.tokenizer.bos_id == bos and ids[0] == bos and ids.count(bos) == 1
        else:  # Qwen's adds nothing, whatever config.json's bos_token_id says
            assert engine.tokenizer.bos_id is None and bos not in ids
