"""Routing patterns for benchmarks on random-weight models.

A synth model's random router spreads tokens almost uniformly over its experts, which says nothing
about how a trained router uses a cache. Here routing is measured on the trained tiny MoTE
(examples/tiny-mote, through the runtime, on held-out task prompts) and summarised per MoE layer by
two numbers, then replayed at any model size:

    skew s      expert popularity follows p_i ~ (i + 1)^-s (Zipf fit to the sorted usage counts)
    stickiness r  P(token t's top-1 expert = token t-1's) = r + (1 - r) * sum_i p_i^2

plus, for router-lookahead prefetch, the lookahead's recall d MoE layers ahead (d = 1 .. 4): the share of a
decode wave's experts that the router of its layer, applied d MoE layers earlier, predicted (fitted on
a trace of the tiny MoTE: `fit_lookahead_recall`). A generator's `predict(d)` keeps each of the next
route's experts with that probability and draws the others by popularity, from a random stream of its
own, so the routes are the same whether anything predicts them or not.

`RouteModel(s, r, recall)` generates routes with that popularity (a per-layer random permutation decides
which expert ids are the popular ones) and that temporal locality; `uniform()` (s = 0, r = 0) is
the worst case for a cache. `synth_trace` writes a model's decode waves with their predictions for
`mote-edge simulate`, at any model shape. `install(engine, ...)` swaps every MoE layer's router for a generator;
everything after the router (wave loads, cache, kernels) runs unchanged. The generators go through the
MoE layers' `routing` seam (runtime/decoder.py), no class attribute is patched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RouteModel:
    skew: float  # Zipf exponent of expert popularity (0 = uniform)
    stickiness: float  # probability that a token repeats the previous token's top-1 expert
    lookahead_recall: tuple[float, ...] = ()  # by MoE layers ahead (1, 2, ...): share of the experts predicted

    def as_dict(self) -> dict:
        return asdict(self)


def uniform() -> RouteModel:
    return RouteModel(0.0, 0.0)


def zipf_probs(n: int, skew: float) -> np.ndarray:  # [n], sums to 1, descending
    p = (np.arange(n, dtype=np.float64) + 1.0) ** -skew
    return p / p.sum()


def fit_route_model(routes: list[np.ndarray], n_experts: int) -> RouteModel:
    """routes: one layer's [T, k] expert ids over consecutive tokens -> its RouteModel."""
    idx = np.concatenate(routes)  # [T, k]
    counts = np.sort(np.bincount(idx.reshape(-1), minlength=n_experts))[::-1].astype(np.float64)
    share = np.maximum(counts / counts.sum(), 1e-6)
    rank = np.log(np.arange(1, n_experts + 1))
    skew = float(max(0.0, -np.polyfit(rank, np.log(share), 1)[0])) if n_experts > 1 else 0.0
    top1 = idx[:, 0]
    p1 = np.bincount(top1, minlength=n_experts) / len(top1)
    same = float(np.mean(top1[1:] == top1[:-1])) if len(top1) > 1 else 0.0
    chance = float(np.sum(p1 * p1))
    r = (same - chance) / (1.0 - chance) if chance < 1 else 0.0
    return RouteModel(round(skew, 4), round(float(np.clip(r, 0.0, 1.0)), 4))


class RouteGenerator:
    """Routes of one MoE layer: route(h [T, H]) -> (ids [T, k], weights [T, k]), like MoE.route;
    predict(depth) -> an upcoming route's expert ids as a lookahead `depth` MoE layers earlier sees them
    (`cycle`: the model's MoE layers; a depth past it predicts a later token's route)."""

    def __init__(self, model: RouteModel, n_experts: int, top_k: int, seed: int, cycle: int = 1 << 30):
        self.rng = np.random.default_rng(seed)
        self.perm = self.rng.permutation(n_experts)  # which ids are popular in this layer
        self.probs = zipf_probs(n_experts, model.skew)
        self.model, self.top_k, self.cycle, self.prev = model, top_k, cycle, None
        self.upcoming: list[list[int]] = []  # the next routes (ranks), drawn early by predict()
        self.guess_rng = np.random.default_rng(seed + 7_919_000)  # prediction noise: never touches the routes

    def _route(self) -> list[int]:
        return self.upcoming.pop(0) if self.upcoming else self._one()

    def predict(self, depth: int) -> list[int]:
        """Each expert of the route `depth` MoE layers ahead with probability lookahead_recall[depth - 1]
        (the last fitted one past its end, 0 when none), else one drawn by popularity among the rest."""
        visit = (depth - 1) // self.cycle  # 0: this layer's next route
        while len(self.upcoming) <= visit:
            self.upcoming.append(self._one())
        route = self.upcoming[visit]
        recall = self.model.lookahead_recall
        r = recall[min(depth, len(recall)) - 1] if recall else 0.0
        guess = []
        for rank in route:
            if self.guess_rng.random() < r:
                guess.append(rank)
                continue
            rest = self.probs.copy()
            rest[route + guess] = 0.0
            guess.append(int(self.guess_rng.choice(len(rest), p=rest / rest.sum())) if rest.sum() > 0 else rank)
        return self.perm[guess].tolist()

    def _one(self) -> list[int]:
        if self.prev is not None and self.rng.random() < self.model.stickiness:
            first = self.prev
        else:
            first = int(self.rng.choice(len(self.probs), p=self.probs))
        chosen = [first]
        if self.top_k > 1:
            rest = self.probs.copy()
            rest[first] = 0.0
            chosen += self.rng.choice(len(rest), size=self.top_k - 1, replace=False, p=rest / rest.sum()).tolist()
        self.prev = first
        return chosen

    def __call__(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ranks = np.array([self._route() for _ in range(h.shape[0])], dtype=np.int64)  # [T, k]
        ids = self.perm[ranks]
        return ids, np.full(ids.shape, 1.0 / self.top_k, dtype=np.float32)


def moe_layers(engine) -> list:
    from mote_edge.runtime.decoder import MoE
    return [layer.mlp for layer in engine.decoder.layers if isinstance(layer.mlp, MoE)]


def fit_lookahead_recall(waves) -> tuple[float, ...]:
    """From a trace's decode waves (runtime/simulate.py Wave, with `predicted`): by MoE layers ahead, the
    share of the later wave's experts that were predicted."""
    hit: dict[int, int] = {}
    total: dict[int, int] = {}
    for i, w in enumerate(waves):
        if w.tokens != 1:
            continue
        for d, (layer, experts) in enumerate(w.predicted, 1):
            later = waves[i + d] if i + d < len(waves) else None
            if later is None or later.layer != layer or later.tokens != 1:
                continue
            hit[d] = hit.get(d, 0) + len(set(experts) & set(later.experts))
            total[d] = total.get(d, 0) + len(later.experts)
    return tuple(round(hit[d] / total[d], 4) for d in sorted(total) if total[d])


def synth_trace(model: RouteModel, layers: list[int], n_experts: int, top_k: int, tokens: int, seed: int = 0,
                depth: int = 4):
    """`tokens` decode steps of a model with these MoE layers: one wave per layer per token, each with
    the lookahead's predictions of the next `depth` MoE layers (runtime/simulate.py Wave)."""
    from mote_edge.runtime.simulate import Wave

    gens = [RouteGenerator(model, n_experts, top_k, seed * 1000 + layer, len(layers)) for layer in layers]
    h = np.zeros((1, 1), np.float32)
    waves = []
    for _ in range(tokens):
        for n, layer in enumerate(layers):
            ids, _ = gens[n](h)  # routed first, as in the runtime (MoE._begin_wave)
            predicted = [(layers[(n + d) % len(layers)], gens[(n + d) % len(layers)].predict(d))
                         for d in range(1, depth + 1)]
            waves.append(Wave(layer, list(dict.fromkeys(ids[0].tolist())), 1, predicted))
    return waves


def install(engine, model: RouteModel, seed: int = 0) -> None:
    """Replace every MoE layer's router of a loaded Engine by a RouteGenerator."""
    cfg = engine.config
    layers = moe_layers(engine)
    for moe in layers:
        moe.routing = RouteGenerator(model, cfg.moe.experts_in_layer(moe.layer), cfg.moe.top_k_experts,
                                     seed * 1000 + moe.layer, len(layers))


def record_routes(engine) -> dict[int, list[np.ndarray]]:
    """Wrap the routers of a loaded Engine so every call's ids [T, k] are kept, by layer."""
    log: dict[int, list[np.ndarray]] = {}
    for moe in moe_layers(engine):
        original = moe.routing or moe.router_top_k

        def recorded(h, _original=original, _layer=moe.layer):
            ids, weights = _original(h)
            log.setdefault(_layer, []).append(ids.copy())
            return ids, weights
        moe.routing = recorded
    return log


def measure_tiny_routing(mote: Path, questions: int = 100, trace_out: Path | None = None, max_new_tokens: int = 8,
                         ignore_eos: bool = False) -> dict:
    """Route the trained tiny model over held-out task prompts (image + question + greedy answer)
    and fit a RouteModel per MoE layer, the lookahead's recall over all of them; returns {"layers":
    {layer: RouteModel dict}, "mean": ..., "lookahead_recall": ...}. trace_out: write the routing
    trace (with the lookahead's predictions) for `mote-edge simulate`. The task's answers are a token
    or two: ignore_eos decodes max_new_tokens past them, for more decode waves to fit the recall on."""
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.simulate import read_trace, write_trace
    from mote_edge.training.data import heldout_seeds, make_example

    waves = []
    with Engine.load(mote, threads=1) as engine:
        log = record_routes(engine)
        for seed in heldout_seeds(questions):
            ex = make_example(seed)
            engine.experts.trace = []
            for _ in engine.generate_ids(ex.question, image=ex.image, max_new_tokens=max_new_tokens,
                                         ignore_eos=ignore_eos):
                pass
            waves += waves_of(engine.experts.trace)
        cfg = engine.config
        fits = {layer: fit_route_model(calls, cfg.moe.experts_in_layer(layer)) for layer, calls in log.items()}
    recall = fit_lookahead_recall(waves)
    if trace_out is not None:
        write_trace(waves, trace_out)
        assert len(read_trace(trace_out)) == len(waves)
    mean = RouteModel(round(float(np.mean([f.skew for f in fits.values()])), 4),
                      round(float(np.mean([f.stickiness for f in fits.values()])), 4), recall)
    return {"questions": questions, "layers": {str(k): v.as_dict() for k, v in fits.items()}, "mean": mean.as_dict(),
            "lookahead_recall": list(recall)}


def waves_of(trace: list[dict]):
    """A runtime trace's records (ExpertCache.trace) as simulator waves."""
    from mote_edge.runtime.simulate import Wave

    return [Wave(w["layer"], w["experts"], w["tokens"], [(p["layer"], p["experts"]) for p in w.get("predicted", [])])
            for w in trace]
