"""BitNet b1.58 maths (DESIGN.md section 3): absmean ternary weights, int8 per-token activations.

    gamma = mean|W|;  Wt = clip(round(W / (gamma + eps)), -1, 1)          eps = 1e-5
    s = 127 / max(max|x|, eps);  xq = clip(round(x * s), -128, 127)         per token (row of x)
    y = (xq @ Wt^T) * (gamma / s)

Rounding is numpy's / torch's round-half-to-even. All maths in float32.
"""

from __future__ import annotations

import numpy as np

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
ACT_QMAX = 127


def absmean_ternarize(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """w: [N, K] float -> (trits [N, K] int8 in {-1, 0, 1}, gamma float32 scale for the tensor)."""
    w = np.asarray(w, dtype=np.float32)
    gamma = np.float32(np.mean(np.abs(w), dtype=np.float64))
    trits = np.clip(np.rint(w / (gamma + np.float32(WEIGHT_EPS))), -1, 1).astype(np.int8)
    return trits, gamma


def quantize_activations_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x: [T, K] float -> (xq [T, K] int8, s [T] float32) with x ~= xq / s per token."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.maximum(np.max(np.abs(x), axis=-1), np.float32(ACT_EPS))
    s = (np.float32(ACT_QMAX) / amax).astype(np.float32)
    xq = np.clip(np.rint(x * s[..., None]), -128, 127).astype(np.int8)
    return xq, s


def bitlinear_reference(x: np.ndarray, trits: np.ndarray, gamma: np.float32) -> np.ndarray:
    """The BitLinear forward in numpy: x [T, K] float, trits [N, K] -> y [T, N] float32."""
    xq, s = quantize_activations_int8(x)
    acc = xq.astype(np.int32) @ trits.astype(np.int32).T  # [T, N] exact integer accumulators
    return acc.astype(np.float32) * (np.float32(gamma) / s)[:, None]
