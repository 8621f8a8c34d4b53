"""How much a learned lookahead predictor could raise the recall of the router lookahead (the prefetch
`--prefetch adaptive` earns only from 80% recall), on a trained model and held-out task questions.

    python benchmarks/lookahead_predictor.py out/tiny-mote.mote [--train 300] [--test 100] [--tokens 16]

The runtime's lookahead applies the router of the MoE layer d waves ahead to the residual stream at this
layer's MoE input (runtime/decoder.py Lookahead). Here, for every (source MoE layer, depth d) pair, a linear
map from that residual (rms-normalised, plus a bias) to the later layer's routes (1 per expert it routed to)
is fitted by ridge regression (mote_edge/lookahead_fit.py, what `mote-edge fit-lookahead` stores in a file)
on the decode waves of --train training-split questions, and both predictors are scored on --test held-out
questions; a third starts as the
router lookahead and takes a normalised-LMS step toward the later logits after each held-out wave (learning
while it decodes, no training data). Recall = the share of the experts the later layer routed to that the
top-k of the prediction holds (both sides have k experts, so precision is the same number). Depths past the
model's MoE layers wrap to the next tokens' layers, as in the runtime. Last, the fitted predictors installed
in an Engine (`Decoder.set_lookahead_predictor`) and the recall its adaptive prefetch measures.
"""

from __future__ import annotations

import argparse

import numpy as np

DEPTHS = (1, 2, 3, 4)


def _samples(seeds) -> list[tuple[str, object]]:
    from mote_edge.training.data import make_example

    return [(ex.question, ex.image) for ex in map(make_example, seeds)]


def _online(x: np.ndarray, logits: np.ndarray, routed: list[set], start: np.ndarray, k: int,
            step: float) -> tuple[int, int]:
    """Hits of a predictor that starts as the router lookahead (`start` [E, H]) and, after each prediction,
    takes one normalised-LMS step toward the later layer's logits: learning while it decodes, no data ahead."""
    w, b = start.astype(np.float64), np.zeros(start.shape[0])
    got = total = 0
    for u, y, t in zip(x, logits, routed):  # in decode order (pairs keeps it)
        z = w @ u + b  # [E]
        got += len(set(np.argsort(-z, kind="stable")[:k].tolist()) & t)
        total += len(t)
        err = y - z
        w += (step / (u @ u + 1e-6)) * np.outer(err, u)
        b += step * err
    return got, total


def measure(path: str, train: int, test: int, tokens: int, ridge: float = 1.0, step: float = 0.1) -> dict:
    """Recall 1-4 ahead of the router lookahead, the ridge predictor (mote_edge/lookahead_fit.py, what
    `mote-edge fit-lookahead` stores) and the online one, on the held-out questions' decode waves."""
    from mote_edge.lookahead_fit import FitOptions, hits, pairs, record_waves, ridge_fit, router_lookahead, routes_matrix
    from mote_edge.runtime.engine import Engine
    from mote_edge.schema import lookahead_target
    from mote_edge.training.data import heldout_seeds, train_seeds

    opts = FitOptions(tokens=tokens, ignore_eos=True)
    with Engine.load(path, threads=1, lookahead_predictor=False) as engine:
        cfg, layers = engine.config, engine.decoder.layers
        k = cfg.moe.top_k_experts
        fit_on = record_waves(engine, _samples(train_seeds(train)), opts)
        score_on = record_waves(engine, _samples(heldout_seeds(test)), opts)
        result, predictors = {}, {}
        for depth in DEPTHS:
            got = {"router": [0, 0], "learned": [0, 0], "online": [0, 0]}
            for source in sorted(cfg.moe_layers):
                target = lookahead_target(cfg, source, depth)
                router = router_lookahead(layers[target])  # [E, H]: the runtime's lookahead (same top-k)
                x_fit, _, routed_fit = pairs(fit_on, source, depth, target)
                x, logits, routed = pairs(score_on, source, depth, target)
                if not len(x) or not len(x_fit):
                    continue
                w, b = predictors[(source, depth)] = ridge_fit(x_fit, routes_matrix(routed_fit, router.shape[0]), ridge)
                n = sum(map(len, routed))
                for name, (g, t) in (("router", (hits(x @ router.T, routed, k), n)),
                                     ("learned", (hits(x @ w.T + b, routed, k), n)),
                                     ("online", _online(x, logits, routed, router, k, step))):
                    got[name][0] += g
                    got[name][1] += t
            result[depth] = {name: g / t for name, (g, t) in got.items() if t}
        return {"k": k, "experts": cfg.moe.num_experts[0], "recall": result, "predictors": predictors}


def runtime_recall(path: str, predictors: dict | None, test: int, tokens: int, depth: int = 3) -> tuple[list, int]:
    """The recall by depth the runtime itself measures (runtime/lookahead_recall.py, what `--prefetch adaptive`
    decides on) over the held-out questions with the fitted predictors installed (None: the routers'), and
    the depth adaptive prefetches at the end. Every expert cached: the tiny MoTE's 20 KB records are below
    the plan's resolution, so no budget holds half of them; the recall does not depend on the cache."""
    from mote_edge.runtime.engine import Engine
    from mote_edge.training.data import heldout_seeds, make_example

    with Engine.load(path, threads=1, lookahead_predictor=False) as engine:
        engine.decoder.enable_lookahead(depth, adaptive=True, stored=False)
        for (layer, d), (weight, bias) in (predictors or {}).items():
            if d <= depth:
                engine.decoder.set_lookahead_predictor(layer, d, weight, bias)
        for seed in heldout_seeds(test):
            ex = make_example(seed)
            list(engine.generate_ids(ex.question, ex.image, max_new_tokens=tokens, ignore_eos=True))
        recall = engine.decoder.lookahead_recall
        return recall.as_list(), recall.depth()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .mote file of a trained MoE model")
    ap.add_argument("--train", type=int, default=300, help="training-split questions to fit on")
    ap.add_argument("--test", type=int, default=100, help="held-out questions to score on")
    ap.add_argument("--tokens", type=int, default=16, help="tokens decoded per question (EOS ignored)")
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--step", type=float, default=0.1, help="the online predictor's normalised-LMS step")
    args = ap.parse_args()
    r = measure(args.model, args.train, args.test, args.tokens, args.ridge, args.step)
    print(f"top-{r['k']} of {r['experts']} experts (chance {100 * r['k'] / r['experts']:.0f}%); recall on {args.test} "
          f"held-out questions of the router lookahead, a ridge predictor fitted on {args.train} training questions, "
          f"and one learning online from the router (NLMS step {args.step:g}) as the held-out questions decode")
    for depth, v in r["recall"].items():
        print(f"{depth} MoE layers ahead: router {100 * v['router']:.1f}%, learned {100 * v['learned']:.1f}%, "
              f"online {100 * v['online']:.1f}%")
    for name, predictors in (("router", None), ("learned", r["predictors"])):
        got, depth = runtime_recall(args.model, predictors, args.test, args.tokens)
        print(f"as the runtime scores it (running recall, runtime/lookahead_recall.py), {name}: "
              + ", ".join(f"{d} ahead {100 * v:.1f}%" for d, v in enumerate(got, 1) if v is not None)
              + f"; adaptive prefetches {depth} ahead at the end")


if __name__ == "__main__":
    main()
