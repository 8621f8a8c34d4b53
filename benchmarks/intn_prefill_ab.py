"""Prefill (T >= 2) int-N G = 128 matmuls in the two int-N layouts, in one process: the rows layout against
il16 (16 rows interleaved; mote_edge/quant/intn.py), same weights, same activations, calls alternating. Shapes:
the 0.5B's (or --model 1.5b: the 1.5B's) prefill matrices [N, K] (fused q/k/v, o, fused gate/up, down) at T = 64
and 236 (a 236-position prefill).

    python benchmarks/intn_prefill_ab.py [--model 0.5b] [--bits 4 8] [--threads 1] [--reps 15] [--T 64 236]

Prints per (bits, shape, T): ms per call in each layout (median) and il16 / rows speed (> 1: il16 faster).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mote_edge.quant import kernels
from mote_edge.quant.intn import IntNWeight, interleave_il16, intn_row_bytes

SHAPES = {"0.5b": ((1152, 896), (896, 896), (9728, 896), (896, 4864)),   # [N, K]: q/k/v, o, gate/up, down
          "1.5b": ((2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960))}


def weights(bits: int, N: int, K: int) -> tuple[IntNWeight, IntNWeight]:
    """(rows, il16) copies of one random G = 128 weight."""
    rng = np.random.default_rng(0)
    ng = K // 128
    rows = IntNWeight(rng.integers(0, 256, size=(N, intn_row_bytes(K, bits, 128)), dtype=np.uint8),
                      (rng.random((N, ng)) * 0.01).astype(np.float16),
                      rng.integers(0, 2 ** bits, size=(N, ng)).astype(np.float16), bits, 128, N, K)
    il = IntNWeight(*interleave_il16(rows.packed, rows.scales, rows.zeros), bits, 128, N, K, "il16")
    return rows, il


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="0.5b", help="whose matrix shapes")
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 8], choices=(4, 8))
    ap.add_argument("--T", type=int, nargs="+", default=[64, 236])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--shapes", default="", help="comma-separated indices into the shapes (q/k/v, o, gate/up, down)")
    args = ap.parse_args()
    print(f"kernel path {kernels.kernel_path()}, {args.threads} thread(s), median of {args.reps} alternating calls")
    print(f"{'bits':>4s} {'[N, K]':>12s} {'T':>4s} {'rows ms':>8s} {'il16 ms':>8s} {'il16/rows':>9s}")
    for bits in args.bits:
        shapes = SHAPES[args.model]
        for N, K in [shapes[int(i)] for i in args.shapes.split(",")] if args.shapes else shapes:
            rows, il = weights(bits, N, K)
            for T in args.T:
                x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
                out = np.empty((T, N), np.float32)
                assert np.array_equal(kernels.intn_matmul(x, rows, args.threads), kernels.intn_matmul(x, il, args.threads))
                times: dict[str, list[float]] = {"rows": [], "il16": []}
                for _ in range(args.reps):
                    for name, w in (("rows", rows), ("il16", il)):
                        t0 = time.perf_counter()
                        kernels.intn_matmul(x, w, args.threads, out)
                        times[name].append(time.perf_counter() - t0)
                r, i = (float(np.median(times[k])) * 1e3 for k in ("rows", "il16"))
                print(f"{bits:4d} {str([N, K]):>12s} {T:4d} {r:8.2f} {i:8.2f} {r / i:9.3f}")


if __name__ == "__main__":
    main()
