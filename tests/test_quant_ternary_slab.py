"""The 2-bit cache-slab layout of ternary weights (mote_edge/quant/ternary_slab.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mote_edge.quant.ternary import pack_ternary
from mote_edge.quant.ternary_slab import (BLOCK_COLS, file_to_slab2, pack_ternary_slab2, packed_slab2_nbytes,
                                          slab2_row_bytes, unpack_ternary_slab2)


@pytest.mark.parametrize("K", [0, 1, 3, 4, 5, 63, 64, 255, 256, 257, 511, 513, 896, 1536, 4864])
def test_roundtrip_and_density(K):
    rng = np.random.default_rng(K)
    trits = rng.integers(-1, 2, size=(3, K)).astype(np.int8)
    packed = pack_ternary_slab2(trits)
    assert packed.dtype == np.uint8 and packed.shape == (3, slab2_row_bytes(K))
    assert packed.nbytes == packed_slab2_nbytes(3, K) == 3 * (-(-K // 4))  # 2 bits per weight, no row padding
    assert np.array_equal(unpack_ternary_slab2(packed, 3, K), trits)
    assert np.array_equal(file_to_slab2(pack_ternary(trits), 3, K), packed)


def test_layout_of_a_full_block_and_the_tail():
    K = BLOCK_COLS + 10   # one full block, a tail of 10 columns in 3 bytes (2 padding trits)
    trits = np.zeros((1, K), np.int8)
    trits[0, 0], trits[0, 64], trits[0, 128], trits[0, 192] = -1, 1, 0, 1    # byte 0: digits 0, 2, 1, 2
    trits[0, 256 + 1], trits[0, 256 + 1 + 3] = 1, -1                         # tail byte 1: columns 257, 260, ...
    packed = pack_ternary_slab2(trits)[0]
    assert packed.size == 64 + 3
    assert packed[0] == (0 | 2 << 2 | 1 << 4 | 2 << 6)
    assert packed[1] == 0b01010101                                            # all trits 0
    assert packed[64 + 1] == (2 | 0 << 2 | 1 << 4 | 1 << 6)                   # 257: +1, 260: -1, 263: 0, 266: pad
    assert packed[64 + 2] == (1 | 1 << 2 | 1 << 4 | 1 << 6)                   # 258, 261, 264, 267 (pad)


def test_bad_input():
    with pytest.raises(ValueError):
        pack_ternary_slab2(np.full((2, 3), 2, np.int8))
    with pytest.raises(ValueError):
        pack_ternary_slab2(np.zeros(5, np.int8))
    with pytest.raises(ValueError):
        unpack_ternary_slab2(np.zeros(7, np.uint8), 2, 13)
