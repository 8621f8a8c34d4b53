"""`mote-edge synth`: random-weight checkpoints with real shapes, written tensor by tensor.

Weights are drawn per tensor from a generator seeded by (seed, tensor index), so a tensor's
values do not depend on which others exist and the 1.5B preset never needs the model in RAM.
Initialisation mirrors the published models: linear weights N(0, 0.02) (Qwen2's
initializer_range), norms at 1, biases small, CLIP's class/position embeddings N(0, 0.02).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mote_edge.config import ModelConfig
from mote_edge.presets import preset_config
from mote_edge.schema import TensorSpec, checkpoint_tensors

from .checkpoint import CheckpointSummary, write_checkpoint

INIT_STD = 0.02


def random_tensor(spec: TensorSpec, index: int, seed: int) -> np.ndarray:
    """A deterministic random value for one schema tensor (float32)."""
    rng = np.random.default_rng([seed, index])
    leaf = spec.name.rsplit(".", 2)
    is_norm = spec.role == "norm" or "layer_norm" in spec.name or "layrnorm" in spec.name
    if is_norm and leaf[-1] == "weight":
        return (1.0 + 0.05 * rng.standard_normal(spec.shape, dtype=np.float32)).astype(np.float32)
    if leaf[-1] == "bias":
        return (0.01 * rng.standard_normal(spec.shape, dtype=np.float32)).astype(np.float32)
    out = rng.standard_normal(spec.shape, dtype=np.float32)
    out *= np.float32(INIT_STD)
    return out


def synthesize(config: ModelConfig, out_dir: str | Path, seed: int = 0, dtype: str = "bf16",
               progress: bool = True, force: bool = False) -> CheckpointSummary:
    index_of = {spec.name: i for i, spec in enumerate(checkpoint_tensors(config))}
    return write_checkpoint(out_dir, config, lambda spec: random_tensor(spec, index_of[spec.name], seed),
                            dtype=dtype, progress=progress, force=force)


def synthesize_preset(preset: str, out_dir: str | Path, expert_type: str = "ternary", seed: int = 0,
                      dtype: str = "bf16", progress: bool = True, force: bool = False) -> CheckpointSummary:
    return synthesize(preset_config(preset, expert_type), out_dir, seed=seed, dtype=dtype,
                      progress=progress, force=force)
