"""Where a decode step's time goes: every native call timed by what it computes, the rest is Python and numpy.

    python benchmarks/decode_profile.py models/q05-b4.mote [--threads 1] [--tokens 64]

One Engine (every expert cached), greedy decoding of the benchmark prompt with the numpy decoder layer
(MOTE_DECODER=numpy) and with the native one (native/layer.c), one after the other; each `_native` entry
point is wrapped by a timer (~0.3 us per call) and its calls are named by shape (lm_head, attention
q/k/v and o, FFN gate/up and down, routed experts) or by entry point (attn_step, ffn_step). Prints ms per
decoded token per row and the share of the step; "Python + numpy" is the step minus every native call.
Last, what fusing the greedy argmax into the lm_head GEMV could save at most: the argmax over the logits
(the sampler's whole work at temperature 0) against the lm_head GEMV itself.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from mote_edge import _native

PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"
TIMED = ("intn_matmul", "ternary_matmul", "ternary2_matmul", "attn_step", "ffn_step")


def install_timers(cfg, acc: dict) -> None:
    """Wrap the timed _native functions; int-N / ternary calls are named by their [N, K]."""
    dc = cfg.decoder
    H, I, V = dc.hidden_size, dc.intermediate_size, dc.vocab_size
    qkv = (dc.num_attention_heads + 2 * dc.num_key_value_heads) * dc.head_dim
    names = {(V, H): "lm_head (int-N)", (qkv, H): "attention q/k/v (int-N, fused)", (H, H): "attention o (int-N)",
             (2 * I, H): "FFN gate/up (int-N, fused)", (H, I): "FFN down (int-N)"}

    def wrap(fn_name, fn):
        def timed(*args):
            t = time.perf_counter()
            r = fn(*args)
            if fn_name == "intn_matmul":
                key = names.get((args[8], args[7]), f"int-N [{args[8]}, {args[7]}]")
            elif fn_name.startswith("ternary"):
                key = "routed experts (ternary)"
            else:
                key = fn_name
            acc[key] += time.perf_counter() - t
            return r
        return timed

    for name in TIMED:
        setattr(_native, name, wrap(name, getattr(_native, name)))


def profile(engine, tokens: int, acc: dict) -> tuple[float, dict]:
    """ms per decoded token of the whole step and of each timed row (the first 4 steps are warm-up)."""
    g = engine.generate_ids(PROMPT, max_new_tokens=tokens + 5, ignore_eos=True)
    for _ in range(5):
        next(g)
    acc.clear()
    t, n = time.perf_counter(), 0
    for _ in g:
        n += 1
    step = 1e3 * (time.perf_counter() - t) / n
    return step, {k: 1e3 * v / n for k, v in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from mote_edge.runtime.engine import Engine

    acc: dict = collections.defaultdict(float)
    with Engine.load(args.mote, threads=args.threads, max_context=1024) as engine:
        install_timers(engine.config, acc)
        for path in ("numpy", "native"):
            engine.decoder.native = path == "native"
            step, rows = profile(engine, args.tokens, acc)
            print(f"{path} decoder layer, {args.threads} thread(s): {step:.2f} ms per token ({1e3 / step:.1f} tok/s)")
            rows["Python + numpy (the rest)"] = step - sum(rows.values())
            for k, v in sorted(rows.items(), key=lambda kv: -kv[1]):
                print(f"  {k:32s} {v:7.2f} ms  {100 * v / step:5.1f}%")
        argmax_vs_lm_head(engine)


def argmax_vs_lm_head(engine, runs: int = 50) -> None:
    import numpy as np

    h = np.random.default_rng(0).standard_normal((1, engine.config.decoder.hidden_size)).astype(np.float32)
    lm_head = engine.decoder.lm_head
    logits = lm_head(h)[0]

    def median_us(fn) -> float:
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 1e6 * float(np.median(ts))

    gemv, argmax = median_us(lambda: lm_head(h)), median_us(lambda: int(logits.argmax()))
    print(f"greedy argmax over {logits.shape[0]} logits {argmax:.1f} us vs the lm_head GEMV {gemv:.0f} us "
          f"({100 * argmax / gemv:.2f}%): the most a fused GEMV + argmax could save")


if __name__ == "__main__":
    main()
