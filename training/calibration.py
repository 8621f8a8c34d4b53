"""Write the tiny task's training-split questions as a calibration file (mote_edge/calibration.py's .jsonl
of {"prompt", "image"}): what `mote-edge fit-lookahead` (and `export --method gptq --calib`) fit on.

    python -m mote_edge.training.calibration -n 300 -o out/calib-tiny/calib.jsonl

Training seeds only (`data.train_seeds`), so the held-out questions the accuracy and prefetch benchmarks
score stay unseen. Images go beside the .jsonl as PNG (the file names them relative to itself).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .data import make_example, train_seeds


def write_calibration(path: Path, n: int, start: int = 0) -> Path:
    """n training-split questions (from seed offset `start`) as `path` (.jsonl) + images/ beside it."""
    images = path.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for seed in train_seeds(n, start):
        ex = make_example(seed)
        name = f"images/{seed}.png"
        ex.image.save(path.parent / name)
        lines.append(json.dumps({"prompt": ex.question, "image": name}))
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="questions to write")
    ap.add_argument("-o", "--output", type=Path, default=Path("out/calib-tiny/calib.jsonl"))
    args = ap.parse_args(argv)
    print(f"wrote {write_calibration(args.output, args.n)} ({args.n} training questions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
