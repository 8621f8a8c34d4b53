"""Budget sweep: speed, expert-cache behaviour and measured memory from the minimum feasible budget to
the full cache, with trained-router-like and uniform routing.

    python benchmarks/budget_sweep.py models/q05-b4.mote [models/q15-b4.mote] [--points 7] [--tokens 32]

Every point runs in a fresh process (so its peak RSS is its own): Engine.load(budget), one image +
prompt, greedy decoding of --tokens tokens (EOS ignored), the runtime's default cache policy.
Routing: "skew" replays the routing statistics of the trained tiny MoTE (benchmarks/route_model.py: Zipf
skew + stickiness fitted per layer on held-out task prompts, measured in this run), "uniform" draws
experts uniformly (the worst case for a cache), "router" keeps the random-weight model's own router.
Per point: decode and prefill tok/s, time to first token, hit rate (all and while decoding), expert
bytes read per decoded token, peak RSS over baseline against the budget. The decode trace of the
full-cache run is replayed by the cache simulator (LRU / LFU / layer-aware / Belady, and the layer-aware
policy with lookahead-1 / lookahead-2 prefetch from the trace's predictions: with "skew" routing the
generators predict at the tiny model's fitted lookahead recall) at every swept slab count. Writes benchmarks/out/budget-sweep.json and one PNG per model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"
IMAGE = HERE.parent / "examples" / "images" / "task-0.png"
TINY = HERE.parent / "examples" / "tiny-mote"
CONTEXT = 1024  # or the model's max_position_embeddings when smaller


def context_of(f) -> int:
    return min(CONTEXT, f.config.decoder.max_position_embeddings)


# ----------------------------------------------------------------------------- one point (subprocess)
def run_point(mote: str, budget: int | None, routing: dict | None, tokens: int, threads: int, trace: bool) -> dict:
    from route_model import RouteModel, install  # a sibling: a script's folder is sys.path[0]

    from mote_edge.format import MoteFile
    from mote_edge.runtime.engine import Engine

    with MoteFile(mote) as f:
        context = context_of(f)
    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=context) as engine:
        if routing is not None:
            install(engine, RouteModel(**routing))
        cache = engine.experts
        if trace:
            cache.trace = []
        read_after_prefill = hits_after_prefill = misses_after_prefill = None
        generated = 0
        for _ in engine.generate_ids(PROMPT, image=IMAGE, max_new_tokens=tokens + 1, ignore_eos=True):
            if read_after_prefill is None:
                read_after_prefill = cache.stats.bytes_read
                hits_after_prefill, misses_after_prefill = cache.stats.hits, cache.stats.misses
                decode_waves_from = len(cache.trace) if trace else 0
            generated += 1
        r = engine.report()
        decode_tokens = r["timing"]["decode_tokens"]
        out = {"budget": budget, "plan_bytes": r["plan"]["total_bytes"], "slabs": r["experts"]["slabs"],
               "total_experts": r["experts"]["total"], "generated": generated,
               "decode_tok_s": r["timing"]["decode_tok_s"], "prefill_tok_s": r["timing"]["prefill_tok_s"],
               "prefill_tokens": r["timing"]["prefill_tokens"], "ttft_ms": r["timing"]["ttft_ms"],
               "image_encode_ms": r["timing"]["image_encode_ms"], "hit_rate": r["experts"]["hit_rate"],
               "hits": r["experts"]["hits"], "misses": r["experts"]["misses"], "stall_ms": r["experts"]["stall_ms"],
               "bytes_read": r["experts"]["bytes_read"],
               "decode_hit_rate": _rate(cache.stats.hits - hits_after_prefill, cache.stats.misses - misses_after_prefill),
               "decode_bytes_per_token": (r["experts"]["bytes_read"] - read_after_prefill) / max(1, decode_tokens),
               "peak_over_baseline": r["memory"]["peak_over_baseline"], "baseline_rss": r["memory"]["baseline_rss"]}
        if trace:
            out["decode_trace"] = cache.trace[decode_waves_from:]
        return out


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


def point_in_subprocess(mote: Path, budget: int | None, routing: dict | None, tokens: int, threads: int,
                        trace: bool) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    spec = json.dumps({"mote": str(mote), "budget": budget, "routing": routing, "tokens": tokens, "threads": threads,
                       "trace": trace})
    proc = subprocess.run([sys.executable, __file__, "--point", spec], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"point {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the sweep
def slab_points(mote: Path, points: int) -> list[tuple[int, int]]:
    """(slabs, budget bytes) from the minimum feasible plan to every expert cached."""
    import numpy as np

    from mote_edge.format import MoteFile
    from mote_edge.runtime.plan import minimum_slabs, plan_file

    with MoteFile(mote) as f:
        lo, hi = minimum_slabs(f.config), len(f.experts)
        slabs = sorted({int(round(s)) for s in np.linspace(lo, hi, points)})
        return [(s, plan_file(f, context_of(f), s).total_bytes) for s in slabs]


def tiny_route_model(questions: int) -> dict:
    """Export the shipped trained tiny MoTE (once) and fit its routing statistics."""
    from route_model import measure_tiny_routing

    mote = OUT / "tiny-mote-b4.mote"
    if not mote.exists():
        subprocess.run([sys.executable, "-m", "mote_edge.cli", "export", str(TINY), "--bits", "4", "-o", str(mote),
                        "--force"], check=True, capture_output=True)
    return measure_tiny_routing(mote, questions)


def simulate_policies(trace: list[dict], slabs: list[int]) -> dict:
    from route_model import waves_of

    from mote_edge.runtime.simulate import POLICIES, simulate

    waves = waves_of(trace)
    out = {p: {str(s): simulate(waves, s, p)["hit_rate"] for s in slabs} for p in POLICIES}
    for prefetch in ("lookahead-1", "lookahead-2"):
        out[f"layer+{prefetch}"] = {str(s): simulate(waves, s, "layer", prefetch)["hit_rate"] for s in slabs}
    return out


def plot(name: str, rows: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mb = 1 / 2**20
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for routing, pts in rows.items():
        x = [p["plan_bytes"] * mb for p in pts]
        ax[0, 0].plot(x, [p["decode_tok_s"] for p in pts], "o-", label=routing)
        ax[0, 1].plot(x, [100 * p["decode_hit_rate"] for p in pts], "o-", label=routing)
        ax[1, 0].plot(x, [p["decode_bytes_per_token"] * mb for p in pts], "o-", label=routing)
        ax[1, 1].plot(x, [p["peak_over_baseline"] * mb for p in pts], "o-", label=f"peak RSS, {routing}")
    allx = [p["plan_bytes"] * mb for pts in rows.values() for p in pts]
    ax[1, 1].plot([min(allx), max(allx)], [min(allx), max(allx)], "k--", label="budget")
    titles = [("decode tok/s", "tokens / s"), ("expert-cache hit rate while decoding", "%"),
              ("expert bytes read per decoded token", "MiB"), ("peak RSS over baseline vs budget", "MiB")]
    for a, (title, unit) in zip(ax.flat, titles):
        a.set_title(title)
        a.set_xlabel("memory budget (MiB)")
        a.set_ylabel(unit)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"mote-edge budget sweep: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("motes", type=Path, nargs="*")
    ap.add_argument("--points", type=int, default=7, help="budgets per model")
    ap.add_argument("--tokens", type=int, default=64, help="decoded tokens per point")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--routing", default="skew,uniform", help="comma list of skew | uniform | router")
    ap.add_argument("--tiny-questions", type=int, default=100, help="held-out prompts routed by the tiny model")
    ap.add_argument("--json", type=Path, default=OUT / "budget-sweep.json")
    ap.add_argument("--point", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.point:
        spec = json.loads(args.point)
        print(json.dumps(run_point(**spec)))
        return
    if not args.motes:
        ap.error("give at least one .mote file")
    OUT.mkdir(parents=True, exist_ok=True)
    routings = args.routing.split(",")
    tiny = tiny_route_model(args.tiny_questions) if "skew" in routings else None
    models = {"skew": tiny["mean"] if tiny else None, "uniform": {"skew": 0.0, "stickiness": 0.0}, "router": None}
    if tiny:
        print(f"tiny MoTE routing over {tiny['questions']} held-out prompts: "
              + ", ".join(f"layer {k}: skew {v['skew']:.2f} stickiness {v['stickiness']:.2f}" for k, v in tiny["layers"].items()))
    result = {"threads": args.threads, "tokens": args.tokens, "context": CONTEXT, "prompt": PROMPT, "image": IMAGE.name,
              "tiny_routing": tiny, "models": {}}
    for mote in args.motes:
        points = slab_points(mote, args.points)
        rows: dict[str, list[dict]] = {}
        sims = {}
        for routing in routings:
            rows[routing] = []
            for slabs, budget in points:
                full = slabs == points[-1][0]
                p = point_in_subprocess(mote, budget, models[routing], args.tokens, args.threads, trace=full)
                if full:
                    sims[routing] = simulate_policies(p.pop("decode_trace"), [s for s, _ in points])
                assert p["slabs"] == slabs, (p["slabs"], slabs)
                rows[routing].append(p)
                print(f"{mote.name:>16} {routing:>7} budget {budget / 2**20:8.1f} MiB  slabs {slabs:4d}/{p['total_experts']}  "
                      f"decode {p['decode_tok_s']:6.1f} tok/s  prefill {p['prefill_tok_s']:6.1f} tok/s  "
                      f"TTFT {p['ttft_ms']:7.0f} ms  hit {100 * p['hit_rate']:5.1f}% (decode {100 * p['decode_hit_rate']:5.1f}%)  "
                      f"read/token {p['decode_bytes_per_token'] / 2**20:6.2f} MiB  "
                      f"peak {p['peak_over_baseline'] / 2**20:7.1f} MiB", flush=True)
        png = OUT / f"budget-sweep-{mote.stem}.png"
        plot(mote.name, rows, png)
        over = [p for pts in rows.values() for p in pts if p["peak_over_baseline"] > p["plan_bytes"]]
        result["models"][mote.name] = {"points": rows, "policies_on_decode_trace": sims, "plot": png.name,
                                       "over_budget_points": len(over)}
        for routing, sim in sims.items():
            print(f"  decode-trace replay ({routing}): " + "; ".join(
                f"{pol} " + " ".join(f"{100 * v:.0f}" for v in hr.values()) for pol, hr in sim.items()))
        print(f"  points over budget: {len(over)}; plot {png}")
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
