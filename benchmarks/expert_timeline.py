"""A decode step at a tight budget as a timeline: per MoE layer, when its wave begins, when each expert
read is queued / starts / ends and on which reader, how long the decoding thread waits for it, and how
long the disk then sits idle until the next read (the expert cache's `timeline`, runtime/expert_cache.py).

    python benchmarks/expert_timeline.py models/q05-b4.mote [--tokens 16] [--threads 2] [--budget minimum]

Prints one decode step (the median-length one) layer by layer, then medians over the decode steps:
step ms, disk busy / idle ms (the union of the reads against the step), waits, and per MoE layer the gap
from the wave's routing to its read's start, the read (its read / CRC / place parts), the wait, the
expert's compute after the wait and the time from the wave's end to the next wave (attention and the
dense layers in between: the disk is idle there unless a prefetch reads). Writes
benchmarks/out/expert-timeline-<model>.json.

    --ab SWITCH [--fitted [--recall R]] [--gap-layers inner|all|wrap]
        one Engine at the minimum budget, SWITCH (early_compute, check_later, split_reads, or gap_prefetch:
        the "gap" prefetch) alternated per decode step (ABBA): step-time ratio on/off
    --contention
        the lm_head timed alone and beside a loader thread reading records (whole, or in gap chunks)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"


def union_ms(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """ms covered by the union of `spans` (seconds) clipped to [lo, hi]."""
    covered, end = 0.0, lo
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi):
        if b > end:
            covered += b - max(a, end)
            end = b
    return 1e3 * covered


def step_rows(events: list[dict], t0: float, t1: float) -> list[dict]:
    """One decode step [t0, t1): a row per MoE wave (times in ms from t0)."""
    waves = [e for e in events if e["event"] == "wave" and t0 <= e["t"] < t1]
    ends = [e for e in events if e["event"] == "end" and t0 <= e["t"] < t1]
    loads = [e for e in events if e["event"] == "load" and e["end"] > t0 and e["t"] < t1]
    waits = [e for e in events if e["event"] in ("wait", "first") and t0 <= e["t"] < t1]
    rows = []
    for n, (w, end) in enumerate(zip(waves, ends)):
        nxt = waves[n + 1]["t"] if n + 1 < len(waves) else t1
        mine = [ld for ld in loads if ld["key"][0] == w["layer"] and ld["end"] > w["t"] - 0.05 and ld["t"] < end["t"]]
        wait = [x for x in waits if w["t"] <= x["t"] <= end["t"]]
        ms = lambda t: 1e3 * (t - t0)  # noqa: E731
        rows.append({"layer": w["layer"], "wave": ms(w["t"]), "end": ms(end["t"]), "next_wave": ms(nxt),
                     "loads": [{"expert": ld["key"][1], "prefetch": ld["prefetch"], "reader": ld["reader"],
                                "queued": ms(ld["queued"]), "start": ms(ld["t"]), "done": ms(ld["end"]),
                                "read_ms": ld["read_ms"], "crc_ms": ld["crc_ms"], "place_ms": ld["place_ms"]}
                               for ld in mine],
                     "wait_ms": sum(1e3 * (x["end"] - x["t"]) for x in wait),
                     "wait_end": ms(max((x["end"] for x in wait), default=w["t"])),
                     "other_reads": [ld for ld in loads if ld not in mine]})
    return rows


def summarise(events: list[dict], marks: list[float]) -> tuple[list[dict], list[list[dict]]]:
    steps, all_rows = [], []
    loads = [(e["t"], e["end"]) for e in events if e["event"] == "load"]
    for t0, t1 in zip(marks, marks[1:]):
        rows = step_rows(events, t0, t1)
        busy = union_ms(loads, t0, t1)
        per = {"step_ms": 1e3 * (t1 - t0), "disk_busy_ms": busy, "disk_idle_ms": 1e3 * (t1 - t0) - busy,
               "wait_ms": sum(r["wait_ms"] for r in rows),
               "route_to_read_ms": statistics.mean([ld["start"] - r["wave"] for r in rows for ld in r["loads"]] or [0]),
               "read_ms": statistics.mean([ld["done"] - ld["start"] for r in rows for ld in r["loads"]] or [0]),
               "compute_after_wait_ms": statistics.mean([r["end"] - r["wait_end"] for r in rows] or [0]),
               "overlap_ms": statistics.mean([r["wait_end"] - r["wait_ms"] - r["wave"] for r in rows if r["loads"]] or [0]),
               "end_to_next_wave_ms": statistics.mean([r["next_wave"] - r["end"] for r in rows] or [0]),
               "reads": sum(len(r["loads"]) for r in rows)}
        steps.append(per)
        all_rows.append(rows)
    return steps, all_rows


LOADERS = {"serial": {}, "thread": {}, "thread-late": {"early_compute": False}, "thread-split": {"split_reads": True}}


def set_variant(cache, loader: str) -> None:
    """thread-late: no compute before a record is whole; thread-split: demand records in halves on both readers."""
    for name, value in LOADERS[loader].items():
        setattr(cache, name, value)


def run(mote: Path, budget_name: str, tokens: int, threads: int, loader: str, prefetch: str) -> dict:
    from mote_edge.format import MoteFile
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.plan import plan_file

    with MoteFile(mote) as f:
        top_k = f.config.moe.top_k_experts
        extra = top_k if budget_name == "min+buf" else 0
        budget = None if budget_name == "full" else plan_file(f, 1024, top_k, vision=False, loader_slabs=extra).total_bytes
    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=1024, vision=False,
                     expert_loader=loader.split("-")[0], prefetch=prefetch) as engine:
        set_variant(engine.experts, loader)
        engine.experts.timeline = events = []
        marks = []
        if budget is None:  # every expert cached: a first answer reads them, the timed one none
            for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 2, ignore_eos=True):
                pass
            del events[:]
        for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 2, ignore_eos=True):
            marks.append(time.perf_counter())
        io_path = engine.experts.io_path
    steps, rows = summarise(events, marks[1:])  # marks[0] ends the prefill; decode steps from there
    return {"budget": budget_name, "loader": loader, "prefetch": prefetch, "io_path": io_path, "steps": steps,
            "rows": rows}


GAP_LAYERS = ("all", "inner", "wrap")


def set_gap_prefetch(engine, on: bool, where: str = "inner") -> None:
    """The "gap" prefetch on or off between decode steps: MoE layers' lookahead depth 1 or 0 (same plan). `where`:
    every MoE layer, "inner" (not the last: the next token's first MoE layer is not predicted across the
    lm_head) or "wrap" (only the last)."""
    moe = [layer.mlp for layer in engine.decoder.layers if hasattr(layer.mlp, "prefetch_depth")]
    for n, mlp in enumerate(moe):
        last = n == len(moe) - 1
        mlp.prefetch_depth = int(on and (where == "all" or (where == "wrap") == last))


def ab_steps(mote: Path, switch: str, tokens: int, threads: int, fitted: bool = False,
             recall: float | None = None, gap_layers: str = "inner", gap_chunk: int | None = None) -> dict:
    """One Engine at the minimum budget, the cache's `switch` (early_compute, check_later or split_reads; or
    gap_prefetch: the "gap" prefetch) alternated between decode steps in ABBA order, so both sides see the same
    machine load: median step ms of each, and the prefetch counters of the steps it was on. `fitted`: routed by
    the tiny MoTE's fitted routing (benchmarks/route_model.py) instead of the synth router; `recall` replaces its
    lookahead recall (1.0: an oracle's predictions)."""
    from mote_edge.format import MoteFile
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.plan import plan_file

    with MoteFile(mote) as f:
        budget = plan_file(f, 1024, f.config.moe.top_k_experts, vision=False).total_bytes
    steps: dict[bool, list[float]] = {False: [], True: []}
    gap = switch == "gap_prefetch"
    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=1024, vision=False,
                     prefetch="gap" if gap else "none") as engine:
        if fitted:
            from expert_streaming import fitted_routing
            from route_model import RouteModel, install

            routing = fitted_routing(100)
            fit = tuple(routing["lookahead_recall"]) if recall is None else (recall, recall)
            install(engine, RouteModel(**{**routing, "lookahead_recall": fit}))
        cache = engine.experts
        if gap_chunk:
            cache.prefetch_chunk = gap_chunk
        on = False
        t = None
        for n, _ in enumerate(engine.generate_ids(PROMPT, max_new_tokens=tokens + 2, ignore_eos=True)):
            now = time.perf_counter()
            if n >= 2:  # after the prefill and a warm-up step
                steps[on].append(1e3 * (now - t))
            on = (n % 4) in (0, 3)  # ABBA: the next step's setting
            if gap:
                set_gap_prefetch(engine, on, gap_layers)
            else:
                setattr(cache, switch, on)
            t = time.perf_counter()
        st = cache.stats
        counters = {"prefetches": st.prefetches, "used": st.prefetch_used, "late": st.prefetch_late,
                    "aborted": st.prefetch_aborted, "handovers": st.prefetch_handovers,
                    "wasted_bytes": st.prefetch_wasted_bytes}
    med = {k: statistics.median(v) for k, v in steps.items()}
    routed = ("fitted routing" + (f", lookahead recall {recall:.0%}" if recall is not None else "")) if fitted \
        else "synth router"
    print(f"{switch} alternated per decode step ({len(steps[True])} + {len(steps[False])} steps, {routed}): on "
          f"{med[True]:.1f} ms, off {med[False]:.1f} ms per step: on is {med[False] / med[True]:.3f}x as fast"
          + (f"; prefetch at {gap_layers} MoE layers in {cache.prefetch_chunk >> 10} KiB chunks: {counters}"
             if gap else ""))
    return {"switch": switch, "fitted": fitted, "recall": recall, "gap_layers": gap_layers,
            "gap_chunk": cache.prefetch_chunk, "on_ms": med[True], "off_ms": med[False], "counters": counters,
            "steps": {str(k): v for k, v in steps.items()}}


def read_contention(mote: Path, threads: int, reps: int = 3, calls: int = 40) -> dict:
    """The lm_head (a 2-thread native GEMV streaming its weights from DRAM) timed alone and while a loader
    thread reads expert records back to back (O_DIRECT, whole records or GAP_CHUNK chunks, CRC-32 checked):
    what a read overlapped with compute costs the compute on this machine. Median ms per call, interleaved. Two
    more modes take the read apart: the records read and not checked (`os.preadv`), and the CRC-32 computed over
    a record in memory at the rate the reads came in, without reading."""
    import random
    import threading

    import numpy as np

    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.expert_io import ExpertReader
    from mote_edge.runtime.expert_loader import GAP_CHUNK
    from mote_edge.runtime.hugepages import huge_buffer

    from mote_edge import _native

    modes = {"alone": None, "whole records": 0, f"{GAP_CHUNK >> 10} KiB chunks": GAP_CHUNK,
             "reads without CRC": "read", "CRC without reads": "crc"}
    times: dict[str, list[float]] = {m: [] for m in modes}
    with Engine.load(mote, memory_budget=None, threads=threads, max_context=256, vision=False) as engine:
        head, f = engine.decoder.lm_head, engine.file
        x = np.random.default_rng(0).standard_normal((1, f.config.decoder.hidden_size)).astype(np.float32)
        keys = list(f.experts)
        buf = huge_buffer(max(-(-e.nbytes // 4096) * 4096 for e in f.experts.values()))
        reader = ExpertReader(f, direct=True)
        fd = os.open(mote, os.O_RDONLY | os.O_DIRECT)
        state = {"chunk": None, "stop": False}

        def read_loop() -> None:
            rng, read_s = random.Random(0), 0.002
            while not state["stop"]:
                chunk = state["chunk"]
                if chunk is None:
                    time.sleep(0.001)
                    continue
                key = rng.choice(keys)
                if chunk == "read":
                    e = f.expert_entry(*key)
                    os.preadv(fd, [buf[:-(-e.nbytes // 4096) * 4096]], f.header.data_offset + e.offset)
                elif chunk == "crc":
                    time.sleep(read_s)
                    _native.crc32(buf[:f.expert_entry(*key).nbytes])
                else:
                    t0 = time.perf_counter()
                    reader.read_into(*key, buf, check=(lambda: chunk) if chunk else None)
                    if chunk == 0:
                        read_s = 0.9 * (time.perf_counter() - t0)  # the read, less its CRC (the crc mode's pace)

        loop = threading.Thread(target=read_loop, daemon=True)
        loop.start()
        try:
            for _ in range(reps):
                for name, chunk in modes.items():
                    state["chunk"] = chunk
                    time.sleep(0.02)
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        head(x)
                        times[name].append(1e3 * (time.perf_counter() - t0))
        finally:
            state["stop"] = True
            loop.join()
            reader.close()
            os.close(fd)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"lm_head ({threads} threads, {reader.io_path} reads): " + ", ".join(
        f"{k} {v:.2f} ms ({v / med['alone']:.2f}x)" for k, v in med.items()))
    return med


def print_run(r: dict) -> None:
    steps = r["steps"][1:]  # the first decode step warms up
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    print(f"\n{r['loader']} loader, prefetch {r['prefetch']}, {r['budget']} budget, {r['io_path']} I/O: medians of "
          f"{len(steps)} decode steps")
    print(f"  step {med['step_ms']:.1f} ms: disk busy {med['disk_busy_ms']:.1f} ms ({med['disk_busy_ms'] / med['step_ms']:.0%}),"
          f" idle {med['disk_idle_ms']:.1f} ms; decoding thread waits {med['wait_ms']:.1f} ms; {med['reads']:.0f} reads")
    print(f"  per MoE layer: routing -> read start {med['route_to_read_ms']:.2f} ms, read {med['read_ms']:.2f} ms, "
          f"compute after the wait {med['compute_after_wait_ms']:.2f} ms, wave end -> next wave "
          f"{med['end_to_next_wave_ms']:.2f} ms")
    typical = sorted(range(1, len(r["steps"])), key=lambda i: r["steps"][i]["step_ms"])[len(steps) // 2]
    print(f"  one step ({r['steps'][typical]['step_ms']:.1f} ms), ms from its start:")
    print("    layer  wave  read: queued start done (reader, read/crc/place ms)          wait   end  next")
    for row in r["rows"][typical]:
        reads = "; ".join(f"e{ld['expert']}{' pf' if ld['prefetch'] else ''} {ld['queued']:.1f} {ld['start']:.1f} "
                          f"{ld['done']:.1f} (r{ld['reader']}, {ld['read_ms']:.2f}/{ld['crc_ms']:.2f}/{ld['place_ms']:.2f})"
                          for ld in row["loads"]) or "hit"
        print(f"    {row['layer']:5d} {row['wave']:5.1f}  {reads:55s} {row['wait_ms']:5.2f} {row['end']:5.1f} "
              f"{row['next_wave']:5.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", choices=("minimum", "min+buf"), default="minimum")
    ap.add_argument("--modes", default="serial/none,thread-late/none,thread/none",
                    help="comma list of loader/prefetch; loader serial, thread (the default: gate and up computed "
                         "while down_proj reads), thread-late (not), thread-split (a demand record read in halves "
                         "by both readers); prefetch lookahead / lookahead2 need --budget min+buf, gap runs "
                         "at the minimum")
    ap.add_argument("--ab", choices=("early_compute", "check_later", "split_reads", "gap_prefetch"),
                    help="only alternate this switch between decode steps at the minimum budget (ABBA) and compare")
    ap.add_argument("--fitted", action="store_true", help="--ab: route by the tiny MoTE's fitted routing")
    ap.add_argument("--recall", type=float, help="--ab --fitted: the lookahead's recall instead of the fitted one "
                                                 "(1: an oracle)")
    ap.add_argument("--gap-layers", choices=GAP_LAYERS, default="inner",
                    help="--ab gap_prefetch: the MoE layers that prefetch (inner, the runtime's: not across the "
                         "lm_head; all; wrap: only across it)")
    ap.add_argument("--gap-chunk", type=int, help="--ab gap_prefetch: bytes per unconfirmed read (default GAP_CHUNK)")
    ap.add_argument("--contention", action="store_true",
                    help="only time the lm_head alone and beside a loader thread reading records")
    args = ap.parse_args()
    if args.contention:
        read_contention(args.mote, args.threads)
        return
    if args.ab:
        ab_steps(args.mote, args.ab, args.tokens, args.threads, args.fitted, args.recall, args.gap_layers,
                 args.gap_chunk)
        return
    from mote_edge.format import MoteFile

    with MoteFile(args.mote) as f:
        moe_layers, record_bytes = len(f.config.moe_layers), max(e.nbytes for e in f.experts.values())
    results = []
    for mode in args.modes.split(","):
        loader, prefetch = mode.split("/")
        r = run(args.mote, args.budget, args.tokens, args.threads, loader, prefetch)
        print_run(r)
        for rows in r["rows"]:
            for row in rows:
                row.pop("other_reads")
        results.append(r)
    full = run(args.mote, "full", args.tokens, args.threads, "thread", "none")
    thread = next((r for r in results if r["loader"] == "thread" and r["prefetch"] == "none"), results[-1])
    med = lambda r, k: statistics.median(s[k] for s in r["steps"][1:])  # noqa: E731
    clock = {"read_ms": med(thread, "read_ms"), "wave_ms": med(full, "step_ms") / moe_layers,
             "overlap_ms": med(thread, "overlap_ms"), "record_bytes": record_bytes, "moe_layers": moe_layers}
    print(f"\nreplay clock (mote-edge simulate --read-ms --wave-ms --overlap-ms): read {clock['read_ms']:.2f} ms per "
          f"record ({record_bytes / 2**20:.2f} MiB, {record_bytes / clock['read_ms'] * 1e3 / 2**20:,.0f} MiB/s), "
          f"wave {clock['wave_ms']:.2f} ms (every expert cached: a step of {med(full, 'step_ms'):.1f} ms over "
          f"{moe_layers} MoE layers), overlap {clock['overlap_ms']:.2f} ms (routing to the wait: the shared expert)")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"expert-timeline-{args.mote.stem}.json").write_text(json.dumps({"clock": clock, "runs": results},
                                                                           indent=1) + "\n")


if __name__ == "__main__":
    main()
