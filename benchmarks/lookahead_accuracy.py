"""How well the next MoE layer's router, applied early, predicts that layer's experts (the lookahead
prefetch of `run --prefetch lookahead`), on a trained model and held-out task questions.

    python benchmarks/lookahead_accuracy.py out/tiny-mote.mote -n 50

For each pair of consecutive MoE layers (L, L') and every decoded token, the prediction is the top-k of
router_L'(rmsnorm_L'(x)) where x is the residual stream at layer L's MoE input ("input", what the runtime
uses) or after layer L ("output"); the truth is layer L''s own routing. Prints recall (share of the true
experts predicted; precision is the same number, since both sides have k experts) and the chance level k/E.
Prefill tokens are counted apart (prefill loads each needed expert once per wave, so lookahead matters less).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def _recording(moe, log: list):
    """A copy of a decoder layer's MoE that records its input residual and its routing, then runs."""
    from mote_edge.runtime.decoder import MoE

    class Recorder(MoE):
        def __call__(self, h, x):
            log.append((self.layer, x.copy(), self.route(h)[0]))
            return MoE.__call__(self, h, x)

    recorder = object.__new__(Recorder)
    recorder.__dict__.update(moe.__dict__)
    return recorder


def _predict(layer, x: np.ndarray, eps: float) -> np.ndarray:
    """Layer's routing (top-k ids [T, k]) applied to the residual x [T, H]."""
    from mote_edge.runtime.decoder import rms_norm

    return layer.mlp.route(rms_norm(x, layer.ln_post, eps))[0]


def measure(path: str, n: int) -> dict:
    from mote_edge.runtime.decoder import MoE
    from mote_edge.runtime.engine import Engine
    from mote_edge.training.data import heldout_seeds, make_example

    hits = defaultdict(lambda: [0, 0])  # (pair, source, phase) -> [true experts predicted, true experts]
    with Engine.load(path, threads=1) as engine:
        layers = engine.decoder.layers
        moe_layers = engine.config.moe_layers
        eps = engine.config.decoder.rms_norm_eps
        log: list = []
        for i in moe_layers:
            layers[i].mlp = _recording(layers[i].mlp, log)
        k = engine.config.moe.top_k_experts
        experts = engine.config.moe.num_experts[0]
        for seed in heldout_seeds(n):
            ex = make_example(seed)
            log.clear()
            list(engine.generate_ids(ex.question, ex.image, max_new_tokens=4, ignore_eos=True))
            # the log holds, per forward pass, one entry per MoE layer in order
            steps = [log[j:j + len(moe_layers)] for j in range(0, len(log), len(moe_layers))]
            for step_no, entries in enumerate(steps):
                phase = "prefill" if step_no == 0 else "decode"
                for (la, xa, _), (lb, xb, truth) in zip(entries, entries[1:]):
                    after = xa + MoE.__call__(layers[la].mlp, rms(xa, layers[la], eps), xa)
                    for source, x in (("input", xa), ("output", after)):
                        pred = _predict(layers[lb], x, eps)
                        got = sum(len(set(p) & set(t)) for p, t in zip(pred.tolist(), truth.tolist()))
                        cell = hits[(f"{la}->{lb}", source, phase)]
                        cell[0] += got
                        cell[1] += truth.size
    return {"chance": k / experts, "k": k, "experts": experts,
            "recall": {key: a / b for key, (a, b) in sorted(hits.items()) if b}}


def rms(x, layer, eps):
    from mote_edge.runtime.decoder import rms_norm

    return rms_norm(x, layer.ln_post, eps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .mote file of a trained MoE model")
    ap.add_argument("-n", type=int, default=50, help="held-out questions")
    args = ap.parse_args()
    r = measure(args.model, args.n)
    print(f"top-{r['k']} of {r['experts']} experts; chance recall {100 * r['chance']:.0f}%")
    print(f"{'layers':<10}{'residual':<10}{'phase':<10}{'recall':>8}")
    for (pair, source, phase), value in r["recall"].items():
        print(f"{pair:<10}{source:<10}{phase:<10}{100 * value:>7.1f}%")


if __name__ == "__main__":
    main()
