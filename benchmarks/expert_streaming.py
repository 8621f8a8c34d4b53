"""Expert streaming under a tight budget, side by side in one run: decode tok/s of the serial loader (reads
on the decoding thread, buffered + DONTNEED, zlib's CRC: the loader of main before the loader thread), the
thread loader without prefetch, and the thread loader with router-lookahead prefetch; the expert bytes
loaded per second of decoding against an O_DIRECT read-speed probe of the same file in the same run.

    python benchmarks/expert_streaming.py models/q05-b4.mote [--tokens 64] [--repeats 3]

Budgets (text prompt, context 1024, ignore_eos; the modes interleaved, medians of --repeats):
    minimum      top_k slabs: the smallest plan without loader buffers (serial, thread, thread + the gap
                 prefetch into the slab each wave frees)
    minimum-fitted  the same, routed by the fitted routing (below) instead of the synth router
    minimum+buf  top_k cache slabs + top_k loader buffers: the smallest plan with prefetch; every mode gets
                 the same bytes (without prefetch they are 2 x top_k cache slabs)
    half         half the experts' slabs, routed by the trained tiny MoTE's fitted skew, stickiness and
                 lookahead recall (benchmarks/route_model.py, from prefetch_replay.py's last run: the recall of
                 its fitted lookahead predictors unless it ran with --predictor router; the synth router is
                 random; --recall R: a predictor of recall R at every depth instead); prefetch none,
                 lookahead 1-4 ahead, adaptive
    full         every expert cached, same routing, timed after a first answer of as many tokens has read
                 the experts it uses: the loader must cost nothing when nothing misses
"minimum" and "minimum+buf" keep the synth model's own (random) router. --budgets picks some of them.
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

from mote_edge.runtime.cache_policy import DEFAULT_POLICY, RUNTIME_POLICIES

HERE = Path(__file__).resolve().parent
PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"
MODES = {"minimum": [("serial", "none"), ("thread", "none"), ("thread", "gap")],
         "minimum-fitted": [("serial", "none"), ("thread", "none"), ("thread", "gap")],
         "minimum+buf": [("serial", "none"), ("thread", "none"), ("thread", "lookahead")],
         "half": [("serial", "none"), ("thread", "none"), ("thread", "lookahead"), ("thread", "lookahead2"),
                  ("thread", "lookahead3"), ("thread", "lookahead4"), ("thread", "adaptive")],
         "full": [("serial", "none"), ("thread", "none")]}
SKEWED = ("minimum-fitted", "half", "full")


def decode(mote: Path, budget: int | None, tokens: int, threads: int, loader: str, prefetch: str,
           routing: dict | None, warm: bool = False, cache_policy: str = DEFAULT_POLICY) -> dict:
    from route_model import RouteModel, install  # a sibling: a script's folder is sys.path[0]

    from mote_edge.runtime.engine import Engine

    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=1024, vision=False,
                     expert_loader=loader, prefetch=prefetch, cache_policy=cache_policy) as engine:
        if routing is not None:
            install(engine, RouteModel(**{**routing, "lookahead_recall": tuple(routing["lookahead_recall"])}))
        stats = engine.experts.stats
        if warm:  # the same prompt once: its experts are read before the timed answer
            for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 1, ignore_eos=True):
                pass
        times, t, read_before = [], time.perf_counter(), None
        for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 1, ignore_eos=True):
            now = time.perf_counter()
            times.append(now - t)
            t = now
            if len(times) == 2:  # after the first decode step (warm-up): decode steps from here
                read_before = stats.bytes_read
        e = engine.report()["experts"]
        decode_read = stats.bytes_read - read_before
    steps = times[2:]  # times[0]: prefill, times[1]: the first decode step
    return {"tok_s": len(steps) / sum(steps), "slabs": e["slabs"], "loader_slabs": e["loader_slabs"],
            "hit_rate": e["hit_rate"], "io_path": e["io_path"], "crc_path": e["crc_path"], "stall_ms": e["stall_ms"],
            "loader_bytes_per_s": e["loader_bytes_per_s"], "decode_bytes_per_s": decode_read / sum(steps),
            "prefetches": e["prefetches"], "prefetch_used": e["prefetch_used"],
            "prefetch_wasted_bytes": e["prefetch_wasted_bytes"], "prefetch_aborted": e["prefetch_aborted"],
            "prefetch_evicting": e["prefetch_evicting"], "prefetch_handovers": e["prefetch_handovers"],
            "prefetch_depth": e["prefetch_depth"] or 0}


def alternated(mote: Path, tokens: int, threads: int, rounds: int, routing: dict, variants: dict[str, dict]) -> None:
    """Variants of the thread loader at half the experts (fitted routing), one Engine per run, run in a rotated
    order each round in this process: the medians of decode tok/s, hit rate and stall, and the median of each
    round's tok/s over the first variant's."""
    budget = budgets_of(mote)["half"]
    names = list(variants)
    runs: dict = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            v = {"prefetch": "none", "cache_policy": DEFAULT_POLICY, **variants[name]}
            runs[name].append(decode(mote, budget, tokens, threads, "thread", v["prefetch"], routing,
                                     cache_policy=v["cache_policy"]))
            d = runs[name][-1]
            print(f"{name:11s} {d['tok_s']:6.2f} tok/s, hit {100 * d['hit_rate']:4.1f}%, stall {d['stall_ms']:5.0f} ms, "
                  f"depth {d['prefetch_depth']}", flush=True)
    for name, ds in runs.items():
        paired = statistics.median(d["tok_s"] / b["tok_s"] for d, b in zip(ds, runs[names[0]]))
        print(f"{name:11s} median {statistics.median(d['tok_s'] for d in ds):6.2f} tok/s ({paired:.3f}x {names[0]}, "
              f"median of the rounds' ratios), hit {100 * statistics.median(d['hit_rate'] for d in ds):4.1f}%, "
              f"stall {statistics.median(d['stall_ms'] for d in ds):5.0f} ms")


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


def fitted_routing(questions: int) -> dict:
    """The tiny MoTE's fitted routing (skew, stickiness, lookahead recall), from prefetch_replay.py's
    output when it exists, else measured now."""
    saved = HERE / "out" / "prefetch-replay.json"  # prefetch_replay.py's default: with fitted predictors
    if saved.exists():
        return json.loads(saved.read_text())["tiny_fit"]["mean"]
    from prefetch_replay import tiny_trace

    return tiny_trace(questions, "fitted", 300)[1]["mean"]


def budgets_of(mote: Path) -> dict[str, int | None]:
    from mote_edge.format import MoteFile
    from mote_edge.runtime.plan import plan_file

    with MoteFile(mote) as f:
        top_k, total = f.config.moe.top_k_experts, len(f.experts)
        return {"minimum": plan_file(f, 1024, top_k, vision=False).total_bytes,
                "minimum-fitted": plan_file(f, 1024, top_k, vision=False).total_bytes,
                "minimum+buf": plan_file(f, 1024, top_k, vision=False, loader_slabs=top_k).total_bytes,
                "half": plan_file(f, 1024, total // 2, vision=False).total_bytes, "full": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, default=100, help="tiny-MoTE prompts to fit the routing on")
    ap.add_argument("--budgets", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    ap.add_argument("--recall", default=None,
                    help="the fitted routing's lookahead recall replaced by this one at every depth (a stronger "
                         "predictor than the tiny MoTE's router), or a comma list by depth (1, 2, ...; the last "
                         "one for deeper), e.g. what `mote-edge fit-lookahead` measured")
    ap.add_argument("--cache-policy", default=DEFAULT_POLICY, choices=RUNTIME_POLICIES, help="every run's eviction policy")
    ap.add_argument("--policy-ab", type=int, default=0, metavar="ROUNDS",
                    help="instead: layer against expected at half the experts, ROUNDS alternated runs each")
    ap.add_argument("--prefetch-ab", type=int, default=0, metavar="ROUNDS",
                    help="instead: prefetch none, lookahead2, lookahead3 and adaptive at half the experts, ROUNDS "
                         "rounds in a rotated order")
    args = ap.parse_args()
    routing = fitted_routing(args.questions)
    if args.recall is not None:
        routing = {**routing, "lookahead_recall": [float(r) for r in args.recall.split(",")]}
    if args.policy_ab:
        alternated(args.mote, args.tokens, args.threads, args.policy_ab, routing,
                   {"layer": {"cache_policy": "layer"}, "expected": {"cache_policy": "expected"}})
        return
    if args.prefetch_ab:
        alternated(args.mote, args.tokens, args.threads, args.prefetch_ab, routing,
                   {p: {"prefetch": p} for p in ("none", "lookahead2", "lookahead3", "adaptive")})
        return
    budgets = {k: v for k, v in budgets_of(args.mote).items() if k in args.budgets.split(",")}
    runs: dict = {b: {f"{l}/{p}": [] for l, p in MODES[b]} for b in budgets}
    probes = []
    for _ in range(args.repeats):  # interleaved: every mode sees the same machine load
        probes.append(direct_read_probe(args.mote))
        for name, budget in budgets.items():
            for loader, prefetch in MODES[name]:
                runs[name][f"{loader}/{prefetch}"].append(decode(args.mote, budget, args.tokens, args.threads, loader,
                                                                 prefetch, routing if name in SKEWED else None,
                                                                 warm=name == "full", cache_policy=args.cache_policy))
    probe = statistics.median(probes)
    print(f"{args.mote.name}: O_DIRECT read probe {probe / 2**20:,.0f} MiB/s (median of {len(probes)}); routing at "
          f"half/full: skew {routing['skew']:.2f}, stickiness {routing['stickiness']:.2f}, lookahead recall "
          + ", ".join(f"{100 * r:.1f}%" for r in routing["lookahead_recall"]))
    result = {"model": args.mote.name, "cache_policy": args.cache_policy, "threads": args.threads, "tokens": args.tokens, "routing": routing,
              "direct_read_bytes_per_s": probe, "probes": probes, "budgets": {}}
    full = statistics.median(r["tok_s"] for r in runs["full"]["thread/none"]) if "full" in runs else None
    keys = ("tok_s", "stall_ms", "loader_bytes_per_s", "decode_bytes_per_s", "hit_rate", "prefetches", "prefetch_used",
            "prefetch_wasted_bytes", "prefetch_aborted", "prefetch_evicting", "prefetch_handovers", "prefetch_depth")
    for name, modes in runs.items():
        base = statistics.median(r["tok_s"] for r in modes["serial/none"])
        result["budgets"][name] = {"budget_bytes": budgets[name]}
        for mode, rs in modes.items():
            med = {k: statistics.median(r[k] for r in rs) for k in keys}
            med.update(slabs=rs[0]["slabs"], loader_slabs=rs[0]["loader_slabs"], io_path=rs[0]["io_path"],
                       crc_path=rs[0]["crc_path"], runs=[r["tok_s"] for r in rs], vs_serial=med["tok_s"] / base,
                       vs_full=None if full is None else med["tok_s"] / full, disk_share=med["decode_bytes_per_s"] / probe)
            result["budgets"][name][mode] = med
            print(f"{name:11s} {rs[0]['slabs']:3d} slabs ({rs[0]['loader_slabs']} buffers) {mode:17s} "
                  f"{med['tok_s']:6.2f} tok/s ({med['vs_serial']:.2f}x serial"
                  + ("" if full is None else f", {med['vs_full']:.2f}x full") + ")  "
                  f"{rs[0]['io_path']:8s} {rs[0]['crc_path']:6s} loader {med['loader_bytes_per_s'] / 2**20:5.0f} MiB/s busy, "
                  f"decode {med['decode_bytes_per_s'] / 2**20:5.0f} MiB/s ({med['disk_share']:.0%} of probe), "
                  f"stall {med['stall_ms']:5.0f} ms, hit {100 * med['hit_rate']:4.1f}%, prefetch "
                  f"{med['prefetch_used']:.0f}/{med['prefetches']:.0f} used ({med['prefetch_evicting']:.0f} into cached "
                  f"experts' slabs), {med['prefetch_aborted']:.0f} aborted ({med['prefetch_handovers']:.0f} slabs handed to "
                  f"demand reads), "
                  f"{med['prefetch_wasted_bytes'] / 2**20:.0f} MiB wasted"
                  + (f", depth {med['prefetch_depth']:.0f} at the end" if mode.endswith("adaptive") else ""), flush=True)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    suffix = ("" if set(budgets) == set(MODES) else "-" + "-".join(budgets)) + (
        "" if args.cache_policy == DEFAULT_POLICY else f"-{args.cache_policy}") + (
        "" if args.recall is None else f"-recall{args.recall.replace(',', '-')}")
    (out / f"expert-streaming-{args.mote.stem}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
