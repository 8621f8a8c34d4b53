"""`mote-edge fit-lookahead`: fit lookahead predictors on calibration prompts and store them in a .mote file.

The runtime's lookahead (runtime/decoder.py Lookahead) predicts the experts a later MoE layer will route to
from the residual stream at this layer's MoE input, to prefetch them (`--prefetch adaptive` prefetches d
layers ahead only while its measured recall d ahead is >= 80%). By default it applies the later layer's own
router to that residual: on the trained tiny MoTE that is right 62 / 57 / 53% of the time 1 / 2 / 3 MoE
layers ahead (docs/BENCHMARKS.md). A linear map fitted for each (MoE layer, depth) pair does better:

    later routes ~= W @ (x / rms(x)) + b        x [H] the residual, W [E, H], b [E]; the top-k of it predicts

fitted by ridge regression on the decode waves of calibration prompts (the target: the later layer's routes,
1 for each expert it routed to, else 0; on the tiny MoTE 0.8-1.2 points of recall above fitting its router
logits, at every depth and calibration size tried). The runtime decodes the prompts (greedy, as
`run` does) and records every decode wave (Decoder.observe_decode_waves); a held-out share of the prompts
scores the fit (recall: the share of the experts the later layer routed to that the predicted top-k
holds) against the router lookahead before the final fit on all of them. The predictors go into a copy
of the file (mote_edge/format/rewrite.py) as f32 resident tensors, with a `lookahead` metadata block
(docs/FORMAT.md section 11). They are ~E x H x 4 bytes per pair: 0.5B synth, 12 MoE layers x 3 depths,
1 MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mote_edge.errors import MoteError
from mote_edge.format.rewrite import NewTensor, rewrite
from mote_edge.progress import byte_progress
from mote_edge.quant.recipe import F32
from mote_edge.runtime.decoder import MoE, rms_norm
from mote_edge.runtime.engine import Engine
from mote_edge.schema import LOOKAHEAD_ROLE, MAX_LOOKAHEAD_DEPTH, lookahead_name, lookahead_target


@dataclass
class FitOptions:
    depth: int = 3  # predictors 1 .. depth MoE layers ahead (adaptive prefetches at most 3 deep)
    tokens: int = 16  # tokens decoded per prompt, at most (an EOS ends the answer unless ignore_eos)
    ignore_eos: bool = False
    ridge: float = 1.0  # the ridge penalty on the rms-normalised features
    holdout: float = 0.25  # share of the prompts scored and not fitted on (then all are fitted on)
    memory_budget: str | None = None  # for the Engine that decodes the prompts (default: every expert cached)


@dataclass
class Wave:
    """One decode wave of a MoE layer: the features its lookahead predicts from and the routing it took."""

    layer: int
    unit: np.ndarray  # [H] the residual at the MoE input, rms-normalised (what Lookahead.predict uses)
    logits: np.ndarray  # [E] the layer's router logits at its own input
    routed: frozenset  # the experts it routed to


@dataclass
class FitResult:
    depth: int
    samples: int
    waves: int
    recall: list[float | None]  # held-out recall of the fitted predictors, 1 .. depth ahead
    router_recall: list[float | None]  # the same waves predicted by the routers
    predictors: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def metadata(self) -> dict:
        """The file's `lookahead` block (docs/FORMAT.md section 11)."""
        return {"depth": self.depth, "samples": self.samples, "waves": self.waves,
                "recall": self.recall, "router_recall": self.router_recall}


def record_waves(engine: Engine, samples: list[tuple[str, object]], opts: FitOptions,
                 progress: bool = False) -> list[list[Wave]]:
    """Decode each (prompt, image) sample; its decode waves in order."""
    eps, out, current = engine.config.decoder.rms_norm_eps, [], []

    def observe(moe: MoE, h: np.ndarray, residual: np.ndarray, routed: list[int]) -> None:  # h, residual [1, H]
        unit = rms_norm(residual[0], np.float32(1.0), eps)
        current.append(Wave(moe.layer, unit, h[0] @ moe.router.T, frozenset(routed)))

    engine.decoder.observe_decode_waves(observe)
    try:
        with byte_progress("decoding calibration prompts", len(samples), progress) as bar:
            for prompt, image in samples:
                current = []
                image = image if engine.vision is not None else None
                list(engine.generate_ids(prompt, image, max_new_tokens=opts.tokens, ignore_eos=opts.ignore_eos))
                out.append(current)
                bar.advance(1)
    finally:
        engine.decoder.observe_decode_waves(None)
    return out


def pairs(samples: list[list[Wave]], source: int, depth: int, target: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(units [N, H], the later waves' logits [N, E], their routed sets) for every wave of `source` whose
    wave `depth` later in the same answer is the target layer's."""
    x, y, routed = [], [], []
    for waves in samples:
        for i in range(len(waves) - depth):
            if waves[i].layer == source and waves[i + depth].layer == target:
                x.append(waves[i].unit)
                y.append(waves[i + depth].logits)
                routed.append(waves[i + depth].routed)
    return np.array(x, np.float64), np.array(y, np.float64), routed


def routes_matrix(routed: list, experts: int) -> np.ndarray:
    """Routed sets -> [N, experts]: 1 where the wave routed to the expert, else 0 (the fit's target)."""
    out = np.zeros((len(routed), experts))
    for row, chosen in enumerate(routed):
        out[row, list(chosen)] = 1.0
    return out


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """x [N, H], y [N, E] -> (W [E, H], b [E]) minimising |[x 1] [W b]^T - y|^2 + ridge |[W b]|^2."""
    f = np.hstack([x, np.ones((len(x), 1))])  # [N, H + 1]
    wb = np.linalg.solve(f.T @ f + ridge * np.eye(f.shape[1]), f.T @ y)  # [H + 1, E]
    return wb[:-1].T.astype(np.float32), wb[-1].astype(np.float32)


def router_lookahead(layer) -> np.ndarray:
    """[E, H]: the router lookahead of a MoE decoder layer as a predictor of the rms-normalised residual (its
    norm and router: the top-k of these scores are runtime/decoder.py Lookahead's without a predictor)."""
    return (layer.mlp.router * layer.ln_post).astype(np.float32)


def hits(scores: np.ndarray, routed: list, k: int) -> int:
    """How many of the routed experts the top k of each row of scores [N, E] holds."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return sum(len(set(p) & t) for p, t in zip(top.tolist(), routed))


def fit(engine: Engine, samples: list[list[Wave]], opts: FitOptions) -> FitResult:
    """Ridge predictors for every (MoE layer, depth <= opts.depth), scored on the held-out samples first."""
    cfg, layers = engine.config, engine.decoder.layers
    k = cfg.moe.top_k_experts
    n_test = int(round(len(samples) * opts.holdout)) if len(samples) > 1 else 0
    train, test = samples[:len(samples) - n_test], samples[len(samples) - n_test:]
    result = FitResult(opts.depth, len(samples), sum(map(len, samples)), [], [])
    for depth in range(1, opts.depth + 1):
        got = {"fitted": 0, "router": 0}
        total = 0
        for source in sorted(cfg.moe_layers):
            target = lookahead_target(cfg, source, depth)
            router = router_lookahead(layers[target])  # [E, H]
            e, h = router.shape
            x_fit, _, routed_fit = pairs(train, source, depth, target)
            x_test, _, routed = pairs(test, source, depth, target)
            if len(x_fit) and len(x_test):
                w_fit, b_fit = ridge_fit(x_fit, routes_matrix(routed_fit, e), opts.ridge)
                got["fitted"] += hits(x_test @ w_fit.T + b_fit, routed, k)
                got["router"] += hits(x_test @ router.T, routed, k)
                total += sum(map(len, routed))
            x_all = np.concatenate([x_fit.reshape(-1, h), x_test.reshape(-1, h)])  # every sample's pairs, in order
            if not len(x_all):  # no calibration pair: a predictor equal to the router lookahead's ranking
                w, b = router, np.zeros(e, np.float32)
            else:
                w, b = ridge_fit(x_all, routes_matrix(routed_fit + routed, e), opts.ridge)
            result.predictors[(source, depth)] = (w, b)
        result.recall.append(got["fitted"] / total if total else None)
        result.router_recall.append(got["router"] / total if total else None)
    return result


def fit_lookahead(model: str | Path, output: str | Path, samples: list[tuple[str, object]],
                  opts: FitOptions | None = None, progress: bool = False) -> FitResult:
    """Decode the samples with `model`, fit its lookahead predictors, write `output` (model's content with
    the predictors in place of any it had)."""
    opts = opts or FitOptions()
    if not 1 <= opts.depth <= MAX_LOOKAHEAD_DEPTH:
        raise MoteError(f"lookahead depth must be 1 to {MAX_LOOKAHEAD_DEPTH}, got {opts.depth}")
    if not 0 <= opts.holdout < 1:
        raise MoteError(f"holdout must be at least 0 and below 1, got {opts.holdout}")
    if not (math.isfinite(opts.ridge) and opts.ridge > 0):
        raise MoteError(f"ridge must be a positive number, got {opts.ridge}")
    if Path(output).is_dir():
        raise MoteError(f"{output} is a directory")
    if opts.tokens < 2:
        raise MoteError(f"tokens must be at least 2 (the first token is decoded by the prefill), got {opts.tokens}")
    with Engine.load(model, memory_budget=opts.memory_budget, prefetch="none") as engine:
        if not engine.config.moe_layers:
            raise MoteError(f"{Path(model).name} has no MoE layers: there is nothing to look ahead to")
        result = fit(engine, record_waves(engine, samples, opts, progress), opts)
        if result.waves == 0:
            raise MoteError("the calibration prompts decoded no token after the first: nothing to fit on "
                            "(more --tokens, or --ignore-eos)")
        add = [NewTensor(lookahead_name(layer, depth, part), LOOKAHEAD_ROLE, F32, a.shape, {"data": a})
               for (layer, depth), pair in sorted(result.predictors.items())
               for part, a in zip(("weight", "bias"), pair)]
        src = engine.file
        recipe = src.metadata["recipe"]
        roles = {**recipe["roles"], LOOKAHEAD_ROLE: F32.to_dict()}
        rewrite(src, output, add, keep=lambda name: src.tensors[name].role != LOOKAHEAD_ROLE,
                metadata={"lookahead": result.metadata(), "recipe": {**recipe, "roles": roles}}, progress=progress)
    return result
