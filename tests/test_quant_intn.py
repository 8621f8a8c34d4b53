"""Group-wise int-N: RTN, bit-plane packing, dequantization, the kernel's reference maths, GPTQ."""

from __future__ import annotations

import numpy as np
import pytest

from mote_edge.quant.gptq import gptq_quantize_intn, hessian
from mote_edge.quant.intn import (BITS, GROUP_SIZES, dequantize_intn, intn_accumulators, intn_matmul_reference,
                                  intn_row_bytes, pack_intn, quantize_activations_grouped, quantize_intn,
                                  quantize_rtn, unpack_intn)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group", GROUP_SIZES)
def test_pack_roundtrip_every_scheme(bits, group):
    rng = np.random.default_rng(bits * 1000 + group)
    for K in (1, group - 1, group, 3 * group + 5):
        q = rng.integers(0, 2 ** bits, size=(3, K)).astype(np.uint8)
        packed = pack_intn(q, bits, group)
        assert packed.shape == (3, intn_row_bytes(K, bits, group)) == (3, -(-K // group) * group * bits // 8)
        assert np.array_equal(unpack_intn(packed, 3, K, bits, group), q)


def test_bit_plane_layout():
    q = np.arange(128, dtype=np.uint8)[None, :] % 16   # 4-bit, group 128: byte j = q[j] | q[j+64] << 4
    p = pack_intn(q, 4, 128)
    assert p[0, 5] == (5 % 16) | ((69 % 16) << 4)
    q3 = (np.arange(32, dtype=np.uint8) % 8)[None, :]   # 3-bit, group 32: 8 bytes of 2-bit plane + 4 bytes of 1-bit plane
    p3 = pack_intn(q3, 3, 32)
    assert p3.shape == (1, 12)
    assert p3[0, 1] == sum(((q3[0, 1 + 8 * i] & 3) << (2 * i)) for i in range(4))
    assert p3[0, 8 + 2] == sum(((q3[0, 2 + 4 * i] >> 2) << i) for i in range(8))


@pytest.mark.parametrize("bits", BITS)
def test_rtn_error_bound(bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((16, 300)).astype(np.float32)
    wq = quantize_intn(w, bits, 64)
    q, s, z = quantize_rtn(w, bits, 64)
    assert np.all(z.astype(np.float32) == np.rint(z.astype(np.float32)))   # integer zero-point
    err = np.abs(dequantize_intn(wq) - w)
    step = np.repeat(s.astype(np.float32), 64, axis=1)[:, :300]
    # RTN: half a step, except at a group's extremes, where the rounded integer zero-point and the
    # fp16 scale may push a value past the clip by up to ~0.6 step
    assert np.all(err <= step * 1.2)
    assert np.mean(err <= step * 0.5 + 1e-6) > 0.98


def test_zero_group_and_constant_row():
    w = np.zeros((2, 64), dtype=np.float32)
    w[1] = 3.0
    wq = quantize_intn(w, 4, 32)
    assert np.allclose(dequantize_intn(wq), w, atol=3.0 / 15 / 2 + 1e-3)
    assert np.all(dequantize_intn(wq)[0] == 0)


def test_bad_scheme():
    with pytest.raises(ValueError):
        quantize_rtn(np.zeros((2, 8)), 5, 32)
    with pytest.raises(ValueError):
        quantize_rtn(np.zeros((2, 8)), 4, 48)


def test_activation_groups_match_bitlinear_per_token():
    from mote_edge.quant.ternary import quantize_activations_int8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    xq, s = quantize_activations_grouped(x, 64)
    xq1, s1 = quantize_activations_int8(x)
    assert np.array_equal(xq, xq1) and np.array_equal(s[:, 0], s1)


@pytest.mark.parametrize("bits", BITS)
def test_reference_matmul_close_to_dequantized_fp32(bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((9, 200)).astype(np.float32)
    x = rng.standard_normal((4, 200)).astype(np.float32)
    wq = quantize_intn(w, bits, 32)
    y = intn_matmul_reference(x, wq)
    y_fp = x @ dequantize_intn(wq).T
    assert np.abs(y - y_fp).max() <= 0.02 * np.abs(y_fp).max()   # only int8 activation error left
    acc, factor = intn_accumulators(x, wq)
    assert acc.shape == factor.shape == (4, 9, 7)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_data(bits, act_order):
    rng = np.random.default_rng(bits)
    K, N, T = 192, 48, 1024
    mix = rng.standard_normal((K, K)) * 0.3 + np.eye(K)
    x = (rng.standard_normal((T, K)) @ mix).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    g = gptq_quantize_intn(w, x, bits, 64, act_order=act_order)
    r = quantize_intn(w, bits, 64)
    assert g.packed.shape == r.packed.shape and g.scales.shape == r.scales.shape
    ref = x @ w.T
    err_g = np.linalg.norm(ref - x @ dequantize_intn(g).T)
    err_r = np.linalg.norm(ref - x @ dequantize_intn(r).T)
    assert err_g < 0.9 * err_r


def test_gptq_handles_dead_columns_and_ragged_groups():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 70)).astype(np.float32)
    x[:, 3] = 0.0
    w = rng.standard_normal((5, 70)).astype(np.float32)
    g = gptq_quantize_intn(w, x, 4, 32)
    assert np.all(dequantize_intn(g)[:, 3] == 0)
    assert hessian(x).shape == (70, 70)
