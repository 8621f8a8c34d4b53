"""GPTQ calibration: run the float reference model on prompts (+ images) and collect, for every
linear layer the recipe quantizes with GPTQ, the Hessian H = 2 X^T X / T of its inputs.

Calibration data: mote_edge/calibration.py (a .jsonl file of {"prompt", "image"}, or the built-in set).
Memory: the float model plus one K x K float32 matrix per distinct linear input (q/k/v share one,
gate/up share one). A layer-by-layer pass would bound this; not needed at the sizes we ship.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mote_edge.calibration import builtin_samples, file_samples
from mote_edge.chat import encode_prompt
from mote_edge.image import load_image, preprocess
from mote_edge.progress import byte_progress
from mote_edge.quant.recipe import Recipe
from mote_edge.schema import checkpoint_tensors

from .checkpoint import Checkpoint

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
