"""The MoE layer of MoTE / MoE-LLaVA, with DeepSpeed-MoE's module names so keys match checkpoints.

    p = softmax(x @ Wg^T) in fp32                         [T, E]
    top-1: weight = p[e*] (the raw probability)          (DeepSpeed top1gating)
    top-2: weights = p[e1], p[e2] renormalised to sum 1  (DeepSpeed top2gating)
    y = shared(x) + sum_k weight_k * E_k(x)              (MoTE; shared = frozen dense FFN)
    use_residual (PR-MoE): y = moe * c0 + mlp(x) * c1, c = softmax(coefficient(x))

Inference never drops tokens (no capacity limit). The DeepSpeed load-balancing loss
E * sum_e(mean_prob_e * fraction_routed_e) is kept in `aux_loss` after each forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mote_edge.config import ModelConfig

from .layers import SwiGLU


class TopKGate(nn.Module):
    def __init__(self, hidden: int, num_experts: int, k: int):
        super().__init__()
        self.wg = nn.Linear(hidden, num_experts, bias=False)
        self.k = k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, H] -> (expert ids [T, k], combine weights [T, k], probs [T, E])."""
        probs = F.softmax(F.linear(x.float(), self.wg.weight.float()), dim=-1)  # [T, E]
        if self.k == 1:
            weight, idx = probs.max(dim=-1, keepdim=True)  # raw probability
            return idx, weight, probs
        top, idx = probs.topk(self.k, dim=-1)
        weight = top / top.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(top.dtype).eps)
        return idx, weight, probs


class Experts(nn.Module):
    def __init__(self, hidden: int, inter: int, num_experts: int, ternary: bool):
        super().__init__()
        self.deepspeed_experts = nn.ModuleList(SwiGLU(hidden, inter, ternary) for _ in range(num_experts))


class DeepSpeedMoE(nn.Module):
    def __init__(self, hidden: int, inter: int, num_experts: int, k: int, ternary: bool):
        super().__init__()
        self.gate = TopKGate(hidden, num_experts, k)
        self.experts = Experts(hidden, inter, num_experts, ternary)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, H] -> (routed output [T, H], aux loss, expert ids [T, k])."""
        idx, weight, probs = self.gate(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts.deepspeed_experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)  # tokens routed to e, and in which slot
            if rows.numel():
                out.index_add_(0, rows, expert(x[rows]) * weight[rows, slot, None].to(x.dtype))
        n_exp = probs.shape[-1]
        routed_fraction = F.one_hot(idx[:, 0], n_exp).float().mean(0)  # top-1 choice, as DeepSpeed
        aux = n_exp * (probs.mean(0) * routed_fraction).sum()
        return out, aux, idx


class MoELayer(nn.Module):
    """Replaces `model.layers.{i}.mlp` in an MoE layer."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        moe, dc = cfg.moe, cfg.decoder
        h, inter = dc.hidden_size, dc.intermediate_size
        self.deepspeed_moe = DeepSpeedMoE(h, inter, moe.experts_in_layer(layer), moe.top_k_experts,
                                          ternary=moe.expert_type == "ternary")
        self.shared_expert = SwiGLU(h, inter) if moe.shared_expert else None
        self.use_residual = moe.use_residual
        if moe.use_residual:
            self.mlp = SwiGLU(h, inter)
            self.coefficient = nn.Linear(h, 2)
        self.aux_loss = torch.zeros(())
        self.last_routes: torch.Tensor | None = None  # expert ids [T, k] of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, T, H]
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [B*T, H]
        out, self.aux_loss, self.last_routes = self.deepspeed_moe(flat)
        if self.use_residual:
            coef = F.softmax(self.coefficient(flat), dim=-1)  # [B*T, 2]
            out = out * coef[:, 0:1] + self.mlp(flat) * coef[:, 1:]
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        return out.reshape(shape)
