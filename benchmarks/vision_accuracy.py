"""How close each stored vision tower runs to the float32 torch reference: the native section at
each int8 group size and at fp16 / fp32, and (with --onnx-mote) the int8 ONNX section of an
existing .mote file of the same checkpoint through onnxruntime. Also the encode time of each.

    python benchmarks/vision_accuracy.py /work/main/models/q05-ckpt --onnx-mote /work/main/models/q05-b4.mote

Inputs: the example images preprocessed as the runtime does, plus two random-normal pixel tensors.
Columns: relative error = max |y - ref| / max |ref| over an image's [P, H] features (worst image),
the smallest per-patch cosine, the section's bytes and the encode time (1 thread, median of the images).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # 1 thread for every encoder, BLAS included (before numpy loads)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _images(cfg, ckpt) -> list[np.ndarray]:
    from mote_edge.image import load_image, preprocess

    image_cfg = ckpt.image_config()
    pixels = [preprocess(load_image(p), image_cfg) for p in sorted((REPO / "examples" / "images").glob("*.png"))[:4]]
    s = cfg.vision.image_size
    rng = np.random.default_rng(0)
    pixels += [rng.standard_normal((3, s, s)).astype(np.float32) for _ in range(2)]
    return pixels


def _reference(ckpt, pixels: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    from mote_edge.exporters.export import vision_reference

    torch.set_num_threads(1)
    model = vision_reference(ckpt)
    with torch.no_grad():
        return [model.model.mm_projector(model.model.vision_tower(torch.from_numpy(p[None])))[0].numpy()
                for p in pixels]


def _native(ckpt, bits: int, group: int):
    """(section bytes, encode(pixels) -> features) of a native section built in memory."""
    from mote_edge.format.reader import parse_parts
    from mote_edge.format.vision_blocks import build_vision_section
    from mote_edge.runtime.vit import run_vision_blocks

    data, blocks = build_vision_section(ckpt.config, bits, group, ckpt.tensor)

    def encode(pixels: np.ndarray) -> np.ndarray:
        stream = ((b, {t.name: parse_parts(t, data, b.offset + t.offset) for t in b.tensors}) for b in blocks)
        return run_vision_blocks(ckpt.config, pixels, stream, threads=1)

    return len(data), encode


def _onnx(path: str):
    from mote_edge.format import MoteFile
    from mote_edge.runtime.vision import run_vision_onnx

    with MoteFile(path) as f:
        if f.vision is None or f.vision.format != "onnx":
            raise SystemExit(f"{path} has no ONNX vision section")
        blob = f.read_vision()
    return len(blob), lambda pixels: run_vision_onnx(blob, pixels[None])[0]


def _row(name: str, nbytes: int, encode, pixels, refs) -> str:
    errs, coss, times = [], [], []
    for p, ref in zip(pixels, refs):
        t0 = time.perf_counter()
        y = encode(p)
        times.append(time.perf_counter() - t0)
        errs.append(float(np.abs(y - ref).max() / np.abs(ref).max()))
        cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
        coss.append(float(cos.min()))
    return f"{name:<34}{nbytes / 1e6:>9.1f}{max(errs):>12.2e}{min(coss):>12.6f}{1e3 * float(np.median(times)):>10.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint directory")
    ap.add_argument("--onnx-mote", help="a .mote file of the same checkpoint with an ONNX vision section")
    ap.add_argument("--groups", default="32,64,128", help="int8 group sizes of the native section")
    args = ap.parse_args()

    from mote_edge.exporters.checkpoint import Checkpoint

    ckpt = Checkpoint.open(args.checkpoint)
    pixels = _images(ckpt.config, ckpt)
    refs = _reference(ckpt, pixels)
    print(f"{'vision section':<34}{'MB':>9}{'rel. err':>12}{'min cos':>12}{'ms':>10}")
    variants = [(f"native int8 g{g}", 8, int(g)) for g in args.groups.split(",")]
    variants += [("native fp16", 16, 32), ("native fp32", 32, 32)]
    for name, bits, group in variants:
        print(_row(name, *_native(ckpt, bits, group), pixels, refs), flush=True)
    if args.onnx_mote:
        print(_row("onnx int8 (MatMulNBits b128)", *_onnx(args.onnx_mote), pixels, refs), flush=True)


if __name__ == "__main__":
    main()
