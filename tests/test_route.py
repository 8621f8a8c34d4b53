"""MoE routing in C (native/route.c, runtime/native_layer.route_top_k) against the numpy formula it
replaced: the same experts, ties to the lower expert, every size checked; the weights within 8 ulps:
numpy's float32 exp (up to ~2.5 ulps off, its docs) and libm's expf (~0.5) differ by up to ~3 ulps per
exp, a probability divides one exp by a sum of them (up to ~6-7 ulps apart), a renormalised weight
divides again by a sum of probabilities whose errors largely cancel."""

import numpy as np
import pytest

from mote_edge import _native
from mote_edge.runtime.native_layer import matmul_f32, route_top_k


def route_reference(h: np.ndarray, router: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """runtime/decoder.py's MoE.router_top_k before the C routing: numpy softmax, argmax / stable argsort."""
    logits = matmul_f32(h, router)  # [T, E]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    if k == 1:
        idx = probs.argmax(axis=-1)[:, None]
        return idx, probs[np.arange(probs.shape[0])[:, None], idx]
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(probs, idx, axis=-1)
    return idx, top / np.maximum(top.sum(axis=-1, keepdims=True), np.finfo(np.float32).eps)


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
