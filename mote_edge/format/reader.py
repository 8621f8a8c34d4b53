"""MoteFile: open a .mote file, validate its structure, read tensors and expert records.

`open` checks everything but the data: header, size (truncation), trailer, metadata checksum,
and the metadata itself (mote_edge/format/validate.py: types, every directory entry, bounds,
alignment, overlaps, and the directory against the model config and recipe). Data checksums are verified when a
tensor or record is read (`verify=True`) and by `verify_all`. Reads use os.pread into fresh
buffers (anonymous memory): the file is never mmapped, so memory accounting stays honest.
Every problem is a FormatError with one line naming it.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mote_edge.errors import FormatError

from .constants import (HEADER, HEADER_SIZE, KNOWN_FLAGS, MAGIC, SECTION_ALIGN, TRAILER,
                        TRAILER_MAGIC, TRAILER_SIZE, VERSION_MAJOR)
from .encoding import PART_DTYPES
from .directory import ExpertEntry, TensorEntry, VisionBlock
from .validate import one_line, validate_metadata

MAX_METADATA = 1 << 30


@dataclass(frozen=True)
class Header:
    major: int
    minor: int
    flags: int
    metadata_offset: int
    metadata_length: int
    data_offset: int
    file_size: int
    metadata_crc32: int


def parse_parts(entry: TensorEntry, buf: memoryview | bytes, base: int = 0) -> dict[str, np.ndarray]:
    """Views of a tensor's parts inside `buf` (the tensor starts at `base`)."""
    out = {}
    for spec, off in zip(entry.parts, entry.part_offsets):
        start = base + off
        out[spec.name] = np.frombuffer(buf, dtype=PART_DTYPES[spec.dtype], count=int(np.prod(spec.shape)),
                                       offset=start).reshape(spec.shape)
    return out


def parse_metadata_json(raw: bytes, fail) -> Any:
    """The metadata bytes as JSON, strictly: UTF-8, no NaN or infinities, no repeated keys."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"number {text[:20]} is out of range")
        return value

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError("an object repeats a key")
        return d

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constant, parse_float=finite,
                          object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as e:
        raise fail(f"metadata is not valid JSON ({type(e).__name__}: {one_line(e)})") from None


class MoteFile:
    """An open .mote file, validated (mote_edge/format/validate.py) before anything is read.
    container_only: check only the container's rules, not that the directory is the model its
    config describes (for tests of the container itself)."""

    def __init__(self, path: str | Path, container_only: bool = False):
        self._container_only = container_only
        self.path = Path(path)
        self.name = self.path.name
        if self.path.is_dir():
            raise FormatError(f"{self.path} is a directory, not a .mote file")
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise FormatError(f"model file not found: {self.path}") from None
        except OSError as e:
            raise FormatError(f"cannot open {self.path}: {e.strerror}") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ structure
    def _pread(self, n: int, offset: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = os.pread(self._fd, n, offset)
            if not chunk:
                raise FormatError(f"{self.name} is truncated: cannot read {n} bytes at offset {offset}")
            chunks.append(chunk)
            n -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def _fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name}: {what}")

    def _open(self) -> None:
        size = os.fstat(self._fd).st_size
        self.size = size
        head = os.pread(self._fd, HEADER_SIZE, 0)
        if head[:4] != MAGIC:
            raise FormatError(f"{self.name} is not a .mote file (bad magic {head[:4]!r})")
        if len(head) < HEADER_SIZE:
            raise FormatError(f"{self.name} is truncated: expected at least {HEADER_SIZE} bytes, got {size}")
        magic, major, minor, flags, header_crc, moff, mlen, doff, fsize, mcrc = HEADER.unpack(head)
        if major != VERSION_MAJOR:
            raise FormatError(f"{self.name} has unsupported .mote version {major}.{minor} "
                              f"(this mote-edge reads {VERSION_MAJOR}.x)")
        zeroed = head[:12] + b"\0\0\0\0" + head[16:]
        if zlib.crc32(zeroed) != header_crc:
            raise self._fail("header checksum mismatch (file is corrupt)")
        if flags & ~KNOWN_FLAGS:
            raise self._fail(f"unknown header flags {flags:#x}")
        if size < fsize:
            raise FormatError(f"{self.name} is truncated: expected {fsize} bytes, got {size}")
        if size > fsize:
            raise FormatError(f"{self.name} has {size - fsize} unexpected bytes after the end "
                              f"(expected {fsize} bytes, got {size})")
        if (moff != HEADER_SIZE or mlen > MAX_METADATA or doff % SECTION_ALIGN or moff + mlen > doff
                or doff + TRAILER_SIZE > fsize):
            raise self._fail("header offsets are inconsistent (file is corrupt)")
        if self._pread(TRAILER_SIZE, fsize - TRAILER_SIZE) != TRAILER.pack(TRAILER_MAGIC, fsize, mcrc):
            raise self._fail("trailer is corrupt")
        self.header = Header(major, minor, flags, moff, mlen, doff, fsize, mcrc)
        raw = self._pread(mlen, moff)
        if zlib.crc32(raw) != mcrc:
            raise self._fail("metadata checksum mismatch (file is corrupt)")
        self.metadata: dict[str, Any] = parse_metadata_json(raw, self._fail)
        data_size = fsize - TRAILER_SIZE - doff
        try:
            d = validate_metadata(self.metadata, flags, data_size, container_only=self._container_only)
        except FormatError as e:
            raise self._fail(str(e)) from None
        self.config, self.recipe = d.config, d.recipe
        self.lookahead_depth = d.lookahead_depth  # stored lookahead predictors (docs/FORMAT.md section 11)
        self.tensors, self.experts, self.vision = d.tensors, d.experts, d.vision
        self._extents = d.extents

    # ------------------------------------------------------------------ data
    def read_tensor(self, name: str, verify: bool = True) -> dict[str, np.ndarray]:
        """A resident tensor's parts (fresh, writable memory)."""
        if name not in self.tensors:
            raise FormatError(f"{self.name} has no tensor {name}")
        t = self.tensors[name]
        buf = bytearray(self._pread(t.nbytes, self.header.data_offset + t.offset))
        if verify and zlib.crc32(buf) != t.crc32:
            raise self._fail(f"checksum mismatch in tensor {name}")
        return parse_parts(t, buf)

    def read_expert_record(self, layer: int, expert: int, verify: bool = True) -> bytearray:
        """One routed expert's whole record in one pread (checksum verified)."""
        e = self.expert_entry(layer, expert)
        buf = bytearray(self._pread(e.nbytes, self.header.data_offset + e.offset))
        if verify and zlib.crc32(buf) != e.crc32:
            raise self._fail(f"checksum mismatch in expert ({layer}, {expert})")
        return buf

    def read_tensor_into(self, name: str, buf, verify: bool = True) -> dict[str, np.ndarray]:
        """Read a resident tensor into `buf` (e.g. a slice of a huge-page arena) with preadv; its
        parts as views into buf."""
        if name not in self.tensors:
            raise FormatError(f"{self.name} has no tensor {name}")
        t = self.tensors[name]
        self._read_into(buf, t.offset, t.nbytes, t.crc32, f"tensor {name}", verify)
        return parse_parts(t, buf)

    def read_expert_into(self, layer: int, expert: int, buf: memoryview, verify: bool = True) -> ExpertEntry:
        """Read one expert record into `buf` (a preallocated cache slab) with one preadv."""
        e = self.expert_entry(layer, expert)
        self._read_into(buf, e.offset, e.nbytes, e.crc32, f"expert ({layer}, {expert})", verify)
        return e

    def _read_into(self, buf, offset: int, nbytes: int, crc: int, what: str, verify: bool) -> None:
        view = memoryview(buf).cast("B")[:nbytes]
        if len(view) < nbytes:
            raise FormatError(f"{what} needs {nbytes} bytes, the buffer has {len(view)}")
        done, offset = 0, self.header.data_offset + offset
        while done < nbytes:
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n <= 0:
                raise FormatError(f"{self.name} is truncated: cannot read {what}")
            done += n
        if verify and zlib.crc32(view) != crc:
            raise self._fail(f"checksum mismatch in {what}")

    def fileno(self) -> int:
        return self._fd

    def expert_entry(self, layer: int, expert: int) -> ExpertEntry:
        if (layer, expert) not in self.experts:
            raise FormatError(f"{self.name} has no expert ({layer}, {expert})")
        return self.experts[(layer, expert)]

    def read_expert(self, layer: int, expert: int, verify: bool = True) -> dict[str, dict[str, np.ndarray]]:
        """proj name -> parts, views into one freshly read record."""
        e = self.expert_entry(layer, expert)
        buf = self.read_expert_record(layer, expert, verify)
        return {t.name: parse_parts(t, buf, t.offset) for t in e.tensors}

    def read_vision(self, verify: bool = True) -> bytes:
        if self.vision is None:
            raise FormatError(f"{self.name} has no vision section")
        data = self._pread(self.vision.nbytes, self.header.data_offset + self.vision.offset)
        if verify and zlib.crc32(data) != self.vision.crc32:
            raise self._fail("checksum mismatch in the vision section")
        return data

    def read_vision_block_into(self, block: VisionBlock, buf, verify: bool = True) -> dict[str, dict[str, np.ndarray]]:
        """Read one block of a native vision section into `buf` (reused block after block) with one
        preadv; tensor name -> parts, views into buf."""
        self._read_into(buf, self.vision.offset + block.offset, block.nbytes, block.crc32,
                        f"vision block {block.name}", verify)
        return {t.name: parse_parts(t, buf, t.offset) for t in block.tensors}

    def iter_data_checks(self) -> Iterator[tuple[str, int]]:
        """Verify every checksum and that all padding is zero; yields (item, bytes) as it goes."""
        for name, t in self.tensors.items():
            self.read_tensor(name)
            yield f"tensor {name}", t.nbytes
        for (layer, expert), e in self.experts.items():
            self.read_expert_record(layer, expert)
            yield f"expert ({layer}, {expert})", e.nbytes
        if self.vision is not None:
            self.read_vision()
            yield "vision section", self.vision.nbytes
            for block in self.vision.blocks:
                self.read_vision_block_into(block, bytearray(block.nbytes))
                yield f"vision block {block.name}", 0
        self._check_padding()
        yield "padding", 0

    def verify_all(self) -> None:
        for _ in self.iter_data_checks():
            pass

    def _check_padding(self) -> None:
        """Bytes no checksum covers (gaps between entries, after the metadata) must be zero."""
        gaps = [(HEADER_SIZE + self.header.metadata_length, self.header.data_offset)]
        pos = 0
        for off, n in self._extents:
            gaps.append((self.header.data_offset + pos, self.header.data_offset + off))
            pos = off + n
        gaps.append((self.header.data_offset + pos, self.header.file_size - TRAILER_SIZE))
        for start, stop in gaps:
            for chunk_start in range(start, stop, 1 << 24):
                n = min(stop, chunk_start + (1 << 24)) - chunk_start
                if any(self._pread(n, chunk_start)):
                    raise self._fail(f"non-zero padding at offset {chunk_start} (file is corrupt)")

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "MoteFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
