"""MoE routing in C (native/route.c, runtime/native_layer.route_top_k) against the numpy formula it
replaced: the same experts, ties to the lower expert, every size checked; the weights within 8 ulps:
numpy's float32 exp (up to ~2.5 ulps off, its docs) and libm's expf (~0.5) differ by up to ~3 ulps per
exp, a probability divides one exp by a sum of them (up to ~6-7 ulps apart), a renormalised weight
divides again by a sum of probabilities whose errors largely cancel."""

import numpy as np
import pytest

from mote_edge import _native
from mote_edge.runtime.decoder import route_top_k_numpy as route_reference
from mote_edge.runtime.native_layer import route_top_k


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


@pytest.mark.parametrize("E,k", [(4, 1), (8, 1), (8, 2), (16, 4), (130, 3), (3, 3)])
@pytest.mark.parametrize("T", [1, 37])
def test_route_matches_the_numpy_formula(E, k, T):
    rng = np.random.default_rng(E * 100 + k * 10 + T)
    H = 96
    router = (rng.standard_normal((E, H)) * 0.3).astype(np.float32)
    h = rng.standard_normal((T, H)).astype(np.float32)
    idx, weight = route_top_k(h, router, k)
    ref_idx, ref_weight = route_reference(h, router, k)
    assert idx.dtype == np.int64 and idx.shape == (T, k) and weight.dtype == np.float32 and weight.shape == (T, k)
    np.testing.assert_array_equal(idx, ref_idx)
    assert ulps(weight, ref_weight.astype(np.float32)).max() <= 8
    if k > 1:
        np.testing.assert_allclose(weight.sum(axis=-1), 1.0, rtol=1e-6)


def test_ties_go_to_the_lower_expert():
    router = np.zeros((8, 16), np.float32)
    router[[2, 5, 6]] = 1.0  # experts 2, 5, 6 tie above the rest
    h = np.ones((1, 16), np.float32)
    for k in (1, 2, 3, 4):
        idx, weight = route_top_k(h, router, k)
        ref_idx, _ = route_reference(h, router, k)
        np.testing.assert_array_equal(idx, ref_idx)
        assert idx[0].tolist() == [2, 5, 6, 0][:k]
    idx, weight = route_top_k(h, router, 3)
    assert weight[0, 0] == weight[0, 1] == weight[0, 2] and abs(weight[0, 0] - 1 / 3) < 1e-7


def test_route_checks_its_sizes():
    h, router = np.ones((2, 16), np.float32), np.ones((8, 16), np.float32)
    idx, weight = np.empty((2, 2), np.int64), np.empty((2, 2), np.float32)
    _native.route(h, 2, router, 8, 2, idx, weight, 1)
    bad = [((h, 2, router, 8, 9, idx, weight, 1), "k"), ((h, 2, router, 8, 0, idx, weight, 1), "k"),
           ((h, 2, router[:7], 8, 2, idx, weight, 1), "W"), ((h, 2, router, 8, 2, idx[:1], weight, 1), "idx"),
           ((h, 2, router, 8, 2, idx, weight[:, :1].copy(), 1), "weight"), ((h[:, :15].copy(), 2, router, 8, 2, idx, weight, 1), "W"),
           ((h, 0, router, 8, 2, idx, weight, 1), "T"), ((h, 2, router, 8, 2, idx, weight, 0), "threads"),
           ((h, 2, router, 0, 1, idx, weight, 1), "experts")]
    for args, word in bad:
        with pytest.raises(ValueError, match=word):
            _native.route(*args)
    with pytest.raises((TypeError, ValueError)):
        _native.route(h, 2, router, 8, 2, idx.astype(np.int32)[:, :1].copy(), weight, 1)


@pytest.mark.parametrize("model", ["ternary top-1 + shared", "fp top-2"])
def test_routing_decisions_and_greedy_tokens_unchanged(model, tiny_b4_mote, tiny_fp_ckpt, export_once):
    """On the test models every routing decision of a prompt and 16 greedy tokens equals the numpy
    formula's (weights within 8 ulps), and the greedy tokens equal those of a run routed by the formula."""
    from mote_edge.runtime.decoder import MoE
    from mote_edge.runtime.engine import Engine

    mote = tiny_b4_mote if model.startswith("ternary") else export_once(tiny_fp_ckpt, bits=8, group_size=32)
    prompt = "Describe the picture in detail. What shapes are there, what colors do they have?"
    with Engine.load(mote, max_context=256) as engine:
        moes = [layer.mlp for layer in engine.decoder.layers if isinstance(layer.mlp, MoE)]
        calls = []

        def compared(moe):
            def routing(h):
                idx, weight = moe.router_top_k(h)
                ref_idx, ref_weight = route_reference(h, moe.router, moe.top_k)
                calls.append((np.array_equal(idx, ref_idx), int(ulps(weight, ref_weight.astype(np.float32)).max())))
                return idx, weight
            return routing

        for moe in moes:
            moe.routing = compared(moe)
        native = list(engine.generate_ids(prompt, max_new_tokens=16, ignore_eos=True))
        for moe in moes:
            moe.routing = lambda h, moe=moe: route_reference(h, moe.router, moe.top_k)
        reference = list(engine.generate_ids(prompt, max_new_tokens=16, ignore_eos=True))
    assert moes and len(calls) >= 16 * len(moes)
    assert all(same for same, _ in calls) and max(u for _, u in calls) <= 8
    assert native == reference
