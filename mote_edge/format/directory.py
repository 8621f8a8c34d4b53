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

    @classmethod
    def from_json(cls, d: dict, with_crc: bool) -> "TensorEntry":
        entry = cls.plan(d["name"], d["role"], Scheme.from_dict(d["scheme"]), tuple(d["shape"]))
        entry.offset = int(d["offset"])
        stored = [(p["name"], p["dtype"], tuple(p["shape"]), int(p["offset"])) for p in d["parts"]]
        planned = [(p.name, p.dtype, p.shape, o) for p, o in zip(entry.parts, entry.part_offsets)]
        if stored != planned or int(d["nbytes"]) != entry.nbytes:
            raise ValueError(f"tensor {entry.name}: parts do not match its scheme and shape")
        if with_crc:
            entry.crc32 = int(d["crc32"], 16)
        return entry


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
        pos = 0
        for t in tensors:
            pos = align(pos, TENSOR_ALIGN)
            t.offset = pos
            pos += t.nbytes
        return cls(layer, expert, tensors)

    @property
    def nbytes(self) -> int:
        return self.tensors[-1].offset + self.tensors[-1].nbytes

    def to_json(self) -> dict:
        return {"layer": self.layer, "expert": self.expert, "offset": self.offset, "nbytes": self.nbytes,
                "crc32": crc_hex(self.crc32), "tensors": [t.to_json(with_crc=False) for t in self.tensors]}

    @classmethod
    def from_json(cls, d: dict) -> "ExpertEntry":
        tensors = [TensorEntry.from_json(t, with_crc=False) for t in d["tensors"]]
        entry = cls.plan(int(d["layer"]), int(d["expert"]), tensors)
        if [t.offset for t in tensors] != [int(t["offset"]) for t in d["tensors"]] or int(d["nbytes"]) != entry.nbytes:
            raise ValueError(f"expert record ({entry.layer}, {entry.expert}): tensor offsets are inconsistent")
        entry.offset = int(d["offset"])
        entry.crc32 = int(d["crc32"], 16)
        return entry


@dataclass
class BlobEntry:
    """An opaque section (the vision ONNX model)."""

    nbytes: int
    offset: int = 0
    crc32: int = 0
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"offset": self.offset, "nbytes": self.nbytes, "crc32": crc_hex(self.crc32), **self.info}

    @classmethod
    def from_json(cls, d: dict) -> "BlobEntry":
        info = {k: v for k, v in d.items() if k not in ("offset", "nbytes", "crc32")}
        return cls(int(d["nbytes"]), int(d["offset"]), int(d["crc32"], 16), info)
