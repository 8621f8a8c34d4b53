"""How a routed expert sits in its cache slab (DESIGN.md section 5: "a cache slab may hold a
faster-to-decode layout than the file"; the file stays at ~1.6 bits per weight either way).

    file    the record exactly as stored: one preadv straight into the slab
    slab2   ternary tensors re-laid to 2 bits per trit (mote_edge/quant/ternary_slab.py): the GEMV
            decodes a digit with one AND instead of a byte LUT, 1.4-1.9x faster cold on Zen 4
            (docs/KERNELS.md); other tensors are copied as stored. A miss reads the record into one
            staging buffer (verified there), then converts it into the slab (C, ~2 ms per 4.4 M weights).
    auto    slab2 when the budget holds every expert in it (each expert is then read and converted
            once), else file: at a tight budget the 25% larger slabs would cost more misses than the
            faster GEMV gains.
"""

from __future__ import annotations

import numpy as np

from mote_edge.format.constants import SECTION_ALIGN
from mote_edge.format.directory import align
from mote_edge.format.reader import parse_parts
from mote_edge.quant import kernels
from mote_edge.quant.ternary_slab import packed_slab2_nbytes, slab2_row_bytes

SLAB_LAYOUTS = ("file", "slab2")  # what a slab can hold
EXPERT_LAYOUTS = ("auto", *SLAB_LAYOUTS)  # what a user can ask for
PART_ALIGN = 64


def record_slab_bytes(entry, layout: str) -> int:
    """Bytes one expert record takes in a slab of `layout` ("file" or "slab2")."""
    if layout == "file":
        return entry.nbytes
    places = _slab2_places(entry)
    return places[-1][0] + places[-1][1] if places else 0  # the end of the last piece


def _slab2_places(entry):
    """(slab offset, bytes) of each tensor of the record in the slab2 layout: [packed 2-bit | gamma]
    for ternary tensors, the stored bytes for the rest; every piece 64-byte aligned."""
    at, out = 0, []
    for t in entry.tensors:
        size = align(packed_slab2_nbytes(*t.shape), PART_ALIGN) + PART_ALIGN if t.scheme.kind == "ternary" else t.nbytes
        out.append((at, size))
        at += align(size, PART_ALIGN)
    return out


def slab_bytes(experts, layout: str) -> int:
    """Bytes of one cache slab: the largest expert of `experts` (the file's directory) in `layout`."""
    return align(max((record_slab_bytes(e, layout) for e in experts), default=0), SECTION_ALIGN)


def staging_bytes(experts, layout: str) -> int:
    """The read buffer a converting layout needs (one record as stored); 0 for "file"."""
    return 0 if layout == "file" else align(max((e.nbytes for e in experts), default=0), SECTION_ALIGN)


def place_slab2(entry, staging: np.ndarray, slab: np.ndarray) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    """Convert a record read into `staging` (uint8) into `slab` (uint8): tensor name -> (its parts,
    views into the slab, and the layout its ternary kernel reads)."""
    out = {}
    for t, (at, size) in zip(entry.tensors, _slab2_places(entry)):
        if t.scheme.kind != "ternary":
            slab[at:at + size] = staging[t.offset:t.offset + size]
            out[t.name] = (parse_parts(t, slab, at), "file")
            continue
        parts = parse_parts(t, staging, t.offset)
        N, K = t.shape
        n2 = packed_slab2_nbytes(N, K)
        packed = slab[at:at + n2].reshape(N, slab2_row_bytes(K))
        kernels.file_to_slab2(parts["packed"], N, K, out=packed)
        gamma = slab[at + size - PART_ALIGN:at + size - PART_ALIGN + 4].view(np.float32)
        gamma[:] = parts["gamma"]
        out[t.name] = ({"packed": packed, "gamma": gamma}, "slab2")
    return out
