"""Exact-match accuracy of a trained checkpoint (or an exported .mote) on the held-out task.

    python -m mote_edge.training.eval CKPT_DIR [-n 1000] [--json]          # torch reference model
    python -m mote_edge.training.eval MODEL.mote --runtime [-n 1000]        # the deployed runtime

Held-out examples are seeds HELDOUT_BASE .. + n (mote_edge.training.data); the first n are fixed, so
`-n 200` is a prefix of `-n 1000`. Each question goes through the real front-end (chat template,
image preprocessing) and greedy decoding; the answer is correct iff the decoded text, stripped,
equals the reference answer exactly. Prints overall and per-question-type accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from .data import POSITION_FORMS, QTYPES, heldout_seeds, make_example, set_position_form


def _reference_answerer(ckpt_dir: Path):
    import torch

    from mote_edge.chat import encode_prompt
    from mote_edge.exporters.checkpoint import Checkpoint
    from mote_edge.exporters.reference import load_reference_model
    from mote_edge.image import preprocess

    ckpt = Checkpoint.open(ckpt_dir)
    model = load_reference_model(ckpt)
    tok, icfg = ckpt.tokenizer(), ckpt.image_config()

    def answer(question, image) -> str:
        ids = encode_prompt(tok, question, has_image=True)
        pixels = torch.from_numpy(preprocess(image, icfg))[None]
        return tok.decode(model.generate(ids, pixels, max_new_tokens=4, eos_token_id=tok.eos_id))

    return answer


def _runtime_answerer(path: Path, threads: int | None, kv_bits: int = 32):
    from mote_edge.runtime.engine import Engine

    engine = Engine.load(path, threads=threads, kv_bits=kv_bits)

    def answer(question, image) -> str:
        return "".join(engine.generate(question, image, max_new_tokens=4))

    return answer


def evaluate(path: str | Path, n: int = 1000, runtime: bool = False, threads: int | None = None,
             kv_bits: int = 32) -> dict:
    """{"all": acc, "<qtype>": acc, ..., "n": n, "per_type_n": {...}}."""
    path = Path(path)
    answer = _runtime_answerer(path, threads, kv_bits) if runtime else _reference_answerer(path)
    right, total = defaultdict(int), defaultdict(int)
    for seed in heldout_seeds(n):
        ex = make_example(seed)
        ok = answer(ex.question, ex.image).strip() == ex.answer
        for key in ("all", ex.qtype):
            total[key] += 1
            right[key] += ok
    out = {k: right[k] / total[k] for k in ["all", *QTYPES] if total[k]}
    out["n"] = n
    out["per_type_n"] = {k: total[k] for k in QTYPES}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="checkpoint directory (torch reference) or .mote file (--runtime)")
    ap.add_argument("-n", type=int, default=1000, help="held-out questions (default 1000)")
    ap.add_argument("--runtime", action="store_true", help="run a .mote file through mote_edge's Engine")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--kv-bits", type=int, default=32, help="the runtime's KV cache: 32 or 8")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--position-form", choices=POSITION_FORMS, default="leftright",
                    help="the position questions the model was trained on (training/data.py)")
    args = ap.parse_args(argv)
    set_position_form(args.position_form)
    if not args.runtime:
        import torch

        torch.set_num_threads(args.threads or 1)
    t0 = time.time()
    res = evaluate(args.model, args.n, args.runtime or args.model.suffix == ".mote", args.threads, args.kv_bits)
    res["sec"] = round(time.time() - t0, 1)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{args.model}: exact match {100 * res['all']:.1f}% on {res['n']} held-out questions "
              f"({res['sec']} s)")
        for k in QTYPES:
            print(f"  {k:9s} {100 * res[k]:5.1f}%  ({res['per_type_n'][k]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
