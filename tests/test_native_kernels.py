"""C kernels (mote_edge._native) against the numpy references, on every SIMD path this CPU has.

Ternary: bit-exact (integer accumulators and the same float32 scaling as bitlinear_reference).
Int-N: integer part exact; the float sum over groups within 1e-5 of sum_g |acc_g * scale_g / s_g|
(the SIMD paths sum per-lane partial products in a different order), plus an exactly representable
case that must match bit for bit. The il16 layout (int4 and int8, G = 128): the AVX-512 GEMV bit-exact with the
group-order reference (intn_matmul_group_order, = the scalar path), every other path bit-exact with its own
rows-layout result.
"""

from __future__ import annotations

import numpy as np
import pytest

from mote_edge import _native
from mote_edge.quant import kernels
from mote_edge.quant.intn import (IntNWeight, as_rows, dequantize_intn, interleave_il16, intn_accumulators,
                                  intn_matmul_group_order, intn_matmul_reference, pack_intn,
                                  quantize_activations_grouped, quantize_intn, take_rows, unpack_intn)
from mote_edge.runtime.weights import interleave_il16_inplace
from mote_edge.quant.ternary import (bitlinear_reference, pack_ternary, packed_ternary_nbytes,
                                     quantize_activations_int8, unpack_ternary)
from mote_edge.quant.ternary_slab import pack_ternary_slab2, unpack_ternary_slab2

PATHS = kernels.available_paths()


@pytest.fixture(params=PATHS)
def path(request):
    kernels.set_kernel_path(request.param)
    assert kernels.kernel_path() == request.param
    yield request.param
    kernels.set_kernel_path("auto")


def test_paths_and_dispatch():
    assert "scalar" in PATHS
    feats = _native.cpu_features()
    assert ("avx512" in PATHS) == all(feats[k] for k in ("avx512f", "avx512bw", "avx512vnni", "avx512vbmi"))
    assert ("neon" in PATHS) == feats["asimd"] and ("dotprod" in PATHS) == feats["asimddp"]
    kernels.set_kernel_path("auto")
    assert kernels.kernel_path() == PATHS[-1]
    with pytest.raises(ValueError):   # a path of the other architecture
        kernels.set_kernel_path(next(p for p in ("neon", "avx512") if p not in PATHS))


# ---------------------------------------------------------------- ternary

TERN_SHAPES = [  # (T, N, K): odd K (tails of 1..64 bytes), N = 1, 3, 4097, T around the GEMM tiles
    (1, 1, 1), (1, 3, 5), (2, 3, 319), (1, 17, 320), (3, 5, 321), (4, 4, 640), (5, 33, 1000),
    (1, 4097, 12), (9, 4097, 7), (1, 64, 1536), (8, 19, 896), (2, 7, 4864),
]


# both packed layouts: the 1.6-bit file layout and the 2-bit cache-slab layout
PACK = {"file": pack_ternary, "slab2": pack_ternary_slab2}
UNPACK = {"file": unpack_ternary, "slab2": unpack_ternary_slab2}


@pytest.fixture(params=list(PACK))
def layout(request):
    return request.param


def _tern_ref(x, packed, gamma, N, K, layout):
    """numpy reference: BitLinear on the trits the packed bytes decode to (in `layout`)."""
    return bitlinear_reference(x, UNPACK[layout](packed, N, K), np.float32(gamma))


def _tern_case(rng, T, N, K, layout):
    trits = rng.integers(-1, 2, size=(N, K)).astype(np.int8)
    x = (rng.standard_normal((T, K)) * rng.uniform(0.01, 10)).astype(np.float32)
    return PACK[layout](trits), x


@pytest.mark.parametrize("T,N,K", TERN_SHAPES)
def test_ternary_bit_exact(path, layout, T, N, K):
    rng = np.random.default_rng(T * 100003 + N * 31 + K)
    packed, x = _tern_case(rng, T, N, K, layout)
    y = kernels.ternary_matmul(x, packed, 0.37, N, K, layout=layout)
    assert y.shape == (T, N) and y.dtype == np.float32
    assert np.array_equal(y, _tern_ref(x, packed, 0.37, N, K, layout))


@pytest.mark.parametrize("case", ["all_minus", "all_zero", "all_plus", "max_x", "zero_x", "random_bytes"])
@pytest.mark.parametrize("T", [1, 6])
def test_ternary_adversarial(path, layout, case, T):
    rng = np.random.default_rng(7)
    N, K = 13, 1541
    trits = {"all_minus": -1, "all_zero": 0, "all_plus": 1}.get(case)
    trits = np.full((N, K), trits if trits is not None else 0, dtype=np.int8)
    trits[:, ::7] = trits[:, ::7] if case.startswith("all") else rng.integers(-1, 2, size=trits[:, ::7].shape)
    packed = PACK[layout](trits)
    if case == "random_bytes":  # every byte value, including those that are no code in the layout
        packed = rng.integers(0, 256, size=packed.shape).astype(np.uint8)
    x = rng.standard_normal((T, K)).astype(np.float32)
    if case == "max_x":
        x = np.where(rng.random((T, K)) < 0.5, -3e38, 3e38).astype(np.float32)
        x[:, 0] = 3.4e38
    if case == "zero_x":
        x[:] = 0
    y = kernels.ternary_matmul(x, packed, 1.5, N, K, layout=layout)
    with np.errstate(over="ignore"):   # max_x overflows to +-inf on both sides, identically
        assert np.array_equal(y, _tern_ref(x, packed, 1.5, N, K, layout))
    if case == "zero_x":
        assert np.all(y == 0)


@pytest.mark.parametrize("T", [1, 2])
def test_ternary_empty_k(path, layout, T):
    y = kernels.ternary_matmul(np.ones((T, 0), np.float32), np.zeros(0, np.uint8), 1.0, 3, 0, layout=layout)
    assert y.shape == (T, 3) and np.all(y == 0)


def test_ternary_prequantized_and_vector(path, layout):
    rng = np.random.default_rng(3)
    N, K = 70, 777
    packed, x = _tern_case(rng, 5, N, K, layout)
    xq, s = quantize_activations_int8(x)
    ref = _tern_ref(x, packed, 0.5, N, K, layout)
    assert np.array_equal(kernels.ternary_matmul_q8(xq, s, packed, 0.5, N, K, layout=layout), ref)
    assert np.array_equal(kernels.ternary_matmul(x[2], packed, 0.5, N, K, layout=layout), ref[2])
    out = np.empty((5, N), dtype=np.float32)
    assert kernels.ternary_matmul(x, packed, 0.5, N, K, out=out, layout=layout) is out and np.array_equal(out, ref)


@pytest.mark.parametrize("T", [1, 2, 7])
def test_ternary_threads_identical(path, layout, T):
    rng = np.random.default_rng(T)
    N, K = 301, 2000
    packed, x = _tern_case(rng, T, N, K, layout)
    ys = [kernels.ternary_matmul(x, packed, 0.9, N, K, threads=th, layout=layout) for th in (1, 2, 3)]
    assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2])


@pytest.mark.parametrize("K", [0, 1, 5, 255, 256, 257, 319, 320, 321, 640, 896, 1000, 4864])
def test_file_to_slab2_relayout_matches_numpy(path, K):
    """The C re-lay of the file layout into the 2-bit slab layout equals the numpy reference byte for
    byte, for every byte value (including the 13 that are no base-3 code)."""
    from mote_edge.quant.ternary_slab import file_to_slab2
    rng = np.random.default_rng(K)
    for N in (1, 3, 17):
        packed = rng.integers(0, 256, size=packed_ternary_nbytes(N, K), dtype=np.uint8)
        got = kernels.file_to_slab2(packed, N, K)
        assert got.shape == (N, -(-K // 4)) and np.array_equal(got, file_to_slab2(packed, N, K))
    with pytest.raises(ValueError):
        kernels.file_to_slab2(packed[:-1] if packed.size else np.zeros(1, np.uint8), N, K)


# ---------------------------------------------------------------- int-N

def _intn_close(x, wq, y):
    """|y - ref| <= 1e-5 * sum_g factor_g * (sum_k q_k |xq_k| + zero_g |sum_k xq_k|): float32 rounding of
    partial sums that are at most that large (a SIMD lane holds part of a group's integer dot)."""
    G, ng = wq.group_size, -(-wq.K // wq.group_size)
    xq, _ = quantize_activations_grouped(x, G)
    q = np.zeros((wq.N, ng * G), np.float64)
    q[:, :wq.K] = unpack_intn(wq.packed, wq.N, wq.K, wq.bits, G)
    ax = np.abs(xq.astype(np.float64)).reshape(len(x), ng, G)
    mag = np.einsum("tgk,ngk->tng", ax, q.reshape(wq.N, ng, G))
    mag += wq.zeros.astype(np.float64)[None] * np.abs(xq.reshape(len(x), ng, G).sum(axis=2).astype(np.float64))[:, None]
    _, factor = intn_accumulators(x, wq)
    bound = 1e-5 * (mag * factor).sum(axis=2) + 1e-30
    err = np.abs(y.astype(np.float64) - intn_matmul_reference(x, wq).astype(np.float64))
    assert np.all(err <= bound), float((err / bound).max())


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("G", [32, 64, 128])
def test_intn_matches_reference(path, bits, G):
    rng = np.random.default_rng(bits * 7 + G)
    # T = 1 with many rows and groups: the AVX-512 GEMV streams groups across row boundaries;
    # T >= 8: the AVX-512 GEMM with 16 tokens per vector (partial token blocks, rows not a multiple of 4)
    for T, N, K in [(1, 3, G), (2, 1, 3 * G + 5), (5, 18, 2 * G - 1), (1, 4097, 20), (1, 150, 9 * G - 3),
                    (1, 7, 40 * G + 1), (8, 5, 3 * G - 7), (17, 9, 2 * G + 3), (64, 6, 4 * G)]:
        w = rng.standard_normal((N, K)).astype(np.float32)
        x = rng.standard_normal((T, K)).astype(np.float32)
        wq = quantize_intn(w, bits, G)
        y = kernels.intn_matmul(x, wq)
        assert y.shape == (T, N)
        _intn_close(x, wq, y)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("T", [1, 3, 19])
@pytest.mark.parametrize("G,K", [(64, 320), (128, 384)])
def test_intn_integer_part_exact(path, bits, T, G, K):
    """scale = 1 and per-group max|x| = 127 make every float step exact: y = sum of int accumulators."""
    rng = np.random.default_rng(bits)
    N = 9
    q = rng.integers(0, 2 ** bits, size=(N, K)).astype(np.uint8)
    q[0] = 2 ** bits - 1
    ng = K // G
    zeros = rng.integers(0, 2 ** bits, size=(N, ng)).astype(np.float16)
    zeros[1] = 0
    wq = IntNWeight(pack_intn(q, bits, G), np.ones((N, ng), np.float16), zeros, bits, G, N, K)
    x = rng.integers(-127, 128, size=(T, K)).astype(np.float32)
    x[:, ::G] = 127.0
    x[min(1, T - 1), :] = -127.0 if bits != 8 else x[min(1, T - 1), :]
    y = kernels.intn_matmul(x, wq)
    acc, factor = intn_accumulators(x, wq)
    assert np.all(factor == 1)
    assert np.array_equal(y, acc.sum(axis=2).astype(np.float32))


@pytest.mark.parametrize("bits", [4, 8])
def test_intn_adversarial_and_threads(path, bits):
    rng = np.random.default_rng(11)
    N, K = 67, 1000
    w = rng.standard_normal((N, K)).astype(np.float32)
    w[0] = 0
    w[1] = -5
    wq = quantize_intn(w, bits, 128)
    for x in (np.zeros((2, K), np.float32), np.full((3, K), -1e30, np.float32),
              rng.standard_normal((6, K)).astype(np.float32), np.full((9, K), -1e30, np.float32),
              rng.standard_normal((20, K)).astype(np.float32)):
        ys = [kernels.intn_matmul(x, wq, threads=th) for th in (1, 2)]
        assert np.array_equal(ys[0], ys[1])
        _intn_close(x, wq, ys[0])
    assert np.all(kernels.intn_matmul(np.zeros((2, K), np.float32), wq) == 0)


# ---------------------------------------------------------------- bad input never crashes

def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    N, K = 4, 50
    packed, x = _tern_case(rng, 2, N, K, "file")
    packed2 = _tern_case(rng, 2, N, K, "slab2")[0]
    bad = [
        lambda: kernels.ternary_matmul(x.astype(np.float64), packed, 1.0, N, K),
        lambda: kernels.ternary_matmul(x[:, :-1], packed, 1.0, N, K),
        lambda: kernels.ternary_matmul(np.asfortranarray(np.ones((3, K), np.float32)), packed, 1.0, N, K),
        lambda: kernels.ternary_matmul(x, packed[:, :-1].copy(), 1.0, N, K),
        lambda: kernels.ternary_matmul(x, packed, 1.0, N, K, out=np.empty((2, N), np.float64)),
        lambda: kernels.ternary_matmul(x, packed, 1.0, N, K, threads=0),
        lambda: kernels.ternary_matmul_q8(x.astype(np.int8), np.ones(3, np.float32), packed, 1.0, N, K),
        lambda: _native.ternary_matmul(packed, 1.0, x, 2, K, N + 1, np.empty((2, N), np.float32)),
        lambda: _native.ternary_matmul(packed, 1.0, x, -2, K, N, np.empty((2, N), np.float32)),
        lambda: _native.ternary_matmul(packed, 1.0, x, 2, K, N, np.empty((2, N - 1), np.float32)),
        lambda: kernels.ternary_matmul(x, packed, 1.0, N, K, layout="slab2"),   # 1.6-bit bytes as 2-bit
        lambda: kernels.ternary_matmul(x, packed2, 1.0, N, K),                  # and the other way round
        lambda: kernels.ternary_matmul(x, packed2, 1.0, N, K, layout="slab3"),
        lambda: _native.ternary2_matmul(packed, 1.0, x, 2, K, N, np.empty((2, N), np.float32)),
        lambda: _native.intn_matmul(packed, packed, packed, 5, 32, x, 2, K, N, np.empty((2, N), np.float32)),
        lambda: _native.intn_matmul(packed, packed, packed, 4, 48, x, 2, K, N, np.empty((2, N), np.float32)),
        lambda: _native.intn_matmul(packed, packed, packed, 4, 32, x, 2, K, N, np.empty((2, N), np.float32)),
    ]
    wq = quantize_intn(rng.standard_normal((N, K)).astype(np.float32), 4, 32)
    bad += [
        lambda: kernels.intn_matmul(x.astype(np.float16), wq),
        lambda: kernels.intn_matmul(x, IntNWeight(wq.packed, wq.scales.astype(np.float32), wq.zeros, 4, 32, N, K)),
        lambda: kernels.intn_matmul(x, IntNWeight(wq.packed[:, 1:].copy(), wq.scales, wq.zeros, 4, 32, N, K)),
    ]
    for f in bad:
        with pytest.raises((ValueError, BufferError)):
            f()
    with pytest.raises((ValueError, TypeError)):   # read-only output buffer
        out = np.empty((2, N), np.float32)
        out.flags.writeable = False
        _native.ternary_matmul(packed, 1.0, x, 2, K, N, out)
    assert packed_ternary_nbytes(N, K) == packed.size


def test_read_sum():
    a = np.arange(1000, dtype=np.uint64)
    assert _native.read_sum(a) == _native.read_sum(a, 2) == int(a.sum())


# ---------------------------------------------------------------- int4 and int8 G = 128 in the il16 layout

def _il16(wq: IntNWeight) -> IntNWeight:
    return IntNWeight(*interleave_il16(wq.packed, wq.scales, wq.zeros), wq.bits, wq.group_size, wq.N, wq.K, "il16")


@pytest.mark.parametrize("bits", [4, 8])
def test_il16_layout_round_trip(bits):
    rng = np.random.default_rng(5)
    for N, K in [(16, 128), (48, 300), (32, 4864)]:
        wq = quantize_intn(rng.standard_normal((N, K)).astype(np.float32), bits, 128)
        il = _il16(wq)
        assert il.packed.shape == wq.packed.shape and not np.array_equal(il.packed, wq.packed)
        back = as_rows(il)
        for a, b in ((back.packed, wq.packed), (back.scales, wq.scales), (back.zeros, wq.zeros)):
            assert np.array_equal(a, b)
        # line j of 64-byte chunk c (a group at 4 bits, half of one at 8) of block b holds bytes 64c + 4j ..
        # 64c + 4j + 3 of each of the block's 16 rows
        nc = wq.packed.shape[1] // 64
        assert nc == (K + 127) // 128 * bits // 4
        b, c, j, r = N // 16 - 1, nc - 1, 7, 5
        line = il.packed.reshape(-1)[((b * nc + c) * 16 + j) * 64:][:64].reshape(16, 4)
        assert np.array_equal(line[r], wq.packed[16 * b + r, c * 64 + 4 * j:c * 64 + 4 * j + 4])
        g = il.scales.shape[1] - 1
        assert il.scales.reshape(-1, il.scales.shape[1], 16)[b, g, r] == wq.scales[16 * b + r, g]
        ids = np.array([N - 1, 0, 17 % N, 3, 3])
        rows = take_rows(il, ids)
        assert np.array_equal(rows.packed, wq.packed[ids]) and np.array_equal(rows.scales, wq.scales[ids])
        assert np.array_equal(dequantize_intn(il), dequantize_intn(wq))
        # in place, a few blocks at a time through a small buffer (runtime/weights.py): the same bytes
        p, s, z = wq.packed.copy(), wq.scales.copy(), wq.zeros.copy()
        interleave_il16_inplace(p, s, z)
        assert np.array_equal(p, il.packed) and np.array_equal(s, il.scales) and np.array_equal(z, il.zeros)


def test_group_order_reference_is_the_scalar_path():
    """intn_matmul_group_order sums each row's group products in group order, in float32: the C scalar path."""
    rng = np.random.default_rng(6)
    kernels.set_kernel_path("scalar")
    try:
        for bits, G, T, N, K in [(4, 128, 1, 20, 900), (4, 128, 3, 7, 4864), (8, 64, 2, 5, 333), (8, 128, 1, 33, 1000),
                                 (2, 32, 1, 9, 97)]:
            wq = quantize_intn(rng.standard_normal((N, K)).astype(np.float32), bits, G)
            x = rng.standard_normal((T, K)).astype(np.float32)
            assert np.array_equal(kernels.intn_matmul(x, wq).view(np.uint32),
                                  intn_matmul_group_order(x, wq).view(np.uint32))
    finally:
        kernels.set_kernel_path("auto")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("T", [1, 2, 3, 8, 9, 17, 64, 236])
def test_il16_matches_rows_layout(path, T, bits):
    """The AVX-512 GEMV (T = 1) reads il16 natively in group order: bit-exact with intn_matmul_group_order.
    The AVX-512 GEMM (T >= 8) reads il16 natively with the rows layout's tokens-in-lanes operations per (row,
    token); every other path and T de-interleaves 16 rows into scratch: the rows layout's result, bit for bit.
    The scalar path (the reference) is intn_matmul_group_order in either layout."""
    rng = np.random.default_rng(T)
    for N, K in [(16, 128), (48, 896), (32, 4864), (64, 1000)]:
        wq = quantize_intn(rng.standard_normal((N, K)).astype(np.float32), bits, 128)
        x = rng.standard_normal((T, K)).astype(np.float32)
        ys = [kernels.intn_matmul(x, _il16(wq), threads=th) for th in (1, 2)]
        assert np.array_equal(ys[0], ys[1])
        want = intn_matmul_group_order(x, wq) if path == "avx512" and T == 1 else kernels.intn_matmul(x, wq)
        assert np.array_equal(ys[0].view(np.uint32), want.view(np.uint32))
        if path == "scalar":
            assert np.array_equal(ys[0].view(np.uint32), intn_matmul_group_order(x, wq).view(np.uint32))
        _intn_close(x, wq, ys[0])


def test_il16_refused_where_it_does_not_apply():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    for bits, G, N in [(2, 128, 16), (3, 128, 16), (4, 64, 16), (8, 32, 16), (4, 128, 24), (8, 128, 40)]:
        wq = quantize_intn(rng.standard_normal((N, 256)).astype(np.float32), bits, G)
        wq.layout = "il16"
        with pytest.raises(ValueError, match="il16"):
            kernels.intn_matmul(x, wq)
    wq.layout = "cols"
    with pytest.raises(ValueError, match="layout"):
        kernels.intn_matmul(x, wq)
