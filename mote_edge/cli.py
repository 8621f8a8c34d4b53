"""The `mote-edge` command line.

Every user error is a MoteError: the CLI prints `error: <one line>` to stderr and exits non-zero.
torch is imported only inside the commands that need the `[export]` extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from mote_edge import __version__
from mote_edge.errors import MoteError
from mote_edge.presets import PRESETS
from mote_edge.runtime.cache_policy import DEFAULT_POLICY

app = typer.Typer(
    name="mote-edge",
    help="Run Mixture-of-Ternary-Experts vision-language models on edge devices under a memory budget.\n\n"
         "Typical flow:  mote-edge synth --preset tiny -o ckpt/   (or bring a trained checkpoint)\n\n"
         "               mote-edge export ckpt/ --bits 4 -o model.mote\n\n"
         "               mote-edge run model.mote --image cat.jpg --prompt \"What is this?\" --memory-budget 300MB",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PRESET_HELP = "; ".join(f"{name}: {spec[-1]}" for name, spec in PRESETS.items())


def _needs_export_extra() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MoteError("this command needs torch: pip install 'mote-edge[export]'") from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mote-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="HF-style checkpoint directory (config.json, *.safetensors, ...)."),
    output: Path = typer.Option(..., "-o", "--output", help="The .mote file to write."),
    bits: int = typer.Option(4, help="Bits for shared experts, fp experts, attention and dense FFNs: "
                                     "2, 3, 4, 8, or 16 (fp16 everywhere but the ternary experts, for parity)."),
    group_size: int = typer.Option(128, help="Int-N group size along the input dimension: 32, 64 or 128."),
    method: str = typer.Option("rtn", help="rtn (round to nearest) or gptq (needs calibration data)."),
    calib: Optional[Path] = typer.Option(None, help="GPTQ calibration .jsonl of {\"prompt\", \"image\"} "
                                                    "(default: a built-in set of rendered shapes)."),
    recipe: Optional[str] = typer.Option(None, help="Per-role overrides, e.g. embed=4,attn=8g64,router=16. Roles: "
                                                    "embed, lm_head, attn, ffn, shared_expert, fp_expert, router, "
                                                    "norm, vision."),
    vision_bits: int = typer.Option(8, help="Vision tower + projector matrices: 8 (int8 groups), 16 (fp16) or 32 (fp32, for parity checks)."),
    vision_format: str = typer.Option("native", help="native: blocks the runtime streams one at a time through its "
                                                     "own int8 kernels (peak ~ one block); onnx: an ONNX model run "
                                                     "by onnxruntime (older files)."),
    vision_tower: Optional[Path] = typer.Option(None, help="A CLIPVisionModel / CLIPModel directory (transformers "
                                                           "save_pretrained) for checkpoints that name their tower "
                                                           "(mm_image_tower / mm_vision_tower) but do not hold it, "
                                                           "as MoE-LLaVA's and LLaVA's do."),
    chat_template: Optional[str] = typer.Option(None, help="Conversation format stored in the file: v1 (LLaVA / "
                                                           "Vicuna v1), qwen (MoE-LLaVA's Qwen format) or plain "
                                                           "(LLaVA pre-training). Default: qwen when the tokenizer's "
                                                           "EOS is <|endoftext|>, else v1."),
    system: Optional[str] = typer.Option(None, help="Replace the chat template's system prompt."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Quantize a MoTE / MoE-LLaVA checkpoint and pack it into one .mote file.

    Ternary experts are packed at 1.6 bits per weight; shared experts and other weights get
    group-wise int-N post-training quantization; embeddings and lm_head default to 8 bits."""
    _needs_export_extra()
    from mote_edge.exporters.export import ExportOptions, export_checkpoint, export_summary_text

    opts = ExportOptions(bits=bits, group_size=group_size, method=method, recipe=recipe, vision_bits=vision_bits,
                         vision_format=vision_format, calib=calib, chat_template=chat_template, system=system, vision_tower=vision_tower,
                         force=force, progress=sys.stderr.isatty())
    summary = export_checkpoint(checkpoint, output, opts)
    typer.echo(export_summary_text(summary))


@app.command()
def run(
    model: Path = typer.Argument(..., help="A .mote file."),
    prompt: str = typer.Option(..., help="The question to ask (rendered by the model's chat template)."),
    image: Optional[Path] = typer.Option(None, help="An image file (any format Pillow reads)."),
    system: Optional[str] = typer.Option(None, help="System prompt instead of the chat template's own."),
    raw: bool = typer.Option(False, "--raw", help="Send --prompt as it is, without the chat template (for "
                                                  "evaluation harnesses); put <image> where the image goes. "
                                                  "The tokenizer's BOS still leads."),
    memory_budget: Optional[str] = typer.Option(None, help="Hard memory budget for everything the model needs, "
                                                           "e.g. 300MB or 1.5GiB (default: cache every expert)."),
    max_new_tokens: int = typer.Option(128, help="Maximum number of tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 = greedy (deterministic); > 0 samples."),
    top_k: int = typer.Option(0, help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling: smallest set with this much probability (1 = off)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for sampling."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep generating past end-of-sequence "
                                                                "(exactly --max-new-tokens; for benchmarks)."),
    threads: Optional[int] = typer.Option(None, help="Threads for the kernels (default: all cores)."),
    max_context: Optional[int] = typer.Option(None, help="Context positions to plan for (default: min(model's, 4096))."),
    cache_policy: str = typer.Option(DEFAULT_POLICY, help="Expert eviction when the cache is full: expected (evict "
                                                          "the expert whose next use is expected last, from its "
                                                          "layer's place in the cycle and the routing seen so far; "
                                                          "default), layer (the expert whose MoE layer runs again "
                                                          "last), lru or lfu. Compare them on a trace with "
                                                          "`mote-edge simulate`."),
    expert_layout: str = typer.Option("auto", help="How cached experts are laid out: file (the stored 1.6-bit "
                                                   "trits), slab2 (re-laid to 2 bits per trit when loaded: 25% "
                                                   "more memory, a faster kernel), auto (slab2 when the budget "
                                                   "caches every expert in it; default)."),
    prefetch: str = typer.Option("auto", help="Expert prefetch: lookahead (the next MoE layer's router, or "
                                              "the file's fitted predictor (`fit-lookahead`), applied to the "
                                              "current hidden state picks experts to read ahead, into top_k "
                                              "loader buffers the plan adds), lookahead2 "
                                              ".. lookahead4 (the next 2 .. 4 layers'), adaptive (up to 3 "
                                              "layers ahead, as deep as the lookahead's recall measured while "
                                              "decoding earns: none below 80%), gap (the next layer's "
                                              "predicted experts into the slabs a wave frees: no buffers), "
                                              "none, or auto (default: adaptive when the budget holds its "
                                              "buffers and its slabs half the experts; gap at the minimum "
                                              "budget with records of 4 MiB or more; else none)."),
    lookahead_predictor: bool = typer.Option(True, "--lookahead-predictor/--router-lookahead",
                                             help="Predict the experts to prefetch with the lookahead predictors "
                                                  "the file stores (`mote-edge fit-lookahead`; default), or with "
                                                  "the later layers' routers."),
    kv_bits: int = typer.Option(32, help="KV cache storage: 32 (float32) or 8 (int8 with a scale per head and "
                                         "position: ~4x less KV memory, like llama.cpp's -ctk q8_0)."),
    report: bool = typer.Option(False, "--report", help="Print the memory and speed report to stderr."),
    report_json: Optional[Path] = typer.Option(None, help="Write the report as JSON to this file."),
    trace_out: Optional[Path] = typer.Option(None, help="Record every MoE wave's experts as JSON lines "
                                                        "(replay with `mote-edge simulate`)."),
) -> None:
    """Answer a prompt (optionally about an image), loading routed experts on demand under a memory budget.

    The answer streams to stdout; the plan, warnings and the report go to stderr."""
    from mote_edge.runtime.budget import format_bytes
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.report import report_text

    # a text-only run plans no image phase: that memory goes to the expert cache
    with Engine.load(model, memory_budget=memory_budget, threads=threads, max_context=max_context,
                     cache_policy=cache_policy, expert_layout=expert_layout, vision=image is not None,
                     prefetch=prefetch, kv_bits=kv_bits, lookahead_predictor=lookahead_predictor) as engine:
        plan = engine.plan
        if trace_out is not None and engine.experts is not None:
            engine.experts.trace = []
        cached = "all" if engine.experts is None or plan.expert_slabs == plan.total_experts else plan.expert_slabs
        typer.echo(f"loaded {model.name}: plan {format_bytes(plan.total_bytes)} "
                   f"({cached} of {plan.total_experts} experts cached, {plan.expert_layout} layout, "
                   f"context {plan.context})", err=True)
        for piece in engine.generate(prompt, image=image, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed, ignore_eos=ignore_eos, system=system,
                                     raw=raw):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        r = engine.report()
        if trace_out is not None:
            trace_out.write_text("".join(json.dumps(w) + "\n" for w in (engine.experts.trace or [])
                                         if engine.experts is not None))
    if report:
        typer.echo(report_text(r), err=True)
    if report_json is not None:
        report_json.write_text(json.dumps(r, indent=2) + "\n")


@app.command()
def chat(
    model: Path = typer.Argument(..., help="A .mote file."),
    image: Optional[Path] = typer.Option(None, help="An image for the first question (more with /image PATH)."),
    system: Optional[str] = typer.Option(None, help="System prompt instead of the chat template's own."),
    memory_budget: Optional[str] = typer.Option(None, help="Hard memory budget, e.g. 300MB (default: cache every expert)."),
    max_new_tokens: int = typer.Option(128, help="Longest answer per turn (also capped by the context left)."),
    threads: Optional[int] = typer.Option(None, help="Threads for the kernels (default: all cores)."),
    max_context: Optional[int] = typer.Option(None, help="Context positions to plan for (default: min(model's, 4096))."),
) -> None:
    """Talk with the model in the terminal: multi-turn, answers streamed, greedy.

    Follow-up questions reuse the KV cache of the conversation so far (only new tokens are prefilled).
    Commands: /image PATH, /reset, /report, /quit. Ctrl-C stops the current answer, not the program."""
    from mote_edge.runtime.budget import format_bytes
    from mote_edge.runtime.engine import Engine
    from mote_edge.terminal_chat import HELP, TerminalChat

    with Engine.load(model, memory_budget=memory_budget, threads=threads, max_context=max_context) as engine:
        interactive = sys.stdin.isatty()
        typer.echo(f"loaded {model.name}: plan {format_bytes(engine.plan.total_bytes)}, context "
                   f"{engine.plan.context}. {HELP}", err=True)
        session = TerminalChat(engine, sys.stdout, system=system, max_new_tokens=max_new_tokens)
        if image is not None:
            session.attach(str(image))
        session.run((lambda: input("> ")) if interactive else (lambda: _read_stdin_line()))


def _read_stdin_line() -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


@app.command()
def serve(
    model: Path = typer.Argument(..., help="A .mote file."),
    memory_budget: Optional[str] = typer.Option(None, help="Hard memory budget, e.g. 300MB (default: cache every expert)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(8080, help="TCP port."),
    api_key: Optional[str] = typer.Option(None, help="Require `Authorization: Bearer KEY` on /v1/* "
                                                     "(default: the MOTE_API_KEY environment variable, if set).",
                                          envvar="MOTE_API_KEY"),
    max_queue: int = typer.Option(4, help="Requests that may wait while one is answered; more get 429."),
    request_timeout: float = typer.Option(120.0, help="Seconds from a request's arrival to its last token."),
    allow_local_images: bool = typer.Option(False, "--allow-local-images",
                                            help="Let image_url name a file on this machine (off: data: URLs only)."),
    max_body: str = typer.Option("16MB", help="Largest request body."),
    max_image_bytes: str = typer.Option("8MB", help="Largest image file."),
    max_image_pixels: int = typer.Option(4096 * 4096, help="Most pixels (width x height) an image may have."),
    max_images: int = typer.Option(4, help="Most images per request."),
    default_max_tokens: int = typer.Option(256, help="Answer length when a request sets no max_tokens."),
    threads: Optional[int] = typer.Option(None, help="Threads for the kernels (default: all cores)."),
    max_context: Optional[int] = typer.Option(None, help="Context positions to plan for (default: min(model's, 4096))."),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (POST /v1/chat/completions, streaming too).

    One request is answered at a time; a request that continues the previous conversation reuses its KV
    cache. Needs the [serve] extra. docs/SERVING.md lists the endpoints and limits."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise MoteError("mote-edge serve needs the [serve] extra: pip install 'mote-edge[serve]'") from None
    from mote_edge.runtime.budget import parse_bytes
    from mote_edge.serve.limits import ServeLimits
    from mote_edge.serve.server import run_server

    if not 0 <= port <= 65535:
        raise MoteError(f"--port must be 0..65535, got {port}")
    limits = ServeLimits(max_body_bytes=parse_bytes(max_body), max_image_bytes=parse_bytes(max_image_bytes),
                         max_image_pixels=max_image_pixels, max_images=max_images,
                         default_max_tokens=default_max_tokens, max_queue=max_queue,
                         request_timeout_s=request_timeout, allow_local_images=allow_local_images)
    run_server(model, memory_budget, host, port, api_key or None, limits, threads=threads, max_context=max_context)


@app.command()
def simulate(
    trace: Path = typer.Argument(..., help="A routing trace from `mote-edge run --trace-out`."),
    slabs: Optional[str] = typer.Option(None, help="Comma-separated slab counts (default: 1, 2, 4 and quarters "
                                                   "of the distinct experts in the trace)."),
    policies: str = typer.Option("lru,lfu,layer,belady", help="Policies to compare: lru, lfu, layer, belady."),
    prefetch: Optional[str] = typer.Option(None, help="Prefetches to compare: none, lookahead-N (the "
                                                      "trace's predictions N MoE layers ahead), oracle (the next 2 waves' real experts), "
                                                      "oracle-N (the next N waves'; with a clock: how far ahead a read "
                                                      "must start) (default: none, every lookahead the trace has "
                                                      "predictions for, oracle)."),
    read_ms: Optional[float] = typer.Option(None, help="With --wave-ms: a clock. One expert record's read time "
                                                       "(its bytes over the disk's speed); a prefetch still reading "
                                                       "when its wave comes is a miss and a stall."),
    wave_ms: Optional[float] = typer.Option(None, help="A MoE wave's compute, routing to the next wave, every "
                                                       "expert cached (decode step / MoE layers)."),
    overlap_ms: float = typer.Option(0.0, help="Of --wave-ms, what runs while the wave's misses load (the "
                                               "shared expert)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Replay a routing trace under cache sizes, policies and prefetches; print the hit-rate curve.

    belady (Belady's MIN, offline optimum) is the upper bound of demand loading; an expert prefetched
    before it is needed counts as a hit (with a clock: one whose read ended before its wave)."""
    from mote_edge.runtime.simulate import Clock, best_pairs, default_slab_counts, prediction_depth, read_trace, sweep

    if (read_ms is None) != (wave_ms is None):
        raise MoteError("a replay clock needs both --read-ms and --wave-ms")
    clock = Clock(read_ms, wave_ms, overlap_ms) if read_ms is not None else None
    waves = read_trace(trace)
    try:
        counts = [int(x) for x in slabs.split(",")] if slabs else default_slab_counts(waves)
    except ValueError:
        raise MoteError(f"--slabs must be comma-separated integers, got {slabs!r}") from None
    names = [p.strip() for p in policies.split(",") if p.strip()]
    default = ["none", *[f"lookahead-{d}" for d in range(1, prediction_depth(waves) + 1)], "oracle"]
    fetches = [p.strip() for p in prefetch.split(",") if p.strip()] if prefetch else default
    # belady is the reference of demand loading: replayed without prefetch only
    results = [r for r in sweep(waves, counts, names, fetches, clock)
               if r["policy"] != "belady" or r["prefetch"] == "none"]
    if not results:
        raise MoteError("nothing to replay: belady is replayed without prefetch only (add --prefetch none)")
    best = best_pairs(results)
    if as_json:
        typer.echo(json.dumps({"results": results, "best": best}, indent=2))
        return
    columns = [(r["policy"], r["prefetch"]) for r in results if r["slabs"] == counts[0]]
    typer.echo(f"{len(waves)} waves; hit rate by cache slabs (policy/prefetch; a prefetched expert counts as a hit)")
    typer.echo(f"{'slabs':>6}" + "".join(f"{_column_name(p, f):>14}" for p, f in columns) + "   best (points behind belady)")
    for c in counts:
        row = {(r["policy"], r["prefetch"]): r["hit_rate"] for r in results if r["slabs"] == c}
        b = next((x for x in best if x["slabs"] == c), None)
        gap = "" if b is None else f"   {_column_name(b['policy'], b['prefetch'])}" + (
            "" if b["points_behind_belady"] is None else f" ({b['points_behind_belady']:+.1f})")
        typer.echo(f"{c:>6}" + "".join(f"{100 * row[k]:>13.1f}%" for k in columns) + gap)
    if clock is not None:
        typer.echo(f"replayed decode time (read {clock.read_ms:g} ms per record, wave {clock.wave_ms:g} ms, overlap "
                   f"{clock.overlap_ms:g} ms), the fastest runtime pair:")
        for b in best:
            f = b["fastest"]
            typer.echo(f"{b['slabs']:>6}   {_column_name(f['policy'], f['prefetch'])} {f['time_ms']:,.1f} ms, "
                       f"hit rate {100 * f['hit_rate']:.1f}%")


def _column_name(policy: str, prefetch: str) -> str:
    return policy if prefetch == "none" else f"{policy}+{prefetch.replace('lookahead-', 'la')}"


@app.command("fit-lookahead")
def fit_lookahead(
    model: Path = typer.Argument(..., help="A .mote file of a MoE model."),
    output: Path = typer.Option(..., "-o", "--output", help="The .mote file to write (the model with its "
                                                            "lookahead predictors; may be MODEL itself)."),
    calib: Optional[Path] = typer.Option(None, help="Calibration .jsonl of {\"prompt\", \"image\"} (image "
                                                    "optional, relative to the file), prompts like the ones the "
                                                    "model will serve (default: a built-in set of rendered shapes)."),
    samples: int = typer.Option(64, help="Calibration prompts to decode (the first N of --calib)."),
    depth: int = typer.Option(3, help="Fit predictors 1 .. DEPTH MoE layers ahead (1 to 4; the adaptive "
                                      "prefetch reads at most 3 ahead)."),
    tokens: int = typer.Option(16, help="Tokens to decode per prompt, at most: each token after the first gives "
                                        "one wave per MoE layer to fit on."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Decode exactly --tokens per prompt, past "
                                                                "end-of-sequence."),
    holdout: float = typer.Option(0.25, help="Share of the prompts that scores the fit against the routers "
                                             "before the final fit on all of them."),
    ridge: float = typer.Option(1.0, help="Ridge penalty of the least-squares fit."),
    memory_budget: Optional[str] = typer.Option(None, help="Memory budget for decoding the prompts "
                                                           "(default: cache every expert)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Fit lookahead predictors on calibration prompts and store them in the file.

    The expert prefetch predicts what later MoE layers will route to; by default with their routers
    applied to the current hidden state. A linear predictor per (MoE layer, depth), fitted on the decode
    steps of calibration prompts, predicts better, and `run --prefetch adaptive` (what auto runs from half
    the experts cached) prefetches deeper when it does. Prints the held-out recall of both."""
    from mote_edge.calibration import builtin_samples, file_samples
    from mote_edge.lookahead_fit import FitOptions, fit_lookahead as fit

    if samples < 1:
        raise MoteError(f"samples must be at least 1, got {samples}")
    if output.exists() and not force and output.resolve() != model.resolve():
        raise MoteError(f"{output} exists (use --force to overwrite it)")
    data = file_samples(calib, samples) if calib is not None else builtin_samples(samples)
    opts = FitOptions(depth=depth, tokens=tokens, ignore_eos=ignore_eos, ridge=ridge, holdout=holdout,
                      memory_budget=memory_budget)
    r = fit(model, output, data, opts, progress=sys.stderr.isatty())
    typer.echo(f"fitted lookahead predictors 1 .. {r.depth} MoE layers ahead on {r.waves} decode waves of "
               f"{r.samples} prompts; wrote {output} ({output.stat().st_size:,} bytes)")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for d, (fitted, router) in enumerate(zip(r.recall, r.router_recall), 1):
        typer.echo(f"  {d} ahead: held-out recall {pct(fitted)} (the routers: {pct(router)})")


@app.command()
def info(
    model: Path = typer.Argument(..., help="A .mote file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    context: Optional[int] = typer.Option(None, help="Context length for the memory estimates "
                                                     "(default: min(max_position_embeddings, 4096))."),
) -> None:
    """Show a .mote file's config, quantization recipe, size by role and the memory a run needs."""
    from mote_edge.format import MoteFile
    from mote_edge.runtime.info import info_dict, info_text

    with MoteFile(model) as f:
        d = info_dict(f, context)
    typer.echo(json.dumps(d, indent=2) if as_json else info_text(d))


@app.command()
def verify(model: Path = typer.Argument(..., help="A .mote file.")) -> None:
    """Check every checksum and structural invariant of a .mote file (exit 0 = valid, 1 = not)."""
    from mote_edge.format import MoteFile
    from mote_edge.format.verify import verify_file

    with MoteFile(model) as f:
        checked = verify_file(f, progress=sys.stderr.isatty())
    typer.echo(f"{model}: OK ({checked} items, {model.stat().st_size:,} bytes verified)")


@app.command()
def synth(
    preset: str = typer.Option(..., help=f"Model shape. {PRESET_HELP}."),
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint directory to create."),
    expert_type: str = typer.Option("ternary", help="ternary (MoTE: + shared expert) or fp (MoE-LLaVA)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same weights."),
    dtype: str = typer.Option("bf16", help="Stored dtype: bf16 (as published checkpoints), fp16 or fp32."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty output directory."),
) -> None:
    """Write a random-weight checkpoint with real shapes (for memory and speed benchmarks and tests).

    Streams tensor by tensor: memory stays near the largest tensor, whatever the preset."""
    from mote_edge.exporters.synth import synthesize_preset
    from mote_edge.presets import preset_config
    from mote_edge.schema import parameter_counts

    counts = parameter_counts(preset_config(preset, expert_type))
    typer.echo(f"synth {preset} ({expert_type} experts): {counts['total'] / 1e6:,.1f}M parameters, "
               f"{counts['active'] / 1e6:,.1f}M active per token", err=True)
    summary = synthesize_preset(preset, output, expert_type=expert_type, seed=seed, dtype=dtype,
                                progress=sys.stderr.isatty(), force=force)
    typer.echo(f"wrote {summary.directory} ({summary.nbytes / 1e6:,.1f} MB in {summary.shards} "
               f"safetensors file{'s' if summary.shards > 1 else ''})")


@app.command()
def reference(
    checkpoint: Path = typer.Argument(..., help="HF-style checkpoint directory."),
    prompt: str = typer.Option(..., help="The question to ask."),
    image: Optional[Path] = typer.Option(None, help="An image file."),
    max_new_tokens: int = typer.Option(32, help="Maximum number of tokens to generate."),
) -> None:
    """Greedy generation with the torch reference model (needs the [export] extra; slow, exact)."""
    _needs_export_extra()
    from mote_edge.exporters.generate import reference_generate

    for piece in reference_generate(checkpoint, prompt, image, max_new_tokens):
        typer.echo(piece, nl=False)
    typer.echo()


def main() -> None:
    try:
        app()
    except MoteError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
