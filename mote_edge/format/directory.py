"""The directory entries of a .mote file (tensors, expert records, vision) and their JSON form.

Offsets are relative to the start of the data section (header field data_offset), as in GGUF;
part offsets are relative to their tensor, tensor offsets inside an expert record to the record.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

from mote_edge.quant.recipe import Scheme

from .constants import TENSOR_ALIGN
from .encoding import PartSpec, part_specs


def align(n: int, to: int) -> int:
    return -(-n // to) * to


def crc_hex(crc: int) -> str:
    return f"{crc & 0xFFFFFFFF:08x}"


@dataclass
class TensorEntry:
    """One tensor: its parts laid out back to back, each TENSOR_ALIGN-aligned."""

    name: str
    role: str
    scheme: Scheme
    shape: tuple[int, ...]
    offset: int = 0  # in the data section (resident) or in the expert record
    crc32: int = 0  # resident tensors only; expert records carry one crc for the record
    parts: list[PartSpec] = field(default_factory=list)
    part_offsets: list[int] = field(default_factory=list)

    @classmethod
    def plan(cls, name: str, role: str, scheme: Scheme, shape: tuple[int, ...]) -> "TensorEntry":
        entry = cls(name, role, scheme, tuple(int(d) for d in shape))
        entry.parts = part_specs(scheme, entry.shape)
        pos = 0
        for p in entry.parts:
            pos = align(pos, TENSOR_ALIGN)
            entry.part_offsets.append(pos)
            pos += p.nbytes
        return entry

    @property
    def nbytes(self) -> int:
        return self.part_offsets[-1] + self.parts[-1].nbytes

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_json(self, with_crc: bool) -> dict:
        d = {"name": self.name, "role": self.role, "scheme": self.scheme.to_dict(), "shape": list(self.shape),
             "offset": self.offset, "nbytes": self.nbytes,
             "parts": [{"name": p.name, "dtype": p.dtype, "shape": list(p.shape), "offset": o}
                       for p, o in zip(self.parts, self.part_offsets)]}
        if with_crc:
            d["crc32"] = crc_hex(self.crc32)
        return d


def place_back_to_back(tensors: list[TensorEntry]) -> int:
    """Set each tensor's offset in a record (one after the other, TENSOR_ALIGN-aligned); the record's bytes."""
    pos = 0
    for t in tensors:
        pos = align(pos, TENSOR_ALIGN)
        t.offset = pos
        pos += t.nbytes
    return pos


@dataclass
class ExpertEntry:
    """One routed expert's record: its gate/up/down tensors, one pread, one crc."""

    layer: int
    expert: int
    tensors: list[TensorEntry]
    offset: int = 0
    crc32: int = 0

    @classmethod
    def plan(cls, layer: int, expert: int, tensors: list[TensorEntry]) -> "ExpertEntry":
        place_back_to_back(tensors)
        return cls(layer, expert, tensors)

    @property
    def nbytes(self) -> int:
        return self.tensors[-1].offset + self.tensors[-1].nbytes

    def to_json(self) -> dict:
        return {"layer": self.layer, "expert": self.expert, "offset": self.offset, "nbytes": self.nbytes,
                "crc32": crc_hex(self.crc32), "tensors": [t.to_json(with_crc=False) for t in self.tensors]}


@dataclass
class VisionBlock:
    """One block of a native vision section (the patch embedding, one ViT layer, the projector): its
    tensors back to back, one pread, one crc. `offset` is relative to the vision section's start."""

    name: str
    tensors: list[TensorEntry]
    offset: int = 0
    crc32: int = 0

    @classmethod
    def plan(cls, name: str, tensors: list[TensorEntry]) -> "VisionBlock":
        place_back_to_back(tensors)
        return cls(name, tensors)

    @property
    def nbytes(self) -> int:
        return self.tensors[-1].offset + self.tensors[-1].nbytes

    def to_json(self) -> dict:
        return {"name": self.name, "offset": self.offset, "nbytes": self.nbytes, "crc32": crc_hex(self.crc32),
                "tensors": [t.to_json(with_crc=False) for t in self.tensors]}


@dataclass
class BlobEntry:
    """The vision section: an ONNX model (format "onnx", opaque bytes) or native blocks (format
    "native", `blocks` in the order they run)."""

    nbytes: int
    offset: int = 0
    crc32: int = 0
    info: dict = field(default_factory=dict)
    blocks: list[VisionBlock] = field(default_factory=list)

    @property
    def format(self) -> str:
        return self.info.get("format", "onnx")

    def to_json(self) -> dict:
        d = {"offset": self.offset, "nbytes": self.nbytes, "crc32": crc_hex(self.crc32), **self.info}
        if self.blocks:
            d["blocks"] = [b.to_json() for b in self.blocks]
        return d
