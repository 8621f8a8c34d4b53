"""What `ffn_step` costs beyond its bare kernel calls: the 24 dense / shared int4 FFNs of a decode step as two
kernel calls each (gate/up, down; no SwiGLU) and through native `ffn_step`, interleaved in one process, each
pass with a malloc'd block of S bytes held (it moves where the int-N kernel's per-call heap buffers land:
the quantized activation, the row scratch).

    python benchmarks/ffn_step_overhead.py models/q05-b4.mote [--threads 1] [--reps 21] [--sizes 0,2048,8192]

Per S: median ms of the cold pass (weights evicted by a pass over the FFNs in reverse order before each) for
the bare calls and for ffn_step, and the median of the paired difference ffn_step - bare; last, the same
with one FFN run 24 times (7 MB: L3-hot), where only the work each path does shows.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np

from mote_edge import _native


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--sizes", default="0,2048,8192", help="held heap block sizes in bytes, comma-separated")
    args = ap.parse_args()
    from mote_edge.runtime.decoder import MoE
    from mote_edge.runtime.engine import Engine

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    th = args.threads
    sizes = [int(s) for s in args.sizes.split(",")]
    with Engine.load(args.mote, threads=th, max_context=1024) as engine:
        dense = [layer.mlp.shared.specs() if isinstance(layer.mlp, MoE) else layer.mlp.specs()
                 for layer in engine.decoder.layers]
        H = engine.config.decoder.hidden_size
        rng = np.random.default_rng(0)
        h = (rng.standard_normal(H) * 0.5).astype(np.float32)
        I = dense[0][1][2]
        out = np.empty(4 * I, np.float32)
        act = (rng.standard_normal(I) * 0.5).astype(np.float32)  # the down projections' input
        y = np.zeros(H, np.float32)

        def call(s: tuple, x: np.ndarray, n: int) -> None:  # spec (kind 1, N, K, w, scales, zeros, bits, G, _)
            _native.intn_matmul(s[3], s[4], s[5], s[6], s[7], x, 1, s[2], s[1], out[:n], th)

        def bare(ffns):
            for gate_up, down in ffns:
                for s in gate_up:
                    call(s, h, s[1])
                call(down, act, H)

        def step(ffns):
            for gate_up, down in ffns:
                _native.ffn_step(h, y, 1.0, gate_up, down, th)

        def timed(fn, ffns, held: int, cold: bool) -> float:
            (bare if cold else fn)(dense[::-1] if cold else ffns)  # evict (cold) or warm (hot)
            p = libc.malloc(held) if held else None
            t = time.perf_counter()
            fn(ffns)
            dt = time.perf_counter() - t
            if p:
                libc.free(p)
            return dt

        print(f"{th} thread(s), {len(dense)} FFNs ({dense[0][0][0][1]} x {H} gate/up, {H} x {I} down), "
              f"{args.reps} reps: median ms")
        cases = [(f"cold, S = {s}", dense, s, True) for s in sizes] + [("hot, one FFN x 24", dense[:1] * 24, 0, False)]
        times = {c[0]: ([], []) for c in cases}
        for r in range(args.reps):
            for name, ffns, held, cold in cases:
                pair = [(0, bare), (1, step)][:: 1 if r % 2 else -1]  # alternate which runs first
                for k, fn in pair:
                    times[name][k].append(timed(fn, ffns, held, cold))
        print(f"  {'':22s} {'bare':>7s} {'ffn_step':>9s} {'diff (q25..q75)':>24s}")
        for name, (b, s) in times.items():
            b, s = np.array(b) * 1e3, np.array(s) * 1e3
            d = s - b
            print(f"  {name:22s} {np.median(b):7.3f} {np.median(s):9.3f} {np.median(d):+8.3f} "
                  f"({np.quantile(d, .25):+.3f}..{np.quantile(d, .75):+.3f})")


if __name__ == "__main__":
    main()
