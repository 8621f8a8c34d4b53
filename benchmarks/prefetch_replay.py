"""Cache policy x prefetch replayed on routing traces against Belady's MIN (`mote-edge simulate`'s
replay): which default the runtime should ship, and how close it comes to the offline optimum.

    python benchmarks/prefetch_replay.py [--questions 100] [--tokens 2000] [--predictor fitted|router]

Traces:
    tiny        the shipped trained tiny MoTE (examples/tiny-mote at --bits 4) over held-out task prompts
                (image + question + 16 greedy tokens, EOS ignored: the answers are a token or two), recorded
                by the runtime with the lookahead's predictions: by default those of lookahead predictors
                fitted on --train training questions (`mote-edge fit-lookahead`'s fit, 1-4 MoE layers ahead;
                `make demo` ships 1-3); `--predictor router`: the routers' (the file without predictors)
    q05 / q15   synthetic decode traces at the Qwen2.5-0.5B / 1.5B synth shapes (12 / 14 MoE layers of
                8 experts, top-1), routed by the tiny model's fitted skew, stickiness and lookahead recall
                (benchmarks/route_model.py): a trained router's statistics at the sizes the budget targets
Every runtime policy (lru, lfu, layer) with every prefetch (none, lookahead-1, lookahead-2) and the oracle
(the next two waves' real experts), against Belady's MIN of demand loading, twice: without a clock (a
prefetch is in before its wave) and with the clock measured by benchmarks/expert_timeline.py on the
0.5B / 1.5B synth files (benchmarks/out/expert-timeline-q05-b4.json, -q15-b4.json: a record's read time,
a wave's compute with every expert cached, the shared expert's overlap; runtime/simulate.py Clock), where
only an expert whose read ended before its wave counts as a hit and the fastest pair is the default's
evidence. The tiny trace runs on the 0.5B's clock (its records are tiny: the 0.5B's ratio of read to
compute is the question). Last, with the clock, `expected` with an oracle of a longer horizon (the next
--oracle-depths waves' real experts): how far ahead a predictor must look for its reads to be in time.
Writes benchmarks/out/prefetch-replay.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
TINY = HERE.parent / "examples" / "tiny-mote"
SHAPES = {"q05": (list(range(0, 24, 2)), 8, 1), "q15": (list(range(0, 28, 2)), 8, 1)}  # MoE layers, experts, top_k
SYNTH_SLABS = [2, 4, 8, 17, 24, 32, 48, 64]
CLOCK_FILES = {"q05": OUT / "expert-timeline-q05-b4.json", "q15": OUT / "expert-timeline-q15-b4.json"}
PREFETCHES = ["none", "lookahead-1", "lookahead-2", "lookahead-3", "lookahead-4", "oracle"]


def tiny_trace(questions: int, predictor: str, train: int) -> tuple[Path, dict]:
    from route_model import measure_tiny_routing  # a sibling: a script's folder is sys.path[0]

    mote, trace = OUT / "tiny-mote-b4.mote", OUT / f"tiny-trace-{predictor}.jsonl"
    if not mote.exists():
        subprocess.run([sys.executable, "-m", "mote_edge.cli", "export", str(TINY), "--bits", "4", "-o", str(mote),
                        "--force"], check=True, capture_output=True)
    if predictor == "fitted":
        mote = fitted_predictors(mote, train)
    return trace, measure_tiny_routing(mote, questions, trace_out=trace, max_new_tokens=16, ignore_eos=True)


def fitted_predictors(mote: Path, train: int) -> Path:
    """`mote` with lookahead predictors 1-4 MoE layers ahead fitted on `train` training-split questions (16
    tokens each, EOS ignored; the held-out questions the trace decodes stay unseen)."""
    from mote_edge.lookahead_fit import FitOptions, fit_lookahead
    from mote_edge.training.data import make_example, train_seeds

    out = OUT / f"{mote.stem}-la{train}.mote"
    samples = [(ex.question, ex.image) for ex in map(make_example, train_seeds(train))]
    result = fit_lookahead(mote, out, samples, FitOptions(depth=4, tokens=16, ignore_eos=True))
    pct = lambda rs: " / ".join("-" if r is None else f"{100 * r:.1f}" for r in rs)  # noqa: E731
    print(f"fitted lookahead predictors on {train} training questions: held-out recall {pct(result.recall)}% "
          f"1-4 ahead (routers {pct(result.router_recall)}%)")
    return out


def clock_of(shape: str):
    """The Clock measured for a synth shape (benchmarks/expert_timeline.py), or None before it ran."""
    from mote_edge.runtime.simulate import Clock

    path = CLOCK_FILES[shape]
    if not path.exists():
        return None
    c = json.loads(path.read_text())["clock"]
    return Clock(c["read_ms"], c["wave_ms"], c["overlap_ms"])


def replay(waves, slabs: list[int], clock=None) -> dict:
    from mote_edge.runtime.simulate import POLICIES, best_pairs, sweep

    results = [r for r in sweep(waves, slabs, list(POLICIES), PREFETCHES, clock)
               if r["policy"] != "belady" or r["prefetch"] == "none"]
    return {"results": results, "best": best_pairs(results),
            "clock": None if clock is None else {"read_ms": clock.read_ms, "wave_ms": clock.wave_ms,
                                                 "overlap_ms": clock.overlap_ms}}


def oracle_horizons(waves, slabs: list[int], clock, depths: list[int]) -> dict:
    """`expected` with an oracle prefetch of each horizon, on the clock, next to Belady's MIN: hit rate by slabs."""
    from mote_edge.runtime.simulate import simulate

    rows = {"belady": [simulate(waves, s, "belady", "none", clock)["hit_rate"] for s in slabs]}
    for d in depths:
        rows[f"oracle-{d}"] = [simulate(waves, s, "expected", f"oracle-{d}", clock)["hit_rate"] for s in slabs]
    print(f"\n  expected + an oracle prefetch of the next N waves, with the clock: hit rate % by slabs")
    print(f"{'slabs':>7} " + " ".join(f"{k:>10}" for k in rows))
    for i, s in enumerate(slabs):
        print(f"{s:>7} " + " ".join(f"{100 * v[i]:>10.1f}" for v in rows.values()))
    return {"slabs": slabs, "hit_rate": rows}


def recall_horizons(model, shape: str, tokens: int, slabs: list[int], clock, recalls: list[float],
                    depths: list[int]) -> dict:
    """`expected` with lookahead-N on the clock, on synth traces whose predictor keeps `recall` at every depth
    (the fitted skew and stickiness): the recall a router N MoE layers ahead needs for its reads to pay.
    Hit rate by slabs, and the replayed decode time's speed-up over `expected` without prefetch."""
    from dataclasses import replace

    from route_model import synth_trace

    from mote_edge.runtime.simulate import simulate

    layers, experts, top_k = SHAPES[shape]
    hit_rate: dict[str, list[float]] = {}
    speedup: dict[str, list[float]] = {}
    for recall in recalls:
        waves = synth_trace(replace(model, lookahead_recall=(recall,)), layers, experts, top_k, tokens, seed=1,
                            depth=max(depths))
        if not hit_rate:  # the routes are the same at every recall: only the predictions differ
            hit_rate["belady"] = [simulate(waves, s, "belady", "none", clock)["hit_rate"] for s in slabs]
            base = [simulate(waves, s, "expected", "none", clock) for s in slabs]
            hit_rate["expected"] = [r["hit_rate"] for r in base]
        for d in depths:
            runs = [simulate(waves, s, "expected", f"lookahead-{d}", clock) for s in slabs]
            hit_rate[f"la{d}@{recall:g}"] = [r["hit_rate"] for r in runs]
            speedup[f"la{d}@{recall:g}"] = [b["time_ms"] / r["time_ms"] for b, r in zip(base, runs)]
    print(f"\n  {shape}: expected + lookahead-N at recall r (every depth), with the clock: hit rate % by slabs, "
          f"then decode speed-up over expected without prefetch")
    print(f"{'slabs':>7} " + " ".join(f"{k:>10}" for k in hit_rate))
    for i, s in enumerate(slabs):
        print(f"{s:>7} " + " ".join(f"{100 * v[i]:>10.1f}" for v in hit_rate.values()))
        print(f"{'':>7} {'':>10} {'':>10} " + " ".join(f"{v[i]:>9.2f}x" for v in speedup.values()))
    return {"slabs": slabs, "recalls": recalls, "depths": depths, "hit_rate": hit_rate, "speedup": speedup}


def show(name: str, rep: dict) -> None:
    rows = rep["results"]
    cols = [(r["policy"], r["prefetch"]) for r in rows if r["slabs"] == rows[0]["slabs"]]
    c = rep["clock"]
    when = ("no clock" if c is None else f"clock: read {c['read_ms']:.2f} ms, wave {c['wave_ms']:.2f} ms, overlap "
            f"{c['overlap_ms']:.2f} ms; a late prefetch is a miss")
    print(f"\n{name}, {when}: hit rate % by slabs")
    print(f"{'slabs':>5} " + " ".join(f"{p[:5] + ('+' + f.replace('lookahead-', 'la') if f != 'none' else ''):>12}"
                                      for p, f in cols) + "   best runtime pair, points behind belady")
    for b in rep["best"]:
        hr = {(r["policy"], r["prefetch"]): r["hit_rate"] for r in rows if r["slabs"] == b["slabs"]}
        fastest = "" if "fastest" not in b else (f"; fastest {b['fastest']['policy']}+{b['fastest']['prefetch']} "
                                                  f"{b['fastest']['time_ms'] / 1e3:.2f} s")
        print(f"{b['slabs']:>5} " + " ".join(f"{100 * hr[c]:>12.1f}" for c in cols)
              + f"   {b['policy']}+{b['prefetch']} {b['points_behind_belady']:+.1f}{fastest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=100, help="held-out prompts routed by the tiny model")
    ap.add_argument("--tokens", type=int, default=2000, help="decode steps per synthetic trace")
    ap.add_argument("--predictor", choices=["fitted", "router"], default="fitted",
                    help="the tiny trace's lookahead: predictors fitted on --train questions, or the routers")
    ap.add_argument("--train", type=int, default=300, help="training questions the fitted predictors see")
    ap.add_argument("--json", type=Path, help="default benchmarks/out/prefetch-replay[-router].json")
    ap.add_argument("--oracle-depths", default="2,3,4,6", help="oracle horizons (decode waves) replayed with the clock")
    ap.add_argument("--recalls", default="0.6,0.8,0.9,0.95",
                    help="predictor recalls replayed with the clock at lookahead 2-4 (synth shapes)")
    args = ap.parse_args()
    from route_model import RouteModel, synth_trace

    from mote_edge.runtime.simulate import read_trace

    OUT.mkdir(parents=True, exist_ok=True)
    json_out = args.json or OUT / ("prefetch-replay.json" if args.predictor == "fitted" else "prefetch-replay-router.json")
    trace, fit = tiny_trace(args.questions, args.predictor, args.train)
    model = RouteModel(**{**fit["mean"], "lookahead_recall": tuple(fit["mean"]["lookahead_recall"])})
    print(f"tiny MoTE over {args.questions} held-out prompts: skew {model.skew:.2f}, stickiness {model.stickiness:.2f}, "
          f"lookahead recall " + ", ".join(f"{d} ahead {100 * r:.1f}%" for d, r in enumerate(model.lookahead_recall, 1)))
    result = {"predictor": args.predictor, "tiny_fit": fit, "traces": {}}
    waves = read_trace(trace)
    for clock in (None, *[c for c in [clock_of("q05")] if c is not None]):
        key = "tiny" if clock is None else "tiny-clock"
        result["traces"][key] = replay(waves, [2, 3, 4, 5, 6, 7, 8], clock)
        show(f"tiny MoTE trace ({len(waves)} waves)", result["traces"][key])
    for name, (layers, experts, top_k) in SHAPES.items():
        waves = synth_trace(model, layers, experts, top_k, args.tokens, seed=1)
        for clock in (None, *[c for c in [clock_of(name)] if c is not None]):
            key = name if clock is None else f"{name}-clock"
            result["traces"][key] = replay(waves, SYNTH_SLABS, clock)
            show(f"{name} shape, fitted routing ({args.tokens} tokens, {len(layers) * experts} experts)",
                 result["traces"][key])
        clock = clock_of(name)
        if clock is not None:
            result["traces"][f"{name}-clock-oracle"] = oracle_horizons(
                waves, SYNTH_SLABS, clock, [int(d) for d in args.oracle_depths.split(",")])
            result["traces"][f"{name}-clock-recall"] = recall_horizons(
                model, name, args.tokens, SYNTH_SLABS[3:], clock, [float(r) for r in args.recalls.split(",")], [2, 3, 4])
    json_out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {json_out}")


if __name__ == "__main__":
    main()
