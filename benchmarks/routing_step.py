"""What MoE routing costs a decode step: the native routing (native/route.c, one call: router GEMV, softmax,
top-k, coefficients) against the numpy formula it replaced (runtime/decoder.py's route_top_k_numpy: matmul_f32,
then softmax / argmax / fancy indexing in numpy), alone and inside decode steps.

    python benchmarks/routing_step.py models/q05-b4.mote [--threads 1] [--rounds 7] [--tokens 24]

Alone: mean us of one T = 1 routing call of the first MoE layer's router, warm (10,000 calls each).
Steps: one Engine, every expert cached; greedy decode runs of --tokens after the prompt alternate between
the two routings (--rounds each); per run the time spent in the routing calls of its decode steps (each
call timed) per token, and the median step time (first step excluded); the medians of the runs and of the
paired differences of the step times (numpy - native).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    from mote_edge.runtime.decoder import MoE
    from mote_edge.runtime.decoder import route_top_k_numpy as route_reference
    from mote_edge.runtime.engine import Engine

    with Engine.load(args.mote, threads=args.threads, max_context=1024) as engine:
        moes = [layer.mlp for layer in engine.decoder.layers if isinstance(layer.mlp, MoE)]
        h = np.random.default_rng(0).standard_normal((1, engine.config.decoder.hidden_size)).astype(np.float32)
        m = moes[0]
        alone = {}
        for name, fn in (("native", lambda: m.router_top_k(h)), ("numpy", lambda: route_reference(h, m.router, m.top_k))):
            fn()
            t = time.perf_counter()
            for _ in range(10000):
                fn()
            alone[name] = (time.perf_counter() - t) / 10000 * 1e6

        spent = []  # seconds in routing calls (decode steps only: T = 1)

        def timed(fn):
            def routing(x):
                t = time.perf_counter()
                out = fn(x)
                if x.shape[0] == 1:
                    spent.append(time.perf_counter() - t)
                return out
            return routing

        def steps(reference: bool) -> tuple[float, float]:
            """(median step time, routing time per token inside the steps)"""
            for moe in moes:
                moe.routing = timed((lambda x, moe=moe: route_reference(x, moe.router, moe.top_k)) if reference
                                    else moe.router_top_k)
            spent.clear()
            stamps = [time.perf_counter()]
            for _ in engine.generate_ids(PROMPT, max_new_tokens=args.tokens, ignore_eos=True):
                stamps.append(time.perf_counter())
            return float(np.median(np.diff(stamps)[2:])), sum(spent) / (args.tokens - 1)

        steps(False)  # every expert the prompt routes to is cached now
        runs = {"native": [], "numpy": []}
        inside = {"native": [], "numpy": []}
        for r in range(args.rounds):
            for ref in ((False, True) if r % 2 else (True, False)):
                step, routing = steps(ref)
                runs["numpy" if ref else "native"].append(step)
                inside["numpy" if ref else "native"].append(routing)
        for moe in moes:
            moe.routing = None
    nat, ref = np.array(runs["native"]) * 1e3, np.array(runs["numpy"]) * 1e3
    d = ref - nat
    print(f"{args.threads} thread(s), {len(moes)} MoE layers (E = {m.router.shape[0]}, top-{m.top_k}, H = {h.shape[1]})")
    print(f"  one routing call alone: native {alone['native']:.1f} us, numpy {alone['numpy']:.1f} us")
    ri, rn = (1e6 * float(np.median(inside[k])) for k in ("native", "numpy"))
    print(f"  routing inside decode steps, per token (median of runs): native {ri:.0f} us ({ri / len(moes):.1f} per MoE "
          f"layer), numpy {rn:.0f} us ({rn / len(moes):.1f})")
    print(f"  decode step, median of {args.rounds} runs: native routing {np.median(nat):.3f} ms, numpy {np.median(ref):.3f} ms; "
          f"saved {np.median(d) * 1e3:+.0f} us per token (q25..q75 {np.quantile(d, .25) * 1e3:+.0f}..{np.quantile(d, .75) * 1e3:+.0f}), "
          f"{np.median(d) * 1e3 / len(moes):+.1f} us per MoE layer")


if __name__ == "__main__":
    main()
