"""Stored tensors as operations: a `Linear` per weight (the scheme picks the kernel), embedding
lookups, and the resident weight set read from a .mote file into anonymous memory.

    f32 / f16   numpy matmul in float32 (f16 is widened once at load; the plan counts 4 bytes/weight)
    intn        mote_edge._native int-N group kernel (int8 activations per group, int32 accumulators)
    ternary     mote_edge._native ternary kernel (BitLinear: int8 activations per token)
"""

from __future__ import annotations

import numpy as np

from mote_edge.format.encoding import as_intn_weight
from mote_edge.format.layout import TensorEntry
from mote_edge.format.reader import MoteFile
from mote_edge.quant import kernels
from mote_edge.quant.intn import IntNWeight, dequantize_intn
from mote_edge.quant.recipe import Scheme


def runtime_nbytes(entry: TensorEntry) -> int:
    """Bytes a tensor occupies once loaded (f16 is widened to f32)."""
    return entry.numel * 4 if entry.scheme.kind == "f16" else entry.nbytes


class Linear:
    """y = x @ W^T for a stored [N, K] weight; x [T, K] float32 -> [T, N] float32."""

    def __init__(self, parts: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, int], threads: int = 1):
        self.scheme, self.threads = scheme, threads
        self.N, self.K = shape
        if scheme.kind in ("f32", "f16"):
            self.w = np.ascontiguousarray(parts["data"], dtype=np.float32).reshape(shape)
        elif scheme.kind == "intn":
            self.w = as_intn_weight(parts, scheme, shape)
        elif scheme.kind == "ternary":
            self.packed, self.gamma = parts["packed"], float(parts["gamma"][0])
        else:
            raise ValueError(f"unknown scheme {scheme.kind!r}")

    @classmethod
    def from_intn(cls, w: IntNWeight, scheme: Scheme, threads: int = 1) -> "Linear":
        """A Linear over an already-built int-N weight (e.g. rows of several tensors concatenated)."""
        return cls({"packed": w.packed, "scales": w.scales, "zeros": w.zeros}, scheme, (w.N, w.K), threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        kind = self.scheme.kind
        if kind in ("f32", "f16"):
            return x @ self.w.T
        if kind == "intn":
            return kernels.intn_matmul(x, self.w, threads=self.threads)
        return kernels.ternary_matmul(x, self.packed, self.gamma, self.N, self.K, threads=self.threads)


class FusedLinear:
    """Several Linears on the same input as one kernel call when they share an int-N scheme: their
    rows are concatenated once at load (x is quantized once, one thread-pool dispatch), and the call
    returns one [T, N_i] view per part. Row results are identical to the separate Linears (the int-N
    kernel computes every output row independently). Other schemes fall back to one call per part."""

    def __init__(self, parts: list[Linear]):
        self.sizes = [p.N for p in parts]
        ends = np.cumsum(self.sizes).tolist()
        self.bounds = list(zip([0] + ends[:-1], ends))  # column range of each part in the fused output
        first = parts[0]
        same = all(p.scheme == first.scheme and p.K == first.K for p in parts)
        if first.scheme.kind == "intn" and same and len(parts) > 1:
            w = [p.w for p in parts]
            fused = IntNWeight(np.concatenate([x.packed.reshape(x.N, -1) for x in w]),  # [sum N, row bytes]
                               np.concatenate([x.scales for x in w]), np.concatenate([x.zeros for x in w]),
                               w[0].bits, w[0].group_size, int(sum(self.sizes)), w[0].K)
            self.fused: Linear | None = Linear.from_intn(fused, first.scheme, first.threads)
            self.parts = None
        else:
            self.fused, self.parts = None, parts

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.fused is None:
            return [p(x) for p in self.parts]
        y = self.fused(x)  # [T, sum N]
        return [y[..., a:b] for a, b in self.bounds]


class Embedding:
    """Row lookup in a stored [V, H] table (any scheme but ternary)."""

    def __init__(self, parts: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, int]):
        self.parts, self.scheme, self.shape = parts, scheme, shape
        if scheme.kind in ("f32", "f16"):
            self.table = np.ascontiguousarray(parts["data"], dtype=np.float32).reshape(shape)

    def __call__(self, ids: np.ndarray) -> np.ndarray:  # ids [T] -> [T, H] float32
        ids = np.asarray(ids, dtype=np.int64)
        if self.scheme.kind in ("f32", "f16"):
            return self.table[ids]
        w = as_intn_weight(self.parts, self.scheme, self.shape)
        rows = type(w)(w.packed[ids], w.scales[ids], w.zeros[ids], w.bits, w.group_size, len(ids), w.K)
        return dequantize_intn(rows)


class ResidentWeights:
    """Every non-expert tensor of a .mote file, read once with pread (checksums verified)."""

    def __init__(self, f: MoteFile, threads: int):
        self.entries = f.tensors
        self.threads = threads
        self._parts = {name: f.read_tensor(name) for name in f.tensors}
        self.nbytes = sum(runtime_nbytes(e) for e in f.tensors.values())

    def vector(self, name: str) -> np.ndarray:
        """A 1-D float32 tensor (norm weights, biases)."""
        return np.ascontiguousarray(self._parts[name]["data"], dtype=np.float32)

    def matrix(self, name: str) -> np.ndarray:
        e = self.entries[name]
        return np.ascontiguousarray(self._parts[name]["data"], dtype=np.float32).reshape(e.shape)

    def linear(self, name: str) -> Linear:
        e = self.entries[name]
        return Linear(self._parts[name], e.scheme, e.shape, self.threads)

    def fused_linear(self, names: list[str]) -> FusedLinear:
        """The Linears of `names` (same input) as one call; their separate buffers are freed once
        concatenated, so resident memory does not grow (transient: one set of these tensors)."""
        fused = FusedLinear([self.linear(n) for n in names])
        if fused.fused is not None:
            for n in names:
                self._parts[n] = {}  # drop the originals; the fused copy replaces them
        return fused

    def embedding(self, name: str) -> Embedding:
        e = self.entries[name]
        return Embedding(self._parts[name], e.scheme, e.shape)

    def release(self) -> None:
        self._parts.clear()
