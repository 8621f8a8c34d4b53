"""The int-N G = 128 GEMVs of a decode step in the two int-N layouts, in one process: the rows layout (the
AVX-512 GEMV over (row, group) pairs) against il16 (16 rows interleaved, output rows in the lanes;
mote_edge/quant/intn.py), on the same model's resident weights loaded twice, plus a plain read of the same
bytes and the DRAM probe. Cold: one pass reads every layer's int4 q/k/v, o, gate/up, down once, in the step's
order, then the int8 lm_head (> L3 per pass); passes alternate between the layouts.

    python benchmarks/intn_layout_ab.py models/q05-b4.mote [--threads 1] [--reps 15]

Prints per matrix kind, for the int4 mix and for the whole pass: ms per pass, GB/s, % of the probe, and
il16 / rows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mote_edge import _native

KINDS = ("q/k/v", "o", "gate/up", "down", "lm_head")
INT4 = KINDS[:4]


def layer_matrices(w, i: int, prefix: str) -> list[tuple[str, object]]:
    """(kind, Linear) of layer i's int-N matrices in the step's order."""
    p = f"model.layers.{i}"
    mlp = f"{p}.mlp.shared_expert" if f"{p}.mlp.shared_expert.down_proj.weight" in w.entries else f"{p}.mlp"
    return [("q/k/v", w.fused_linear([f"{p}.self_attn.{n}_proj.weight" for n in "qkv"]).fused),
            ("o", w.linear(f"{p}.self_attn.o_proj.weight")),
            ("gate/up", w.fused_linear([f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"]).fused),
            ("down", w.linear(f"{mlp}.down_proj.weight"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    from mote_edge.format import MoteFile
    from mote_edge.quant import kernels
    from mote_edge.runtime.hugepages import Arena
    from mote_edge.runtime.weights import ResidentWeights

    th = args.threads
    probe_arena = Arena(1 << 30)
    probe = probe_arena.empty(((1 << 30) // 8,), np.uint64)
    probe[:] = 1
    with MoteFile(args.mote) as f:
        nl = f.config.decoder.num_hidden_layers
        sets = {lay: ResidentWeights(f, th, lay) for lay in ("rows", "il16")}
        head = "model.embed_tokens.weight" if f.config.decoder.tie_word_embeddings else "lm_head.weight"
        mats = {lay: [m for i in range(nl) for m in layer_matrices(w, i, "")] + [("lm_head", w.linear(head))]
                for lay, w in sets.items()}
    assert all(lin.w.layout == "il16" for _, lin in mats["il16"]), "every matrix should take the il16 layout"
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(max(lin.K for _, lin in mats["rows"])) * 0.5).astype(np.float32)
    y = np.empty(max(lin.N for _, lin in mats["rows"]), np.float32)
    nbytes = {k: sum(lin.w.nbytes for kk, lin in mats["rows"] if kk == k) for k in KINDS}

    def gemv_pass(lay: str) -> dict[str, float]:
        t = dict.fromkeys(KINDS, 0.0)
        for kind, lin in mats[lay]:
            w = lin.w
            t0 = time.perf_counter()
            _native.intn_matmul(w.packed, w.scales, w.zeros, w.bits, 128, x[:lin.K], 1, lin.K, lin.N, y[:lin.N], th,
                                0 if lay == "rows" else 1)
            t[kind] += time.perf_counter() - t0
        return t

    def read_pass() -> dict[str, float]:
        t = dict.fromkeys(KINDS, 0.0)
        for kind, lin in mats["rows"]:
            t0 = time.perf_counter()
            for a in (lin.w.packed, lin.w.scales, lin.w.zeros):
                _native.read_sum(a.reshape(-1).view(np.uint8)[:a.nbytes - a.nbytes % 8].view(np.uint64), th)
            t[kind] += time.perf_counter() - t0
        return t

    runs = {"rows": [], "il16": [], "plain read": []}
    dram = []
    for r in range(args.reps):
        order = ["rows", "il16", "plain read"] if r % 2 == 0 else ["il16", "rows", "plain read"]
        for name in order:
            runs[name].append(read_pass() if name == "plain read" else gemv_pass(name))
        t0 = time.perf_counter()
        _native.read_sum(probe, th)
        dram.append(probe.nbytes / (time.perf_counter() - t0))
    d = float(np.median(dram))
    total = sum(nbytes.values())
    print(f"{th} thread(s), path {kernels.kernel_path()}, DRAM probe {d / 1e9:.1f} GB/s, {nl} layers, "
          f"{total / 1e6:.1f} MB per pass ({sum(nbytes[k] for k in INT4) / 1e6:.1f} MB int4), medians of {args.reps}")
    print(f"  {'':10s} {'MB':>6s}" + "".join(f" {n:>22s}" for n in runs) + f" {'il16/rows':>10s}")
    for k in KINDS + ("int4", "all"):
        part = KINDS if k == "all" else INT4 if k == "int4" else (k,)
        nb = sum(nbytes[kk] for kk in part)
        cells, gbs = "", {}
        for name, rr in runs.items():
            ms = 1e3 * float(np.median([sum(p[kk] for kk in part) for p in rr]))
            gbs[name] = nb / ms / 1e6
            cells += f" {ms:6.2f} ms {gbs[name]:5.1f} GB/s {100 * gbs[name] * 1e9 / d:3.0f}%"
        print(f"  {k:10s} {nb / 1e6:6.1f}{cells} {gbs['il16'] / gbs['rows']:10.3f}")
    paired = [sum(a.values()) / sum(b.values()) for a, b in zip(runs["rows"], runs["il16"])]
    print(f"  paired rows / il16 time per pass: median {np.median(paired):.3f}, "
          f"range {min(paired):.3f}-{max(paired):.3f}")


if __name__ == "__main__":
    main()
