"""A new .mote file from an open one: every tensor, expert record and the vision section copied (each
checksum verified as it is read), some resident tensors dropped or added, metadata blocks replaced.

What `mote-edge fit-lookahead` uses to store lookahead predictors in a file that has none (or other ones).
The copy goes through MoteWriter, so the new file is laid out, checksummed and finalized like an exported
one (written as `<path>.partial`, renamed when complete: the source may be the same path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mote_edge.progress import byte_progress
from mote_edge.quant.recipe import Scheme

from .reader import MoteFile
from .stats import size_stats
from .writer import MoteWriter

DIRECTORY_KEYS = ("sections", "tensors", "experts", "vision", "sizes")  # the writer computes these


@dataclass
class NewTensor:
    """A resident tensor to add: its directory entry and its parts (see encoding.py)."""

    name: str
    role: str
    scheme: Scheme
    shape: tuple[int, ...]
    parts: dict[str, np.ndarray]


def rewrite(src: MoteFile, path: str | Path, add: list[NewTensor] = (), keep: Callable[[str], bool] = lambda name: True,
            metadata: dict[str, Any] | None = None, progress: bool = False) -> None:
    """Write `path`: src's resident tensors for which keep(name) holds, then `add`; every expert record and
    the vision section as they are; src's metadata blocks updated with `metadata` (a value of None drops
    the block). The directory, sections and sizes are the new file's own."""
    meta = {k: v for k, v in src.metadata.items() if k not in DIRECTORY_KEYS}
    for key, value in (metadata or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    kept = [name for name in src.tensors if keep(name)]
    writer = MoteWriter(path, meta)
    with writer:
        for name in kept:
            t = src.tensors[name]
            writer.add_tensor(name, t.role, t.scheme, t.shape)
        for t in add:
            writer.add_tensor(t.name, t.role, t.scheme, t.shape)
        for (layer, expert), e in src.experts.items():
            writer.add_expert(layer, expert, [(t.name, t.role, t.scheme, t.shape) for t in e.tensors])
        if src.vision is not None:
            writer.add_vision(src.vision.nbytes, src.vision.info, src.vision.blocks)
        writer.metadata["sizes"] = size_stats(writer.tensors.values(), writer.experts.values(), writer.vision)
        writer.begin()
        with byte_progress(f"writing {Path(path).name}", src.header.file_size, progress) as bar:
            for name in kept:
                writer.write_tensor(name, src.read_tensor(name))
                bar.advance(src.tensors[name].nbytes)
            for t in add:
                writer.write_tensor(t.name, t.parts)
            for (layer, expert), e in src.experts.items():
                writer.write_expert(layer, expert, src.read_expert(layer, expert))
                bar.advance(e.nbytes)
            if src.vision is not None:
                _copy_vision(src, writer)
                bar.advance(src.vision.nbytes)
        writer.finalize()


def _copy_vision(src: MoteFile, writer: MoteWriter) -> None:
    """An ONNX section in one piece; native blocks one at a time through one buffer (each checksum verified)."""
    if not src.vision.blocks:
        writer.write_vision(src.read_vision())
        return
    buf = bytearray(max(block.nbytes for block in src.vision.blocks))
    for block in writer.vision.blocks:
        src.read_vision_block_into(block, buf)
        writer.write_vision_block(block, bytes(buf[:block.nbytes]))
