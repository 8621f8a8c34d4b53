"""The 2-bit cache-slab layout of ternary weights (DESIGN.md section 5: "a cache slab may hold a
faster-to-decode layout than the file").

The .mote file keeps the 1.6-bit base-3 layout (mote_edge/quant/ternary.py). This layout spends
2 bits per trit so that a digit is one AND away instead of a base-3 carry chain or a byte LUT:
the ternary GEMV then needs ~8 vector ops per 256 weights instead of ~19 per 320, which is what
decides its speed on cores with two 512-bit vector ops per cycle (docs/KERNELS.md).

A row of K trits is cut into full blocks of 256 columns and one tail of r = K % 256 columns:
  full block (64 bytes):  byte j (0..63) holds columns j, j+64, j+128, j+192
  tail (B = ceil(r/4) bytes): byte j (0..B-1) holds columns j, j+B, j+2B, j+3B;
                          columns >= K are padding and hold the trit 0.
The four trits t0..t3 of a byte (in that column order) are stored as digits d = t + 1 in
{0, 1, 2}: byte = d0 | d1 << 2 | d2 << 4 | d3 << 6. A row takes ceil(K/4) bytes, rows follow
each other with no padding (N * ceil(K/4) bytes), the fp32 gamma is kept beside them.
"""

from __future__ import annotations

import numpy as np

from .ternary import pack_blocks, unpack_blocks, unpack_ternary

TRITS_PER_BYTE = 4
BLOCK_BYTES = 64
BLOCK_COLS = BLOCK_BYTES * TRITS_PER_BYTE  # 256
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)


def slab2_row_bytes(K: int) -> int:
    """Bytes per row in the 2-bit layout: ceil(K / 4)."""
    if K < 0:
        raise ValueError(f"K must be >= 0, got {K}")
    return -(-K // TRITS_PER_BYTE)


def packed_slab2_nbytes(N: int, K: int) -> int:
    return N * slab2_row_bytes(K)


def _encode(digits: np.ndarray) -> np.ndarray:
    """digits [..., 4, B] in {0,1,2} -> bytes [..., B]: d0 | d1 << 2 | d2 << 4 | d3 << 6."""
    return np.bitwise_or.reduce(digits.astype(np.uint8) << _SHIFTS[:, None], axis=-2).astype(np.uint8)


def _decode(q: np.ndarray) -> np.ndarray:
    """bytes [..., B] -> digits [..., 4, B] (a field of 3 decodes to 3: trit 2, as the kernels do)."""
    return (q[..., None, :] >> _SHIFTS[:, None]) & 3


def pack_ternary_slab2(trits: np.ndarray) -> np.ndarray:
    """trits [N, K] int8 in {-1, 0, 1} -> uint8 [N, ceil(K/4)] in the 2-bit slab layout."""
    return pack_blocks(trits, TRITS_PER_BYTE, _encode)


def unpack_ternary_slab2(packed: np.ndarray, N: int, K: int) -> np.ndarray:
    """uint8 (N * ceil(K/4) bytes, any shape) -> trits [N, K] int8."""
    return unpack_blocks(packed, N, K, TRITS_PER_BYTE, _decode)


def file_to_slab2(packed: np.ndarray, N: int, K: int) -> np.ndarray:
    """The file's 1.6-bit bytes [N * ceil(K/5)] -> the 2-bit slab layout [N, ceil(K/4)] (numpy reference)."""
    return pack_ternary_slab2(unpack_ternary(packed, N, K))
