"""The routing model the budget-sweep benchmark replays: fitting recovers the skew and stickiness
it was generated with, and installed generators route every MoE layer of a real Engine."""

import numpy as np
import pytest

from conftest import load_benchmark


_routes = load_benchmark("route_model")
RouteGenerator, RouteModel, uniform = _routes.RouteGenerator, _routes.RouteModel, _routes.uniform
fit_route_model, install = _routes.fit_route_model, _routes.install


@pytest.mark.parametrize("model", [RouteModel(1.2, 0.5), RouteModel(0.6, 0.0), uniform()])
def test_fit_recovers_generated_statistics(model):
    gen = RouteGenerator(model, n_experts=8, top_k=1, seed=3)
    ids, weights = gen(np.zeros((20000, 4), np.float32))
    assert ids.shape == (20000, 1) and np.all(weights == 1.0)
    fit = fit_route_model([ids], 8)
    assert fit.skew == pytest.approx(model.skew, abs=0.08)
    assert fit.stickiness == pytest.approx(model.stickiness, abs=0.03)


def test_top2_routes_are_distinct_and_skewed():
    gen = RouteGenerator(RouteModel(1.0, 0.3), n_experts=4, top_k=2, seed=0)
    ids, weights = gen(np.zeros((5000, 4), np.float32))
    assert np.all(ids[:, 0] != ids[:, 1]) and np.allclose(weights, 0.5)
    counts = np.bincount(ids.reshape(-1), minlength=4)
    assert counts.max() > 1.5 * counts.min()  # popular experts exist


def test_install_routes_a_real_engine(tiny_b4_mote):
    from mote_edge.runtime.engine import Engine

    with Engine.load(tiny_b4_mote) as engine:
        install(engine, RouteModel(2.0, 0.9), seed=1)
        engine.experts.trace = []
        out = list(engine.generate_ids("hello", max_new_tokens=6, ignore_eos=True))
        trace = engine.experts.trace
    assert len(out) == 6
    layers = {w["layer"] for w in trace}
    assert layers == set(engine.config.moe_layers)
    # skew 2 + stickiness 0.9: decode waves reuse few experts per layer
    decode = [w for w in trace if w["tokens"] == 1]
    distinct = {(w["layer"], e) for w in decode for e in w["experts"]}
    assert len(distinct) < len(layers) * engine.config.moe.num_experts[0]


def test_predictions_never_change_the_routes_and_fit_recovers_the_recall():
    model = RouteModel(0.8, 0.3, (0.7, 0.4, 0.5, 0.3))
    plain = RouteGenerator(model, n_experts=8, top_k=2, seed=5)
    predicted = RouteGenerator(model, n_experts=8, top_k=2, seed=5)
    h = np.zeros((1, 4), np.float32)
    for step in range(300):
        if step % 3:
            predicted.predict(1 + step % 4)
        assert plain(h)[0].tolist() == predicted(h)[0].tolist()
    for layers in ([0, 2, 4, 6], [0, 2]):  # 4 ahead: this token's layers, or (2 MoE layers) the next tokens'
        waves = _routes.synth_trace(model, layers, n_experts=8, top_k=2, tokens=3000, seed=2)
        assert len(waves) == len(layers) * 3000 and all(len(w.predicted) == 4 for w in waves)
        recall = _routes.fit_lookahead_recall(waves)
        # a wrong guess is drawn by popularity among the other experts, never the true one: recall is the fitted one
        assert recall == pytest.approx(model.lookahead_recall, abs=0.02)


def test_an_installed_generator_answers_the_lookahead(tiny_b4_mote):
    from mote_edge.runtime.engine import Engine

    with Engine.load(tiny_b4_mote) as engine:
        install(engine, RouteModel(1.0, 0.2, (1.0,)), seed=3)
        engine.experts.trace = []
        list(engine.generate_ids("hello", max_new_tokens=6, ignore_eos=True))
        waves = _routes.waves_of(engine.experts.trace)
    # recall 1: every prediction, 1-4 MoE layers ahead (2 MoE layers: 3 and 4 are the next token's), is the wave
    # it predicts
    assert _routes.fit_lookahead_recall(waves) == (1.0, 1.0, 1.0, 1.0)


def test_lookahead_recall_on_the_shipped_trained_model_beats_chance(shipped_tiny_mote):
    """benchmarks/lookahead_accuracy.py through the runtime's own decode path: the trained tiny MoTE's next
    MoE router applied early (within a token and across the lm_head) predicts well above chance (2 of 4: 50%;
    measured on 100 questions: 71-75% from the residual after the MoE layer, 68-73% across the lm_head)."""
    r = load_benchmark("lookahead_accuracy").measure(str(shipped_tiny_mote), n=60, tokens=6)
    assert r["chance"] == 0.5
    recall = r["recall"]
    assert {("0->2", "output", "decode"), ("2->0'", "output", "decode"), ("2->0'", "repeat", "decode")} <= set(recall)
    assert recall[("0->2", "output", "decode")] > 0.6
    assert recall[("2->0'", "output", "decode")] > 0.6


def test_a_learned_lookahead_predictor_beats_the_router_on_held_out_questions(shipped_tiny_mote):
    """benchmarks/lookahead_predictor.py: a ridge map from the residual to a later MoE layer's routes,
    fitted on training questions, predicts held-out routes better than that layer's router applied early
    (measured on 300 / 100 questions: 82.1 / 79.1 / 74.7 / 74.4% against 62.5 / 56.9 / 53.2 / 56.9% 1-4 ahead)."""
    bench = load_benchmark("lookahead_predictor")
    r = bench.measure(str(shipped_tiny_mote), train=120, test=40, tokens=8)
    assert set(r["recall"]) == {1, 2, 3, 4}
    for depth, v in r["recall"].items():
        assert v["learned"] > v["router"] + 0.05, (depth, v)
    assert r["recall"][1]["learned"] > 0.75
    # installed in an Engine, the runtime's own running recall (what --prefetch adaptive decides on) sees it too
    # (the tiny model has 2 MoE layers: 3 ahead is the next token's wave of the same layer as 1 ahead)
    router, _ = bench.runtime_recall(str(shipped_tiny_mote), None, test=40, tokens=8)
    learned, _ = bench.runtime_recall(str(shipped_tiny_mote), r["predictors"], test=40, tokens=8)
    assert all(a > b + 0.05 for a, b in zip(learned, router)), (learned, router)


def test_a_lookahead_predictor_of_the_wrong_shape_is_refused(tiny_b4_mote):
    from mote_edge.runtime.engine import Engine

    with Engine.load(tiny_b4_mote) as engine:
        engine.decoder.enable_lookahead(2, adaptive=True)
        e, h = engine.decoder.layers[2].mlp.router.shape
        engine.decoder.set_lookahead_predictor(0, 1, np.zeros((e, h)), np.zeros(e))
        with pytest.raises(ValueError, match=r"lookahead predictor for layer 2 is \[4, 64\] \+ \[4\]"):
            engine.decoder.set_lookahead_predictor(0, 1, np.zeros((e, h + 1)), np.zeros(e))
        with pytest.raises(ValueError, match="no lookahead 9 MoE layers ahead of layer 0"):
            engine.decoder.set_lookahead_predictor(0, 9, np.zeros((e, h)), np.zeros(e))
        with pytest.raises(ValueError, match="no lookahead 1 MoE layers ahead of layer 1"):  # not a MoE layer
            engine.decoder.set_lookahead_predictor(1, 1, np.zeros((e, h)), np.zeros(e))

