"""BitLinear (BitNet b1.58): ternary absmean weights, int8 per-token activations.

The maths is mote_edge.quant.ternary's, written in torch so it can be trained:
  eval:  y = (xq @ Wt^T) * (gamma / s)       integer-valued matmul, exact in fp32 for K < 131072
  train: the same values through the straight-through estimator, so gradients reach the latent
         full-precision weight and the input as if no rounding happened.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mote_edge.quant.ternary import ACT_EPS, ACT_QMAX, WEIGHT_EPS


def ternarize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (trits [N, K] float in {-1, 0, 1}, gamma scalar): absmean quantizer."""
    gamma = w.abs().mean()
    trits = torch.clamp(torch.round(w / (gamma + WEIGHT_EPS)), -1, 1)
    return trits, gamma


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (xq [..., K] float holding int8 values, s [..., 1]) per token."""
    s = ACT_QMAX / x.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)
    xq = torch.clamp(torch.round(x * s), -128, 127)
    return xq, s


class BitLinear(nn.Linear):
    """nn.Linear whose stored weight is the latent full-precision weight (no bias)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., K] -> [..., N]
        trits, gamma = ternarize_weight(self.weight)
        xq, s = quantize_activations(x)
        if self.training:  # straight-through estimator: forward the quantized values
            w_ste = self.weight + (trits * gamma - self.weight).detach()
            x_ste = x + (xq / s - x).detach()
            return F.linear(x_ste, w_ste)
        return F.linear(xq, trits) * (gamma / s)
