"""The lookahead's recall measured while decoding (runtime/lookahead_recall.py) and `--prefetch adaptive`,
which prefetches as deep as that recall earns: scored against the routes the layers really take, no
prefetch behind a router that predicts badly, three layers ahead behind one that predicts well, and
never a changed token."""

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
    """`waves` decode waves over layers 0..3 (top-1, expert 1 routed): each predicts the next layers at
    every depth, right (expert 1) or wrong (expert 2) as `right[depth]` says."""
    for n in range(waves):
        layer = n % 4
        recall.routed(layer, [1])
        for d in range(1, recall.max_depth + 1):
            recall.predicted((layer + d) % 4, d, [1 if right[d] else 2])


def test_recall_is_scored_per_depth_when_the_predicted_layer_routes():
    recall = LookaheadRecall(3)
    recall.predicted(2, 1, [5, 6])
    recall.predicted(2, 2, [5, 7])
    assert recall.recall(1) is None  # nothing scored yet
    recall.routed(2, [5, 6])
    assert recall.count == [2, 2, 0] and recall.hits == [2.0, 1.0, 0.0]
    recall.routed(2, [5, 6])  # its predictions were used up: nothing scored twice
    assert recall.count == [2, 2, 0]
    recall.predicted(3, 1, [0])
    recall.routed(3, [4], score=False)  # a prefill wave: the stale prediction is dropped, not scored
    recall.routed(3, [0])
    assert recall.count == [2, 2, 0]


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
