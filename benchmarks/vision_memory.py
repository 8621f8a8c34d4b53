"""The vision encoder's peak memory: one image encoded in its own process, peak RSS over the
process's baseline (VmHWM after a reset), next to what the memory plan reserves for it.

    python benchmarks/vision_memory.py models/q05-b4.mote /work/main/models/q05-b4.mote

For each file: a native vision section runs once through runtime/vit.py (block by block); an ONNX
section once under each onnxruntime session setting. One row per run: the section's bytes, the
measured peak, the peak / section-bytes ratio, the plan's vision peak, peak / plan and the encode time,
all measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Every encoder on one thread: onnxruntime's intra-op pool and numpy's BLAS (the native encoder's attention
# products; a multi-threaded BLAS on a busy 2-core box is 7-15x slower on these small products).
ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SETTINGS = {
    "default (arena, mem pattern)": {},
    "no arena, no mem pattern": {"release_memory": True},
    "+ model bytes used directly": {"release_memory": True, "bytes_directly": True},
    "+ no prepacking": {"release_memory": True, "bytes_directly": True, "no_prepack": True},
    "no prepacking only": {"release_memory": True, "no_prepack": True},
}


def _native_child(path: str) -> dict:
    import numpy as np

    from mote_edge.format import MoteFile
    from mote_edge.runtime.memory import read_status, reset_peak, trim_heap
    from mote_edge.runtime.plan import file_vision_cost
    from mote_edge.runtime.vit import NativeVisionEncoder

    with MoteFile(path) as f:
        size = f.config.vision.image_size
        pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        encoder = NativeVisionEncoder.from_file(f, threads=1)
        trim_heap()
        reset_peak()
        base = read_status()["VmRSS"]
        t0 = time.perf_counter()
        out = encoder.encode(pixels)
        ms = 1e3 * (time.perf_counter() - t0)
        peak = read_status()["VmHWM"] - base
        return {"model_bytes": f.vision.nbytes, "peak_bytes": peak, "after_session_bytes": 0, "ms": ms,
                "plan_bytes": file_vision_cost(f).peak_bytes, "checksum": float(np.abs(out).sum())}


def _child(path: str, setting: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    from mote_edge.format import MoteFile
    from mote_edge.runtime.memory import read_status, reset_peak, trim_heap
    from mote_edge.runtime.plan import file_vision_cost
    from mote_edge.format.constants import VISION_INPUT, VISION_OUTPUT

    with MoteFile(path) as f:
        plan = file_vision_cost(f).peak_bytes
        size = f.config.vision.image_size
        pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
        trim_heap()
        reset_peak()
        base = read_status()["VmRSS"]
        t0 = time.perf_counter()
        blob = f.read_vision()
        nbytes = len(blob)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        if setting.get("release_memory"):
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        if setting.get("bytes_directly"):
            options.add_session_config_entry("session.use_ort_model_bytes_directly", "1")
        if setting.get("no_prepack"):
            options.add_session_config_entry("session.disable_prepacking", "1")
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        after_session = read_status()["VmRSS"] - base
        out = session.run([VISION_OUTPUT], {VISION_INPUT: pixels})[0]
        ms = 1e3 * (time.perf_counter() - t0)
        peak = read_status()["VmHWM"] - base
    return {"model_bytes": nbytes, "peak_bytes": peak, "after_session_bytes": after_session, "ms": ms,
            "plan_bytes": plan, "checksum": float(np.abs(out).sum())}


def _format_of(path: str) -> str:
    from mote_edge.format import MoteFile

    with MoteFile(path) as f:
        if f.vision is None:
            raise SystemExit(f"{path} has no vision section")
        return f.vision.format


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help=".mote files with a vision section (native or ONNX)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        setting = json.loads(args.child)
        result = _native_child(args.models[0]) if setting.get("native") else _child(args.models[0], setting)
        print(json.dumps(result))
        return
    print(f"{'section / setting':<40}{'MB':>8}{'peak MB':>10}{'peak/MB':>9}{'plan MB':>9}{'peak/plan':>11}{'ms':>8}")
    for model in args.models:
        runs = {"native (block by block)": {"native": True}} if _format_of(model) == "native" else SETTINGS
        for name, setting in runs.items():
            r = subprocess.run([sys.executable, __file__, model, "--child", json.dumps(setting)],
                               capture_output=True, text=True, timeout=600, check=True, env=ONE_THREAD)
            d = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{name:<40}{d['model_bytes'] / 1e6:>8.1f}{d['peak_bytes'] / 1e6:>10.1f}"
                  f"{d['peak_bytes'] / d['model_bytes']:>9.2f}{d['plan_bytes'] / 1e6:>9.1f}"
                  f"{d['peak_bytes'] / d['plan_bytes']:>11.2f}{d['ms']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
