"""Accuracy against expert memory on the tiny task, through the real runtime.

    python benchmarks/accuracy_memory.py [--run] [--reports out/train/report-*.jsonl] [-n 1000]

With --run, exports the shipped trained checkpoints (examples/tiny-mote, examples/tiny-moe-fp and, if
`make train-tiny` left it, out/train/dense) at --bits 4 / 3 / 2 and scores each .mote through
mote_edge's Engine on held-out questions (mote_edge.training.report; ~3 min per row on 1 thread).
Without it, reads the rows that command wrote. Plots held-out exact match against the bytes of the
expert parts (MoTE: ternary routed + shared experts; fp MoE: fp experts; dense: the FFNs of the same
layers) and writes benchmarks/out/accuracy-memory.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
MODELS = {"mote": REPO / "examples" / "tiny-mote", "fp-moe": REPO / "examples" / "tiny-moe-fp",
          "dense": REPO / "out" / "train" / "dense"}
LABELS = {"mote": "MoTE (ternary experts + shared)", "fp-moe": "fp MoE (MoE-LLaVA)", "dense": "dense"}


def run_reports(n: int, bits: str) -> list[Path]:
    paths = []
    for name, ckpt in MODELS.items():
        if not (ckpt / "config.json").exists():
            print(f"skipping {name}: {ckpt} not found (make train-tiny writes it)")
            continue
        path = OUT / f"accuracy-{name}.jsonl"
        path.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "mote_edge.training.report", f"{name}={ckpt}", "--bits", bits, "-n", str(n),
                        "--no-reference", "--out", str(path)], check=True)
        paths.append(path)
    return paths


def read_rows(paths: list[Path]) -> list[dict]:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["precision"].startswith("runtime") and "expert_bytes" in r]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in LABELS:
        pts = sorted((r for r in rows if r["model"] == name), key=lambda r: r["expert_bytes"])
        if not pts:
            continue
        x = [r["expert_bytes"] / 1024 for r in pts]
        y = [100 * r["all"] for r in pts]
        ax.plot(x, y, "o-", label=LABELS[name])
        for r, xi, yi in zip(pts, x, y):
            ax.annotate("int" + r["precision"].split()[-1], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("expert memory in the .mote file (KiB)")
    ax.set_ylabel("held-out exact match (%)")
    n = rows[0]["n"] if rows else 0
    ax.set_title(f"tiny task through the mote-edge runtime ({n} held-out questions)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="export and evaluate now (otherwise read --reports)")
    ap.add_argument("--reports", type=Path, nargs="*", default=None)
    ap.add_argument("--bits", default="4,3,2")
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.run:
        paths = run_reports(args.n, args.bits)
    else:
        paths = args.reports or sorted(OUT.glob("accuracy-*.jsonl"))
    rows = read_rows(paths)
    if not rows:
        raise SystemExit("no runtime rows: run with --run, or pass --reports FILES written by mote_edge.training.report")
    print(f"{'model':<8} {'precision':<18} {'expert bytes':>12} {'all':>6} " + " ".join(f"{t:>8}" for t in
                                                                                      ("color", "shape", "count", "position")))
    for r in sorted(rows, key=lambda r: (r["model"], r["expert_bytes"])):
        print(f"{r['model']:<8} {r['precision']:<18} {r['expert_bytes']:>12,} {100 * r['all']:6.1f} "
              + " ".join(f"{100 * r[t]:8.1f}" for t in ("color", "shape", "count", "position")))
    png = OUT / "accuracy-memory.png"
    plot(rows, png)
    (OUT / "accuracy-memory.json").write_text(json.dumps({"rows": rows, "plot": png.name}, indent=1))
    print(f"wrote {png} and {OUT / 'accuracy-memory.json'}")


if __name__ == "__main__":
    main()
