"""The decode step's native layer (native/layer.c through runtime/native_layer.py) against the numpy layer
of runtime/decoder.py (the reference) and a float64 evaluation of the same maths.

Tolerances, derived:
* float weights (`--bits 16`): both layers are float32 evaluations of one expression that differ only in
  summation order, so each is compared with the float64 evaluation on the same inputs, and the native
  layer's error must stay within 4x the numpy layer's own (plus 2^-20 of the output scale for layers where
  numpy happens to be nearly exact); a wrong sign, index or scale is orders of magnitude off;
* quantized weights: both call the same int-N / ternary kernels, but an ulp of difference upstream (exp,
  a norm's sum) can flip one int8 activation rounding, a step of 1/127 of a group's max |x|: 2e-2 of the
  output scale, the tolerance of tests/test_parity_matrix.py;
* the int8 KV write is element-wise and bit-identical to runtime/kv_cache.py's on the same input, so the
  native layer's cache entries are checked against a half quantization step of the float64 k and v.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from mote_edge.quant import kernels
from mote_edge.runtime.decoder import MoE, SwiGLU, add_expert_rows, expert_specs, rms_norm
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.native_layer import ffn_step

PROMPT = "What color is the circle?"
U = 2.0 ** -24  # float32 unit roundoff


@pytest.fixture(scope="module", params=[16, 4])
def exported(request, tiny_ckpt, export_once):
    return request.param, export_once(tiny_ckpt, bits=request.param, group_size=32)


def prefill(engine: Engine) -> int:
    """The prompt through the numpy layer; returns the next position."""
    engine.decoder.native = False
    engine.decoder.reset()
    engine.decoder.forward(engine._prompt_embeddings(PROMPT, None))
    return engine.decoder.length


# ---- float64 reference of the attention half ----
def rms64(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x) + eps))


def rope64(x, cos, sin):  # x [heads, D]
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[:, half:], x[:, :half]], axis=-1) * sin


def weight64(linear) -> np.ndarray:
    return linear.w.astype(np.float64)


def attention_half64(layer, x, start, rope, cached_kv):
    """x [T, H] at positions start .. start + T - 1 -> (x + O attn, rmsnorm of it, k, v [T, nKV, D]) in float64,
    causal; cached_kv(k, v) -> K, V [nKV, start + T, D]."""
    a = layer.attn
    d, group, t = a.head_dim, a.n_heads // a.n_kv, x.shape[0]
    h = np.stack([rms64(r, layer.ln_in.astype(np.float64), layer.eps) for r in x])  # [T, H]
    parts = a.qkv.parts if a.qkv.fused is None else None
    q, k, v = ((h @ weight64(p).T + b) for p, b in zip(parts, (a.bq, a.bk, a.bv)))
    cos, sin = rope.cos[start:start + t].astype(np.float64), rope.sin[start:start + t].astype(np.float64)
    q = np.stack([rope64(q[i].reshape(a.n_heads, d), cos[i], sin[i]) for i in range(t)])  # [T, nH, D]
    k = np.stack([rope64(k[i].reshape(a.n_kv, d), cos[i], sin[i]) for i in range(t)])  # [T, nKV, D]
    v = v.reshape(t, a.n_kv, d)
    keys, values = cached_kv(k, v)
    att = np.empty((t, a.n_heads, d))
    for i in range(t):
        S = start + i + 1
        for j in range(a.n_heads):
            s = keys[j // group, :S] @ q[i, j] / np.sqrt(d)
            p = np.exp(s - s.max())
            att[i, j] = (p / p.sum()) @ values[j // group, :S]
    x2 = x + att.reshape(t, -1) @ weight64(a.o).T
    return x2, np.stack([rms64(r, layer.ln_post.astype(np.float64), layer.eps) for r in x2]), k, v


def run_attention(engine, i, x, start, native):
    """One layer's attention half on x [T, H] at `start` from the same cache state; returns (x', h', the
    layer's kv copy)."""
    dec, layer = engine.decoder, engine.decoder.layers[i]
    saved = (dec.kv.values.copy(), None if dec.kv.scales is None else dec.kv.scales.copy())
    if native:
        x2, h2 = x.copy(), np.empty_like(x)
        layer.attn_step.chunk(x2, start, h2) if x.shape[0] > 1 else layer.attn_step(x2[0], start, h2[0])
    else:
        x2 = x + layer.attn(rms_norm(x, layer.ln_in, layer.eps), start, dec.rope, dec.kv, i)
        h2 = rms_norm(x2, layer.ln_post, layer.eps)
    keys, values = (a.astype(np.float64) for a in dec.kv.read(i, start + x.shape[0]))
    dec.kv.values[...] = saved[0]
    if saved[1] is not None:
        dec.kv.scales[...] = saved[1]
    return x2, h2, keys, values


@pytest.mark.parametrize("kv_bits", [32, 8])
@pytest.mark.parametrize("tokens", [1, 19], ids=["step", "chunk"])
def test_attention_half_is_as_accurate_as_the_numpy_layer(tiny_ckpt, export_once, kv_bits, tokens):
    """A decode step (attn_step) and a prefill chunk (attn_chunk: causal over the cache and the chunk)."""
    mote = export_once(tiny_ckpt, bits=16, group_size=32)
    rng = np.random.default_rng(3)
    with Engine.load(mote, threads=2, kv_bits=kv_bits) as engine:
        start = prefill(engine)
        dec = engine.decoder
        for i in range(len(dec.layers)):
            x = rng.standard_normal((tokens, dec.layers[i].ln_in.shape[0])).astype(np.float32)
            errs = {}
            for native in (False, True):
                x2, h2, keys, values = run_attention(engine, i, x, start, native)

                def cached(k, v):
                    if kv_bits == 8:  # this layer's own int8 entries of the chunk, within half a step of k, v
                        for got, want in ((keys[:, start:], k), (values[:, start:], v)):
                            want = want.transpose(1, 0, 2)  # [nKV, T, D]
                            step = np.abs(want).max(axis=-1, keepdims=True) / 127
                            assert np.all(np.abs(got - want) <= step / 2 + 1e-3 * step), (i, native)
                        return keys, values
                    return (np.concatenate([keys[:, :start], k.transpose(1, 0, 2)], axis=1),
                            np.concatenate([values[:, :start], v.transpose(1, 0, 2)], axis=1))

                want_x, want_h, _, _ = attention_half64(dec.layers[i], x.astype(np.float64), start, dec.rope, cached)
                errs[native] = (np.abs(x2 - want_x).max(), np.abs(h2 - want_h).max())
                scale = (np.abs(want_x).max(), np.abs(want_h).max())
            for j in range(2):
                assert errs[True][j] <= 4 * errs[False][j] + 2.0 ** -20 * scale[j], (i, j, errs)
            assert errs[True][0] <= 64 * U * scale[0]  # and float32-accurate in absolute terms


@pytest.mark.parametrize("tokens", [1, 5], ids=["step", "chunk"])
def test_ffn_matches_the_numpy_layer(exported, tokens):
    """ffn_step (one row) and ffn_chunk (rows of a prefill chunk, a coefficient each) against the numpy FFN."""
    bits, mote = exported
    rng = np.random.default_rng(4)
    with Engine.load(mote, threads=2) as engine:
        prefill(engine)
        checked = 0
        for layer in engine.decoder.layers:
            mlp = layer.mlp
            ffns = [(mlp, None)] if isinstance(mlp, SwiGLU) else [(mlp.shared, None)]
            if isinstance(mlp, MoE):
                ffns += [(None, e) for e in range(2)]
            for ffn, expert in ffns:
                h = rng.standard_normal((tokens, layer.ln_in.shape[0])).astype(np.float32)
                y0 = rng.standard_normal(h.shape).astype(np.float32)
                coef = np.ones(tokens, np.float32) if expert is None else rng.uniform(0.1, 1, tokens).astype(np.float32)
                e = None if expert is None else engine.experts.get(mlp.layer, expert)
                want = y0 + (ffn(h) if e is None else e(h) * coef[:, None])
                got = y0.copy()
                if tokens == 1 and e is None:
                    ffn.step(h[0], got[0], 1.0, 2)
                elif tokens == 1:
                    ffn_step(h[0], got[0], float(coef[0]), *expert_specs(e), 2)
                elif e is None:
                    ffn.chunk(h, got, 2)
                else:
                    add_expert_rows(e, h, got, np.arange(tokens), coef, 2)
                scale = np.abs(want - y0).max()
                tol = 2e-2 if (bits == 4 or expert is not None) else 1e-4
                assert np.abs(got - want).max() <= tol * scale, (mlp, expert)
                checked += 1
        assert checked >= 6


@pytest.mark.parametrize("kv_bits", [32, 8])
def test_decode_steps_match_the_numpy_decoder(exported, kv_bits):
    """Teacher-forced decode steps from one prompt: logits of the native and the numpy decoder agree to the
    runtime's tolerance (tests/test_runtime.py) at every step, and the greedy tokens are the same."""
    bits, mote = exported
    tol = 1e-4 if bits == 16 else 2e-2
    runs = {}
    for native in (False, True):
        with Engine.load(mote, threads=1, kv_bits=kv_bits) as engine:
            engine.decoder.native = native
            x = engine._prompt_embeddings(PROMPT, None)
            engine.decoder.reset()
            engine.decoder.forward(x)
            steps = [engine.decoder.forward(engine.decoder.embed(np.array([t]))) for t in (5, 9, 2, 7, 11, 3)]
            tokens = list(engine.generate_ids(PROMPT, max_new_tokens=16, ignore_eos=True))
        runs[native] = np.stack(steps), tokens
    (a, ta), (b, tb) = runs[False], runs[True]
    assert (np.abs(a - b).max(axis=-1) <= tol * np.abs(a).max(axis=-1)).all()
    assert ta == tb


def test_decoder_path_from_the_environment(tiny_b4_mote, monkeypatch):
    monkeypatch.setenv("MOTE_DECODER", "numpy")
    with Engine.load(tiny_b4_mote, threads=1) as engine:
        assert engine.decoder.native is False
    monkeypatch.delenv("MOTE_DECODER")
    with Engine.load(tiny_b4_mote, threads=1) as engine:
        assert engine.decoder.native is True


def test_unknown_decoder_path_is_a_one_line_error(tiny_b4_mote):
    r = run_cli("run", str(tiny_b4_mote), "--prompt", "hi", "--max-new-tokens", "2", env={"MOTE_DECODER": "fortran"})
    assert r.returncode != 0
    assert "MOTE_DECODER must be one of native, numpy" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(params=["scalar", "auto"])
def kernel_path(request):
    """The scalar fallback forced (MOTE_KERNEL_PATH=scalar in-process), or the best path."""
    kernels.set_kernel_path(request.param)
    yield request.param
    kernels.set_kernel_path("auto")


@pytest.mark.parametrize("kv_bits", [32, 8])
def test_prefill_in_chunks_matches_the_numpy_decoder(exported, kv_bits, kernel_path, monkeypatch):
    """The prompt in chunks of 7 positions (each chunk attends to the cache of the ones before and causally
    within itself): the native prefill's last logits agree with the numpy layer's to the runtime's tolerance,
    on the scalar path and the best one."""
    from mote_edge.runtime import decoder

    bits, mote = exported
    monkeypatch.setattr(decoder, "PREFILL_CHUNK", 7)
    tol = 1e-4 if bits == 16 else 2e-2
    logits = {}
    for native in (False, True):
        with Engine.load(mote, threads=2, kv_bits=kv_bits) as engine:
            engine.decoder.native = native
            x = engine._prompt_embeddings(PROMPT, None)
            assert x.shape[0] > 2 * 7
            engine.decoder.reset()
            logits[native] = engine.decoder.forward(x)
    assert np.abs(logits[True] - logits[False]).max() <= tol * np.abs(logits[False]).max()


def test_native_f32_matmul_matches_numpy():
    from mote_edge.runtime.native_layer import matmul_f32

    rng = np.random.default_rng(5)
    for T, N, K, threads in ((1, 8, 896, 1), (37, 70, 33, 2), (3, 1, 1, 2)):
        x, w = rng.standard_normal((T, K)).astype(np.float32), rng.standard_normal((N, K)).astype(np.float32)
        want = x.astype(np.float64) @ w.astype(np.float64).T
        bound = 2 * K * U * (np.abs(x) @ np.abs(w).T)  # float32 summation error bound, any order
        assert np.all(np.abs(matmul_f32(x, w, threads) - want) <= bound)
    with pytest.raises(ValueError, match="matmul_f32"):
        matmul_f32(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))
