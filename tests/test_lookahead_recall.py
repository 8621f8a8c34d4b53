"""The lookahead's recall measured while decoding (runtime/lookahead_recall.py) and `--prefetch adaptive`,
which prefetches as deep as that recall earns: scored against the routes the layers really take, no
prefetch behind a router that predicts badly, three layers ahead behind one that predicts well, and
never a changed token."""

import numpy as np
import pytest

from conftest import load_benchmark
from mote_edge.format import MoteFile
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.expert_cache import PREFETCH_BUFFERED
from mote_edge.runtime.lookahead_recall import MIN_SCORED, RECALL_TO_PREFETCH, LookaheadRecall
from mote_edge.runtime.plan import plan_file

_routes = load_benchmark("route_model")
PROMPT = "What color is the circle? Is it left or right of the star?"


def _feed(recall: LookaheadRecall, waves: int, right: dict[int, bool]) -> None:
    """`waves` decode waves (top-1, expert 1 routed): each predicts the next waves at every depth, right
    (expert 1) or wrong (expert 2) as `right[depth]` says."""
    for _ in range(waves):
        recall.routed([1])
        for d in range(1, recall.max_depth + 1):
            recall.predicted(d, [1 if right[d] else 2])


def test_recall_is_scored_per_depth_when_the_predicted_wave_routes():
    recall = LookaheadRecall(3)
    recall.routed([0])  # wave 1
    recall.predicted(1, [5, 6])  # for wave 2
    recall.predicted(2, [5, 7])  # for wave 3
    assert recall.recall(1) is None  # nothing scored yet
    recall.routed([5, 6])  # wave 2
    assert recall.count == [2, 0, 0] and recall.hits == [2.0, 0.0, 0.0]
    recall.routed([5, 6])  # wave 3: the depth-2 prediction, 1 of 2 right
    assert recall.count == [2, 2, 0] and recall.hits == [2.0, 1.0, 0.0]
    recall.routed([5, 6])  # wave 4: nothing was predicted for it
    assert recall.count == [2, 2, 0]
    recall.predicted(1, [0])
    recall.routed([4], decoding=False)  # a prefill wave (a new prompt): the pending prediction is dropped
    recall.routed([0])
    assert recall.count == [2, 2, 0]


def test_predictions_for_the_same_layer_at_different_tokens_are_kept_apart():
    """A model of 2 MoE layers predicting 3 ahead: the wave 3 later is the same layer as the next one, one
    token later; each prediction is scored against its own wave."""
    recall = LookaheadRecall(3)
    routes = [[i % 5] for i in range(40)]  # wave n routes to expert n % 5
    for n, experts in enumerate(routes):
        recall.routed(experts)
        for d in (1, 2, 3):
            if n + d < len(routes):
                recall.predicted(d, routes[n + d])  # a perfect predictor
    assert [recall.recall(d) for d in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_depth_is_the_leading_depths_at_or_above_the_threshold():
    recall = LookaheadRecall(3)
    _feed(recall, MIN_SCORED + 8, {1: True, 2: True, 3: False})
    assert recall.recall(1) == 1.0 and recall.recall(3) == 0.0
    assert recall.depth() == 2
    low = LookaheadRecall(3)
    _feed(low, MIN_SCORED + 8, {1: False, 2: True, 3: True})
    assert low.depth() == 0  # a depth counts only behind shallower ones that earn it


def test_too_few_scored_experts_prefetch_nothing():
    recall = LookaheadRecall(2)
    _feed(recall, MIN_SCORED // 2, {1: True, 2: True})
    assert recall.recall(1) is None and recall.depth() == 0


def test_the_estimate_follows_a_router_that_stops_predicting_well():
    recall = LookaheadRecall(1)
    _feed(recall, 400, {1: True})
    assert recall.depth() == 1
    _feed(recall, 400, {1: False})
    assert recall.recall(1) < RECALL_TO_PREFETCH and recall.depth() == 0


def _adaptive_run(mote, lookahead_recall: float | None, prefetch: str = "adaptive"):
    with MoteFile(mote) as f:
        budget = plan_file(f, 256, len(f.experts) // 2, vision=False).total_bytes
    with Engine.load(mote, memory_budget=budget, threads=1, max_context=256, vision=False, expert_layout="file",
                     prefetch=prefetch) as engine:
        if lookahead_recall is not None:  # the synth router replaced by routes predicted at this recall
            _routes.install(engine, _routes.RouteModel(0.5, 0.2, (lookahead_recall,)), seed=4)
        ids = list(engine.generate_ids(PROMPT, max_new_tokens=40, ignore_eos=True))
        return ids, engine.report()["experts"]


@pytest.mark.parametrize("lookahead_recall, depth", [(1.0, 3), (0.0, 0)])
def test_adaptive_prefetch_goes_as_deep_as_the_measured_recall(six_moe_layers_mote, lookahead_recall, depth):
    ids, experts = _adaptive_run(six_moe_layers_mote, lookahead_recall)
    none_ids, _ = _adaptive_run(six_moe_layers_mote, lookahead_recall, prefetch="none")
    assert ids == none_ids
    assert experts["prefetch"] == "adaptive" and experts["loader_slabs"] == PREFETCH_BUFFERED["adaptive"]
    assert experts["prefetch_depth"] == depth
    assert experts["lookahead_recall"] == pytest.approx([lookahead_recall] * 3, abs=0.15)
    if depth:
        assert experts["prefetch_used"] > 0.9 * experts["prefetches"] > 0
    else:
        assert experts["prefetches"] == 0  # a wrong predictor reads nothing


def test_adaptive_on_the_models_own_router_changes_no_token(six_moe_layers_mote):
    ids, experts = _adaptive_run(six_moe_layers_mote, None)
    assert ids == _adaptive_run(six_moe_layers_mote, None, prefetch="none")[0]
    assert all(r is None or 0.0 <= r <= 1.0 for r in experts["lookahead_recall"])


def test_a_predictor_equal_to_the_router_predicts_what_the_router_does(six_moe_layers_mote):
    """A linear predictor whose weight is the later layer's router times its norm (bias 0) ranks the experts
    as the router lookahead does (1 / rms scales every logit alike): the same recall, the same tokens."""
    with MoteFile(six_moe_layers_mote) as f:
        budget = plan_file(f, 256, len(f.experts) // 2, vision=False).total_bytes
    runs = []
    for install in (False, True):
        with Engine.load(six_moe_layers_mote, memory_budget=budget, threads=1, max_context=256, vision=False,
                         prefetch="adaptive") as engine:
            if install:
                for layer in engine.config.moe_layers:
                    for a in engine.decoder.layers[layer].mlp.lookaheads[:3]:
                        engine.decoder.set_lookahead_predictor(layer, a.depth, a.moe.router * a.norm,
                                                               np.zeros(a.moe.router.shape[0]))
            ids = list(engine.generate_ids(PROMPT, max_new_tokens=40, ignore_eos=True))
            runs.append((ids, engine.report()["experts"]["lookahead_recall"]))
    assert runs[0] == runs[1]
    assert all(r is not None for r in runs[0][1])
