"""MoteWriter: plan the whole file, then stream tensors into place, then finalize.

States: planning (add_*) -> writing (write_*, any order, each planned item exactly once)
-> finalized (CRCs filled into the metadata, header and trailer written, file renamed into
place). The file is written as `<path>.partial` and renamed only when complete, so an
interrupted export never leaves a file that looks valid.

Layout (docs/FORMAT.md): header | metadata JSON | pad to 4096 | data section =
[resident tensors, 64-aligned] [expert records, 4096-aligned] [vision, 4096-aligned] | trailer.
The vision section is an ONNX model written in one piece (`write_vision`), or the native blocks laid
out by mote_edge/format/vision_blocks.py, written one at a time in order (`write_vision_block`), so an
exporter never holds the whole tower.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mote_edge.errors import FormatError
from mote_edge.quant.recipe import Scheme

from .constants import (FLAG_HAS_VISION, HEADER, HEADER_SIZE, MAGIC, SECTION_ALIGN, TENSOR_ALIGN, TRAILER,
                        TRAILER_MAGIC, VERSION_MAJOR, VERSION_MINOR)
from .encoding import PART_DTYPES
from .directory import BlobEntry, ExpertEntry, TensorEntry, VisionBlock, align


def _part_bytes(entry: TensorEntry, parts: dict[str, np.ndarray]) -> bytes:
    """The tensor's bytes: its parts at their planned offsets, zero padding between."""
    if set(parts) != {p.name for p in entry.parts}:
        raise FormatError(f"tensor {entry.name}: expected parts {[p.name for p in entry.parts]}, got {sorted(parts)}")
    buf = bytearray(entry.nbytes)
    for spec, off in zip(entry.parts, entry.part_offsets):
        arr = np.ascontiguousarray(parts[spec.name])
        if arr.dtype != PART_DTYPES[spec.dtype] or arr.size * arr.itemsize != spec.nbytes:
            raise FormatError(f"tensor {entry.name} part {spec.name}: expected {spec.dtype} {list(spec.shape)}, "
                              f"got {arr.dtype} {list(arr.shape)}")
        buf[off:off + spec.nbytes] = arr.tobytes()
    return bytes(buf)


def record_bytes(entries: list[TensorEntry], tensors: dict[str, dict[str, np.ndarray]], what: str) -> bytearray:
    """A record's bytes (an expert record, a vision block): each tensor's parts at its planned offset."""
    record = bytearray(entries[-1].offset + entries[-1].nbytes)
    for t in entries:
        if t.name not in tensors:
            raise FormatError(f"{what} is missing tensor {t.name}")
        record[t.offset:t.offset + t.nbytes] = _part_bytes(t, tensors[t.name])
    return record


class MoteWriter:
    def __init__(self, path: str | Path, metadata: dict[str, Any]):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.metadata = dict(metadata)
        self.tensors: dict[str, TensorEntry] = {}
        self.experts: dict[tuple[int, int], ExpertEntry] = {}
        self.vision: BlobEntry | None = None
        self._vision_blocks_written = 0
        self._vision_end = 0  # section bytes covered by _vision_crc
        self._vision_crc = 0
        self._written: set = set()
        self._fd: int | None = None
        self.data_offset = 0
        self.data_size = 0

    # ------------------------------------------------------------------ planning
    def add_tensor(self, name: str, role: str, scheme: Scheme, shape: tuple[int, ...]) -> TensorEntry:
        self._planning()
        if name in self.tensors:
            raise FormatError(f"tensor {name} planned twice")
        self.tensors[name] = entry = TensorEntry.plan(name, role, scheme, shape)
        return entry

    def add_expert(self, layer: int, expert: int, tensors: list[tuple[str, str, Scheme, tuple[int, ...]]]) -> ExpertEntry:
        self._planning()
        if (layer, expert) in self.experts:
            raise FormatError(f"expert ({layer}, {expert}) planned twice")
        entries = [TensorEntry.plan(*t) for t in tensors]
        self.experts[(layer, expert)] = entry = ExpertEntry.plan(layer, expert, entries)
        return entry

    def add_vision(self, nbytes: int, info: dict[str, Any], blocks: list[VisionBlock] | None = None) -> None:
        """The vision section: `nbytes` of ONNX model, or native `blocks` (CRCs filled) in `nbytes`."""
        self._planning()
        self.vision = BlobEntry(nbytes, info=dict(info), blocks=list(blocks or []))

    def _planning(self) -> None:
        if self._fd is not None:
            raise FormatError("the file layout is fixed once writing has started")

    # ------------------------------------------------------------------ layout
    def _layout(self) -> dict[str, Any]:
        pos = 0
        for t in self.tensors.values():
            pos = align(pos, TENSOR_ALIGN)
            t.offset = pos
            pos += t.nbytes
        resident = pos
        sections: dict[str, Any] = {"resident": {"offset": 0, "nbytes": resident}}
        pos = align(pos, SECTION_ALIGN)
        expert_start = pos
        for e in self.experts.values():
            pos = align(pos, SECTION_ALIGN)
            e.offset = pos
            pos += e.nbytes
        sections["experts"] = {"offset": expert_start, "nbytes": pos - expert_start}
        if self.vision is not None:
            pos = align(pos, SECTION_ALIGN)
            self.vision.offset = pos
            pos += self.vision.nbytes
        self.data_size = pos
        return sections

    def _metadata_bytes(self, sections: dict[str, Any]) -> bytes:
        meta = {
            **self.metadata,
            "sections": sections,
            "tensors": [t.to_json(with_crc=True) for t in self.tensors.values()],
            "experts": [e.to_json() for e in self.experts.values()],
            "vision": self.vision.to_json() if self.vision is not None else None,
        }
        return json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()

    def begin(self) -> None:
        """Fix the layout and open the partial file for writing."""
        self._planning()
        self._sections = self._layout()
        meta_len = len(self._metadata_bytes(self._sections))  # CRCs are fixed width: length is final
        self.data_offset = align(HEADER_SIZE + meta_len, SECTION_ALIGN)
        self.file_size = self.data_offset + self.data_size + TRAILER.size
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, self.file_size)  # holes read as zeros: padding needs no writes

    # ------------------------------------------------------------------ writing
    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.data_offset + offset)
            view, offset = view[n:], offset + n

    def _writing(self, key) -> None:
        if self._fd is None:
            raise FormatError("call begin() before writing")
        if key in self._written:
            raise FormatError(f"{key} written twice")
        self._written.add(key)

    def write_tensor(self, name: str, parts: dict[str, np.ndarray]) -> None:
        if name not in self.tensors:
            raise FormatError(f"tensor {name} was not planned")
        entry = self.tensors[name]
        data = _part_bytes(entry, parts)  # validate before marking it written
        self._writing(("tensor", name))
        entry.crc32 = zlib.crc32(data)
        self._pwrite(data, entry.offset)

    def write_expert(self, layer: int, expert: int, tensors: dict[str, dict[str, np.ndarray]]) -> None:
        if (layer, expert) not in self.experts:
            raise FormatError(f"expert ({layer}, {expert}) was not planned")
        entry = self.experts[(layer, expert)]
        record = record_bytes(entry.tensors, tensors, f"expert ({layer}, {expert})")
        self._writing(("expert", layer, expert))
        entry.crc32 = zlib.crc32(record)
        self._pwrite(bytes(record), entry.offset)

    def write_vision(self, data: bytes) -> None:
        """The whole section at once (an ONNX model)."""
        if self.vision is None or len(data) != self.vision.nbytes:
            raise FormatError("vision section was not planned with this size")
        if self.vision.blocks:
            raise FormatError("a native vision section is written block by block (write_vision_block)")
        self._writing(("vision",))  # (validated above)
        self.vision.crc32 = zlib.crc32(data)
        self._pwrite(data, self.vision.offset)

    def write_vision_block(self, block: VisionBlock, record: bytes) -> None:
        """The next block of a native section (`block` is its planned entry, CRC filled), in plan order.
        The section's CRC runs over the blocks and the zero padding between them; the section counts as
        written with its last block."""
        if self.vision is None or not self.vision.blocks:
            raise FormatError("no native vision section was planned")
        blocks = self.vision.blocks
        if self._vision_blocks_written >= len(blocks) or blocks[self._vision_blocks_written] is not block:
            raise FormatError(f"vision block {block.name} is not the next planned one")
        if len(record) != block.nbytes:
            raise FormatError(f"vision block {block.name}: {len(record)} bytes, planned {block.nbytes}")
        if self._vision_blocks_written == len(blocks) - 1:
            self._writing(("vision",))
        elif self._fd is None:
            raise FormatError("call begin() before writing")
        self._vision_crc = zlib.crc32(bytes(block.offset - self._vision_end), self._vision_crc)
        self._vision_crc = zlib.crc32(record, self._vision_crc)
        self._vision_end = block.offset + block.nbytes
        self._vision_blocks_written += 1
        self.vision.crc32 = self._vision_crc
        self._pwrite(record, self.vision.offset + block.offset)

    # ------------------------------------------------------------------ finalize
    def finalize(self) -> None:
        expected = ({("tensor", n) for n in self.tensors} | {("expert", *k) for k in self.experts}
                    | ({("vision",)} if self.vision is not None else set()))
        missing = expected - self._written
        if missing:
            raise FormatError(f"cannot finalize: {len(missing)} planned items were never written, e.g. {sorted(missing)[0]}")
        meta = self._metadata_bytes(self._sections)
        assert HEADER_SIZE + len(meta) <= self.data_offset, "metadata grew after layout"
        meta_crc = zlib.crc32(meta)
        flags = FLAG_HAS_VISION if self.vision is not None else 0
        fields = (MAGIC, VERSION_MAJOR, VERSION_MINOR, flags, 0, HEADER_SIZE, len(meta), self.data_offset,
                  self.file_size, meta_crc)
        header_crc = zlib.crc32(HEADER.pack(*fields))
        header = HEADER.pack(*fields[:4], header_crc, *fields[5:])
        os.pwrite(self._fd, header, 0)
        os.pwrite(self._fd, meta, HEADER_SIZE)
        os.pwrite(self._fd, TRAILER.pack(TRAILER_MAGIC, self.file_size, meta_crc), self.file_size - TRAILER.size)
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop the partial file (after an error)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "MoteWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
