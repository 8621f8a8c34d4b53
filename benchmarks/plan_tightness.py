"""How much of its memory plan a run uses: image + prompt runs and text-only runs (vision=False) at
budgets swept from the minimum feasible one to the full expert cache, each in a fresh process.

    python benchmarks/plan_tightness.py models/q05-b4.mote [--points 5] [--tokens 16] [--context 1024]

Two workloads per run kind:
  short   the 23-token prompt (with the image for image runs), the model's own routers: a typical request.
          A short prompt fills little of the planned scratch, and its routers may touch fewer experts
          than the cache holds (the slabs it never fills are never faulted in).
  worst   a prompt that fills the context (to within one sentence, after the image and --tokens), routed
          uniformly over every expert (benchmarks/route_model.py): the request the plan is sized for.

Per point: Engine.load(budget) (text-only: vision=False), one prompt, --tokens greedy tokens (EOS ignored),
then the runtime's report. Prints one row per point: budget, slabs filled / planned (cache + loader
buffers holding an expert at the end), prompt positions, plan (the largest phase), peak RSS over the
baseline, peak / plan, peak / budget and each phase's plan next to its measured peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGE = HERE.parent / "examples" / "images" / "task-0.png"
PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"
WORKLOADS = ("short", "worst")


def context_filling_prompt(engine, image: bool, room: int) -> str:
    """PROMPT repeated as often as its chat-templated positions (the image's patches included) fit `room`."""
    def positions(repeats: int) -> int:
        ids = engine.encode(" ".join([PROMPT] * repeats), has_image=image)
        return len(ids) + (engine._patches_per_image() - 1 if image else 0)

    repeats = 1
    while positions(repeats + 1) <= room:
        repeats += 1
    return " ".join([PROMPT] * repeats)


def run_point(model: str, budget: int, image: bool, workload: str, tokens: int, context: int, threads: int) -> dict:
    from mote_edge.runtime.engine import Engine
    from route_model import install, uniform

    with Engine.load(model, memory_budget=budget, threads=threads, max_context=context, vision=image) as engine:
        prompt = PROMPT
        if workload == "worst":
            prompt = context_filling_prompt(engine, image, context - tokens)
            if engine.experts is not None:
                install(engine, uniform())
        for _ in engine.generate_ids(prompt, image=IMAGE if image else None, max_new_tokens=tokens, ignore_eos=True):
            pass
        r = engine.report()
        filled = len(engine.experts.resident) if engine.experts is not None else 0
    m = r["memory"]
    return {"budget": budget, "plan": r["plan"]["total_bytes"], "peak": m["peak_over_baseline"],
            "slabs": engine.plan.expert_slabs + engine.plan.loader_slabs, "filled": filled,
            "positions": r["prompt_tokens"],
            "phases": r["plan"]["phases"], "phase_peaks": m.get("phase_peaks_over_baseline", {})}


def budgets(model: str, context: int, image: bool, points: int) -> list[int]:
    from mote_edge.format import MoteFile
    from mote_edge.runtime.plan import minimum_plan_file, plan_file

    with MoteFile(model) as f:
        low = minimum_plan_file(f, context, vision=image).total_bytes
        high = plan_file(f, context, vision=image).total_bytes
    return [low + (high - low) * i // max(1, points - 1) for i in range(points)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma separated, of: " + ", ".join(WORKLOADS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        budget, image, workload = json.loads(args.child)
        print(json.dumps(run_point(args.model, budget, image, workload, args.tokens, args.context, args.threads)))
        return
    print(f"{'run':<11}{'workload':<9}{'budget MB':>10}{'filled':>9}{'positions':>10}{'plan MB':>9}{'peak MB':>9}"
          f"{'peak/plan':>10}{'peak/budget':>12}  phases: plan / peak MB")
    for image in (True, False):
        for workload in args.workloads.split(","):
            for budget in budgets(args.model, args.context, image, args.points):
                cmd = [sys.executable, __file__, args.model, "--tokens", str(args.tokens), "--context", str(args.context),
                       "--threads", str(args.threads), "--child", json.dumps([budget, image, workload])]
                d = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
                               .stdout.strip().splitlines()[-1])
                phases = ", ".join(f"{k} {v / 1e6:.1f} / {d['phase_peaks'].get(k, 0) / 1e6:.1f}"
                                   for k, v in d["phases"].items())
                print(f"{'image' if image else 'text-only':<11}{workload:<9}{budget / 1e6:>10.1f}"
                      f"{d['filled']:>5}/{d['slabs']:<3}{d['positions']:>10}{d['plan'] / 1e6:>9.1f}{d['peak'] / 1e6:>9.1f}"
                      f"{d['peak'] / d['plan']:>10.2f}{d['peak'] / budget:>12.2f}  {phases}", flush=True)


if __name__ == "__main__":
    main()
