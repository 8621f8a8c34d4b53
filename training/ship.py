"""Copy the trained MoTE and fp-MoE checkpoints into examples/ (fp16, < 10 MB each) and evaluate them.

    python -m mote_edge.training.ship [--out out/train] [--dest examples] [-n 1000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mote_edge.exporters.checkpoint import Checkpoint, write_checkpoint

from .common import OUT
from .eval import evaluate

SHIPPED = {"mote": "tiny-mote", "fp": "tiny-moe-fp"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--dest", type=Path, default=Path("examples"))
    ap.add_argument("-n", type=int, default=200, help="held-out questions for the check after shipping")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    for src, name in SHIPPED.items():
        ckpt = Checkpoint.open(args.out / src)
        dest = args.dest / name
        write_checkpoint(dest, ckpt.config, lambda spec: ckpt.tensor(spec.name), dtype="fp16",
                         tokenizer_json=ckpt.tokenizer().to_str(), image_config=ckpt.image_config(),
                         progress=False, force=True)
        size = sum(f.stat().st_size for f in dest.iterdir())
        res = {"model": name, "bytes": size, **evaluate(dest, args.n)}
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
