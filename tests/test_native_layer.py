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
from mote_edge.runtime.decoder import MoE, SwiGLU, rms_norm
from mote_edge.runtime.engine import Engine

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


def attention_half64(layer, x, pos, rope, cached_kv):
    """x [H] -> (x + O attn, rmsnorm of it, k, v at pos), in float64; cached_kv(k, v) -> K, V [nKV, pos + 1, D]."""
    a = layer.attn
    d, group = a.head_dim, a.n_heads // a.n_kv
    h = rms64(x, layer.ln_in.astype(np.float64), layer.eps)
    parts = a.qkv.parts if a.qkv.fused is None else None
    q, k, v = ((weight64(p) @ h + b) for p, b in zip(parts, (a.bq, a.bk, a.bv)))
    cos, sin = rope.cos[pos].astype(np.float64), rope.sin[pos].astype(np.float64)
    q, k, v = rope64(q.reshape(a.n_heads, d), cos, sin), rope64(k.reshape(a.n_kv, d), cos, sin), v.reshape(a.n_kv, d)
    keys, values = cached_kv(k, v)
    att = np.empty((a.n_heads, d))
    for i in range(a.n_heads):
        s = keys[i // group] @ q[i] / np.sqrt(d)
        p = np.exp(s - s.max())
        att[i] = (p / p.sum()) @ values[i // group]
    x2 = x + weight64(a.o) @ att.reshape(-1)
    return x2, rms64(x2, layer.ln_post.astype(np.float64), layer.eps), k, v


def run_attention(engine, i, x, pos, native):
    """One layer's attention half at pos from the same cache state; returns (x', h', the layer's kv copy)."""
    dec, layer = engine.decoder, engine.decoder.layers[i]
    saved = (dec.kv.values.copy(), None if dec.kv.scales is None else dec.kv.scales.copy())
    if native:
        x2, h2 = x.copy(), np.empty_like(x)
        layer.attn_step(x2, pos, h2)
    else:
        x2 = x + layer.attn(rms_norm(x[None], layer.ln_in, layer.eps), pos, dec.rope, dec.kv, i)[0]
        h2 = rms_norm(x2[None], layer.ln_post, layer.eps)[0]
    keys, values = (a.astype(np.float64) for a in dec.kv.read(i, pos + 1))
    dec.kv.values[...] = saved[0]
    if saved[1] is not None:
        dec.kv.scales[...] = saved[1]
    return x2, h2, keys, values


@pytest.mark.parametrize("kv_bits", [32, 8])
def test_attention_half_is_as_accurate_as_the_numpy_layer(tiny_ckpt, export_once, kv_bits):
    mote = export_once(tiny_ckpt, bits=16, group_size=32)
    rng = np.random.default_rng(3)
    with Engine.load(mote, threads=1, kv_bits=kv_bits) as engine:
        pos = prefill(engine)
        dec = engine.decoder
        for i in range(len(dec.layers)):
            x = rng.standard_normal(dec.layers[i].ln_in.shape[0]).astype(np.float32)
            errs = {}
            for native in (False, True):
                x2, h2, keys, values = run_attention(engine, i, x, pos, native)

                def cached(k, v):
                    if kv_bits == 8:  # this layer's own int8 entries at pos, within half a step of k, v
                        for got, want in ((keys[:, pos], k), (values[:, pos], v)):
                            step = np.abs(want).max(axis=-1, keepdims=True) / 127
                            assert np.all(np.abs(got - want) <= step / 2 + 1e-3 * step), (i, native)
                        return keys, values
                    return (np.concatenate([keys[:, :pos], k[:, None]], axis=1),
                            np.concatenate([values[:, :pos], v[:, None]], axis=1))

                want_x, want_h, _, _ = attention_half64(dec.layers[i], x.astype(np.float64), pos, dec.rope, cached)
                errs[native] = (np.abs(x2 - want_x).max(), np.abs(h2 - want_h).max())
                scale = (np.abs(want_x).max(), np.abs(want_h).max())
            for j in range(2):
                assert errs[True][j] <= 4 * errs[False][j] + 2.0 ** -20 * scale[j], (i, j, errs)
            assert errs[True][0] <= 64 * U * scale[0]  # and float32-accurate in absolute terms


def test_ffn_matches_the_numpy_layer(exported):
    bits, mote = exported
    rng = np.random.default_rng(4)
    with Engine.load(mote, threads=1) as engine:
        prefill(engine)
        checked = 0
        for layer in engine.decoder.layers:
            mlp = layer.mlp
            ffns = [(mlp, None)] if isinstance(mlp, SwiGLU) else [(mlp.shared, None)]
            if isinstance(mlp, MoE):
                ffns += [(None, e) for e in range(2)]
            for ffn, expert in ffns:
                h = rng.standard_normal(layer.ln_in.shape[0]).astype(np.float32)
                y0 = rng.standard_normal(h.shape[0]).astype(np.float32)
                coef = 1.0 if expert is None else 0.375
                got = y0.copy()
                if expert is None:
                    want = y0 + ffn(h[None])[0]
                    ffn.step(h, got, coef, 1)
                else:
                    e = engine.experts.get(mlp.layer, expert)
                    want = y0 + e(h[None])[0] * np.float32(coef)
                    specs = ((e.gate.native_spec(), e.up.native_spec()), e.down.native_spec())
                    from mote_edge.runtime.native_layer import ffn_step
                    ffn_step(h, got, coef, *specs, 1)
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
