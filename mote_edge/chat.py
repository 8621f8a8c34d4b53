"""MoE-LLaVA's chat template (the "v1" conversation: system prompt, " USER: ", " ASSISTANT:").

    format_prompt("What color is the star?", has_image=True)
    -> "<system> USER: <image>\\nWhat color is the star? ASSISTANT:"

`encode_prompt` follows LLaVA's tokenizer_image_token: the text is split on "<image>", each chunk
is encoded on its own, and IMAGE_TOKEN_INDEX (-200) marks where the projected image patch
embeddings go. That id is never looked up in the embedding table.
"""

from __future__ import annotations

from mote_edge.config import IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX
from mote_edge.errors import TokenizerError
from mote_edge.tokenizer import Tokenizer

DEFAULT_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
USER = " USER: "
ASSISTANT = " ASSISTANT:"


def format_prompt(question: str, has_image: bool, system: str = DEFAULT_SYSTEM) -> str:
    """The prompt text; with an image the placeholder leads the user turn, then a newline."""
    image = f"{IMAGE_PLACEHOLDER}\n" if has_image else ""
    return f"{system}{USER}{image}{question}{ASSISTANT}"


def encode_prompt(tokenizer: Tokenizer, question: str, has_image: bool,
                  system: str = DEFAULT_SYSTEM) -> list[int]:
    """Prompt ids: [BOS once if the tokenizer has one] + chunk ids with IMAGE_TOKEN_INDEX between.

    Returns a list of length T with exactly one IMAGE_TOKEN_INDEX when has_image, none otherwise.
    """
    if not has_image and IMAGE_PLACEHOLDER in question:
        raise TokenizerError(f"the question contains {IMAGE_PLACEHOLDER!r} but no image was given")
    text = format_prompt(question, has_image, system)
    n = text.count(IMAGE_PLACEHOLDER)
    if n > (1 if has_image else 0):
        raise TokenizerError(f"the prompt contains {n} {IMAGE_PLACEHOLDER!r} placeholders; "
                             f"{'only one image is' if has_image else 'no image was'} given")
    ids: list[int] = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        # Tokenizer.encode adds no special tokens and reads special-token text as plain text,
        # so a question starting with the BOS text cannot produce a second BOS id.
        ids.extend(tokenizer.encode(chunk))
    return ids
