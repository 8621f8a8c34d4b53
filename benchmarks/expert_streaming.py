"""Expert streaming at a tight budget: decode tok/s with the serial loader (reads on the decoding thread,
buffered + DONTNEED: the loader of the branch base), the thread loader without prefetch, and the thread
loader with router-lookahead prefetch, side by side in one run, repeated; plus the expert bytes loaded per
second against an O_DIRECT read-speed probe of the same file in the same run.

    python benchmarks/expert_streaming.py models/q05-b4.mote [--tokens 64] [--repeats 3]

Budgets: the minimum (top_k slabs) and half the experts cached. Text prompt, context 1024, ignore_eos.
The synth models' routers are random: lookahead predicts nothing there (its numbers show its cost).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"
MODES = (("serial", "none"), ("thread", "none"), ("thread", "lookahead"))


def decode(mote: Path, budget: int, tokens: int, threads: int, loader: str, prefetch: str) -> dict:
    from mote_edge.runtime.engine import Engine

    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=1024, vision=False,
                     expert_loader=loader, prefetch=prefetch) as engine:
        times, t = [], time.perf_counter()
        for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 1, ignore_eos=True):
            now = time.perf_counter()
            times.append(now - t)
            t = now
        e = engine.report()["experts"]
    steps = times[2:]  # times[0]: prefill, times[1]: the first decode step (warm-up)
    return {"tok_s": len(steps) / sum(steps), "slabs": e["slabs"], "hit_rate": e["hit_rate"], "io_path": e["io_path"],
            "stall_ms": e["stall_ms"], "bytes_read": e["bytes_read"], "loader_bytes_per_s": e["loader_bytes_per_s"],
            "decode_bytes_per_s": e["bytes_read"] / sum(times), "prefetches": e["prefetches"],
            "prefetch_used": e["prefetch_used"], "prefetch_wasted_bytes": e["prefetch_wasted_bytes"]}


def direct_read_probe(mote: Path, seconds: float = 2.0) -> float:
    """O_DIRECT random reads of whole expert records, one thread: bytes per second."""
    from mote_edge.format import MoteFile

    with MoteFile(mote) as f:
        spans = [(f.header.data_offset + e.offset, -(-e.nbytes // 4096) * 4096) for e in f.experts.values()]
    fd = os.open(mote, os.O_RDONLY | os.O_DIRECT)
    buf = np.frombuffer(mmap.mmap(-1, max(n for _, n in spans)), np.uint8)
    done, t0, rng = 0, time.perf_counter(), random.Random(0)
    while time.perf_counter() - t0 < seconds:
        offset, n = rng.choice(spans)
        done += os.preadv(fd, [buf[:n]], offset)
    os.close(fd)
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from mote_edge.format import MoteFile
    from mote_edge.runtime.plan import plan_file

    with MoteFile(args.mote) as f:
        top_k, total = f.config.moe.top_k_experts, len(f.experts)
        budgets = {"minimum": plan_file(f, 1024, top_k, vision=False).total_bytes,
                   "half": plan_file(f, 1024, total // 2, vision=False).total_bytes}
    runs: dict = {b: {f"{l}/{p}": [] for l, p in MODES} for b in budgets}
    probes = []
    for _ in range(args.repeats):  # interleaved: every mode sees the same machine load
        probes.append(direct_read_probe(args.mote))
        for name, budget in budgets.items():
            for loader, prefetch in MODES:
                runs[name][f"{loader}/{prefetch}"].append(decode(args.mote, budget, args.tokens, args.threads,
                                                                 loader, prefetch))
    probe = statistics.median(probes)
    print(f"O_DIRECT read probe: {probe / 2**20:,.0f} MiB/s (median of {len(probes)})")
    result = {"threads": args.threads, "tokens": args.tokens, "direct_read_bytes_per_s": probe, "budgets": {}}
    for name, modes in runs.items():
        base = statistics.median(r["tok_s"] for r in modes["serial/none"])
        result["budgets"][name] = {}
        for mode, rs in modes.items():
            med = {k: statistics.median(r[k] for r in rs) for k in ("tok_s", "stall_ms", "loader_bytes_per_s",
                                                                   "decode_bytes_per_s", "hit_rate", "prefetches",
                                                                   "prefetch_used", "prefetch_wasted_bytes")}
            med.update(slabs=rs[0]["slabs"], io_path=rs[0]["io_path"], runs=[r["tok_s"] for r in rs])
            result["budgets"][name][mode] = med
            print(f"{name:8s} {rs[0]['slabs']:3d} slabs  {mode:17s} {med['tok_s']:6.2f} tok/s ({med['tok_s'] / base:.2f}x "
                  f"serial)  {rs[0]['io_path']:8s} loader {med['loader_bytes_per_s'] / 2**20:5.0f} MiB/s busy, "
                  f"{med['decode_bytes_per_s'] / 2**20:5.0f} MiB/s over the run ({med['decode_bytes_per_s'] / probe:.0%} "
                  f"of probe), stall {med['stall_ms']:5.0f} ms, hit {100 * med['hit_rate']:4.1f}%, prefetch "
                  f"{med['prefetch_used']:.0f}/{med['prefetches']:.0f} used, {med['prefetch_wasted_bytes'] / 2**20:.0f} MiB wasted")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "expert_streaming.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
