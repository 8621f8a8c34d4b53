"""Kernel benchmark: mote ternary / int-N kernels vs numpy fp32 and onnxruntime MatMulNBits.

    python benchmarks/kernel_speed.py [--quick] [--out benchmarks/out/kernels.json]

For 1 and 2 threads (each in a child process, so OpenBLAS and ORT get their thread counts from
the start) and the Qwen2.5-0.5B / 1.5B expert shapes:
  * DRAM read bandwidth, measured in the same run (a C streaming read over 1 GiB);
  * cold GEMV (1 token): each call uses the next of several distinct weight copies totalling
    > 96 MiB (L3 is 32 MiB), so the weights come from DRAM; median of >= 10 passes;
  * GEMM with 64 tokens (prefill), weights hot; median of >= 10 runs.
Prints Gweights/s, GB/s of weight bytes read, % of the measured DRAM bandwidth, and ratios.
Not part of the tests: it times things.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = [  # (name, K, N): rows N, input K
    ("0.5B up 896->4864", 896, 4864),
    ("0.5B down 4864->896", 4864, 896),
    ("1.5B up 1536->8960", 1536, 8960),
    ("1.5B down 8960->1536", 8960, 1536),
]
COLD_BYTES = 96 << 20
GEMM_TOKENS = 64
ONLY = [""]  # --only: kernel-name substrings to run


def median_time(fn, runs: int) -> float:
    fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# Where weight copies live: "4k" = ordinary numpy memory; "huge" = transparent huge pages, as the
# runtime keeps its streamed weights (runtime/hugepages.py). Set per child process.
PAGES = "4k"
HUGE_SUFFIX = " [huge pages]"  # kernel-name suffix of the rows measured on huge pages


_chunk: list = []  # the current huge-page chunk being filled: [Arena]


def place(a: np.ndarray) -> np.ndarray:
    """A copy of `a` on the memory the run measures (huge: packed back to back in 256 MiB chunks)."""
    if PAGES == "4k":
        return a.copy()
    from mote_edge.runtime.hugepages import Arena
    if not _chunk or _chunk[0].used + a.nbytes + 4096 > _chunk[0].capacity:
        _chunk[:] = [Arena(max(256 << 20, a.nbytes + 4096), align=4096)]
    out = _chunk[0].empty(a.shape, a.dtype)
    out[...] = a
    return out


def dram_bandwidth(threads: int, runs: int) -> float:
    from mote_edge import _native
    buf = place(np.ones((1 << 30) // 8, dtype=np.uint64))
    t = median_time(lambda: _native.read_sum(buf, threads), runs)
    return buf.nbytes / t


# ---------------------------------------------------------------- kernels under test
# Each maker returns (call(copy_index, x), bytes_per_copy, ncopies_made)

def make_ternary(K, N, ncopies, threads, layout="file"):
    """layout "file": the 1.6-bit .mote layout; "slab2": the 2-bit cache-slab layout (ternary_slab.py)."""
    from mote_edge.quant import kernels
    rng = np.random.default_rng(0)
    top = 243 if layout == "file" else 256
    base = rng.integers(0, top, size=kernels.ternary_nbytes(N, K, layout), dtype=np.uint8)
    copies = [place(base) for _ in range(ncopies)]
    outs = {}

    def call(i, x):
        out = outs.setdefault(x.shape[0], np.empty((x.shape[0], N), np.float32))
        kernels.ternary_matmul(x, copies[i], 0.5, N, K, threads, out, layout=layout)
    return call, base.nbytes + 4


def make_intn(bits, K, N, ncopies, threads, G=128, layout="rows"):
    """layout "il16": the 16-row interleaved layout the runtime loads int4 / int8 G = 128 weights in on AVX-512."""
    from mote_edge.quant import kernels
    from mote_edge.quant.intn import IntNWeight, interleave_il16, intn_row_bytes
    rng = np.random.default_rng(0)
    ng = K // G
    base = IntNWeight(rng.integers(0, 256, size=(N, intn_row_bytes(K, bits, G)), dtype=np.uint8),
                      (rng.random((N, ng)) * 0.01).astype(np.float16),
                      np.full((N, ng), 2 ** (bits - 1), np.float16), bits, G, N, K)
    if layout == "il16":
        base = IntNWeight(*interleave_il16(base.packed, base.scales, base.zeros), bits, G, N, K, "il16")
    copies = [IntNWeight(place(base.packed), place(base.scales), place(base.zeros), bits, G, N, K, layout)
              for _ in range(ncopies)]
    outs = {}

    def call(i, x):
        out = outs.setdefault(x.shape[0], np.empty((x.shape[0], N), np.float32))
        kernels.intn_matmul(x, copies[i], threads, out)
    return call, base.nbytes


def make_numpy(K, N, ncopies, threads):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((N, K)).astype(np.float32)
    copies = [place(base) for _ in range(ncopies)]

    def call(i, x):
        x @ copies[i].T
    return call, base.nbytes


def make_ort(bits, K, N, ncopies, threads, block=128):
    """One session whose graph holds `ncopies` MatMulNBits nodes on distinct weights (one thread pool;
    many sessions would each spin their own): copy i is run by fetching output Y{i}."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    kb = K // block
    nodes, inits, outs = [], [], []
    for i in range(ncopies):
        b = rng.integers(0, 256, size=(N, kb, block * bits // 8), dtype=np.uint8)
        s = (rng.random(N * kb) * 0.01).astype(np.float32)
        nodes.append(helper.make_node("MatMulNBits", ["A", f"B{i}", f"S{i}"], [f"Y{i}"], domain="com.microsoft",
                                      K=K, N=N, bits=bits, block_size=block, accuracy_level=4))
        inits += [helper.make_tensor(f"B{i}", TensorProto.UINT8, b.shape, b.tobytes(), raw=True),
                  helper.make_tensor(f"S{i}", TensorProto.FLOAT, s.shape, s.tobytes(), raw=True)]
        outs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT, ["T", N]))
    graph = helper.make_graph(nodes, "mnb", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["T", K])],
                              outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    nbytes = N * kb * block * bits // 8 + N * kb * 4

    def call(i, x):
        if i is None:  # the whole cold pass in one run: every node once, in graph order
            sess.run(None, {"A": x})
        else:
            sess.run([f"Y{i}"], {"A": x})
    return call, nbytes


KERNELS = {  # name -> (maker, is ours)
    "mote ternary (1.6 bpw)": (make_ternary, True),
    "mote ternary 2-bit slab": (lambda K, N, c, t: make_ternary(K, N, c, t, "slab2"), True),
    "mote int2 g128": (lambda K, N, c, t: make_intn(2, K, N, c, t), True),
    "mote int3 g128": (lambda K, N, c, t: make_intn(3, K, N, c, t), True),
    "mote int4 g128": (lambda K, N, c, t: make_intn(4, K, N, c, t), True),
    "mote int4 g128 il16": (lambda K, N, c, t: make_intn(4, K, N, c, t, layout="il16"), True),
    "mote int8 g128": (lambda K, N, c, t: make_intn(8, K, N, c, t), True),
    "mote int8 g128 il16": (lambda K, N, c, t: make_intn(8, K, N, c, t, layout="il16"), True),
    "numpy fp32": (make_numpy, False),
    "ORT MatMulNBits 2-bit b128": (lambda K, N, c, t: make_ort(2, K, N, c, t), False),
    "ORT MatMulNBits 4-bit b128": (lambda K, N, c, t: make_ort(4, K, N, c, t), False),
}


def family(kname: str) -> str:
    return kname.split()[0].lower()   # mote | numpy | ort


def selected(kname: str) -> bool:
    """--only: the kernel's name contains one of the given substrings (all kernels by default)."""
    return any(o in kname for o in ONLY)


def bench_one(threads: int, quick: bool, fam: str, pages: str = "4k") -> dict:
    global PAGES
    PAGES = pages
    runs = 10
    res = {"threads": threads, "pages": pages, "dram_GBps": dram_bandwidth(threads, 5 if quick else 10) / 1e9, "rows": [],
           "loadavg_before": os.getloadavg()}
    shapes = SHAPES[2:3] if quick else SHAPES
    rng = np.random.default_rng(1)
    for name, K, N in shapes:
        x1 = rng.standard_normal((1, K)).astype(np.float32)
        xg = rng.standard_normal((GEMM_TOKENS, K)).astype(np.float32)
        for kname, (maker, ours) in KERNELS.items():
            if family(kname) != fam or not selected(kname):
                continue
            call1, per = maker(K, N, 1, threads)          # GEMM: one weight copy, hot
            t_gemm = median_time(lambda: call1(0, xg), runs)
            del call1
            ncopies = max(2, -(-COLD_BYTES // per))
            call, per = maker(K, N, ncopies, threads)

            def cold_pass():
                if kname.startswith("ORT"):
                    call(None, x1)
                else:
                    for i in range(ncopies):
                        call(i, x1)
            t_cold = median_time(cold_pass, runs) / ncopies
            res["rows"].append({
                "shape": name, "K": K, "N": N, "kernel": kname, "ours": ours, "copies": ncopies,
                "bytes": per, "bits_per_weight": per * 8 / (N * K),
                "gemv_cold_s": t_cold, "gemv_Gwps": N * K / t_cold / 1e9, "gemv_GBps": per / t_cold / 1e9,
                "gemv_pct_dram": 100 * per / t_cold / 1e9 / res["dram_GBps"],
                "gemm64_s": t_gemm, "gemm64_GMACps": GEMM_TOKENS * N * K / t_gemm / 1e9,
            })
            del call
            print(f"  [{threads} thr] {name:24s} {kname:28s} gemv {res['rows'][-1]['gemv_Gwps']:7.1f} Gw/s",
                  file=sys.stderr, flush=True)
    return res


def report(results: list[dict]) -> None:
    for r in results:
        th = r["threads"]
        print(f"\n== {th} thread(s); load average before {r['loadavg_before'][0]:.2f}; "
              f"DRAM read bandwidth {r['dram_GBps']:.1f} GB/s "
              f"(ternary roofline at 1.6 bpw: {r['dram_GBps'] * 5:.0f} Gw/s)")
        if r.get("dram_huge_GBps"):
            print(f"   on huge pages {r['dram_huge_GBps']:.1f} GB/s (roofline {r['dram_huge_GBps'] * 5:.0f} Gw/s); "
                  f"'{HUGE_SUFFIX.strip()}' rows: % of this probe")
        print(f"{'shape':24s} {'kernel':42s} {'bpw':>5s} {'GEMV Gw/s':>9s} {'GB/s':>6s} {'%DRAM':>6s} "
              f"{'GEMM64 GMAC/s':>13s}")
        for row in r["rows"]:
            print(f"{row['shape']:24s} {row['kernel']:42s} {row['bits_per_weight']:5.2f} {row['gemv_Gwps']:9.1f} "
                  f"{row['gemv_GBps']:6.1f} {row['gemv_pct_dram']:6.0f} {row['gemm64_GMACps']:13.1f}")
        print("ratios (GEMV cold / GEMM64):")
        by = {(row["shape"], row["kernel"]): row for row in r["rows"]}
        for shape in dict.fromkeys(row["shape"] for row in r["rows"]):
            for ours, theirs in [("mote ternary (1.6 bpw)", "ORT MatMulNBits 2-bit b128"),
                                 ("mote ternary 2-bit slab", "ORT MatMulNBits 2-bit b128"),
                                 ("mote ternary (1.6 bpw)", "numpy fp32"),
                                 ("mote int2 g128", "ORT MatMulNBits 2-bit b128"),
                                 ("mote int4 g128", "ORT MatMulNBits 4-bit b128"),
                                 ("mote int4 g128 il16", "ORT MatMulNBits 4-bit b128"),
                                 ("mote int4 g128 il16", "mote int4 g128"),
                                 ("mote int8 g128 il16", "mote int8 g128")]:
                for o in (ours, ours + HUGE_SUFFIX):
                    if (shape, o) not in by or (shape, theirs) not in by:
                        continue
                    a, b = by[(shape, o)], by[(shape, theirs)]
                    print(f"  {shape:24s} {o} / {theirs}: {a['gemv_Gwps'] / b['gemv_Gwps']:.2f}x / "
                          f"{a['gemm64_GMACps'] / b['gemm64_GMACps']:.2f}x")



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, help="(internal) run one thread count in this process")
    ap.add_argument("--family", default="mote", help="(internal) mote | numpy | ort")
    ap.add_argument("--pages", choices=("4k", "huge", "both"), default="both",
                    help="where our weight copies (and the bandwidth probe) live: ordinary 4 KiB pages, "
                         "transparent huge pages as the runtime uses them, or both side by side (default)")
    ap.add_argument("--quick", action="store_true", help="only the 1536->8960 shape, fewer bandwidth runs")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only the kernels whose name "
                                               "contains one (e.g. 'ternary,2-bit'); default all")
    ap.add_argument("--max-threads", type=int, default=2, choices=(1, 2), help="1: skip the 2-thread tables")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "kernels.json"))
    args = ap.parse_args()
    global ONLY
    ONLY = [o for o in args.only.split(",") if o] or [""]
    if args.threads:
        print(json.dumps(bench_one(args.threads, args.quick, args.family, args.pages)))
        return
    # one child process per (threads, family, pages): thread pools that spin after a call (OpenBLAS,
    # ORT, ours) would otherwise steal the second core from each other. onnxruntime allocates its own
    # weights, so it only runs on its own memory.
    page_kinds = ("4k", "huge") if args.pages == "both" else (args.pages,)
    children = [("mote", p) for p in page_kinds] + [("numpy", page_kinds[0]), ("ort", "4k")]
    children = [c for c in children if c[0] == "mote" or any(  # the mote child always runs: it probes DRAM
        family(k) == c[0] and selected(k) for k in KERNELS)]
    results = []
    for th in range(1, args.max_threads + 1):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(th), "OMP_NUM_THREADS": str(th), "MKL_NUM_THREADS": str(th)}
        runs = {}
        for fam, pages in children:
            cmd = [sys.executable, __file__, "--threads", str(th), "--family", fam, "--pages", pages, "--only", args.only]
            out = subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
            runs[(fam, pages)] = json.loads(out.strip().splitlines()[-1])
        # % of DRAM against the probe on the same kind of pages, measured by our own child (numpy
        # and onnxruntime against the 4 KiB-page probe)
        dram = {pages: runs[("mote", pages)]["dram_GBps"] for pages in page_kinds}
        rows = []
        for (fam, pages), res in runs.items():
            for row in res["rows"]:
                probe = dram[pages] if fam == "mote" else dram[page_kinds[0]]
                row["gemv_pct_dram"] = 100 * row["gemv_GBps"] / probe
                row["kernel"] += HUGE_SUFFIX if pages == "huge" else ""
                rows.append(row)
        order = {(r[0], k): i for i, (r, k) in enumerate(
            (r, k) for r in SHAPES for k in sorted([*KERNELS, *(k + HUGE_SUFFIX for k in KERNELS)], key=_kernel_rank))}
        rows.sort(key=lambda row: order[(row["shape"], row["kernel"])])
        first = runs[children[0]]
        results.append({"threads": th, "loadavg_before": first["loadavg_before"], "dram_GBps": dram[page_kinds[0]],
                         "dram_huge_GBps": dram.get("huge"), "rows": rows})
    from mote_edge import _native
    meta = {"kernel_path": _native.kernel_path(), "cpu": _native.cpu_features(), "gemm_tokens": GEMM_TOKENS,
            "cold_bytes": COLD_BYTES, "results": results}
    report(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=1))
    print(f"\nwrote {args.out}")


def _kernel_rank(name: str) -> tuple[int, int]:
    """Table order: KERNELS order, each huge-page row right after its 4 KiB row."""
    base = name.removesuffix(HUGE_SUFFIX)
    return list(KERNELS).index(base), name.endswith(HUGE_SUFFIX)


if __name__ == "__main__":
    main()
