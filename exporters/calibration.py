"""GPTQ calibration: run the float reference model on prompts (+ images) and collect, for every
linear layer the recipe quantizes with GPTQ, the Hessian H = 2 X^T X / T of its inputs.

Calibration data: a .jsonl file, one {"prompt": "...", "image": "path"} per line (image optional,
relative to the file), or the built-in set (rendered shapes + questions, deterministic).
Memory: the float model plus one K x K float32 matrix per distinct linear input (q/k/v share one,
gate/up share one). A layer-by-layer pass would bound this; not needed at the sizes we ship.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mote_edge.chat import encode_prompt
from mote_edge.errors import ExportError
from mote_edge.image import load_image, preprocess
from mote_edge.progress import byte_progress
from mote_edge.quant.recipe import Recipe
from mote_edge.schema import checkpoint_tensors

from .checkpoint import Checkpoint

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
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"cannot read calibration file {path}: {e}") from None
    samples = []
    for d in lines[:n]:
        if not isinstance(d, dict) or "prompt" not in d:
            raise ExportError(f"calibration file {path}: every line needs a \"prompt\"")
        image = load_image(path.parent / d["image"]) if d.get("image") else None
        samples.append((d["prompt"], image))
    if not samples:
        raise ExportError(f"calibration file {path} has no samples")
    return samples


def _input_key(name: str) -> str:
    """Linear layers that read the same input share one Hessian."""
    for group, members in (("qkv", ("q_proj", "k_proj", "v_proj")), ("gate_up", ("gate_proj", "up_proj"))):
        for m in members:
            if name.endswith(f".{m}.weight"):
                return name[: -len(f"{m}.weight")] + group
    return name


def collect_hessians(ckpt: Checkpoint, recipe: Recipe, calib: Path | None, samples: int,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """tensor name -> H [K, K] float64 for every GPTQ-quantized linear weight that saw tokens."""
    import torch

    from .reference import load_reference_model

    model = load_reference_model(ckpt)
    gptq_roles = recipe.gptq_roles() - {"embed"}  # an embedding is a lookup: no input Hessian
    wanted = {s.name for s in checkpoint_tensors(ckpt.config) if s.role in gptq_roles}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    seen: dict[str, int] = {}  # input key -> the forward step that last added it
    hooks = []
    for module_name, module in model.named_modules():
        name = f"{module_name}.weight"
        if isinstance(module, torch.nn.Linear) and name in wanted:
            key = _input_key(name)

            def hook(mod, args, out, key=key):
                if seen.get(key) == hook_step[0]:
                    return  # q/k/v (gate/up) share the input: count it once per forward
                seen[key] = hook_step[0]
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                sums[key] = sums.get(key, 0) + 2.0 * (x.T @ x)
                counts[key] = counts.get(key, 0) + x.shape[0]

            hooks.append(module.register_forward_hook(hook))
    hook_step = [0]
    data = file_samples(calib, samples) if calib is not None else builtin_samples(samples)
    tok, image_cfg = ckpt.tokenizer(), ckpt.image_config()
    with torch.no_grad(), byte_progress("calibrating", len(data), progress) as bar:
        for prompt, image in data:
            hook_step[0] += 1
            ids = encode_prompt(tok, prompt, has_image=image is not None)
            pixels = None if image is None else torch.from_numpy(preprocess(image, image_cfg))[None]
            model.forward_embeds(model.embed(torch.tensor(ids), pixels)[None])
            bar.advance(1)
    for h in hooks:
        h.remove()
    return {name: (sums[_input_key(name)] / counts[_input_key(name)]).double().numpy()
            for name in wanted if _input_key(name) in sums}
