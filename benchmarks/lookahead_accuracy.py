"""How well the next MoE layer's router, applied early, predicts that layer's experts (the lookahead
prefetch of `run --prefetch lookahead`), on a trained model and held-out task questions.

    python benchmarks/lookahead_accuracy.py out/tiny-mote.mote -n 50

For each pair of consecutive MoE layers (L, L') and every decoded token, the prediction is the top-k of
router_L'(rmsnorm_L'(x)) where x is the residual stream at layer L's MoE input ("input", what the runtime
uses) or after layer L ("output"); the truth is layer L''s own routing. Across the lm_head (L' the first
MoE layer of the next token, marked '), "repeat" predicts the experts this token took at L' (stickiness),
the stale-gate sources apply L''s router to this token's last MoE layer's residual. Prints recall (share of the true
experts predicted; precision is the same number, since both sides have k experts) and the chance level k/E.
Prefill tokens are counted apart (prefill loads each needed expert once per wave, so lookahead matters less).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np


def _recording(moe, log: list):
    """A copy of a decoder layer's MoE that records, at each wave it begins, its input residual and its
    routing (numpy and native paths alike), unless `muted` (the extra waves this script runs itself)."""
    from mote_edge.runtime.decoder import MoE

    class Recorder(MoE):
        muted = False

        def _begin_wave(self, h, residual):
            idx, weight, needed = MoE._begin_wave(self, h, residual)
            if not self.muted:
                log.append((self.layer, residual.copy(), idx))
            return idx, weight, needed

    recorder = object.__new__(Recorder)
    recorder.__dict__.update(moe.__dict__)
    return recorder


def _after(layers, layer: int, x: np.ndarray, eps: float) -> np.ndarray:
    """The residual x [T, H] after MoE layer `layer` (its FFN half), without recording that wave."""
    from mote_edge.runtime.decoder import MoE

    mlp = layers[layer].mlp
    mlp.muted = True
    try:
        return x + MoE.__call__(mlp, rms(x, layers[layer], eps), x)
    finally:
        mlp.muted = False


def _predict(layer, x: np.ndarray, eps: float) -> np.ndarray:
    """Layer's routing (top-k ids [T, k]) applied to the residual x [T, H]."""
    from mote_edge.runtime.decoder import rms_norm

    return layer.mlp.route(rms_norm(x, layer.ln_post, eps))[0]


def measure(path: str, n: int, tokens: int = 4) -> dict:
    from mote_edge.runtime.engine import Engine
    from mote_edge.training.data import heldout_seeds, make_example

    hits = defaultdict(lambda: [0, 0])  # (pair, source, phase) -> [true experts predicted, true experts]

    def count(key, pred, truth):
        cell = hits[key]
        cell[0] += sum(len(set(p) & set(t)) for p, t in zip(pred.tolist(), truth.tolist()))
        cell[1] += truth.size

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
            list(engine.generate_ids(ex.question, ex.image, max_new_tokens=tokens, ignore_eos=True))
            # the log holds, per forward pass, one entry per MoE layer in order
            steps = [log[j:j + len(moe_layers)] for j in range(0, len(log), len(moe_layers))]

            for step_no, entries in enumerate(steps):
                phase = "prefill" if step_no == 0 else "decode"
                for (la, xa, _), (lb, xb, truth) in zip(entries, entries[1:]):
                    after = _after(layers, la, xa, eps)
                    for source, x in (("input", xa), ("output", after)):
                        count((f"{la}->{lb}", source, phase), _predict(layers[lb], x, eps), truth)
            # across the lm_head: this token's last MoE layer -> the next token's first (its last position
            # after prefill); "repeat" predicts the first layer's own experts of this token (stickiness)
            for this, nxt in zip(steps, steps[1:]):
                (l0, _, first_now), (ll, xl, _) = this[0], this[-1]
                truth = nxt[0][2]
                after = _after(layers, ll, xl, eps)
                pair = f"{ll}->{l0}'"
                for source, x in (("input", xl[-1:]), ("output", after[-1:])):
                    count((pair, source, "decode"), _predict(layers[l0], x, eps), truth)
                count((pair, "repeat", "decode"), first_now[-1:], truth)
    return {"chance": k / experts, "k": k, "experts": experts,
            "recall": {key: a / b for key, (a, b) in sorted(hits.items()) if b}}


def rms(x, layer, eps):
    from mote_edge.runtime.decoder import rms_norm

    return rms_norm(x, layer.ln_post, eps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .mote file of a trained MoE model")
    ap.add_argument("-n", type=int, default=50, help="held-out questions")
    ap.add_argument("--tokens", type=int, default=4, help="tokens decoded per question (EOS ignored)")
    args = ap.parse_args()
    r = measure(args.model, args.n, args.tokens)
    print(f"top-{r['k']} of {r['experts']} experts; chance recall {100 * r['chance']:.0f}%")
    print(f"{'layers':<10}{'residual':<10}{'phase':<10}{'recall':>8}")
    for (pair, source, phase), value in r["recall"].items():
        print(f"{pair:<10}{source:<10}{phase:<10}{100 * value:>7.1f}%")


if __name__ == "__main__":
    main()
