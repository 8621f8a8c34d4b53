"""Decode speed of the runtime against the torch reference (fp32, eager) in the same run, and the
cost of a memory budget that holds half the experts.

    python benchmarks/decode_speed.py models/q05-ckpt models/q05-b4.mote [--tokens 32]

Also runs onnxruntime on an ONNX export of the dense-equivalent model (the same decoder with every
FFN dense, i.e. the shared experts only; benchmarks/ort_dense.py), fp32 and MatMulNBits 4-bit, in the
same run (skip with --no-ort). Prints tok/s and the ratios; writes benchmarks/out/decode.json. Greedy decoding of the same text
prompt everywhere; the first decode step is excluded (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"


def runtime_decode(mote: Path, tokens: int, budget: int | None, threads: int, layout: str = "auto") -> dict:
    from mote_edge.runtime.engine import Engine

    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=1024, expert_layout=layout) as engine:
        times = []
        t = time.perf_counter()
        for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 1, ignore_eos=True):
            now = time.perf_counter()
            times.append(now - t)
            t = now
        r = engine.report()
    decode = times[2:]  # times[0] = prefill, times[1] = first decode step (warm-up)
    return {"tok_s": len(decode) / sum(decode), "layout": r["experts"]["layout"], "slabs": r["experts"]["slabs"], "total_experts": r["experts"]["total"],
            "hit_rate": r["experts"]["hit_rate"], "stall_ms": r["experts"]["stall_ms"],
            "peak_over_baseline": r["memory"]["peak_over_baseline"], "plan_bytes": r["plan"]["total_bytes"],
            "ttft_ms": r["timing"]["ttft_ms"], "prefill_tok_s": r["timing"]["prefill_tok_s"]}


def torch_decode(ckpt: Path, tokens: int, threads: int) -> dict:
    import torch

    from mote_edge.chat import encode_prompt
    from mote_edge.exporters.checkpoint import Checkpoint
    from mote_edge.exporters.reference import load_reference_model

    torch.set_num_threads(threads)
    c = Checkpoint.open(ckpt)
    model = load_reference_model(c)
    ids = encode_prompt(c.tokenizer(), PROMPT, has_image=False)
    times = []
    t = time.perf_counter()
    for _ in model.generate_tokens(ids, None, max_new_tokens=tokens + 1, eos_token_id=None):
        now = time.perf_counter()
        times.append(now - t)
        t = now
    decode = times[2:]
    return {"tok_s": len(decode) / sum(decode)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--preset", default="qwen2.5-0.5b-e8", help="synth preset of the model (for the ORT dense twin)")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime on the dense-equivalent model")
    args = ap.parse_args()
    from mote_edge.format import MoteFile
    from mote_edge.runtime.plan import fit_file_budget

    full = runtime_decode(args.mote, args.tokens, None, args.threads)  # auto: the 2-bit slab layout
    full_file = runtime_decode(args.mote, args.tokens, None, args.threads, "file")
    with MoteFile(args.mote) as f:
        p = fit_file_budget(f, 1024, None)
    half_budget = p.total_bytes - p.expert_cache_bytes + p.expert_slab_bytes * (p.total_experts // 2)
    half = runtime_decode(args.mote, args.tokens, half_budget, args.threads)
    ref = torch_decode(args.checkpoint, args.tokens, args.threads)
    result = {"threads": args.threads, "tokens": args.tokens, "runtime_full": full, "runtime_full_file_layout": full_file,
              "slab2_vs_file": full["tok_s"] / full_file["tok_s"], "runtime_half": half,
              "torch_fp32": ref, "speedup_vs_torch": full["tok_s"] / ref["tok_s"],
              "half_vs_full": half["tok_s"] / full["tok_s"]}
    ort = {}
    if not args.no_ort:
        # a sibling: a script's folder is sys.path[0] (and the spawned worker inherits it)
        from ort_dense import ort_dense_decode

        preset = args.preset
        for name, bits in (("fp32", None), ("int4", 4)):
            r = ort_dense_decode(preset, args.tokens, args.threads, bits)
            ort[name] = {k: r[k] for k in ("tok_s", "prefill_tok_s", "file_bytes", "peak_rss_bytes") if k in r}
        result["ort_dense"] = ort
        result["runtime_vs_ort"] = {k: full["tok_s"] / v["tok_s"] for k, v in ort.items()}
    print(f"decode tok/s ({args.threads} threads, {args.tokens} tokens)")
    for r in (full, full_file):
        print(f"  mote-edge, all {r['total_experts']} experts cached ({r['layout']:5s}): {r['tok_s']:8.2f}  "
              f"(peak {r['peak_over_baseline'] / 1e6:,.0f} MB over baseline)")
    print(f"  mote-edge, {half['slabs']} slabs (budget {half_budget / 1e6:,.0f} MB):    {half['tok_s']:8.2f}  "
          f"(hit rate {100 * half['hit_rate']:.1f}%, stall {half['stall_ms']:.0f} ms, peak "
          f"{half['peak_over_baseline'] / 1e6:,.0f} MB over baseline)")
    print(f"  torch reference fp32 eager:          {ref['tok_s']:8.2f}")
    for name, r in ort.items():
        print(f"  onnxruntime, dense-equivalent {name}:  {r['tok_s']:8.2f}  (file {r['file_bytes'] / 1e6:,.0f} MB, "
              f"peak RSS {r['peak_rss_bytes'] / 1e6:,.0f} MB)")
    print(f"  ratio runtime/torch {result['speedup_vs_torch']:.2f}x; slab2/file layout {result['slab2_vs_file']:.2f}x; "
          f"half-cache/full {result['half_vs_full']:.2f}x"
          + "".join(f"; runtime/ORT dense {k} {v:.2f}x" for k, v in result.get("runtime_vs_ort", {}).items()))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
