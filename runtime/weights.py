"""Stored tensors as operations: a `Linear` per weight (the scheme picks the kernel), embedding
lookups, and the resident weight set read from a .mote file into anonymous memory.

    f32 / f16   numpy matmul in float32 (f16 is widened once at load; the plan counts 4 bytes/weight)
    intn        mote_edge._native int-N group kernel (int8 activations per group, int32 accumulators)
    ternary     mote_edge._native ternary kernel (BitLinear: int8 activations per token)
"""

from __future__ import annotations

import numpy as np

from mote_edge.errors import FormatError
from mote_edge.format.encoding import as_intn_weight
from mote_edge.format.directory import TensorEntry
from mote_edge.format.reader import MoteFile
from mote_edge.quant import kernels
from mote_edge.quant.intn import (IL16_ROWS, IntNWeight, dequantize_intn, il16_ok, interleave_il16, intn_row_bytes,
                                  num_groups, take_rows)
from mote_edge.quant.recipe import Scheme

from .hugepages import Arena


STREAMED_KINDS = ("intn", "ternary")  # schemes whose packed weights every decode step streams (huge-page arena)


def runtime_nbytes(entry: TensorEntry) -> int:
    """Bytes a tensor occupies once loaded (f16 is widened to f32)."""
    return entry.numel * 4 if entry.scheme.kind == "f16" else entry.nbytes


class Linear:
    """y = x @ W^T for a stored [N, K] weight; x [T, K] float32 -> [T, N] float32."""

    def __init__(self, parts: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, int], threads: int = 1,
                 ternary_layout: str = "file", intn_layout: str = "rows"):
        self.scheme, self.threads, self.ternary_layout = scheme, threads, ternary_layout
        self.N, self.K = shape
        if scheme.kind in ("f32", "f16"):
            self.w = np.ascontiguousarray(parts["data"], dtype=np.float32).reshape(shape)
        elif scheme.kind == "intn":
            self.w = as_intn_weight(parts, scheme, shape)
            self.w.layout = intn_layout  # "rows" or "il16" (mote_edge/quant/intn.py)
        elif scheme.kind == "ternary":
            self.packed, self.gamma = parts["packed"], float(parts["gamma"][0])
        else:
            raise ValueError(f"unknown scheme {scheme.kind!r}")

    @classmethod
    def from_intn(cls, w: IntNWeight, scheme: Scheme, threads: int = 1) -> "Linear":
        """A Linear over an already-built int-N weight (e.g. rows of several tensors concatenated)."""
        return cls({"packed": w.packed, "scales": w.scales, "zeros": w.zeros}, scheme, (w.N, w.K), threads,
                   intn_layout=w.layout)

    def native_spec(self) -> tuple:
        """The weight as native/layer.c takes it: (kind, N, K, w, scales, zeros, bits, G, gamma),
        kind 0 f32, 1 int-N, 2 ternary (file layout), 3 ternary (2-bit slab layout), 4 int-N in the il16 layout."""
        kind = self.scheme.kind
        if kind in ("f32", "f16"):
            return (0, self.N, self.K, self.w, None, None, 0, 0, 0.0)
        if kind == "intn":
            w = self.w
            return (4 if w.layout == "il16" else 1, self.N, self.K, w.packed, w.scales, w.zeros, w.bits, w.group_size, 0.0)
        return (3 if self.ternary_layout == "slab2" else 2, self.N, self.K, self.packed, None, None, 0, 0, self.gamma)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        kind = self.scheme.kind
        if kind in ("f32", "f16"):
            return x @ self.w.T
        if kind == "intn":
            return kernels.intn_matmul(x, self.w, threads=self.threads)
        return kernels.ternary_matmul(x, self.packed, self.gamma, self.N, self.K, threads=self.threads,
                                      layout=self.ternary_layout)


class FusedLinear:
    """Several Linears on the same input as one kernel call when they share an int-N scheme: their
    rows are concatenated (x is quantized once, one thread-pool dispatch), and the call returns one
    [T, N_i] view per part. Row results are identical to the separate Linears (the int-N kernel
    computes every output row independently). Other schemes run one call per part."""

    def __init__(self, sizes: list[int], fused: Linear | None = None, parts: list[Linear] | None = None):
        self.sizes = sizes
        ends = np.cumsum(sizes).tolist()
        self.bounds = list(zip([0] + ends[:-1], ends))  # column range of each part in the fused output
        self.fused, self.parts = fused, parts

    def native_specs(self) -> tuple:
        """One spec of the fused weight, or one per part (Linear.native_spec)."""
        return (self.fused.native_spec(),) if self.fused is not None else tuple(p.native_spec() for p in self.parts)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        if self.fused is None:
            return [p(x) for p in self.parts]
        y = self.fused(x)  # [T, sum N]
        return [y[..., a:b] for a, b in self.bounds]


FUSED_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def can_fuse(schemes: list[Scheme], in_features: list[int]) -> bool:
    return (len(schemes) > 1 and schemes[0].kind == "intn" and all(s == schemes[0] for s in schemes)
            and len(set(in_features)) == 1)


def fusion_groups(entries: dict[str, TensorEntry]) -> list[tuple[str, ...]]:
    """Resident tensors that run as one FusedLinear: q/k/v of an attention block, gate/up of an FFN
    (the shared expert's included), when all exist and share the int-N scheme and the input size."""
    groups = []
    for name in entries:
        for projs in FUSED_PROJECTIONS:
            suffix = f".{projs[0]}.weight"
            if name.endswith(suffix):
                names = tuple(f"{name[:-len(suffix)]}.{p}.weight" for p in projs)
                if all(n in entries for n in names) and can_fuse([entries[n].scheme for n in names],
                                                                 [entries[n].shape[1] for n in names]):
                    groups.append(names)
    return groups


class Embedding:
    """Row lookup in a stored [V, H] table (any scheme but ternary)."""

    def __init__(self, parts: dict[str, np.ndarray], scheme: Scheme, shape: tuple[int, int], intn_layout: str = "rows"):
        self.parts, self.scheme, self.shape, self.intn_layout = parts, scheme, shape, intn_layout
        if scheme.kind in ("f32", "f16"):
            self.table = np.ascontiguousarray(parts["data"], dtype=np.float32).reshape(shape)

    def __call__(self, ids: np.ndarray) -> np.ndarray:  # ids [T] -> [T, H] float32
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and not 0 <= int(ids.min()) <= int(ids.max()) < self.shape[0]:
            bad = int(ids.max()) if int(ids.max()) >= self.shape[0] else int(ids.min())
            raise FormatError(f"token id {bad} is outside the embedding table of {self.shape[0]} rows "
                              f"(the file's tokenizer and model config do not match)")
        if self.scheme.kind in ("f32", "f16"):
            return self.table[ids]
        w = as_intn_weight(self.parts, self.scheme, self.shape)
        w.layout = self.intn_layout
        return dequantize_intn(take_rows(w, ids))


IL16_CHUNK_BYTES = 1 << 20  # packed bytes re-laid per step of interleave_il16_inplace (whole 16-row blocks)


def interleave_il16_inplace(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> None:
    """Rows layout -> il16 in place: packed [N, row bytes], scales / zeros [N, ng], N % 16 == 0. Blocks of 16
    rows are independent and keep their byte range, so a few blocks at a time go through a small copy."""
    N, rb = packed.shape
    step = IL16_ROWS * max(1, IL16_CHUNK_BYTES // (IL16_ROWS * rb))
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        packed[r0:r1], scales[r0:r1], zeros[r0:r1] = interleave_il16(packed[r0:r1], scales[r0:r1], zeros[r0:r1])


class ResidentWeights:
    """Every non-expert tensor of a .mote file, read once with pread (checksums verified).

    The int-N and ternary weights, which every decode step streams from DRAM, live in one huge-page
    arena (runtime/hugepages.py): a plain tensor is read straight into it; the members of a fusion
    group (q/k/v, gate/up) are copied into one fused [sum N, ...] weight there, so fusing costs no
    second copy. Peak during the load: the arena plus one tensor.

    With the AVX-512 kernels (or `intn_layout="il16"`), every int-N weight that can take it (4 or 8 bits,
    G = 128, N % 16 == 0: the int4 matrices and the int8 embedding / lm_head) is re-laid in the arena into the
    il16 layout, block by block through a small buffer (no second copy), and its Linear / Embedding carries the
    layout (mote_edge/quant/intn.py)."""

    def __init__(self, f: MoteFile, threads: int, intn_layout: str = "auto"):
        self.entries = f.tensors
        self.threads = threads
        groups = fusion_groups(f.tensors)
        member = {n: g for g in groups for n in g}
        streamed = [n for n, e in f.tensors.items() if e.scheme.kind in STREAMED_KINDS and n not in member]
        fused_arrays = [spec for g in groups for spec in self._fused_layout(g)]
        self.arena = Arena(Arena.capacity_for([f.tensors[n].nbytes for n in streamed]
                                              + [int(np.prod(shape)) * np.dtype(dt).itemsize for shape, dt in fused_arrays]))
        self._parts: dict[str, dict[str, np.ndarray]] = {}
        self._fused: dict[tuple[str, ...], IntNWeight] = {}
        for name, e in f.tensors.items():
            if name in member:
                self._copy_into_group(member[name], name, f.read_tensor(name))
            elif name in streamed:
                self._parts[name] = f.read_tensor_into(name, self.arena.empty((e.nbytes,), np.uint8))
            else:
                self._parts[name] = f.read_tensor(name)
        if intn_layout == "auto":
            intn_layout = "il16" if kernels.kernel_path() == "avx512" else "rows"
        self._layouts: dict[str, str] = {}  # tensor name (plain streamed int-N) -> its layout once loaded
        if intn_layout == "il16":
            for name in streamed:
                e = self.entries[name]
                if e.scheme.kind == "intn" and il16_ok(e.scheme.bits, e.scheme.group_size, e.shape[0]):
                    p = self._parts[name]
                    interleave_il16_inplace(p["packed"].reshape(e.shape[0], -1), p["scales"], p["zeros"])
                    self._layouts[name] = "il16"
            for w in self._fused.values():
                if il16_ok(w.bits, w.group_size, w.N):
                    interleave_il16_inplace(w.packed, w.scales, w.zeros)
                    w.layout = "il16"
        self.nbytes = sum(runtime_nbytes(e) for e in f.tensors.values())

    def _fused_layout(self, group: tuple[str, ...]) -> list[tuple[tuple[int, int], type]]:
        """(shape, dtype) of the fused packed / scales / zeros arrays of a fusion group."""
        es = [self.entries[n] for n in group]
        N, K, sc = sum(e.shape[0] for e in es), es[0].shape[1], es[0].scheme
        ng = num_groups(K, sc.group_size)
        return [((N, intn_row_bytes(K, sc.bits, sc.group_size)), np.uint8), ((N, ng), np.float16), ((N, ng), np.float16)]

    def _copy_into_group(self, group: tuple[str, ...], name: str, parts: dict[str, np.ndarray]) -> None:
        if group not in self._fused:
            packed, scales, zeros = (self.arena.empty(shape, dt) for shape, dt in self._fused_layout(group))
            sc, K = self.entries[group[0]].scheme, self.entries[group[0]].shape[1]
            self._fused[group] = IntNWeight(packed, scales, zeros, sc.bits, sc.group_size, packed.shape[0], K)
        w = self._fused[group]
        i = group.index(name)
        r0 = sum(self.entries[n].shape[0] for n in group[:i])
        r1 = r0 + self.entries[name].shape[0]
        w.packed[r0:r1] = parts["packed"].reshape(r1 - r0, -1)
        w.scales[r0:r1] = parts["scales"]
        w.zeros[r0:r1] = parts["zeros"]

    def vector(self, name: str) -> np.ndarray:
        """A 1-D float32 tensor (norm weights, biases)."""
        return np.ascontiguousarray(self._parts[name]["data"], dtype=np.float32)

    def matrix(self, name: str) -> np.ndarray:
        e = self.entries[name]
        return np.ascontiguousarray(self._parts[name]["data"], dtype=np.float32).reshape(e.shape)

    def linear(self, name: str) -> Linear:
        e = self.entries[name]
        return Linear(self._parts[name], e.scheme, e.shape, self.threads, intn_layout=self._layouts.get(name, "rows"))

    def fused_linear(self, names: list[str]) -> FusedLinear:
        """The Linears of `names` (same input) as one call: the fused weight built at load when they
        form a fusion group, else one call per part."""
        group, sizes = tuple(names), [self.entries[n].shape[0] for n in names]
        if group in self._fused:
            return FusedLinear(sizes, fused=Linear.from_intn(self._fused[group], self.entries[names[0]].scheme,
                                                             self.threads))
        return FusedLinear(sizes, parts=[self.linear(n) for n in names])

    def embedding(self, name: str) -> Embedding:
        e = self.entries[name]
        return Embedding(self._parts[name], e.scheme, e.shape, self._layouts.get(name, "rows"))

    def release(self) -> None:
        self._parts.clear()
        self._fused.clear()
        self.arena = Arena(0)  # the mapping goes with its last view (the decoder's Linears)
