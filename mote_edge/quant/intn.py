"""Group-wise asymmetric int-N weights (bits 2, 3, 4, 8; groups of 32/64/128 along K).

Quantization (per row n, per group g of G consecutive input columns):
    lo = min(min(w_g), 0);  hi = max(max(w_g), 0)        (0 is always representable)
    scale = fp16((hi - lo) / (2^bits - 1))   (lo == hi == 0 -> scale from [-1, 1]; scale >= 2^-14)
    zero  = clip(round(-lo / scale), 0, 2^bits - 1)      an INTEGER zero-point, stored as fp16
    q     = clip(round(w / scale) + zero, 0, 2^bits - 1) uint, scale = the fp16 value
    w ~= scale * (q - zero)
K is padded to a multiple of G (Kp); padding columns hold q = 0 and never influence the scales.

Packed layout ("bit planes", docs/KERNELS.md): a row is ngroups = Kp / G groups, each group
G*bits/8 bytes, one after the other. A p-bit plane of G values is m = G*p/8 bytes; byte j holds
value j + i*m at bits [i*p, (i+1)*p), i = 0 .. 8/p - 1. bits 8/4/2 = one plane of that width;
bits 3 = the 2-bit plane of (q & 3) followed by the 1-bit plane of (q >> 2).
So every plane unpacks with shifts and masks into contiguous runs of columns.

The same bytes in another order, "il16" (IntNWeight.layout; 4 or 8 bits, G = 128, N % 16 == 0 only): blocks
of 16 rows; a row's bytes are chunks of 64 (one per group at 4 bits, two at 8) and per block and chunk c come 16
lines of 64 bytes, line j = bytes 64c + 4j .. 64c + 4j + 3 of each of the 16 rows (4-bit: values 4j..4j+3 of the
group in the low nibbles, 64+4j.. in the high; 8-bit: values 4j..4j+3 of the chunk): packed [N/16, chunks,
16 lines, 16 rows, 4 bytes], scales / zeros [N/16, ng, 16 rows]; the arrays keep their [N, row bytes] / [N, ng]
shapes. The AVX-512 GEMV reads it with the 16 output rows in its lanes (docs/KERNELS.md); interleave_il16 /
deinterleave_il16 convert.

The matmul the C kernel computes (intn_matmul_reference): activations are quantized to int8 per
(token, group) exactly like BitLinear does per token: s = 127 / max(max|x_g|, 1e-5),
xq = clip(rint(x_g * s), -128, 127); then per group an exact int32
    acc = sum_k q_k * xq_k - zero * sum_k xq_k
and y = sum_g acc_g * (scale_g / s_g) accumulated in float32 (the order of that float sum is the
only thing that differs between the reference and the SIMD paths).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ternary import absmax_int8

BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128)
MIN_SCALE = np.float32(2.0 ** -14)  # smallest normal fp16


@dataclass
class IntNWeight:
    """A packed int-N tensor: packed [N, ngroups * G * bits / 8] uint8, scales/zeros [N, ngroups] fp16."""

    packed: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    group_size: int
    N: int
    K: int
    layout: str = "rows"  # "rows" or "il16" (the module docstring)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + self.zeros.nbytes


def check_scheme(bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size must be one of {GROUP_SIZES}, got {group_size}")


def num_groups(K: int, group_size: int) -> int:
    return -(-K // group_size)


def intn_row_bytes(K: int, bits: int, group_size: int) -> int:
    check_scheme(bits, group_size)
    return num_groups(K, group_size) * group_size * bits // 8


def group_params(wg: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """wg [N, g] float32 (one group, g <= G columns) -> (scale [N] float32 = fp16 value, zero [N] float32 integer)."""
    maxq = np.float32(2 ** bits - 1)
    lo = np.minimum(wg.min(axis=1), 0).astype(np.float32)
    hi = np.maximum(wg.max(axis=1), 0).astype(np.float32)
    flat = (lo == 0) & (hi == 0)
    lo = np.where(flat, np.float32(-1), lo)
    hi = np.where(flat, np.float32(1), hi)
    scale = ((hi - lo) / maxq).astype(np.float16).astype(np.float32)
    scale = np.maximum(scale, MIN_SCALE)
    zero = np.clip(np.rint(-lo / scale), 0, maxq).astype(np.float32)
    return scale, zero


def quantize_group(wg: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """wg [N, g] float32 with per-row scale/zero [N] -> q [N, g] uint8."""
    maxq = 2 ** bits - 1
    q = np.rint(wg / scale[:, None]) + zero[:, None]
    return np.clip(q, 0, maxq).astype(np.uint8)


def quantize_rtn(w: np.ndarray, bits: int, group_size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """w [N, K] float -> (q [N, K] uint8, scales [N, ngroups] fp16, zeros [N, ngroups] fp16)."""
    check_scheme(bits, group_size)
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {w.shape}")
    N, K = w.shape
    ng = num_groups(K, group_size)
    q = np.empty((N, K), dtype=np.uint8)
    scales = np.empty((N, ng), dtype=np.float16)
    zeros = np.empty((N, ng), dtype=np.float16)
    for g in range(ng):
        sl = slice(g * group_size, min(K, (g + 1) * group_size))
        s, z = group_params(w[:, sl], bits)
        q[:, sl] = quantize_group(w[:, sl], s, z, bits)
        scales[:, g], zeros[:, g] = s, z
    return q, scales, zeros


def _planes(bits: int) -> list[tuple[int, int]]:
    """(shift into q, plane width) for each bit plane of a group, in storage order."""
    return [(0, 2), (2, 1)] if bits == 3 else [(0, bits)]


def pack_intn(q: np.ndarray, bits: int, group_size: int) -> np.ndarray:
    """q [N, K] uint in [0, 2^bits) -> packed [N, intn_row_bytes] uint8 (bit-plane layout)."""
    check_scheme(bits, group_size)
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"q must be 2-D [N, K], got shape {q.shape}")
    if q.size and (q.min() < 0 or q.max() >= 2 ** bits):
        raise ValueError(f"q must be in [0, {2 ** bits})")
    N, K = q.shape
    G, ng = group_size, num_groups(K, group_size)
    qp = np.zeros((N, ng * G), dtype=np.uint8)
    qp[:, :K] = q
    qp = qp.reshape(N, ng, G)
    parts = []
    for shift, p in _planes(bits):
        vals = (qp >> shift) & ((1 << p) - 1)            # [N, ng, G]
        per = 8 // p
        m = G * p // 8
        vals = vals.reshape(N, ng, per, m).astype(np.uint8)  # value j + i*m -> [i, j]
        plane = np.zeros((N, ng, m), dtype=np.uint8)
        for i in range(per):
            plane |= (vals[:, :, i, :] << (i * p)).astype(np.uint8)
        parts.append(plane)
    return np.ascontiguousarray(np.concatenate(parts, axis=2).reshape(N, ng * G * bits // 8))


def unpack_intn(packed: np.ndarray, N: int, K: int, bits: int, group_size: int) -> np.ndarray:
    """packed [N, row_bytes] uint8 -> q [N, K] uint8."""
    check_scheme(bits, group_size)
    G, ng = group_size, num_groups(K, group_size)
    p8 = np.asarray(packed, dtype=np.uint8)
    if p8.size != N * intn_row_bytes(K, bits, G):
        raise ValueError(f"packed has {p8.size} bytes, expected {N * intn_row_bytes(K, bits, G)}")
    p8 = p8.reshape(N, ng, G * bits // 8)
    q = np.zeros((N, ng, G), dtype=np.uint8)
    off = 0
    for shift, p in _planes(bits):
        per, m = 8 // p, G * p // 8
        plane = p8[:, :, off:off + m]
        vals = np.stack([(plane >> (i * p)) & ((1 << p) - 1) for i in range(per)], axis=2)
        q |= (vals.reshape(N, ng, G) << shift).astype(np.uint8)
        off += m
    return q.reshape(N, ng * G)[:, :K]


def quantize_intn(w: np.ndarray, bits: int, group_size: int = 128) -> IntNWeight:
    """RTN-quantize and pack w [N, K] float."""
    q, s, z = quantize_rtn(w, bits, group_size)
    N, K = q.shape
    return IntNWeight(pack_intn(q, bits, group_size), s, z, bits, group_size, N, K)


LAYOUTS = ("rows", "il16")
IL16_ROWS = 16
IL16_BITS = (4, 8)
IL16_CHUNK = 64  # bytes of a row per 16 lines of a block (one group at 4 bits, half a group at 8)


def il16_ok(bits: int, group_size: int, N: int) -> bool:
    """Whether a [N, K] weight at bits / group_size can take the il16 layout."""
    return bits in IL16_BITS and group_size == 128 and N % IL16_ROWS == 0


def interleave_il16(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows layout (packed [N, rb], rb = ng * 64 or ng * 128; scales / zeros [N, ng]) -> the il16 layout, same
    shapes, new arrays."""
    N, ng = scales.shape
    nc = packed.size // N // IL16_CHUNK
    p = packed.reshape(N // IL16_ROWS, IL16_ROWS, nc, 16, 4).transpose(0, 2, 3, 1, 4)  # [N/16, chunk, line, row, 4]
    sz = [a.reshape(N // IL16_ROWS, IL16_ROWS, ng).transpose(0, 2, 1) for a in (scales, zeros)]  # [N/16, ng, row]
    return (np.ascontiguousarray(p).reshape(packed.shape),
            *(np.ascontiguousarray(a).reshape(N, ng) for a in sz))


def deinterleave_il16(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> tuple[np.ndarray, ...]:
    """The il16 layout -> the rows layout (interleave_il16's inverse), new arrays."""
    N, ng = scales.shape
    nc = packed.size // N // IL16_CHUNK
    p = packed.reshape(N // IL16_ROWS, nc, 16, IL16_ROWS, 4).transpose(0, 3, 1, 2, 4)  # [N/16, row, chunk, line, 4]
    sz = [a.reshape(N // IL16_ROWS, ng, IL16_ROWS).transpose(0, 2, 1) for a in (scales, zeros)]
    return (np.ascontiguousarray(p).reshape(packed.shape),
            *(np.ascontiguousarray(a).reshape(N, ng) for a in sz))


def as_rows(wq: IntNWeight) -> IntNWeight:
    """wq in the rows layout (wq itself, or a de-interleaved copy)."""
    if wq.layout == "rows":
        return wq
    if wq.layout != "il16":
        raise ValueError(f"unknown int-N layout {wq.layout!r}")
    packed, scales, zeros = deinterleave_il16(wq.packed.reshape(wq.N, -1), wq.scales, wq.zeros)
    return IntNWeight(packed, scales, zeros, wq.bits, wq.group_size, wq.N, wq.K)


def take_rows(wq: IntNWeight, ids: np.ndarray) -> IntNWeight:
    """Rows ids [R] of wq as an [R, K] weight in the rows layout (an embedding lookup; either layout)."""
    if wq.layout == "rows":
        return IntNWeight(wq.packed[ids], wq.scales[ids], wq.zeros[ids], wq.bits, wq.group_size, len(ids), wq.K)
    ng, nc = wq.scales.shape[1], wq.packed.size // wq.N // IL16_CHUNK
    blk, row = ids // IL16_ROWS, ids % IL16_ROWS
    packed = wq.packed.reshape(-1, nc, 16, IL16_ROWS, 4)[blk, :, :, row].reshape(len(ids), -1)  # [R, nc * 64]
    scales, zeros = (a.reshape(-1, ng, IL16_ROWS)[blk, :, row] for a in (wq.scales, wq.zeros))  # [R, ng]
    return IntNWeight(packed, scales, zeros, wq.bits, wq.group_size, len(ids), wq.K)


def dequantize_intn(wq: IntNWeight) -> np.ndarray:
    """-> w [N, K] float32 = scale * (q - zero)."""
    wq = as_rows(wq)
    q = unpack_intn(wq.packed, wq.N, wq.K, wq.bits, wq.group_size).astype(np.float32)
    G = wq.group_size
    s = np.repeat(wq.scales.astype(np.float32), G, axis=1)[:, :wq.K]
    z = np.repeat(wq.zeros.astype(np.float32), G, axis=1)[:, :wq.K]
    return s * (q - z)


def quantize_activations_grouped(x: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """x [T, K] float -> (xq [T, Kp] int8 zero-padded, s [T, ngroups] float32): BitLinear per group."""
    x = np.asarray(x, dtype=np.float32)
    T, K = x.shape
    ng = num_groups(K, group_size)
    xp = np.zeros((T, ng * group_size), dtype=np.float32)
    xp[:, :K] = x
    xq, s = absmax_int8(xp.reshape(T, ng, group_size))  # [T, ng, G], [T, ng]
    return xq.reshape(T, ng * group_size), s


def intn_accumulators(x: np.ndarray, wq: IntNWeight) -> tuple[np.ndarray, np.ndarray]:
    """The exact integer part: (acc [T, N, ngroups] int64, factor [T, N, ngroups] float32 = scale / s)."""
    wq = as_rows(wq)
    G, ng = wq.group_size, num_groups(wq.K, wq.group_size)
    xq, s = quantize_activations_grouped(x, G)
    T = xq.shape[0]
    q = np.zeros((wq.N, ng * G), dtype=np.int64)
    q[:, :wq.K] = unpack_intn(wq.packed, wq.N, wq.K, wq.bits, G)
    xg = xq.reshape(T, ng, G).astype(np.int64)
    qg = q.reshape(wq.N, ng, G)
    dot = np.einsum("tgk,ngk->tng", xg, qg)
    sumx = xg.sum(axis=2)                                     # [T, ng]
    acc = dot - wq.zeros.astype(np.int64)[None, :, :] * sumx[:, None, :]
    factor = wq.scales.astype(np.float32)[None, :, :] / s[:, None, :]
    return acc, factor.astype(np.float32)


def intn_matmul_reference(x: np.ndarray, wq: IntNWeight) -> np.ndarray:
    """x [T, K] float -> y [T, N] float32, the maths of the C int-N kernel (float sum in float64)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != wq.K:
        raise ValueError(f"x must be [T, {wq.K}], got {x.shape}")
    acc, factor = intn_accumulators(x, wq)
    return (acc * factor.astype(np.float64)).sum(axis=2).astype(np.float32)


def intn_matmul_group_order(x: np.ndarray, wq: IntNWeight) -> np.ndarray:
    """x [T, K] float -> y [T, N] float32 as the C scalar path (and the AVX-512 il16 GEMV) compute it, bit for
    bit: per (token, row) y = 0, then for g in group order y += float32(acc_g) * float32(scale_g * float32(1 / s_g)),
    every step rounded to float32 (no fused multiply-add)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != wq.K:
        raise ValueError(f"x must be [T, {wq.K}], got {x.shape}")
    acc, _ = intn_accumulators(x, wq)                                                # [T, N, ng]
    _, s = quantize_activations_grouped(x, wq.group_size)                           # [T, ng]
    rs = (np.float32(1) / s).astype(np.float32)
    fac = (as_rows(wq).scales.astype(np.float32)[None, :, :] * rs[:, None, :]).astype(np.float32)
    prod = (acc.astype(np.float32) * fac).astype(np.float32)                        # [T, N, ng]
    y = np.zeros(prod.shape[:2], np.float32)
    for g in range(prod.shape[2]):
        y += prod[:, :, g]
    return y
