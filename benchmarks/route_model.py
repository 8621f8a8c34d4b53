"""Routing patterns for benchmarks on random-weight models.

A synth model's random router spreads tokens almost uniformly over its experts, which says nothing
about how a trained router uses a cache. Here routing is measured on the trained tiny MoTE
(examples/tiny-mote, through the runtime, on held-out task prompts) and summarised per MoE layer by
two numbers, then replayed at any model size:

    skew s      expert popularity follows p_i ~ (i + 1)^-s (Zipf fit to the sorted usage counts)
    stickiness r  P(token t's top-1 expert = token t-1's) = r + (1 - r) * sum_i p_i^2

`RouteModel(s, r)` generates routes with that popularity (a per-layer random permutation decides
which expert ids are the popular ones) and that temporal locality; `uniform()` (s = 0, r = 0) is
the worst case for a cache. `install(engine, ...)` swaps every MoE layer's router for a generator;
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
    """Routes of one MoE layer: route(h [T, H]) -> (ids [T, k], weights [T, k]), like MoE.route."""

    def __init__(self, model: RouteModel, n_experts: int, top_k: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.perm = self.rng.permutation(n_experts)  # which ids are popular in this layer
        self.probs = zipf_probs(n_experts, model.skew)
        self.model, self.top_k, self.prev = model, top_k, None

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
        ranks = np.array([self._one() for _ in range(h.shape[0])], dtype=np.int64)  # [T, k]
        ids = self.perm[ranks]
        return ids, np.full(ids.shape, 1.0 / self.top_k, dtype=np.float32)


def moe_layers(engine) -> list:
    from mote_edge.runtime.decoder import MoE
    return [layer.mlp for layer in engine.decoder.layers if isinstance(layer.mlp, MoE)]


def install(engine, model: RouteModel, seed: int = 0) -> None:
    """Replace every MoE layer's router of a loaded Engine by a RouteGenerator."""
    cfg = engine.config
    for moe in moe_layers(engine):
        moe.routing = RouteGenerator(model, cfg.moe.experts_in_layer(moe.layer), cfg.moe.top_k_experts,
                                     seed * 1000 + moe.layer)


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


def measure_tiny_routing(mote: Path, questions: int = 100) -> dict:
    """Route the trained tiny model over held-out task prompts (image + question + greedy answer)
    and fit a RouteModel per MoE layer; returns {"layers": {layer: RouteModel dict}, "mean": ...}."""
    from mote_edge.runtime.engine import Engine
    from mote_edge.training.data import heldout_seeds, make_example

    with Engine.load(mote, threads=1) as engine:
        log = record_routes(engine)
        for seed in heldout_seeds(questions):
            ex = make_example(seed)
            for _ in engine.generate_ids(ex.question, image=ex.image, max_new_tokens=8):
                pass
        cfg = engine.config
        fits = {layer: fit_route_model(calls, cfg.moe.experts_in_layer(layer)) for layer, calls in log.items()}
    mean = RouteModel(round(float(np.mean([f.skew for f in fits.values()])), 4),
                      round(float(np.mean([f.stickiness for f in fits.values()])), 4))
    return {"questions": questions, "layers": {str(k): v.as_dict() for k, v in fits.items()}, "mean": mean.as_dict()}
