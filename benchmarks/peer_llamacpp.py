"""mote-edge next to llama.cpp: decode and prefill speed per byte of weights, with the DRAM read bandwidth
measured in the same run.

    python benchmarks/peer_llamacpp.py models/q05-b4.mote [--tokens 64] [--prompt 236] [--rounds 3]

(`make bench-peer` installs the [bench] extra on first use: gguf and llama-cpp-python, built from source.)
Writes GGUFs with the dims of the synth preset (benchmarks/peer_gguf.py; random weights, fixed seed,
cached in out/peer/): llama.cpp qwen2 dense Q4_0 + Q8_0 embeddings, and qwen2moe (MoE on every layer,
E experts top-k + shared expert; routed experts ternary, TQ2_0 and TQ1_0 (a file each), where rows are
multiples of 256, else Q4_0).
Then, each in its own child process, for 1 and 2 threads: the DRAM read probe (native/membench.c through
kernel_speed.dram_bandwidth), llama.cpp on each GGUF (llama-cpp-python) and the mote-edge Engine on the
.mote (text only, every expert cached); both hold their weights in anonymous memory (llama.cpp with
use_mmap=False), flash attention off (llama-cpp-python's default), context 1024. Every runtime prefills
the same number of prompt positions, then decodes --tokens tokens greedily (the first decode step is a warm-up and not timed); each child does one
warm-up pass and --passes timed passes, and --rounds repeats the whole sequence of children. The table shows
the best pass over all rounds (other work on a shared machine only ever slows a pass) and the median.

MB / token = the weight bytes one decoded token reads, from the files: every non-expert tensor (the lm_head
once) plus top_k of every MoE layer's experts (mote-edge: in the layout its cache holds them, the plan's
slab bytes). Effective GB/s = MB / token x tok/s; % of DRAM = that over the same run's probe at the same
thread count. Prints the table and writes out/peer/peer-llamacpp.json. Not a test: it times things.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "out" / "peer"
RESULT_TAG = "PEER-RESULT "  # a worker's last stdout line: this tag + its JSON result
WORDS = ("the red circle sits left of a small blue square while two green triangles point up near the "
         "top edge and a yellow star shines in the lower right corner").split()


# ------------------------------------------------------------------ workers (one child process each)

def _timed_passes(prefill, step, tokens: int, passes: int) -> dict:
    """Runs warm-up + `passes` of: prefill() -> first token, then tokens + 1 greedy steps (the first one not
    timed). Returns the medians and every pass's figures."""
    prefill_s, decode_tok_s = [], []
    for p in range(passes + 1):
        t0 = time.perf_counter()
        token = prefill()
        t1 = time.perf_counter()
        token = step(token)  # the first decode step: warm-up
        t2 = time.perf_counter()
        for _ in range(tokens):
            token = step(token)
        t3 = time.perf_counter()
        if p:  # pass 0 warms caches, pages and thread pools
            prefill_s.append(t1 - t0)
            decode_tok_s.append(tokens / (t3 - t2))
    return {"prefill_s": statistics.median(prefill_s), "decode_tok_s": statistics.median(decode_tok_s),
            "passes_decode_tok_s": decode_tok_s, "passes_prefill_s": prefill_s}


def llama_worker(gguf_path: str, threads: int, prompt: int, tokens: int, passes: int) -> dict:
    import llama_cpp

    from peer_gguf import bytes_per_token, read_spec

    spec = read_spec(Path(gguf_path))
    # use_mmap=False: the weights in anonymous memory, as the Engine holds them (a mapped file's pages live in
    # the page cache, which other work on a shared machine can shrink mid-run)
    llm = llama_cpp.Llama(model_path=gguf_path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, use_mmap=False, verbose=False)
    n_vocab = llm.n_vocab()
    ids = np.random.default_rng(spec.seed).integers(0, n_vocab, prompt).tolist()

    def last_argmax() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def prefill() -> int:
        llm.reset()
        llm.eval(ids)
        return last_argmax()

    def step(token: int) -> int:
        llm.eval([token])
        return last_argmax()

    r = _timed_passes(prefill, step, tokens, passes)
    b = bytes_per_token(Path(gguf_path))
    return {**r, "prompt_positions": prompt, "bytes_per_token": b.per_token, "file_bytes": b.total,
            "types": b.types, "llama_cpp_python": llama_cpp.__version__}


def mote_prompt(engine, positions: int) -> str:
    """A raw text prompt that the model's tokenizer turns into `positions` ids (or the nearest above)."""
    words = []
    while len(engine.encode(" ".join(words), False, raw=True)) < positions:
        words.append(WORDS[len(words) % len(WORDS)])
    return " ".join(words)


def mote_worker(mote: str, threads: int, prompt: int, tokens: int, passes: int) -> dict:
    from mote_edge.runtime.engine import Engine

    with Engine.load(mote, threads=threads, max_context=1024, vision=False) as engine:
        text = mote_prompt(engine, prompt)
        positions = len(engine.encode(text, False, raw=True))
        state = {}

        def prefill() -> int:
            state["ids"] = engine.generate_ids(text, max_new_tokens=tokens + 2, ignore_eos=True, raw=True)
            return next(state["ids"])

        def step(_token: int) -> int:
            return next(state["ids"])

        r = _timed_passes(prefill, step, tokens, passes)
        plan, cfg = engine.plan, engine.config
        moe_layers = len(cfg.moe.moe_layers_idx) if cfg.moe is not None else 0
        top_k = cfg.moe.top_k_experts if cfg.moe is not None else 0
        per_token = plan.resident_bytes + moe_layers * top_k * plan.expert_slab_bytes
        rep = engine.report()
    return {**r, "prompt_positions": positions, "bytes_per_token": per_token, "file_bytes": Path(mote).stat().st_size,
            "layout": plan.expert_layout, "slabs": rep["experts"]["slabs"], "total_experts": rep["experts"]["total"],
            "hit_rate": rep["experts"]["hit_rate"], "moe_layers": moe_layers, "top_k": top_k}


def dram_worker(threads: int, runs: int) -> dict:
    from kernel_speed import dram_bandwidth

    return {"dram_GBps": dram_bandwidth(threads, runs) / 1e9}


WORKERS = {"llama": llama_worker, "mote": mote_worker, "dram": dram_worker}


def run_worker(kind: str, **kwargs) -> dict:
    """One worker in a fresh child process of this script (its own thread pools, page cache state aside)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=str(kwargs.get("threads", 1)))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"kind": kind, **kwargs})]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"peer_llamacpp: the {kind} worker ({kwargs}) failed with exit code {p.returncode}: {tail}")
    return json.loads(lines[-1][len(RESULT_TAG):])


# ------------------------------------------------------------------ the run and its table

def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    field = {}
    for line in info:
        key, _, value = line.partition(":")
        field.setdefault(key.strip(), value.strip())
    name = field.get("model name", platform.machine())
    if "cpu family" in field:
        name += f" (family {field['cpu family']} model {field.get('model', '?')})"
    return f"{name}, {os.cpu_count()} cores"


def summarize(rounds: list[dict], threads: list[int]) -> dict:
    """Per (row, threads): the best pass over every round (other work on the machine only ever slows a pass,
    so the fastest is the least disturbed) and the median, and the effective bandwidths of the best against
    the best DRAM probe at that thread count."""
    dram = {t: max(r["dram"][str(t)]["dram_GBps"] for r in rounds) for t in threads}
    rows = {}
    for name in rounds[0]["rows"]:
        row = {"per_threads": {}}
        for t in threads:
            runs = [r["rows"][name][str(t)] for r in rounds]
            tok_s = [v for x in runs for v in x["passes_decode_tok_s"]]
            prefill = [x["prompt_positions"] / s for x in runs for s in x["passes_prefill_s"]]
            gbps = runs[0]["bytes_per_token"] / 1e9 * max(tok_s)
            row["per_threads"][str(t)] = {"decode_tok_s": max(tok_s), "decode_tok_s_median": statistics.median(tok_s),
                                          "prefill_tok_s": max(prefill), "prefill_tok_s_median": statistics.median(prefill),
                                          "effective_GBps": gbps, "dram_share": gbps / dram[t]}
        first = rounds[0]["rows"][name][str(threads[0])]
        row.update({k: v for k, v in first.items() if not k.startswith(("prefill_s", "decode_tok_s", "passes_"))})
        rows[name] = row
    return {"dram_GBps": {str(t): dram[t] for t in threads}, "rows": rows}


def _types_note(types: dict) -> str:
    if "ffn_down_exps" not in types:
        return ""
    return (f"; experts gate/up {types['ffn_gate_exps']}, down {types['ffn_down_exps']}")


def print_table(summary: dict, threads: list[int], meta: dict) -> None:
    d = summary["dram_GBps"]
    print(f"\nCPU: {meta['cpu']}; DRAM read " + ", ".join(f"{d[str(t)]:.1f} GB/s on {t} thr" for t in threads)
          + f"; prompt {meta['prompt']} positions, {meta['tokens']} decoded tokens, {meta['rounds']} round(s)")
    thr = " / ".join(map(str, threads))
    print(f"| runtime, model | MB / token | decode tok/s {thr} thr, best (median) | effective GB/s {thr} thr "
          f"| % of DRAM {thr} thr | prefill tok/s {thr} thr, best (median) |")
    print("|---|---|---|---|---|---|")
    for name, row in summary["rows"].items():
        per = [row["per_threads"][str(t)] for t in threads]
        label = meta["labels"][name] + _types_note(row.get("types", {}))
        cells = [" / ".join(_best_median(p, "decode_tok_s") for p in per),
                 " / ".join(f"{p['effective_GBps']:.1f}" for p in per),
                 " / ".join(f"{100 * p['dram_share']:.0f}%" for p in per),
                 " / ".join(_best_median(p, "prefill_tok_s") for p in per)]
        print(f"| {label} | {row['bytes_per_token'] / 1e6:.0f} | " + " | ".join(cells) + " |")
    rows = summary["rows"]
    if "mote" in rows and "llama-dense" in rows:
        for t in threads:
            m, l = rows["mote"]["per_threads"][str(t)], rows["llama-dense"]["per_threads"][str(t)]
            print(f"{t} thr: mote-edge / llama.cpp dense: decode {m['decode_tok_s'] / l['decode_tok_s']:.2f}x tok/s, "
                  f"{m['effective_GBps'] / l['effective_GBps']:.2f}x per byte; prefill "
                  f"{m['prefill_tok_s'] / l['prefill_tok_s']:.2f}x")


def _best_median(p: dict, key: str) -> str:
    return f"{p[key]:.0f} ({p[key + '_median']:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path, nargs="?", help="the mote-edge model (synth qwen2.5-0.5b-e8 --bits 4)")
    ap.add_argument("--preset", default="qwen2.5-0.5b-e8", help="synth preset whose dims the GGUFs take")
    ap.add_argument("--tokens", type=int, default=64, help="decoded tokens per pass (timed)")
    ap.add_argument("--prompt", type=int, default=236, help="prompt positions to prefill")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per child (after one warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="times the whole sequence of children runs")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--ternary", default="TQ2_0,TQ1_0",
                    help="qwen2moe's ternary expert types, comma-separated (TQ2_0, TQ1_0): a GGUF and a row each")
    ap.add_argument("--seed", type=int, default=0, help="seed of the GGUFs' random weights and llama.cpp's prompt")
    ap.add_argument("--out", type=Path, default=OUT / "peer-llamacpp.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        result = WORKERS[spec.pop("kind")](**spec)
        print(RESULT_TAG + json.dumps(result))
        return
    _check_args(args)
    threads = [int(t) for t in args.threads.split(",")]
    from peer_gguf import ensure_gguf, spec_from_preset

    ternaries = args.ternary.split(",")
    models = [("llama-dense", spec_from_preset(args.preset, "dense", seed=args.seed))]
    models += [(f"llama-moe-{t}", spec_from_preset(args.preset, "qwen2moe", t, args.seed)) for t in ternaries]
    common = {"prompt": args.prompt, "tokens": args.tokens, "passes": args.passes}
    jobs = {"mote": ("mote", {"mote": str(args.mote.resolve())})}
    labels = {"llama-dense": "llama.cpp, dense qwen2 Q4_0 + Q8_0 embeddings"}
    for name, spec in models:
        path = OUT / f"{args.preset}-{spec.layout}{'-' + spec.ternary.lower() if spec.layout != 'dense' else ''}.gguf"
        t0 = time.perf_counter()
        jobs[name] = ("llama", {"gguf_path": str(ensure_gguf(spec, path))})
        print(f"{path.name}: {path.stat().st_size / 1e6:,.0f} MB (ready in {time.perf_counter() - t0:.0f} s)")
        if spec.layout == "qwen2moe":
            labels[name] = (f"llama.cpp, qwen2moe (MoE on every layer, {spec.experts} experts top-{spec.top_k}, "
                            f"shared expert)")
    rounds = []
    for rnd in range(args.rounds):
        res = {"dram": {}, "rows": {name: {} for name in jobs}}
        for t in threads:
            res["dram"][str(t)] = run_worker("dram", threads=t, runs=10)
            for name, (kind, kw) in jobs.items():
                res["rows"][name][str(t)] = r = run_worker(kind, threads=t, **kw, **common)
                print(f"round {rnd + 1}, {t} thr, {name}: decode {r['decode_tok_s']:.1f} tok/s, prefill "
                      f"{r['prompt_positions'] / r['prefill_s']:.0f} tok/s", flush=True)
        rounds.append(res)
    summary = summarize(rounds, threads)
    mote_row = summary["rows"]["mote"]
    labels["mote"] = (f"mote-edge, {args.mote.name} ({mote_row['moe_layers']} MoE layers, top-{mote_row['top_k']}, "
                      f"experts cached as {mote_row['layout']})")
    import llama_cpp

    meta = {"cpu": cpu_name(), "preset": args.preset, "prompt": args.prompt, "tokens": args.tokens,
            "passes": args.passes, "rounds": args.rounds, "labels": labels, "llama_cpp_python": llama_cpp.__version__,
            "date": time.strftime("%Y-%m-%d")}
    print_table(summary, threads, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary, "rounds": rounds}, indent=2) + "\n")
    print(f"wrote {args.out}")


def _check_args(args) -> None:
    """One-line errors for what would otherwise fail deep inside a child."""
    if args.mote is None:
        raise SystemExit("peer_llamacpp: name the .mote to compare (make bench-peer passes models/q05-b4.mote)")
    if not args.mote.is_file():
        raise SystemExit(f"peer_llamacpp: {args.mote} is not a file (make bench-peer builds models/q05-b4.mote)")
    from mote_edge.errors import MoteError
    from mote_edge.presets import preset_config

    from mote_edge.format import MoteFile

    try:
        preset_config(args.preset)
        MoteFile(args.mote).close()
    except MoteError as e:
        raise SystemExit(f"peer_llamacpp: {e}") from None
    for mod in ("llama_cpp", "gguf"):
        try:
            __import__(mod)
        except ImportError:
            raise SystemExit(f"peer_llamacpp: {mod} is not installed (make bench-peer installs the [bench] extra)") from None
    if args.tokens < 1 or args.prompt < 1 or args.passes < 1 or args.rounds < 1:
        raise SystemExit("peer_llamacpp: --tokens, --prompt, --passes and --rounds must be >= 1")
    bad = set(args.ternary.split(",")) - {"TQ2_0", "TQ1_0"}
    if bad:
        raise SystemExit(f"peer_llamacpp: --ternary takes TQ2_0 and / or TQ1_0, got {', '.join(sorted(bad))}")
    if args.prompt + args.tokens + 2 > 1024:
        raise SystemExit("peer_llamacpp: --prompt + --tokens must fit the context of 1024")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise SystemExit(f"peer_llamacpp: --threads takes comma-separated integers, got {args.threads!r}") from None
    if not threads or min(threads) < 1:
        raise SystemExit(f"peer_llamacpp: thread counts must be >= 1, got {args.threads!r}")


if __name__ == "__main__":
    main()
