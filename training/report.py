"""Accuracy against expert memory: reference eval, then export at each --bits and eval the .mote
through the runtime (real deployed accuracy). One JSON line per row to out/train/report.jsonl.

    python -m mote_edge.training.report NAME=CKPT_DIR [NAME=CKPT_DIR ...] [--bits 16,4,3,2] [--method rtn,gptq]

NAME@SEED names one seed of a model (e.g. mote@1=out/train-s1/mote); `mote_edge.training.summary`
folds the seeds of a name into mean and range.

"Expert memory" = the bytes of the FFN parts of the MoE-position layers (moe_layers_idx) in the
.mote file: MoTE = ternary routed experts + shared experts; fp MoE = fp experts; dense = the
dense FFNs of those same layers (its `ffn` role scaled by the share of layers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from mote_edge.config import ModelConfig
from mote_edge.config import default_moe_layers

from .common import OUT
from .eval import evaluate


def expert_bytes(info: dict, cfg: ModelConfig) -> int:
    roles = info["roles"]
    if cfg.moe is None:
        n = cfg.decoder.num_hidden_layers
        share = len(default_moe_layers(n, "sparse")) / n
        return int(roles["ffn"]["bytes"] * share)
    return sum(roles[r]["bytes"] for r in ("ternary_expert", "shared_expert", "fp_expert") if r in roles)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=CKPT_DIR")
    ap.add_argument("--bits", default="16,4,3,2")
    ap.add_argument("--method", default="rtn", help="PTQ methods, comma-separated: rtn, gptq (mote-edge export --method)")
    ap.add_argument("--recipe", default="", help="per-role overrides passed to mote-edge export, e.g. "
                    "shared_expert=2,fp_expert=2 (experts at 2 bits, the rest at --bits)")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=OUT / "report.jsonl")
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    mote_edge = str(Path(sys.executable).parent / "mote-edge")
    for spec in args.models:
        name, ckpt = spec.split("=", 1)
        cfg = ModelConfig.load(ckpt)
        if not args.no_reference:
            t0 = time.time()
            _emit(args.out, dict(model=name, precision="torch fp32 (reference)", **evaluate(ckpt, args.n),
                                 sec=round(time.time() - t0, 1)))
        for method, bits in ((m, b) for m in args.method.split(",") for b in args.bits.split(",")):
            # the export options beyond --bits name the row, and their values name the file
            flags = (["--method", method] if method != "rtn" else []) + (["--recipe", args.recipe] if args.recipe else [])
            (OUT / "ptq").mkdir(parents=True, exist_ok=True)
            suffix = "".join(f"-{value.replace('=', '')}" for value in flags[1::2])
            mote = OUT / "ptq" / f"{name.replace('@', '-s')}-b{bits}{suffix}.mote"
            _cli(mote_edge, "export", ckpt, "--bits", bits, *flags, "-o", str(mote), "--force")
            info = json.loads(_cli(mote_edge, "info", str(mote), "--json"))
            t0 = time.time()
            res = evaluate(mote, args.n, runtime=True, threads=1)
            _emit(args.out, dict(model=name, precision=" ".join(["runtime --bits", bits, *flags]),
                                 expert_bytes=expert_bytes(info, cfg), file_bytes=info["file_bytes"], **res,
                                 sec=round(time.time() - t0, 1)))
    return 0


def _cli(mote_edge: str, *argv: str) -> str:
    """Run one mote-edge subcommand -> its stdout; a failure is a one-line error naming the command."""
    done = subprocess.run([mote_edge, *argv], capture_output=True, text=True)
    if done.returncode:
        last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: mote-edge {' '.join(argv[:4])} failed: {last}")
    return done.stdout


def _emit(path: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
