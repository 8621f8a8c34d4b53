"""How much a learned lookahead predictor could raise the recall of the router lookahead (the prefetch
`--prefetch adaptive` earns only from 80% recall), on a trained model and held-out task questions.

    python benchmarks/lookahead_predictor.py out/tiny-mote.mote [--train 300] [--test 100] [--tokens 16]

The runtime's lookahead applies the router of the MoE layer d waves ahead to the residual stream at this
layer's MoE input (runtime/decoder.py Lookahead). Here, for every (source MoE layer, depth d) pair, a linear
map from that residual (rms-normalised, plus a bias) to the later layer's router logits (its own router on
its own input: the routing it will take) is fitted by ridge regression on the decode waves of --train
training-split questions, and both predictors are scored on --test held-out questions; a third starts as the
router lookahead and takes a normalised-LMS step toward the later logits after each held-out wave (learning
while it decodes, no training data). Recall = the share of the experts the later layer routed to that the
top-k of the prediction holds (both sides have k experts, so precision is the same number). Depths past the
model's MoE layers wrap to the next tokens' layers, as in the runtime. Nothing here ships: it measures whether
a predictor stored with the model, or learned while decoding, would be worth it; last, the fitted predictors
installed in an Engine (`Decoder.set_lookahead_predictor`) and the recall its adaptive prefetch measures.
"""

from __future__ import annotations

import argparse

import numpy as np

DEPTHS = (1, 2, 3, 4)


def decode_waves(engine, seeds, tokens: int) -> list[list[tuple]]:
    """Per question, its decode waves in order: (MoE layer, the residual at its MoE input rms-normalised [H],
    routed experts, the layer's router logits [E]), recorded through the MoE layers' `routing` seam."""
    from mote_edge.runtime.decoder import MoE
    from mote_edge.training.data import make_example

    waves: list = []
    for layer in engine.decoder.layers:
        moe = layer.mlp
        if not isinstance(moe, MoE):
            continue

        def recorded(h, _moe=moe, _norm=layer.ln_post):  # h [T, H]: rmsnorm(x) * ln_post
            ids, weights = _moe.router_top_k(h)
            if h.shape[0] == 1:  # a decode wave
                unit = h[0] / np.where(_norm == 0, 1.0, _norm)  # x / rms(x)
                waves.append((_moe.layer, unit, set(ids[0].tolist()), h[0] @ _moe.router.T))
            return ids, weights
        moe.routing = recorded
    out = []
    for seed in seeds:
        ex = make_example(seed)
        waves.clear()
        list(engine.generate_ids(ex.question, ex.image, max_new_tokens=tokens, ignore_eos=True))
        out.append(list(waves))
    return out


def _pairs(questions, source: int, depth: int):
    """(residuals [N, H], later logits [N, E], later routed sets) for waves of `source` and the wave `depth` later."""
    xs, logits, routed = [], [], []
    for waves in questions:
        for i in range(len(waves) - depth):
            if waves[i][0] == source:
                xs.append(waves[i][1])
                logits.append(waves[i + depth][3])
                routed.append(waves[i + depth][2])
    return np.array(xs), np.array(logits), routed


def _features(unit: np.ndarray) -> np.ndarray:  # [N, H] rms-normalised residuals -> [N, H + 1], with a bias
    return np.hstack([unit, np.ones((len(unit), 1))])


def _recall(scores: np.ndarray, routed: list[set], k: int) -> tuple[int, int]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return sum(len(set(p) & t) for p, t in zip(top.tolist(), routed)), sum(len(t) for t in routed)


def _online(x: np.ndarray, logits: np.ndarray, routed: list[set], start: np.ndarray, k: int,
            step: float) -> tuple[int, int]:
    """Hits of a predictor that starts as the router lookahead (`start` [E, H]) and, after each prediction,
    takes one normalised-LMS step toward the later layer's logits: learning while it decodes, no data ahead."""
    w, b = start.astype(np.float64), np.zeros(start.shape[0])
    got = total = 0
    for u, y, t in zip(x, logits, routed):  # in decode order
        z = w @ u + b  # [E]
        got += len(set(np.argsort(-z, kind="stable")[:k].tolist()) & t)
        total += len(t)
        err = y - z
        w += (step / (u @ u + 1e-6)) * np.outer(err, u)
        b += step * err
    return got, total


def measure(path: str, train: int, test: int, tokens: int, ridge: float = 1.0, step: float = 0.1) -> dict:
    from mote_edge.runtime.engine import Engine
    from mote_edge.training.data import heldout_seeds, train_seeds

    with Engine.load(path, threads=1) as engine:
        k, moe, layers = engine.config.moe.top_k_experts, engine.config.moe_layers, engine.decoder.layers
        fit_on = decode_waves(engine, train_seeds(train), tokens)
        score_on = decode_waves(engine, heldout_seeds(test), tokens)
        result, predictors = {}, {}
        for depth in DEPTHS:
            hits = {"router": [0, 0], "learned": [0, 0], "online": [0, 0]}
            for n, source in enumerate(moe):
                later = layers[moe[(n + depth) % len(moe)]]
                x_fit, logits_fit, _ = _pairs(fit_on, source, depth)
                x, logits, routed = _pairs(score_on, source, depth)
                if not len(x) or not len(x_fit):
                    continue
                f = _features(x_fit)
                w = np.linalg.solve(f.T @ f + ridge * np.eye(f.shape[1]), f.T @ logits_fit)  # [H + 1, E]
                predictors[(source, depth)] = (w[:-1].T.copy(), w[-1].copy())  # weight [E, H], bias [E]
                router = (x * later.ln_post) @ later.mlp.router.T  # the runtime's lookahead (same top-k)
                for name, scores in (("router", router), ("learned", _features(x) @ w)):
                    got, total = _recall(scores, routed, k)
                    hits[name][0] += got
                    hits[name][1] += total
                got, total = _online(x, logits, routed, later.mlp.router * later.ln_post, k, step)
                hits["online"][0] += got
                hits["online"][1] += total
            result[depth] = {name: got / total for name, (got, total) in hits.items() if total}
        return {"k": k, "experts": engine.config.moe.num_experts[0], "recall": result, "predictors": predictors}


def runtime_recall(path: str, predictors: dict | None, test: int, tokens: int, depth: int = 3) -> list:
    """The recall by depth the runtime itself measures (runtime/lookahead_recall.py, what `--prefetch adaptive`
    decides on) over the held-out questions, with the fitted predictors installed (None: the router's)."""
    from mote_edge.runtime.engine import Engine
    from mote_edge.training.data import heldout_seeds, make_example

    with Engine.load(path, threads=1) as engine:
        engine.decoder.enable_lookahead(depth, adaptive=True)
        for (layer, d), (weight, bias) in (predictors or {}).items():
            if d <= depth:
                engine.decoder.set_lookahead_predictor(layer, d, weight, bias)
        for seed in heldout_seeds(test):
            ex = make_example(seed)
            list(engine.generate_ids(ex.question, ex.image, max_new_tokens=tokens, ignore_eos=True))
        return engine.decoder.lookahead_recall.as_list()


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
        got = runtime_recall(args.model, predictors, args.test, args.tokens)
        print(f"as the runtime scores it (running recall, runtime/lookahead_recall.py), {name}: "
              + ", ".join(f"{d} ahead {100 * v:.1f}%" for d, v in enumerate(got, 1) if v is not None))


if __name__ == "__main__":
    main()
