"""Ternary packing (5 trits per byte) and the BitLinear reference maths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mote_edge.quant.ternary import (BLOCK_COLS, _decode, _encode, absmean_ternarize, bitlinear_reference,
                                     pack_ternary, packed_ternary_nbytes, ternary_matmul_reference,
                                     ternary_row_bytes, unpack_ternary)


def test_every_byte_code_decodes_by_multiply_and_carry():
    digits = np.array(list(itertools.product(range(3), repeat=5)), dtype=np.int8).T  # [5, 243]
    codes = _encode(digits)
    assert len(set(codes.tolist())) == 243
    # decode with plain integer ops, the way the C scalar path does it
    for col in range(243):
        q = int(codes[col])
        got = []
        for _ in range(5):
            got.append((q * 3) >> 8)
            q = (q * 3) & 0xFF
        assert got == digits[:, col].tolist()
    assert (_decode(codes) == digits).all()


@pytest.mark.parametrize("K", [1, 4, 5, 6, 63, 64, 319, 320, 321, 639, 640, 896, 1536, 4864])
def test_pack_roundtrip(K):
    rng = np.random.default_rng(K)
    trits = rng.integers(-1, 2, size=(3, K)).astype(np.int8)
    packed = pack_ternary(trits)
    assert packed.dtype == np.uint8 and packed.shape == (3, ternary_row_bytes(K))
    assert packed.nbytes == packed_ternary_nbytes(3, K) == 3 * (-(-K // 5))
    assert np.array_equal(unpack_ternary(packed, 3, K), trits)


def test_layout_of_a_full_block():
    """Byte j of a 64-byte block holds columns j, j+64, ..., j+256, most significant digit first."""
    trits = np.zeros((1, BLOCK_COLS), dtype=np.int8)
    trits[0, 7] = 1          # digit 0 of byte 7 -> 2
    trits[0, 7 + 256] = -1   # digit 4 of byte 7 -> 0
    packed = pack_ternary(trits)
    v = 2 * 81 + 1 * 27 + 1 * 9 + 1 * 3 + 0
    assert packed[0, 7] == -(-v * 256 // 243)
    v0 = 121  # all zero trits
    assert packed[0, 0] == -(-v0 * 256 // 243) == 128


def test_tail_layout_and_padding():
    K = BLOCK_COLS + 12  # tail of 12 columns -> 3 bytes; byte j holds columns j, j+3, ..., j+12
    trits = np.zeros((1, K), dtype=np.int8)
    trits[0, BLOCK_COLS + 1 + 3] = 1  # byte 1 of the tail, digit 1
    packed = pack_ternary(trits)
    assert packed.shape == (1, 64 + 3)
    tail = packed[0, 64:]
    assert tail[0] == tail[2] == 128  # all zero trits, padding column 15 included
    assert tail[1] == -(-(81 + 2 * 27 + 9 + 3 + 1) * 256 // 243)


def test_density_including_scale():
    N, K = 1536, 8960
    nbytes = packed_ternary_nbytes(N, K) + 4  # + fp32 gamma
    assert nbytes * 8 / (N * K) <= 1.61
    for K in (896, 1536, 4864):  # real shapes whose K is not a multiple of 320
        assert (packed_ternary_nbytes(4864, K) + 4) * 8 / (4864 * K) <= 1.61


def test_bad_inputs():
    with pytest.raises(ValueError):
        pack_ternary(np.full((2, 3), 2, dtype=np.int8))
    with pytest.raises(ValueError):
        pack_ternary(np.zeros(5, dtype=np.int8))
    with pytest.raises(ValueError):
        unpack_ternary(np.zeros(7, dtype=np.uint8), 2, 16)


def test_reference_matmul_equals_bitlinear():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 333)).astype(np.float32)
    x = rng.standard_normal((4, 333)).astype(np.float32)
    trits, gamma = absmean_ternarize(w)
    y = ternary_matmul_reference(x, pack_ternary(trits), gamma, 7, 333)
    assert np.array_equal(y, bitlinear_reference(x, trits, gamma))
