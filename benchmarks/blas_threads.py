"""numpy's BLAS threads as the runtime sets them (runtime/blas.py BLAS_THREADS), at the Engine's threads
and at numpy's default: prefill and the vision encoder timed side by side in one process, alternating, on
an idle and on a busy box.

    python benchmarks/blas_threads.py out/q05n.mote [--threads 1] [--positions 900] [--reps 5] [--busy 0,2]

The runtime's numpy BLAS products are the vision encoder's attention (runtime/vit.py) and, in the numpy
reference layer only (`MOTE_DECODER=numpy`), prefill attention (runtime/decoder.py: [G, C, D] x [D, S] per KV
head group) and the routers; the native layer (the default) makes no BLAS calls. Per setting of BLAS threads
(the runtime's, the Engine's threads, numpy's default = every core), one prefill of `--positions` prompt
positions through the numpy layer (text only, every expert cached) and one image encode, repeated `--reps`
times in alternation; medians. `--busy N` runs N spinning processes beside it (a box shared with other work).
Prints ms per setting and the ratio numpy's default / the runtime's setting.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGE = HERE.parent / "examples" / "images" / "task-0.png"


def spin() -> None:
    while True:
        pass


def time_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def measure(model: str, threads: int, positions: int, reps: int, settings: dict[str, int]) -> dict[str, dict]:
    from mote_edge.image import load_image, preprocess
    from mote_edge.runtime.blas import set_blas_threads
    from mote_edge.runtime.engine import Engine
    from mote_edge.runtime.vision import vision_encoder

    with Engine.load(model, threads=threads, max_context=positions + 1, vision=False) as engine:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, engine.tokenizer.vocab_size, positions)
        x = engine.decoder.embed(ids)  # [positions, H]
        pixels = preprocess(load_image(IMAGE), engine.image_config)[None] if engine.file.vision is not None else None
        encoder = vision_encoder(engine.file, threads) if pixels is not None else None

        engine.decoder.native = False  # the numpy layer: the only prefill that calls BLAS

        def prefill() -> None:
            engine.decoder.reset()
            engine.decoder.forward(x)

        runs = {"prefill, numpy": prefill}
        if encoder is not None:
            runs["image encode"] = lambda: encoder.encode(pixels)
        times: dict[str, dict[str, list[float]]] = {name: {s: [] for s in settings} for name in runs}
        for name, fn in runs.items():
            fn()  # warm: experts loaded, code paged in
            for _ in range(reps):
                for setting, n in settings.items():
                    set_blas_threads(n)
                    times[name][setting].append(time_ms(fn))
    return {name: {s: statistics.median(v) for s, v in per.items()} for name, per in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1, help="the Engine's threads")
    ap.add_argument("--positions", type=int, default=900)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--busy", default="0,2", help="spinning processes beside the run, comma separated settings")
    args = ap.parse_args()
    from mote_edge.runtime.blas import BLAS_THREADS, blas_threads

    default = blas_threads()
    if default is None:
        raise SystemExit("numpy's BLAS is not an OpenBLAS this runtime can set (nothing to compare)")
    settings = {f"BLAS {n}": n for n in sorted({BLAS_THREADS, args.threads, default})}
    cap, free = f"BLAS {BLAS_THREADS}", f"BLAS {default}"
    print(f"CPU: {os.cpu_count()} cores; Engine threads {args.threads}, the runtime's BLAS threads {BLAS_THREADS}, "
          f"numpy's default {default}; {args.positions} prefill positions; medians of {args.reps}")
    print(f"{'busy':>5}  {'run':<16}" + "".join(f"{s:>12}" for s in settings) + f"{'default / runtime':>19}")
    for busy in (int(b) for b in args.busy.split(",")):
        spinners = [mp.Process(target=spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            result = measure(args.model, args.threads, args.positions, args.reps, settings)
        finally:
            for p in spinners:
                p.terminate()
                p.join()
        for name, per in result.items():
            print(f"{busy:>5}  {name:<16}" + "".join(f"{v:>9.1f} ms" for v in per.values())
                  + f"{per[free] / per[cap]:>18.2f}x", flush=True)


if __name__ == "__main__":
    main()
