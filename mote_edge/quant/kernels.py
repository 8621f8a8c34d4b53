"""numpy-facing wrappers of the C kernels in mote_edge._native (validation here, maths in C).

    ternary_matmul(x, packed, gamma, N, K, threads=1, layout="file"|"slab2") -> y [T, N] float32
                                                                           (BitLinear, bit-exact)
    ternary_matmul_q8(xq, s, packed, gamma, N, K, threads=1) -> y            (pre-quantized x)
    intn_matmul(x, w: IntNWeight, threads=1) -> y [T, N] float32   (w in either layout, IntNWeight.layout)
    kernel_path() / set_kernel_path("auto"|"scalar"|"avx2"|"avx512"|"neon"|"dotprod") / available_paths()
    crc32(buf, crc=0) -> int                  zlib's CRC-32, PCLMULQDQ on x86-64 (crc32_path() says which)
x may be [K] (one token) or [T, K]; the result then has shape [N] or [T, N]. `out` may be given
(float32, C-contiguous, the result's shape) to avoid an allocation.
"""

from __future__ import annotations

import numpy as np

from mote_edge import _native

from .intn import LAYOUTS, IntNWeight, il16_ok, intn_row_bytes, num_groups
from .ternary import packed_ternary_nbytes
from .ternary_slab import packed_slab2_nbytes, slab2_row_bytes

kernel_path = _native.kernel_path
set_kernel_path = _native.set_kernel_path
available_paths = _native.available_paths
crc32 = _native.crc32
crc32_path = _native.crc32_path


def _array(a, dtype, name: str, shape: tuple | None = None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def _tokens(x: np.ndarray, K: int, dtype, name: str) -> tuple[np.ndarray, int, bool]:
    x = _array(x, dtype, name)
    if x.ndim == 1:
        x = x.reshape(1, -1)
        vec = True
    elif x.ndim == 2:
        vec = False
    else:
        raise ValueError(f"{name} must be [K] or [T, K], got shape {x.shape}")
    if x.shape[1] != K:
        raise ValueError(f"{name} has {x.shape[1]} columns, expected K={K}")
    return x, x.shape[0], vec


def _out(out, T: int, N: int, vec: bool) -> np.ndarray:
    shape = (N,) if vec else (T, N)
    if out is None:
        return np.empty(shape, dtype=np.float32)
    return _array(out, np.float32, "out", shape)


TERNARY_LAYOUTS = ("file", "slab2")  # the 1.6-bit base-3 file layout, the 2-bit cache-slab layout


def ternary_nbytes(N: int, K: int, layout: str = "file") -> int:
    """Bytes of an [N, K] ternary tensor in `layout` (mote_edge/quant/ternary.py, ternary_slab.py)."""
    if layout == "file":
        return packed_ternary_nbytes(N, K)
    if layout == "slab2":
        return packed_slab2_nbytes(N, K)
    raise ValueError(f"ternary layout must be one of {TERNARY_LAYOUTS}, not {layout!r}")


def _packed_ternary(packed, N: int, K: int, layout: str) -> np.ndarray:
    packed = _array(packed, np.uint8, "packed")
    want = ternary_nbytes(N, K, layout)
    if packed.size != want:
        raise ValueError(f"packed has {packed.size} bytes, expected {want} for N={N}, K={K} ({layout} layout)")
    return packed


def ternary_matmul(x: np.ndarray, packed: np.ndarray, gamma: float, N: int, K: int, threads: int = 1,
                   out: np.ndarray | None = None, layout: str = "file") -> np.ndarray:
    """x [T, K] (or [K]) float32 -> y = BitLinear(x) [T, N] float32, = ternary_matmul_reference bit for bit.
    `layout`: "file" (1.6-bit, as stored in .mote) or "slab2" (2-bit cache-slab layout)."""
    x, T, vec = _tokens(x, K, np.float32, "x")
    packed = _packed_ternary(packed, N, K, layout)
    y = _out(out, T, N, vec)
    fn = _native.ternary2_matmul if layout == "slab2" else _native.ternary_matmul
    fn(packed, float(gamma), x, T, K, N, y, int(threads))
    return y


def ternary_matmul_q8(xq: np.ndarray, s: np.ndarray, packed: np.ndarray, gamma: float, N: int, K: int,
                      threads: int = 1, out: np.ndarray | None = None, layout: str = "file") -> np.ndarray:
    """As ternary_matmul with x already quantized by quantize_activations_int8: xq [T, K] int8, s [T] float32."""
    xq, T, vec = _tokens(xq, K, np.int8, "xq")
    s = _array(np.atleast_1d(s), np.float32, "s", (T,))
    packed = _packed_ternary(packed, N, K, layout)
    y = _out(out, T, N, vec)
    fn = _native.ternary2_matmul_q8 if layout == "slab2" else _native.ternary_matmul_q8
    fn(packed, float(gamma), xq, s, T, K, N, y, int(threads))
    return y


def file_to_slab2(packed: np.ndarray, N: int, K: int, out: np.ndarray | None = None) -> np.ndarray:
    """The file layout's bytes -> the 2-bit slab layout [N, ceil(K/4)] (= ternary_slab.file_to_slab2
    byte for byte, in C). `out`: a uint8 buffer of packed_slab2_nbytes(N, K) bytes to fill."""
    packed = _packed_ternary(packed, N, K, "file")
    if out is None:
        out = np.empty((N, slab2_row_bytes(K)), np.uint8)
    out = _array(out, np.uint8, "out")
    _native.ternary_file_to_slab2(packed, N, K, out)
    return out


def intn_matmul(x: np.ndarray, w: IntNWeight, threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """x [T, K] (or [K]) float32 -> y [T, N] float32, = intn_matmul_reference within 1e-5 of the float terms."""
    x, T, vec = _tokens(x, w.K, np.float32, "x")
    ng = num_groups(w.K, w.group_size)
    _array(w.packed, np.uint8, "packed")
    if w.packed.size != w.N * intn_row_bytes(w.K, w.bits, w.group_size):
        raise ValueError(f"packed has {w.packed.size} bytes, expected "
                         f"{w.N * intn_row_bytes(w.K, w.bits, w.group_size)}")
    scales = _array(w.scales, np.float16, "scales", (w.N, ng))
    zeros = _array(w.zeros, np.float16, "zeros", (w.N, ng))
    if w.layout not in LAYOUTS or (w.layout == "il16" and not il16_ok(w.bits, w.group_size, w.N)):
        raise ValueError(f"int-N layout {w.layout!r} with bits {w.bits}, group_size {w.group_size}, N {w.N}: "
                         f"'rows', or 'il16' for bits 4 or 8, group_size 128, N % 16 == 0")
    y = _out(out, T, w.N, vec)
    _native.intn_matmul(w.packed, scales, zeros, w.bits, w.group_size, x, T, w.K, w.N, y, int(threads),
                        LAYOUTS.index(w.layout))
    return y
