"""The C entry points (native/module.c) check every length, dimension and count they are given: wrong
sizes give a ValueError (or TypeError for a read-only output), never a read or write outside a buffer;
degenerate sizes (K, N or T = 0) give zeros on every kernel path."""

import numpy as np
import pytest

from mote_edge import _native
from mote_edge.quant import kernels
from mote_edge.quant.intn import IntNWeight

PATHS = kernels.available_paths()


@pytest.fixture(params=PATHS)
def path(request):
    kernels.set_kernel_path(request.param)
    yield request.param
    kernels.set_kernel_path("auto")


def u8(n):
    return np.zeros(n, np.uint8)


def f32(n):
    return np.zeros(n, np.float32)


def f16(n):
    return np.zeros(n, np.float16)


@pytest.mark.parametrize("T", [1, 2, 3, 17])
def test_empty_k_gives_zeros_on_every_path(path, T):
    """K = 0 used to divide by zero in the AVX-512 ternary GEMV (T = 1)."""
    for N in (0, 1, 3, 40):
        for layout in ("file", "slab2"):
            y = kernels.ternary_matmul(np.ones((T, 0), np.float32), u8(0), 1.0, N, 0, layout=layout)
            assert y.shape == (T, N) and np.all(y == 0)
        y = kernels.ternary_matmul_q8(np.ones((T, 0), np.int8), np.ones(T, np.float32), u8(0), 1.0, N, 0)
        assert np.all(y == 0)
        for bits in (2, 3, 4, 8):
            w = IntNWeight(np.zeros((N, 0), np.uint8), np.zeros((N, 0), np.float16), np.zeros((N, 0), np.float16),
                           bits, 32, N, 0)
            y = kernels.intn_matmul(np.ones((T, 0), np.float32), w)
            assert y.shape == (T, N) and np.all(y == 0)


def test_empty_t_and_n(path):
    out = f32(0)
    _native.ternary_matmul(u8(3 * 2), 1.0, f32(0), 0, 10, 3, out, 1)
    _native.ternary_matmul(u8(0), 1.0, f32(10), 1, 10, 0, out, 1)
    _native.intn_matmul(u8(0), f16(0), f16(0), 4, 32, f32(10), 1, 10, 0, out, 1)
    _native.ternary_file_to_slab2(u8(0), 0, 10, u8(0))


# each: (function, good arguments, index of the argument to break, a wrong value, words in the error)
T, K, N = 2, 10, 3
TERN = (u8(N * 2), 1.0, f32(T * K), T, K, N, f32(T * N), 1)
TERN_Q8 = (u8(N * 2), 1.0, np.zeros(T * K, np.int8), f32(T), T, K, N, f32(T * N), 1)
TERN2 = (u8(N * 3), 1.0, f32(T * K), T, K, N, f32(T * N), 1)
SLAB2 = (u8(N * 2), N, K, u8(N * 3))
INTN = (u8(N * 16), f16(N), f16(N), 4, 32, f32(T * K), T, K, N, f32(T * N), 1)
GEMM = (f32(N * K), f32(T * K), T, K, N, f32(T * N), 1)
WRONG = [
    ("gemm_f32", GEMM, 0, f32(N * K - 1), "W"),
    ("gemm_f32", GEMM, 1, f32(T * K + 1), "x"),
    ("gemm_f32", GEMM, 5, f32(T * N - 1), "out"),
    ("gemm_f32", GEMM, 2, -1, "must be >= 0"),
    ("gemm_f32", GEMM, 3, 2 ** 31 - 1, "at most"),
    ("gemm_f32", GEMM, 6, 0, "threads"),
    ("ternary_matmul", TERN, 0, u8(N * 2 - 1), "packed"),
    ("ternary_matmul", TERN, 2, f32(T * K + 1), "x"),
    ("ternary_matmul", TERN, 6, f32(T * N - 1), "out"),
    ("ternary_matmul", TERN, 3, -1, "must be >= 0"),
    ("ternary_matmul", TERN, 4, -5, "must be >= 0"),
    ("ternary_matmul", TERN, 5, -3, "must be >= 0"),
    ("ternary_matmul", TERN, 4, 2 ** 31 - 1, "at most"),
    ("ternary_matmul", TERN, 5, 2 ** 29, "at most"),
    ("ternary_matmul", TERN, 7, 0, "threads"),
    ("ternary_matmul", TERN, 7, 257, "threads"),
    ("ternary_matmul_q8", TERN_Q8, 2, np.zeros(T * K - 1, np.int8), "xq"),
    ("ternary_matmul_q8", TERN_Q8, 3, f32(T + 1), "s"),
    ("ternary2_matmul", TERN2, 0, u8(N * 2), "packed"),
    ("ternary2_matmul_q8", (u8(N * 3), 1.0, np.zeros(T * K, np.int8), f32(T), T, K, N, f32(T * N), 1), 7,
     f32(1), "out"),
    ("ternary_file_to_slab2", SLAB2, 0, u8(N * 2 + 1), "packed"),
    ("ternary_file_to_slab2", SLAB2, 3, u8(N * 3 - 1), "out"),
    ("ternary_file_to_slab2", SLAB2, 2, 2 ** 31 - 1, "at most"),
    ("intn_matmul", INTN, 0, u8(N * 16 + 1), "packed"),
    ("intn_matmul", INTN, 1, f16(N + 1), "scales"),
    ("intn_matmul", INTN, 2, f16(N - 1), "zeros"),
    ("intn_matmul", INTN, 3, 5, "bits"),
    ("intn_matmul", INTN, 4, 0, "group_size"),
    ("intn_matmul", INTN, 4, 48, "group_size"),
    ("intn_matmul", INTN, 5, f32(T * K - 1), "x"),
    ("intn_matmul", INTN, 9, f32(T * N + 1), "out"),
    ("intn_matmul", INTN, 7, 2 ** 31 - 100, "at most"),  # K + G - 1 would overflow an int
    ("intn_matmul", INTN, 10, 0, "threads"),
]


# intn_matmul with layout 1 (il16: int4 or int8, G = 128, N % 16 == 0): [16, 10] -> one group per row
def intn_il16(bits: int) -> tuple:
    return (u8(16 * 16 * bits), f16(16), f16(16), bits, 128, f32(T * K), T, K, 16, f32(T * 16), 1, 1)


IL16_WRONG = [(11, 2, "layout"), (11, -1, "layout"), (3, 2, "layout"), (3, 3, "layout"), (4, 64, "layout"),
              (0, None, "packed"), (1, f16(15), "scales"), (2, f16(17), "zeros"), (9, f32(T * 16 - 1), "out")]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("index, value, words", IL16_WRONG, ids=[f"arg{i}-{w}" for i, _, w in IL16_WRONG])
def test_intn_il16_layout_checks(index, value, words, bits):
    good = intn_il16(bits)
    _native.intn_matmul(*good)
    bad = list(good)
    bad[index] = u8(16 * 16 * bits - 1) if index == 0 else value  # packed one byte short
    with pytest.raises(ValueError, match=words):
        _native.intn_matmul(*bad)
    n12 = list(good)
    n12[0], n12[1], n12[2], n12[8], n12[9] = u8(12 * 16 * bits), f16(12), f16(12), 12, f32(T * 12)
    _native.intn_matmul(*n12[:-1], 0)  # N = 12 in the rows layout runs
    with pytest.raises(ValueError, match="layout"):
        _native.intn_matmul(*n12)       # and is refused as il16


@pytest.mark.parametrize("fn, args, index, value, words", WRONG,
                         ids=[f"{w[0]}-arg{w[2]}-{w[4].replace(' ', '_')}" for w in WRONG])
def test_wrong_sizes_are_value_errors(fn, args, index, value, words):
    getattr(_native, fn)(*args)  # the good arguments run
    bad = list(args)
    bad[index] = value
    with pytest.raises(ValueError, match=words):
        getattr(_native, fn)(*bad)


def test_products_that_would_overflow_are_refused():
    with pytest.raises(ValueError, match="T \\* K too large"):
        _native.ternary_matmul(u8(0), 1.0, f32(0), 2 ** 31 - 1, 2 ** 20, 0, f32(0), 1)
    with pytest.raises(ValueError, match="T \\* N too large"):
        _native.ternary_matmul(u8(0), 1.0, f32(0), 2 ** 20, 1, 2 ** 21, f32(0), 1)


def test_buffers_must_be_contiguous_and_outputs_writable():
    with pytest.raises(ValueError):
        _native.ternary_matmul(u8(N * 2), 1.0, np.zeros((T, 2 * K), np.float32)[:, ::2], T, K, N, f32(T * N), 1)
    with pytest.raises(TypeError):
        _native.ternary_matmul(u8(N * 2), 1.0, f32(T * K), T, K, N, bytes(4 * T * N), 1)
    with pytest.raises(ValueError, match="threads"):
        _native.read_sum(bytes(64), 0)
    assert _native.read_sum(bytes(13), 2) == 0  # the partial last word is not read


# ---- the decode-step layer (native/layer.c): attn_step and ffn_step ----
H, NH, NKV, D, CTX, I = 16, 4, 2, 4, 6, 8
NQ, NK = NH * D, NKV * D


def spec(kind, n, k, **parts):
    """A linear spec (runtime/weights.py Linear.native_spec) with zero weights of the right size."""
    if kind == 0:
        return (0, n, k, f32(n * k), None, None, 0, 0, 0.0)
    if kind == 1:
        ng = (k + 31) // 32
        return (1, n, k, parts.get("w", u8(n * ng * 16)), parts.get("scales", f16(n * ng)), f16(n * ng), 4, 32, 0.0)
    if kind == 4:  # int4 (or int8: bits=8), G = 128, rows interleaved by 16 (n % 16 == 0)
        ng, bits = (k + 127) // 128, parts.get("bits", 4)
        return (4, n, k, parts.get("w", u8(n * ng * 16 * bits)), parts.get("scales", f16(n * ng)), f16(n * ng), bits, 128,
                0.0)
    return (kind, n, k, parts.get("w", u8(n * ((k + 6 - kind) // (7 - kind)))), None, None, 0, 0, 1.0)


def attn_layer(**change):
    fields = dict(H=H, heads=NH, kv_heads=NKV, D=D, context=CTX, eps=1e-6, ln_in=f32(H), ln_post=f32(H),
                  qkv=(spec(4, NQ + 2 * NK, H),), bq=f32(NQ), bk=f32(NK), bv=f32(NK), o=spec(0, H, NQ),
                  cos=f32(CTX * D), sin=f32(CTX * D), kv_bits=32, kv=f32(2 * NKV * CTX * D), kv_scales=None)
    fields.update(change)
    return tuple(fields.values())


def ffn_args(**change):
    fields = dict(h=f32(H), y=f32(H), coef=1.0, gate_up=(spec(0, 2 * I, H),), down=spec(1, H, I), threads=1)
    fields.update(change)
    return tuple(fields.values())


ATTN_WRONG = [
    (dict(ln_in=f32(H - 1)), "ln_in"), (dict(ln_post=f32(H + 1)), "ln_post"), (dict(bq=f32(NQ - 1)), "bq"),
    (dict(bv=f32(NK + 1)), "bv"), (dict(cos=f32(CTX * D - 1)), "cos"), (dict(kv=f32(2 * NKV * CTX * D - 1)), "kv"),
    (dict(kv_bits=8, kv=np.zeros(2 * NKV * CTX * D, np.int8)), "kv_scales"),
    (dict(kv_bits=8, kv=np.zeros(2 * NKV * CTX * D, np.int8), kv_scales=f32(2 * NKV * CTX - 1)), "kv_scales"),
    (dict(kv_bits=16), "kv bits"), (dict(heads=3), "multiple"), (dict(D=3, cos=f32(CTX * 3), sin=f32(CTX * 3)), "even"),
    (dict(kv_heads=0), "kv heads"), (dict(context=0), "context"),
    (dict(qkv=(spec(1, NQ + 2 * NK - 1, H),)), "qkv is"), (dict(qkv=(spec(0, NQ, H),) * 2), "1 \\(fused\\) or 3"),
    (dict(qkv=(spec(0, NQ, H), spec(0, NK, H), spec(0, NK + 1, H))), "v is"), (dict(o=spec(0, H, NQ + 1)), "o is"),
    (dict(o=(9, H, NQ, f32(H * NQ), None, None, 0, 0, 0.0)), "unknown linear kind"),
    (dict(o=(1, H, NQ, u8(H), f16(H), f16(H), 5, 32, 0.0)), "bits"),
    (dict(o=(1, H, NQ, u8(H), f16(H), f16(H), 4, 48, 0.0)), "group_size"),
    (dict(o=spec(1, H, NQ, scales=f16(1))), "scales"), (dict(o=spec(2, H, NQ, w=u8(1))), "o has"),
    (dict(o=(0, H, NQ)), "linear spec"),
    (dict(o=(4, H, NQ, u8(H * 16), f16(H), f16(H), 4, 32, 0.0)), "interleaved"),
    (dict(o=(4, H, NQ, u8(H * 32), f16(H), f16(H), 2, 128, 0.0)), "interleaved"),
    (dict(o=(4, H, NQ, u8(H * 48), f16(H), f16(H), 3, 128, 0.0)), "interleaved"),
    (dict(o=(4, H, NQ, u8(H * 128), f16(H), f16(H), 8, 64, 0.0)), "interleaved"),
    (dict(o=spec(4, H, NQ, bits=8, w=u8(H * 128 - 1))), "o has"),
    (dict(qkv=(spec(4, NQ + 2 * NK, H, scales=f16(1)),)), "scales"),
    (dict(qkv=(spec(4, NQ + 2 * NK, H, w=u8(64)),)), "qkv has"),
]


def test_attn_and_ffn_steps_run_on_every_path(path):
    x, h = f32(H), f32(H)
    for kv_bits, kv, scales in ((32, f32(2 * NKV * CTX * D), None),
                                (8, np.zeros(2 * NKV * CTX * D, np.int8), f32(2 * NKV * CTX))):
        for pos in range(CTX):
            _native.attn_step(x, pos, h, attn_layer(kv_bits=kv_bits, kv=kv, kv_scales=scales), 2)
    for gu in ((spec(0, 2 * I, H),), (spec(2, I, H), spec(3, I, H)), (spec(1, I, H), spec(0, I, H)), (spec(4, 2 * I, H),)):
        _native.ffn_step(*ffn_args(gate_up=gu))
    _native.attn_step(x, 0, h, attn_layer(qkv=(spec(1, NQ + 2 * NK, H),), o=spec(4, H, NQ)), 1)
    _native.attn_step(x, 0, h, attn_layer(qkv=(spec(4, NQ + 2 * NK, H, bits=8),), o=spec(4, H, NQ, bits=8)), 1)
    assert not x.any() and not h.any()  # zero weights and input: zero output, no NaN from the norms


@pytest.mark.parametrize("change, words", ATTN_WRONG, ids=[w for _, w in ATTN_WRONG])
def test_attn_step_checks_every_size(change, words):
    with pytest.raises(ValueError, match=words):
        _native.attn_step(f32(H), 0, f32(H), attn_layer(**change), 1)


@pytest.mark.parametrize("pos, x, h, threads, words", [
    (CTX, f32(H), f32(H), 1, "pos"), (-1, f32(H), f32(H), 1, "pos"), (0, f32(H - 1), f32(H), 1, "x has"),
    (0, f32(H), f32(H + 1), 1, "h has"), (0, f32(H), f32(H), 0, "threads"),
    (0, np.zeros(H, np.float64)[::2], f32(H), 1, "x must be a C-contiguous"),
    (0, bytes(4 * H), f32(H), 1, "x must be a C-contiguous writable"),
])
def test_attn_step_checks_its_buffers(pos, x, h, threads, words):
    with pytest.raises(ValueError, match=words):
        _native.attn_step(x, pos, h, attn_layer(), threads)


@pytest.mark.parametrize("change, words", [
    (dict(h=f32(H - 1)), "h has"), (dict(y=f32(H + 1)), "y has"), (dict(y=bytes(4 * H)), "writable"),
    (dict(gate_up=(spec(0, 2 * I + 1, H),)), "gate_up is"), (dict(gate_up=(spec(0, I, H),) * 3), "1 \\(fused\\) or 2"),
    (dict(gate_up=(spec(2, I, H), spec(2, I, H - 1))), "up is"), (dict(down=spec(0, H, I, )[:2]), "linear spec"),
    (dict(down=(0, 0, I, f32(0), None, None, 0, 0, 0.0)), "down rows"),
    (dict(gate_up=(spec(3, I, H, w=u8(I * 5)), spec(3, I, H))), "gate has"), (dict(threads=300), "threads"),
])
def test_ffn_step_checks_every_size(change, words):
    with pytest.raises(ValueError, match=words):
        _native.ffn_step(*ffn_args(**change))


# ---- the prefill chunk (native/layer.c): attn_chunk and ffn_chunk take T rows ----
def test_chunks_run_on_every_path(path):
    for kv_bits, kv, scales in ((32, f32(2 * NKV * CTX * D), None),
                                (8, np.zeros(2 * NKV * CTX * D, np.int8), f32(2 * NKV * CTX))):
        for T, start in ((CTX, 0), (2, 3), (1, CTX - 1)):
            x, h = f32(T * H), f32(T * H)
            _native.attn_chunk(x, T, start, h, attn_layer(kv_bits=kv_bits, kv=kv, kv_scales=scales), 2)
            assert not x.any() and not h.any()
    for gu in ((spec(0, 2 * I, H),), (spec(2, I, H), spec(3, I, H)), (spec(1, I, H), spec(0, I, H))):
        _native.ffn_chunk(*chunk_ffn_args(gate_up=gu))


@pytest.mark.parametrize("T, start, x, h, threads, words", [
    (0, 0, f32(0), f32(0), 1, "T must be in 1..6"), (CTX + 1, 0, f32((CTX + 1) * H), f32((CTX + 1) * H), 1, "T"),
    (2, CTX - 1, f32(2 * H), f32(2 * H), 1, "start must be in 0..4"), (2, -1, f32(2 * H), f32(2 * H), 1, "start"),
    (2, 0, f32(2 * H - 1), f32(2 * H), 1, "x has"), (2, 0, f32(2 * H), f32(H), 1, "h has"),
    (2, 0, f32(2 * H), f32(2 * H), 0, "threads"), (2, 0, bytes(8 * H), f32(2 * H), 1, "x must be a C-contiguous writable"),
])
def test_attn_chunk_checks_its_positions_and_buffers(T, start, x, h, threads, words):
    with pytest.raises(ValueError, match=words):
        _native.attn_chunk(x, T, start, h, attn_layer(), threads)


@pytest.mark.parametrize("change, words", ATTN_WRONG[:6], ids=[w for _, w in ATTN_WRONG[:6]])
def test_attn_chunk_checks_the_layer_as_the_step_does(change, words):
    with pytest.raises(ValueError, match=words):
        _native.attn_chunk(f32(2 * H), 2, 0, f32(2 * H), attn_layer(**change), 1)


def chunk_ffn_args(**change):
    T = change.pop("T", 3)
    fields = dict(h=f32(T * H), T=T, y=f32(T * H), coef=f32(T), gate_up=(spec(0, 2 * I, H),), down=spec(1, H, I),
                  threads=1)
    fields.update(change)
    return tuple(fields.values())


@pytest.mark.parametrize("change, words", [
    (dict(h=f32(3 * H - 1)), "h has"), (dict(y=f32(3 * H + 1)), "y has"), (dict(y=bytes(12 * H)), "writable"),
    (dict(coef=f32(2)), "coef has"), (dict(coef=np.zeros(6, np.float32)[::2]), "coef must be a C-contiguous"),
    (dict(T=0, h=f32(0), y=f32(0), coef=f32(0)), "T must be"), (dict(gate_up=(spec(0, 2 * I + 1, H),)), "gate_up is"),
    (dict(gate_up=(spec(2, I, H), spec(2, I, H - 1))), "up is"), (dict(threads=0), "threads"),
])
def test_ffn_chunk_checks_every_size(change, words):
    with pytest.raises(ValueError, match=words):
        _native.ffn_chunk(*chunk_ffn_args(**change))
