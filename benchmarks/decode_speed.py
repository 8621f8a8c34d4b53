"""Decode speed of the runtime against the torch reference (fp32, eager) in the same run, and the
cost of a memory budget that holds half the experts.

    python benchmarks/decode_speed.py models/q05-ckpt models/q05-b4.mote [--tokens 32]
    python benchmarks/decode_speed.py models/q05-ckpt models/q05-b4.mote --layer-only   (the first part only)

First, the decoder layer paths side by side (runtime/decoder.py: the numpy layer, MOTE_DECODER=numpy,
against the native one, native/layer.c) at 1 and 2 threads: for each thread count one Engine, every
expert cached, decode and prefill runs alternating between the two paths (--rounds each, the median
reported; prefill: --prefill positions of the repeated text prompt, timed through Decoder.forward), the
bytes each decode step reads (resident weights + the routed experts it uses + the KV cache; MB / token),
effective GB/s = MB/token x tok/s, and the share of a DRAM read probe measured in the same process
(a C streaming read over 1 GiB on huge pages, where the runtime keeps its weights).

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
        tok_s, _ = decode_steps_per_s(engine, tokens)
        r = engine.report()
    return {"tok_s": tok_s, "layout": r["experts"]["layout"], "slabs": r["experts"]["slabs"], "total_experts": r["experts"]["total"],
            "hit_rate": r["experts"]["hit_rate"], "stall_ms": r["experts"]["stall_ms"],
            "peak_over_baseline": r["memory"]["peak_over_baseline"], "plan_bytes": r["plan"]["total_bytes"],
            "ttft_ms": r["timing"]["ttft_ms"], "prefill_tok_s": r["timing"]["prefill_tok_s"]}


def decode_bytes_per_token(engine, positions: float) -> int:
    """Bytes one decode step reads: every resident tensor (a tied embedding once, as the lm_head; an
    untied table only by its one looked-up row, not counted), top-k routed experts per MoE layer in the
    cache's slab layout, and K and V of `positions` cached positions per layer."""
    from mote_edge.runtime.kv_cache import kv_bytes_per_position
    from mote_edge.runtime.weights import runtime_nbytes

    cfg, entries = engine.config, engine.weights.entries
    resident = sum(runtime_nbytes(e) for n, e in entries.items()
                   if n != "model.embed_tokens.weight" or cfg.decoder.tie_word_embeddings)
    experts = 0 if engine.experts is None else len(cfg.moe_layers) * cfg.moe.top_k_experts * engine.experts.slab_bytes
    dc = cfg.decoder
    kv = dc.num_hidden_layers * kv_bytes_per_position(dc.num_key_value_heads, dc.head_dim, engine.plan.kv_bits)
    return int(resident + experts + kv * positions)


def decode_steps_per_s(engine, tokens: int) -> tuple[float, int]:
    """Greedy decode tok/s of PROMPT (the first decode step excluded) and the prompt's length."""
    times = []
    t = time.perf_counter()
    for _ in engine.generate_ids(PROMPT, max_new_tokens=tokens + 1, ignore_eos=True):
        now = time.perf_counter()
        times.append(now - t)
        t = now
    decode = times[2:]  # times[0] = prefill, times[1] = first decode step (warm-up)
    return len(decode) / sum(decode), engine.tokens.prompt_tokens


def prefill_tok_s(engine, positions: int) -> float:
    """Positions per second of one prefill of `positions` prompt positions (PROMPT's ids repeated) from an
    empty cache, through Decoder.forward (the prompt's embeddings looked up before the clock starts)."""
    import numpy as np

    ids = engine.encode(PROMPT, False, raw=True)
    x = engine.decoder.embed(np.resize(np.asarray(ids), positions))
    engine.decoder.reset()
    t0 = time.perf_counter()
    engine.decoder.forward(x)
    elapsed = time.perf_counter() - t0
    engine.decoder.reset()
    return positions / elapsed


def layer_paths(mote: Path, tokens: int, threads: int, rounds: int, budget: int | None = None,
                prefill: int = 236) -> dict:
    """The numpy and the native decoder layer in one Engine, alternating, and the same-run DRAM probe.
    `budget`: the Engine's memory budget (None: every expert cached)."""
    import numpy as np

    from mote_edge import _native
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.hugepages import Arena

    arena = Arena(1 << 30)
    probe = arena.empty(((1 << 30) // 8,), np.uint64)
    probe[:] = 1
    dram = []
    with Engine.load(mote, memory_budget=budget, threads=threads, max_context=1024, vision=budget is None) as engine:
        speeds = {"numpy": [], "native": []}
        prefills = {"numpy": [], "native": []}
        for _ in range(rounds):
            for path in speeds:
                engine.decoder.native = path == "native"
                tok_s, prompt = decode_steps_per_s(engine, tokens)
                speeds[path].append(tok_s)
                prefills[path].append(prefill_tok_s(engine, prefill))
            t0 = time.perf_counter()
            _native.read_sum(probe, threads)
            dram.append(probe.nbytes / (time.perf_counter() - t0))
        per_token = decode_bytes_per_token(engine, prompt + tokens / 2)
    del probe
    dram_bps = float(np.median(dram))
    out = {"threads": threads, "budget": budget, "dram_GBps": dram_bps / 1e9, "MB_per_token": per_token / 1e6,
           "rounds": rounds, "prefill_positions": prefill}
    for path, v in speeds.items():
        tok_s = float(np.median(v))
        out[path] = {"tok_s": tok_s, "all_tok_s": v, "GBps": tok_s * per_token / 1e9,
                     "dram_share": tok_s * per_token / dram_bps, "prefill_tok_s": float(np.median(prefills[path])),
                     "all_prefill_tok_s": prefills[path]}
    out["native_vs_numpy"] = out["native"]["tok_s"] / out["numpy"]["tok_s"]
    out["prefill_native_vs_numpy"] = out["native"]["prefill_tok_s"] / out["numpy"]["prefill_tok_s"]
    return out


def print_layer_paths(rows: list[dict]) -> None:
    print(f"decoder layer paths (MB/token {rows[0]['MB_per_token']:.1f}; medians of {rows[0]['rounds']} alternating runs; "
          f"prefill of {rows[0]['prefill_positions']} positions)")
    print("  cache         threads | DRAM probe GB/s | numpy tok/s  GB/s  of DRAM | native tok/s  GB/s  of DRAM | native/numpy"
          " | prefill tok/s numpy  native  native/numpy")
    for r in rows:
        a, b = r["numpy"], r["native"]
        cache = "every expert" if r["budget"] is None else f"min {r['budget'] / 1e6:,.0f} MB"
        print(f"  {cache:13s} {r['threads']:7d} | {r['dram_GBps']:15.1f} | {a['tok_s']:11.1f} {a['GBps']:5.1f} "
              f"{100 * a['dram_share']:6.1f}% | {b['tok_s']:12.1f} {b['GBps']:5.1f} {100 * b['dram_share']:6.1f}% "
              f"| {r['native_vs_numpy']:11.2f}x | {a['prefill_tok_s']:19.0f} {b['prefill_tok_s']:7.0f} "
              f"{r['prefill_native_vs_numpy']:11.2f}x")


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
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs per decoder layer path")
    ap.add_argument("--layer-only", action="store_true", help="only the numpy vs native decoder layer comparison")
    args = ap.parse_args()
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    from mote_edge.format import MoteFile
    from mote_edge.runtime.plan import minimum_plan_file

    with MoteFile(args.mote) as f:
        minimum = minimum_plan_file(f, 1024, vision=False).total_bytes
    # every expert cached (the bandwidth rows), then the minimum text-only budget (expert loads on the path)
    paths = [layer_paths(args.mote, args.tokens, t, args.rounds, b) for b in (None, minimum) for t in (1, 2)]
    print_layer_paths(paths)
    (out / "decode-layer-paths.json").write_text(json.dumps(paths, indent=2) + "\n")
    if args.layer_only:
        return
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
    (out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
