"""Where a native decode step's DRAM bandwidth goes: the step's weights read plainly, its kernels alone in
the step's order, the same through the layer's C (attn_step / ffn_step), and a real decode step, all on the
Engine's own resident weights and cached experts, with the DRAM probe in the same process.

    python benchmarks/layer_bandwidth.py models/q05-b4.mote [--threads 1] [--reps 9]

Rows (each the median of --reps passes, the passes of every row interleaved; GB/s = the bytes of the
row's weights (packed, scales, zeros) / its time; "of DRAM" = against a streaming read of 1 GiB on huge
pages, the median of one probe after each pass):
  step weights, plain read       every weight buffer of a decode step, in the step's order, read by the
                                 probe's loop (native read_sum): what the same bytes stream at with no kernel
  lm_head GEMV alone             the int8 lm_head, one kernel call (140 MB: always cold)
  FFN kernels alone              the 24 dense / shared int4 FFNs as kernel calls (gate/up, down), layer by
                                 layer (167 MB: cold); no SwiGLU between
  FFN through ffn_step           the same FFNs through native ffn_step (SwiGLU, the add, the call)
  step kernels alone             every matrix of a decode step in its order (q/k/v, o, dense / shared FFN,
                                 one routed expert per MoE layer, lm_head) as bare kernel calls
  step through attn/ffn_step     the same through attn_step / ffn_step: the layer's C (norms, RoPE,
                                 attention over the cache, SwiGLU), no Python between
  decode step (Engine)           greedy decode steps through the Engine (routing, the cache's wave, the
                                 embedding, sampling too)
Last, the share of the resident-weight arena and of the expert slabs that sit on transparent huge pages
(AnonHugePages of their mappings in /proc/self/smaps).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mote_edge import _native

PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"


def huge_share(addr: int) -> tuple[int, int]:
    """(AnonHugePages bytes, Rss bytes) of the mapping that contains addr."""
    rss = huge = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "Rss:":
                rss = int(line.split()[1]) * 1024
            elif inside and head == "AnonHugePages:":
                huge = int(line.split()[1]) * 1024
    return huge, rss


INTN_KINDS = (1, 4)  # native spec kinds of int-N weights: the rows layout (intn_matmul layout 0), il16 (layout 1)


def intn_call(spec: tuple, x: np.ndarray, y: np.ndarray, threads: int) -> None:
    kind, N, K, w, scales, zeros, bits, G, gamma = spec
    if kind in INTN_KINDS:
        _native.intn_matmul(w, scales, zeros, bits, G, x, 1, K, N, y, threads, INTN_KINDS.index(kind))
    elif kind == 3:
        _native.ternary2_matmul(w, gamma, x, 1, K, N, y, threads)
    elif kind == 2:
        _native.ternary_matmul(w, gamma, x, 1, K, N, y, threads)
    else:
        raise ValueError(f"kind {kind}")


def spec_bytes(spec: tuple) -> int:
    return sum(a.nbytes for a in spec[3:6] if a is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mote", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    from mote_edge.runtime.decoder import MoE, expert_specs
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.hugepages import Arena

    th = args.threads
    probe_arena = Arena(1 << 30)
    probe = probe_arena.empty(((1 << 30) // 8,), np.uint64)
    probe[:] = 1
    with Engine.load(args.mote, threads=th, max_context=1024) as engine:
        dec = engine.decoder
        dec.native = True
        for _ in engine.generate_ids(PROMPT, max_new_tokens=4, ignore_eos=True):
            pass  # every expert the prompt routes to is cached now
        H = engine.config.decoder.hidden_size
        rng = np.random.default_rng(0)
        h = (rng.standard_normal(H) * 0.5).astype(np.float32)

        # per layer: (AttentionStep, [FFN specs ((gate_up specs), down spec)]): the dense / shared FFN, then
        # expert 0 of a MoE layer (a step reads one routed expert per MoE layer)
        layers = []
        for i, layer in enumerate(dec.layers):
            ffns = []
            if isinstance(layer.mlp, MoE):
                ffns.append(layer.mlp.shared.specs())
                cache = layer.mlp.cache
                cache.begin_wave(i, [0])
                ffns.append(expert_specs(cache.get(i, 0)))
                cache.end_wave()
            else:
                ffns.append(layer.mlp.specs())
            layers.append((layer.attn_step, ffns))
        head = dec.lm_head.native_spec()
        dense = [ffn for _, ffns in layers for ffn in ffns if ffn[1][0] in INTN_KINDS]  # the int-N (dense / shared) FFNs

        big = np.empty(max(head[1], 4 * H, 2 * engine.config.decoder.intermediate_size), np.float32)
        act = (rng.standard_normal(big.size) * 0.5).astype(np.float32)  # the down projections' input

        def ffn_matrices(ffn):  # (spec, input) of one FFN: gate / up on h, down on act
            gate_up, down = ffn
            return [(s, h) for s in gate_up] + [(down, act)]

        # every matrix of a decode step, in the step's order: q/k/v, o, the FFNs, ..., the lm_head
        step = [m for attn, ffns in layers
                for m in [(s, h) for s in attn.args[8]] + [(attn.args[12], act)] + [x for f in ffns for x in ffn_matrices(f)]]
        step.append((head, h))
        buffers = [a for s, _ in step for a in s[3:6] if a is not None]
        step_bytes = sum(spec_bytes(s) for s, _ in step)
        ffn_bytes = sum(spec_bytes(s) for f in dense for s, _ in ffn_matrices(f))

        def plain_read():
            for a in buffers:
                _native.read_sum(a.reshape(-1).view(np.uint8)[:a.nbytes - a.nbytes % 8].view(np.uint64), 1)

        def run(matrices):
            for s, x in matrices:
                intn_call(s, x[:s[2]], big[:s[1]], th)

        def ffn_steps():
            y = np.zeros(H, np.float32)
            for gate_up, down in dense:
                _native.ffn_step(h, y, 1.0, gate_up, down, th)

        pos = dec.length  # the next position of the cache (its K / V are written, nothing advances)

        def step_layers():
            x, hh, y = h.copy(), np.empty_like(h), np.zeros(H, np.float32)
            for attn, ffns in layers:
                attn(x, pos, hh)
                for gate_up, down in ffns:
                    _native.ffn_step(hh, y, 0.01, gate_up, down, th)
            run([(head, h)])

        rows = {"step weights, plain read": (plain_read, step_bytes),
                "lm_head GEMV alone": (lambda: run([(head, h)]), spec_bytes(head)),
                "FFN kernels alone": (lambda: run([m for f in dense for m in ffn_matrices(f)]), ffn_bytes),
                "FFN through ffn_step": (ffn_steps, ffn_bytes),
                "step kernels alone": (lambda: run(step), step_bytes),
                "step through attn/ffn_step": (step_layers, step_bytes)}
        times = {k: [] for k in rows}
        times["decode step (Engine)"] = []
        dram = []
        for _ in range(args.reps):
            for name, (fn, _) in rows.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            g = engine.generate_ids(PROMPT, max_new_tokens=6, ignore_eos=True)
            stamps = [time.perf_counter()]
            for _ in g:
                stamps.append(time.perf_counter())
            steps = np.diff(stamps)[3:]  # decode steps after the first
            times["decode step (Engine)"].append(float(np.median(steps)))
            t = time.perf_counter()
            _native.read_sum(probe, th)
            dram.append(probe.nbytes / (time.perf_counter() - t))
        rows["decode step (Engine)"] = (None, step_bytes)
        d = float(np.median(dram))
        print(f"{th} thread(s), DRAM probe {d / 1e9:.1f} GB/s (median of {args.reps}); weights read per decode "
              f"step {step_bytes / 1e6:.1f} MB (KV cache not counted)")
        print(f"  {'':30s} {'MB':>7s} {'ms':>7s} {'GB/s':>6s} {'of DRAM':>8s}")
        for name, (_, nbytes) in rows.items():
            ms = 1e3 * float(np.median(times[name]))
            gbs = nbytes / ms / 1e6
            print(f"  {name:30s} {nbytes / 1e6:7.1f} {ms:7.2f} {gbs:6.1f} {100 * gbs * 1e9 / d:7.1f}%")
        routed = next(ffns[-1] for _, ffns in layers if ffns[-1][1][0] not in INTN_KINDS)
        for label, arr in (("resident weights (lm_head)", head[3]), ("expert slabs", routed[1][3])):
            hp, rss = huge_share(arr.ctypes.data)
            print(f"  huge pages, {label}: {hp / 1e6:.1f} of {rss / 1e6:.1f} MB resident in its mapping "
                  f"({100 * hp / max(rss, 1):.0f}%)")


if __name__ == "__main__":
    main()
