"""Does a checkpoint's image tokens carry where each patch is? A linear probe.

    python -m mote_edge.training.probe CKPT_DIR [-n 400]

Encodes n held-out images with the torch reference model (vision tower + projector: exactly the
tokens the decoder sees), fits a least-squares linear map from each image token to its patch's
column and row on half of the tokens, and prints R^2 on the other half. Near 0: the tokens do not
say where they are, so the decoder can only place an object through RoPE (which patch it attends
to), not read a location out of the token it found (docs/ACCURACY.md, the position plateau).
"""

from __future__ import annotations

import argparse

import numpy as np

from .data import heldout_seeds, make_example


def position_r2(ckpt_dir: str, n: int = 400) -> dict[str, float]:
    import torch

    from mote_edge.exporters.checkpoint import Checkpoint
    from mote_edge.exporters.reference import load_reference_model
    from mote_edge.image import preprocess

    torch.set_num_threads(2)
    ckpt = Checkpoint.open(ckpt_dir)
    cfg = ckpt.image_config()
    model = load_reference_model(ckpt).eval()
    pixels = np.stack([preprocess(make_example(s).image, cfg) for s in heldout_seeds(n)])  # [n, 3, S, S]
    with torch.no_grad():
        tokens = model.encode_image(torch.from_numpy(pixels)).numpy()  # [n, P, H]
    b, p, h = tokens.shape
    grid = int(round(p ** 0.5))
    x = np.hstack([tokens.reshape(b * p, h), np.ones((b * p, 1))])  # [n P, H + 1]
    patch = np.tile(np.arange(p), b)
    half = b // 2 * p  # fit on the first half of the images, score on the rest
    out = {}
    for name, y in (("column", patch % grid), ("row", patch // grid)):
        w, *_ = np.linalg.lstsq(x[:half], y[:half].astype(np.float64), rcond=None)
        resid = x[half:] @ w - y[half:]
        out[name] = float(1 - (resid ** 2).sum() / ((y[half:] - y[half:].mean()) ** 2).sum())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("-n", type=int, default=400, help="held-out images to encode")
    args = ap.parse_args(argv)
    r2 = position_r2(args.ckpt, args.n)
    print(f"linear probe of image tokens -> patch position, held-out R^2: column {r2['column']:.3f}, row {r2['row']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
