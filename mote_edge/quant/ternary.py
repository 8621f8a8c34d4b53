"""BitNet b1.58 maths (DESIGN.md section 3): absmean ternary weights, int8 per-token activations.

    gamma = mean|W|;  Wt = clip(round(W / (gamma + eps)), -1, 1)          eps = 1e-5
    s = 127 / max(max|x|, eps);  xq = clip(round(x * s), -128, 127)         per token (row of x)
    y = (xq @ Wt^T) * (gamma / s)

Rounding is numpy's / torch's round-half-to-even. All maths in float32.
"""

from __future__ import annotations

import numpy as np

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
ACT_QMAX = 127


def absmean_ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """w: [N, K] float -> (trits [N, K] int8 in {-1, 0, 1}, gamma float32 scale for the tensor)."""
    w = np.asarray(w, dtype=np.float32)
    gamma = np.float32(np.mean(np.abs(w), dtype=np.float64))
    trits = np.clip(np.rint(w / (gamma + np.float32(WEIGHT_EPS))), -1, 1).astype(np.int8)
    return trits, gamma


def absmax_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The activation quantizer, over the last axis: x [..., K] float32 -> (xq [..., K] int8,
    s [...] float32) with s = 127 / max|x| and x ~= xq / s. Per token here, per group in int-N."""
    amax = np.maximum(np.max(np.abs(x), axis=-1), np.float32(ACT_EPS))
    s = (np.float32(ACT_QMAX) / amax).astype(np.float32)
    xq = np.clip(np.rint(x * s[..., None]), -128, 127).astype(np.int8)
    return xq, s


def quantize_activations_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: [T, K] float -> (xq [T, K] int8, s [T] float32) with x ~= xq / s per token."""
    return absmax_int8(np.asarray(x, dtype=np.float32))


def bitlinear_reference(x: np.ndarray, trits: np.ndarray, gamma: np.float32) -> np.ndarray:
    """The BitLinear forward in numpy: x [T, K] float, trits [N, K] -> y [T, N] float32."""
    xq, s = quantize_activations_int8(x)
    acc = xq.astype(np.int32) @ trits.astype(np.int32).T  # [T, N] exact integer accumulators
    return acc.astype(np.float32) * (np.float32(gamma) / s)[:, None]


# ---------------------------------------------------------------------------------------------
# Packing: 5 trits per byte (docs/KERNELS.md has the byte-by-byte layout).
#
# A row of K trits is cut into full blocks of 320 columns and one tail of r = K % 320 columns.
#   full block (64 bytes):  byte j (0..63) holds columns j, j+64, j+128, j+192, j+256
#   tail (B = ceil(r/5) bytes): byte j (0..B-1) holds columns j, j+B, j+2B, j+3B, j+4B;
#                           columns >= K are padding and hold the trit 0.
# The five trits t0..t4 of a byte (in that column order) become digits d = t + 1 in {0,1,2},
#   v = 81*d0 + 27*d1 + 9*d2 + 3*d3 + d4   (0..242),   byte = ceil(v * 256 / 243)   (0..255)
# so digit i is recovered by multiply-by-3-and-carry in 8-bit lanes (llama.cpp TQ1_0's trick):
#   q = byte;  repeat 5 times: d = (3*q) >> 8;  q = (3*q) & 255
# Rows are stored one after the other with no padding: a row takes ceil(K/5) bytes, the tensor
# N * ceil(K/5) bytes, plus one float32 gamma kept beside it (<= 1.6 bits/weight + 5 bits/row).
# ---------------------------------------------------------------------------------------------

TRITS_PER_BYTE = 5
BLOCK_BYTES = 64
BLOCK_COLS = BLOCK_BYTES * TRITS_PER_BYTE  # 320
_POW3 = np.array([81, 27, 9, 3, 1], dtype=np.int32)


def ternary_row_bytes(K: int) -> int:
    """Bytes per packed row: 64 per full 320-column block + ceil(tail / 5) = ceil(K / 5)."""
    if K < 0:
        raise ValueError(f"K must be >= 0, got {K}")
    return -(-K // TRITS_PER_BYTE)


def packed_ternary_nbytes(N: int, K: int) -> int:
    """Bytes of the packed trits of an [N, K] tensor (the fp32 gamma is stored separately)."""
    return N * ternary_row_bytes(K)


def _encode(digits: np.ndarray) -> np.ndarray:
    """digits [..., 5, B] in {0,1,2} -> bytes [..., B] uint8 (the scaled base-3 number)."""
    v = np.tensordot(digits.astype(np.int32), _POW3, axes=([-2], [0]))  # [..., B]
    return ((v * 256 + 242) // 243).astype(np.uint8)


def _decode(q: np.ndarray) -> np.ndarray:
    """bytes [..., B] uint8 -> digits [..., 5, B] in {0,1,2} by multiply-by-3-and-carry."""
    q = q.astype(np.uint16)
    out = []
    for _ in range(TRITS_PER_BYTE):
        q3 = q * 3
        out.append((q3 >> 8).astype(np.int8))
        q = q3 & 0xFF
    return np.stack(out, axis=-2)


def pack_blocks(trits: np.ndarray, tpb: int, encode) -> np.ndarray:
    """trits [N, K] -> [N, ceil(K / tpb)] bytes of a layout with `tpb` trits per byte (this file's 5, or
    ternary_slab.py's 4): full blocks of 64 bytes (byte j: columns j + 64 i) and a tail of B bytes
    (byte j: columns j + B i, padding digit 1 = trit 0); encode(digits [..., tpb, B]) -> bytes [..., B]."""
    t = np.asarray(trits)
    if t.ndim != 2:
        raise ValueError(f"trits must be 2-D [N, K], got shape {t.shape}")
    if t.size and (t.min() < -1 or t.max() > 1):
        raise ValueError("trits must be in {-1, 0, 1}")
    N, K = t.shape
    cols = BLOCK_BYTES * tpb
    nfull, B = K // cols, -(-(K % cols) // tpb)
    d = (t.astype(np.int8) + 1).astype(np.uint8)
    parts = [encode(d[:, : nfull * cols].reshape(N, nfull, tpb, BLOCK_BYTES)).reshape(N, nfull * BLOCK_BYTES)]
    if B:
        tail = np.ones((N, tpb * B), dtype=np.uint8)  # padding = trit 0 = digit 1
        tail[:, : K - nfull * cols] = d[:, nfull * cols:]
        parts.append(encode(tail.reshape(N, tpb, B)))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def unpack_blocks(packed: np.ndarray, N: int, K: int, tpb: int, decode) -> np.ndarray:
    """The inverse of pack_blocks: N * ceil(K / tpb) bytes (any shape) -> trits [N, K] int8;
    decode(bytes [..., B]) -> digits [..., tpb, B]."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    rb = -(-K // tpb)
    if p.size != N * rb:
        raise ValueError(f"packed has {p.size} bytes, expected {N * rb} for N={N}, K={K}")
    p = p.reshape(N, rb)
    cols = BLOCK_BYTES * tpb
    nfull, B = K // cols, -(-(K % cols) // tpb)
    out = [decode(p[:, : nfull * BLOCK_BYTES].reshape(N, nfull, BLOCK_BYTES)).reshape(N, nfull * cols)]
    if B:
        out.append(decode(p[:, nfull * BLOCK_BYTES:]).reshape(N, tpb * B))
    return (np.concatenate(out, axis=1)[:, :K].astype(np.int8) - 1).astype(np.int8)


def pack_ternary(trits: np.ndarray) -> np.ndarray:
    """trits [N, K] int8 in {-1, 0, 1} -> packed uint8 [N, ceil(K/5)] (contiguous)."""
    return pack_blocks(trits, TRITS_PER_BYTE, _encode)


def unpack_ternary(packed: np.ndarray, N: int, K: int) -> np.ndarray:
    """packed uint8 (any shape, N * ceil(K/5) bytes) -> trits [N, K] int8."""
    return unpack_blocks(packed, N, K, TRITS_PER_BYTE, _decode)


def ternary_matmul_reference(x: np.ndarray, packed: np.ndarray, gamma: float, N: int,
                             K: int) -> np.ndarray:
    """What the C ternary kernel computes: bitlinear_reference on the unpacked trits.

    x [T, K] float32 -> y [T, N] float32;  y = (xq @ Wt^T) * (gamma / s), xq/s per token as
    quantize_activations_int8 (the kernel matches this bit for bit).
    """
    return bitlinear_reference(x, unpack_ternary(packed, N, K), np.float32(gamma))
