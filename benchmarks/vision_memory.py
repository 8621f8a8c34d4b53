"""Where the vision encoder's peak memory goes: one image encoded under each onnxruntime session
setting, each in its own process, peak RSS over the process's baseline (VmHWM after a reset).

    python benchmarks/vision_memory.py models/q05-b4.mote

Prints one row per setting: the model bytes, the measured peak, the peak / model-bytes ratio and the
encode time, all measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SETTINGS = {
    "default (arena, mem pattern)": {},
    "no arena, no mem pattern": {"release_memory": True},
    "+ model bytes used directly": {"release_memory": True, "bytes_directly": True},
    "+ no prepacking": {"release_memory": True, "bytes_directly": True, "no_prepack": True},
    "no prepacking only": {"release_memory": True, "no_prepack": True},
}


def _child(path: str, setting: dict) -> dict:
    import numpy as np
    import onnxruntime as ort

    from mote_edge.format import MoteFile
    from mote_edge.runtime.memory import read_status, reset_peak, trim_heap
    from mote_edge.format.constants import VISION_INPUT, VISION_OUTPUT

    with MoteFile(path) as f:
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
            "checksum": float(np.abs(out).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .mote file with a vision section")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.model, json.loads(args.child))))
        return
    print(f"{'setting':<32}{'model MB':>10}{'peak MB':>10}{'peak/model':>12}{'session MB':>12}{'ms':>8}")
    ref = None
    for name, setting in SETTINGS.items():
        r = subprocess.run([sys.executable, __file__, args.model, "--child", json.dumps(setting)],
                           capture_output=True, text=True, timeout=600, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        ref = d["checksum"] if ref is None else ref
        same = "" if abs(d["checksum"] - ref) <= 1e-3 * abs(ref) else "  (output differs!)"
        print(f"{name:<32}{d['model_bytes'] / 1e6:>10.1f}{d['peak_bytes'] / 1e6:>10.1f}"
              f"{d['peak_bytes'] / d['model_bytes']:>12.2f}{d['after_session_bytes'] / 1e6:>12.1f}{d['ms']:>8.0f}{same}")


if __name__ == "__main__":
    main()
