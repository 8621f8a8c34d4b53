"""Prompt (+ image) -> text with the torch reference model: the ground truth the runtime must match."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from mote_edge.chat import encode_prompt
from mote_edge.image import load_image, preprocess
from mote_edge.tokenizer import IncrementalDecoder

from .checkpoint import Checkpoint
from .reference import load_reference_model


def prepare_inputs(ckpt: Checkpoint, prompt: str, image: Path | None) -> tuple[list[int], torch.Tensor | None]:
    """Token ids with LLaVA's image placeholder, and pixels [1, 3, S, S] (or None)."""
    ids = encode_prompt(ckpt.tokenizer(), prompt, has_image=image is not None)
    if image is None:
        return ids, None
    pixels = preprocess(load_image(image), ckpt.image_config())  # [3, S, S]
    return ids, torch.from_numpy(pixels)[None]


def reference_generate(checkpoint_dir: Path, prompt: str, image: Path | None = None,
                       max_new_tokens: int = 32) -> Iterator[str]:
    """Yields the greedy answer's text piece by piece."""
    torch.set_grad_enabled(False)
    ckpt = Checkpoint.open(checkpoint_dir)
    model = load_reference_model(ckpt)
    ids, pixels = prepare_inputs(ckpt, prompt, image)
    tokenizer = ckpt.tokenizer()
    decoder = IncrementalDecoder(tokenizer)
    for token in model.generate_tokens(ids, pixels, max_new_tokens, eos_token_id=tokenizer.eos_id):
        piece = decoder.feed(token)
        if piece:
            yield piece
