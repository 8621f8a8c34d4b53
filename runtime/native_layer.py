"""The decoder layer in C (native/layer.c) for a decode step and a prefill chunk: the argument tuples
`mote_edge._native.attn_step` / `attn_chunk` and `ffn_step` / `ffn_chunk` take, built once per layer from
the decoder's weights, with their dtypes checked here (the C side checks every byte size and contiguity).

    step = AttentionStep(attn, ln_in, ln_post, eps, rope, kv, layer, threads)
    step(x, pos, h)                        x [H] += attention half at `pos`; h [H] = rmsnorm(x, ln_post)
    step.chunk(x, start, h)                x [T, H], h [T, H]: positions start .. start + T - 1, causal
    ffn_step(h, y, coef, gate_up, down)    y [H] += coef * down(silu(gate h) * up h)   (specs: Linear.native_spec)
    ffn_chunk(h, y, coef, gate_up, down)   h, y [T, H], coef [T]: the same per row
    matmul_f32(x, w)                       x [T, K] @ w [N, K]^T on the kernel pool (routers: no BLAS threads,
                                           whose spinning workers would take the cores from the pool's)
    route_top_k(h, router, k)              MoE routing (native/route.c): expert ids [T, k] int64, weights [T, k]
    with held_scratch(): ...               the kernels keep their buffers from call to call (a prefill, an image)

Selected by `MOTE_DECODER` (`native`, the default, or `numpy`: the numpy layer, the scalar reference).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from mote_edge import _native
from mote_edge.errors import MoteError

DECODER_PATHS = ("native", "numpy")


def default_decoder_path() -> str:
    """MOTE_DECODER, or "native"; an unknown value is a MoteError (a one-line error)."""
    path = os.environ.get("MOTE_DECODER", "native")
    if path not in DECODER_PATHS:
        raise MoteError(f"MOTE_DECODER must be one of {', '.join(DECODER_PATHS)}, got {path!r}")
    return path


def check_float_vector(a: np.ndarray, n: int, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != (n,) or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name} must be a C-contiguous float32 [{n}] array, got {got}")
    return a


SPEC_DTYPES = {0: (np.float32, None), 1: (np.uint8, np.float16), 2: (np.uint8, None), 3: (np.uint8, None),
               4: (np.uint8, np.float16)}


def check_spec(spec: tuple, name: str) -> tuple:
    """A Linear.native_spec with the dtypes native/layer.c reads (sizes are checked in C)."""
    kind, w, scales, zeros = spec[0], spec[3], spec[4], spec[5]
    if kind not in SPEC_DTYPES:
        raise ValueError(f"{name}: unknown linear kind {kind}")
    wt, st = SPEC_DTYPES[kind]
    if not isinstance(w, np.ndarray) or w.dtype != wt:
        raise ValueError(f"{name}: weight must be {np.dtype(wt).name}")
    if st is not None and any(not isinstance(a, np.ndarray) or a.dtype != st for a in (scales, zeros)):
        raise ValueError(f"{name}: scales and zeros must be {np.dtype(st).name}")
    return spec


class AttentionStep:
    """The attention half of one layer for one position, as one native call."""

    def __init__(self, attn, ln_in: np.ndarray, ln_post: np.ndarray, eps: float, rope, kv, layer: int, threads: int):
        H = ln_in.shape[0]
        qkv = tuple(check_spec(s, "qkv") for s in attn.qkv.native_specs())
        o = check_spec(attn.o.native_spec(), "o")
        values = kv.values[layer]  # [2, nKV, context, D]
        scales = kv.scales[layer] if kv.scales is not None else None  # [2, nKV, context, 1]
        self.hidden, self.threads = H, threads
        self.args = (H, attn.n_heads, attn.n_kv, attn.head_dim, values.shape[2], float(eps),
                     check_float_vector(ln_in, H, "ln_in"), check_float_vector(ln_post, H, "ln_post"), qkv,
                     attn.bq, attn.bk, attn.bv, o, rope.cos, rope.sin, kv.bits, values, scales)

    def __call__(self, x: np.ndarray, pos: int, h: np.ndarray) -> None:
        _native.attn_step(x, pos, h, self.args, self.threads)

    def chunk(self, x: np.ndarray, start: int, h: np.ndarray) -> None:
        """x [T, H] += the attention half at positions start .. start + T - 1; h [T, H] = rmsnorm(x, ln_post)."""
        _native.attn_chunk(x, x.shape[0], start, h, self.args, self.threads)


def ffn_step(h: np.ndarray, y: np.ndarray, coef: float, gate_up: tuple, down: tuple, threads: int) -> None:
    """y += coef * down(silu(gate h) * up h); gate_up: one fused spec or (gate, up)."""
    _native.ffn_step(h, y, coef, gate_up, down, threads)


def ffn_chunk(h: np.ndarray, y: np.ndarray, coef: np.ndarray, gate_up: tuple, down: tuple, threads: int) -> None:
    """y [T, H] += coef[t] * down(silu(gate h_t) * up h_t) for the rows of h [T, H]; coef float32 [T]."""
    _native.ffn_chunk(h, h.shape[0], y, coef, gate_up, down, threads)


@contextmanager
def held_scratch() -> Iterator[None]:
    """While inside, the calling thread's kernels keep their scratch buffers between calls (native/scratch.h):
    a prefill's chunk buffers are mapped and faulted in once, not per layer, and never enter malloc's heap;
    on exit the large ones are unmapped. Their size is the plan's scratch (runtime/plan.py)."""
    _native.scratch_hold(True)
    try:
        yield
    finally:
        _native.scratch_hold(False)


def matmul_f32(x: np.ndarray, w: np.ndarray, threads: int = 1) -> np.ndarray:
    """x [T, K] @ w [N, K]^T -> [T, N] float32 (native/layer.c's f32 GEMM: 8-partial-sum dot per output)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    T, K = x.shape
    if w.ndim != 2 or w.shape[1] != K:
        raise ValueError(f"matmul_f32: x is [{T}, {K}], w is {list(w.shape)}")
    out = np.empty((T, w.shape[0]), np.float32)
    _native.gemm_f32(w, x, T, K, w.shape[0], out, threads)
    return out


def route_top_k(h: np.ndarray, router: np.ndarray, k: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """h [T, H] -> (expert ids [T, k] int64, weights [T, k] float32): the top k of softmax(h router^T) (router
    [E, H] float32), raw (k = 1) or renormalised over the k (native/route.c, one call)."""
    h = np.ascontiguousarray(h, dtype=np.float32)
    T = h.shape[0]
    idx, weight = np.empty((T, k), np.int64), np.empty((T, k), np.float32)
    _native.route(h, T, router, router.shape[0], k, idx, weight, threads)
    return idx, weight
