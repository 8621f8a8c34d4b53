"""How much of its memory plan a run uses: image + prompt runs and text-only runs (vision=False) at
budgets swept from the minimum feasible one to the full expert cache, each in a fresh process.

    python benchmarks/plan_tightness.py models/q05-b4.mote [--points 5] [--tokens 16] [--context 1024]

Per point: Engine.load(budget) (text-only: vision=False), one prompt (with the image for image runs),
--tokens greedy tokens (EOS ignored), then the runtime's report: the plan's total (the largest phase)
and each phase's plan next to its measured peak RSS over the baseline. Prints one row per point:
budget, slabs, plan, peak, peak / plan, peak / budget and the per-phase peaks. The synth models'
random routers spread tokens over every expert, so the slabs fill.
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


def run_point(model: str, budget: int, image: bool, tokens: int, context: int, threads: int) -> dict:
    from mote_edge.runtime.engine import Engine

    with Engine.load(model, memory_budget=budget, threads=threads, max_context=context, vision=image) as engine:
        for _ in engine.generate_ids(PROMPT, image=IMAGE if image else None, max_new_tokens=tokens, ignore_eos=True):
            pass
        r = engine.report()
    m = r["memory"]
    return {"budget": budget, "plan": r["plan"]["total_bytes"], "peak": m["peak_over_baseline"],
            "slabs": engine.plan.expert_slabs,
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
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        budget, image = json.loads(args.child)
        print(json.dumps(run_point(args.model, budget, image, args.tokens, args.context, args.threads)))
        return
    print(f"{'run':<11}{'budget MB':>10}{'slabs':>7}{'plan MB':>9}{'peak MB':>9}{'peak/plan':>10}{'peak/budget':>12}"
          f"  phases: plan / peak MB")
    for image in (True, False):
        for budget in budgets(args.model, args.context, image, args.points):
            cmd = [sys.executable, __file__, args.model, "--tokens", str(args.tokens), "--context", str(args.context),
                   "--threads", str(args.threads), "--child", json.dumps([budget, image])]
            d = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
                           .stdout.strip().splitlines()[-1])
            phases = ", ".join(f"{k} {v / 1e6:.1f} / {d['phase_peaks'].get(k, 0) / 1e6:.1f}"
                               for k, v in d["phases"].items())
            print(f"{'image' if image else 'text-only':<11}{budget / 1e6:>10.1f}{d['slabs']:>7}{d['plan'] / 1e6:>9.1f}"
                  f"{d['peak'] / 1e6:>9.1f}{d['peak'] / d['plan']:>10.2f}{d['peak'] / budget:>12.2f}  {phases}",
                  flush=True)


if __name__ == "__main__":
    main()
