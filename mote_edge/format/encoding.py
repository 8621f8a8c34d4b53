"""Tensor encodings: how a Scheme turns a float tensor into named parts, and back.

    f32      data    float32 [shape]
    f16      data    float16 [shape]
    intn     packed  uint8 [N, ngroups * G * bits / 8]   (mote_edge.quant.intn layout)
             scales  float16 [N, ngroups]
             zeros   float16 [N, ngroups]               (integer zero-points)
    ternary  packed  uint8 [N, ceil(K / 5)]              (mote_edge.quant.ternary layout)
             gamma   float32 [1]                         (absmean scale)

Part sizes depend only on (scheme, shape), so a writer can lay a file out before encoding anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mote_edge.quant.intn import IntNWeight, dequantize_intn, intn_row_bytes, num_groups, quantize_intn
from mote_edge.quant.recipe import Scheme
from mote_edge.quant.ternary import absmean_ternarize, pack_ternary, ternary_row_bytes, unpack_ternary

PART_DTYPES = {"u8": np.uint8, "f16": np.float16, "f32": np.float32}
ENCODE_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PartSpec:
    name: str
    dtype: str  # u8 | f16 | f32
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(PART_DTYPES[self.dtype]).itemsize


def part_specs(scheme: Scheme, shape: tuple[int, ...]) -> list[PartSpec]:
    """The parts a tensor of `shape` has under `scheme`, in storage order."""
    if scheme.kind == "f32":
        return [PartSpec("data", "f32", tuple(shape))]
    if scheme.kind == "f16":
        return [PartSpec("data", "f16", tuple(shape))]
    if len(shape) != 2:
        raise ValueError(f"{scheme.kind} needs a 2-D [N, K] tensor, got shape {list(shape)}")
    n, k = shape
    if scheme.kind == "intn":
        ng = num_groups(k, scheme.group_size)
        return [PartSpec("packed", "u8", (n, intn_row_bytes(k, scheme.bits, scheme.group_size))),
                PartSpec("scales", "f16", (n, ng)), PartSpec("zeros", "f16", (n, ng))]
    if scheme.kind == "ternary":
        return [PartSpec("packed", "u8", (n, ternary_row_bytes(k))), PartSpec("gamma", "f32", (1,))]
    raise ValueError(f"unknown scheme kind {scheme.kind!r}")


def encode(w: np.ndarray, scheme: Scheme, intn_weight: IntNWeight | None = None) -> dict[str, np.ndarray]:
    """w float32 -> parts. `intn_weight` passes in an already quantized tensor (e.g. from GPTQ)."""
    if scheme.kind == "f32":
        return {"data": np.ascontiguousarray(w, dtype=np.float32)}
    if scheme.kind == "f16":
        return {"data": np.ascontiguousarray(w, dtype=np.float16)}
    if scheme.kind == "intn":
        if intn_weight is not None:
            return {"packed": intn_weight.packed, "scales": intn_weight.scales, "zeros": intn_weight.zeros}
        return _encode_intn_by_rows(w, scheme)
    if scheme.kind == "ternary":
        trits, gamma = absmean_ternarize(w)
        return {"packed": pack_ternary(trits), "gamma": np.array([gamma], dtype=np.float32)}
    raise ValueError(f"unknown scheme kind {scheme.kind!r}")


def _encode_intn_by_rows(w: np.ndarray, scheme: Scheme) -> dict[str, np.ndarray]:
    """RTN quantization is row-independent: do it in row blocks so temporaries stay small."""
    n, k = w.shape
    out = {p.name: np.empty(p.shape, PART_DTYPES[p.dtype]) for p in part_specs(scheme, w.shape)}
    rows = max(1, ENCODE_CHUNK_ELEMENTS // max(1, k))
    for start in range(0, n, rows):
        q = quantize_intn(w[start:start + rows], scheme.bits, scheme.group_size)
        out["packed"][start:start + rows] = q.packed.reshape(-1, out["packed"].shape[1])
        out["scales"][start:start + rows] = q.scales
        out["zeros"][start:start + rows] = q.zeros
    return out


def decode(parts: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, ...]) -> np.ndarray:
    """parts -> the float32 tensor the stored values stand for (dequantized)."""
    if scheme.kind in ("f32", "f16"):
        return parts["data"].astype(np.float32).reshape(shape)
    n, k = shape
    if scheme.kind == "intn":
        return dequantize_intn(IntNWeight(parts["packed"], parts["scales"], parts["zeros"],
                                          scheme.bits, scheme.group_size, n, k))
    if scheme.kind == "ternary":
        return unpack_ternary(parts["packed"], n, k).astype(np.float32) * np.float32(parts["gamma"][0])
    raise ValueError(f"unknown scheme kind {scheme.kind!r}")


def as_intn_weight(parts: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, int]) -> IntNWeight:
    return IntNWeight(parts["packed"], parts["scales"], parts["zeros"], scheme.bits, scheme.group_size, *shape)
