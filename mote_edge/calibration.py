"""Calibration data: prompts (+ images) that a model is run on to fit something to its activations (GPTQ's
Hessians at export, `mote-edge fit-lookahead`'s lookahead predictors).

A .jsonl file, one {"prompt": "...", "image": "path"} per line (image optional, relative to the file), or
the built-in set (rendered shapes + questions, deterministic).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mote_edge.errors import CalibrationError
from mote_edge.image import load_image

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
QUESTIONS = ("What color is the {shape}?", "How many shapes are there?", "Where is the {color} {shape}?",
             "Is there a {color} {shape}?", "Describe the image.")


def builtin_samples(n: int, seed: int = 0) -> list[tuple[str, "object"]]:
    """n (prompt, PIL image) pairs: one or two coloured circles/squares on a white canvas."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = Image.new("RGB", (96, 96), "white")
        draw = ImageDraw.Draw(img)
        color, shape = list(COLORS)[i % len(COLORS)], ("circle", "square")[(i // 4) % 2]
        for _ in range(1 + i % 2):
            x, y = (int(v) for v in rng.integers(0, 60, 2))
            box = (x, y, x + 30, y + 30)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
        out.append((QUESTIONS[i % len(QUESTIONS)].format(shape=shape, color=color), img))
    return out


def file_samples(path: Path, n: int) -> list[tuple[str, object]]:
    """The first n (prompt, PIL image or None) samples of a .jsonl calibration file."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"cannot read calibration file {path}: {e}") from None
    samples = []
    for d in lines[:n]:
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
            raise CalibrationError(f"calibration file {path}: every line needs a \"prompt\" string")
        if d.get("image") is not None and not isinstance(d["image"], str):
            raise CalibrationError(f"calibration file {path}: \"image\" must be a path string, got {d['image']!r:.40}")
        image = load_image(path.parent / d["image"]) if d.get("image") else None
        samples.append((d["prompt"], image))
    if not samples:
        raise CalibrationError(f"calibration file {path} has no samples")
    return samples
