"""What the decoder's KV cache holds, position by position, so a conversation that continues prefills
only its new positions.

A position's key is its token id, or (image digest, patch index) for an image patch: two prompts share
a cached position only when everything before it and at it is the same, token ids and image content alike.

    cached = CachedPositions()
    cached.set(keys_of_turn_1 + answer_ids)      # after the first answer
    reuse = cached.shared_prefix(keys_of_turn_2)  # positions whose K/V can stay
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Union

from PIL import Image

from mote_edge.config import IMAGE_TOKEN_INDEX

PositionKey = Union[int, tuple[str, int]]


def image_digest(image: Image.Image) -> str:
    """A content hash of a decoded image (mode, size and pixels): equal images share cached positions."""
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def position_keys(ids: Sequence[int], digests: Sequence[str], patches: int) -> list[PositionKey]:
    """Prompt ids (IMAGE_TOKEN_INDEX per image, in order) -> one key per decoder position: each image
    placeholder becomes `patches` keys (digest, 0 .. patches - 1)."""
    keys: list[PositionKey] = []
    images = iter(digests)
    for token in ids:
        if token == IMAGE_TOKEN_INDEX:
            digest = next(images)
            keys.extend((digest, j) for j in range(patches))
        else:
            keys.append(int(token))
    return keys


class CachedPositions:
    """The keys of positions 0 .. len - 1 of the KV cache (kept equal to Decoder.length by the Engine)."""

    def __init__(self) -> None:
        self.keys: list[PositionKey] = []

    def __len__(self) -> int:
        return len(self.keys)

    def shared_prefix(self, keys: Sequence[PositionKey]) -> int:
        """How many leading positions of `keys` the cache already holds."""
        n = 0
        for cached, new in zip(self.keys, keys):
            if cached != new:
                break
            n += 1
        return n

    def set(self, keys: Sequence[PositionKey]) -> None:
        self.keys = list(keys)

    def append(self, key: PositionKey) -> None:
        self.keys.append(key)

    def truncate(self, length: int) -> None:
        del self.keys[length:]

    def clear(self) -> None:
        self.keys.clear()
