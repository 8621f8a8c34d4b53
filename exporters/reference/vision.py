"""CLIP-style vision tower (transformers' CLIPVisionModel names) and LLaVA's projector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mote_edge.config import ModelConfig, VisionConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPEmbeddings(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(v.hidden_size))
        self.patch_embedding = nn.Conv2d(v.num_channels, v.hidden_size, v.patch_size, stride=v.patch_size, bias=False)
        self.position_embedding = nn.Embedding(v.num_patches + 1, v.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, C, S, S] -> [B, 1 + P, D]
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [B, P, D]
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight[None]


class CLIPAttention(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        d = v.hidden_size
        self.heads, self.head_dim = v.num_attention_heads, v.head_dim
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, h, N, hd]
        q, k, v = split(self.q_proj(x) * self.head_dim ** -0.5), split(self.k_proj(x)), split(self.v_proj(x))
        out = (q @ k.transpose(-1, -2)).softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(v.hidden_size, v.intermediate_size)
        self.fc2 = nn.Linear(v.intermediate_size, v.hidden_size)
        self.act = quick_gelu if v.hidden_act == "quick_gelu" else F.gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.self_attn = CLIPAttention(v)
        self.layer_norm2 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.mlp = CLIPMLP(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(v) for _ in range(v.num_hidden_layers))


class CLIPVisionTransformer(nn.Module):
    def __init__(self, v: VisionConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(v)
        self.pre_layrnorm = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)  # sic, as transformers
        self.encoder = CLIPEncoder(v)

    def hidden_state(self, pixels: torch.Tensor, index: int) -> torch.Tensor:
        """hidden_states[index] of CLIPVisionModel(output_hidden_states=True): 0 = embeddings."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers[:index]:
            x = layer(x)
        return x


class VisionTower(nn.Module):
    """`model.vision_tower`: picks LLaVA's feature (select_layer, select_feature)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vision_model = CLIPVisionTransformer(cfg.vision)
        self.layers_used = cfg.projector.vision_layers_used(cfg.vision)
        self.drop_cls = cfg.projector.select_feature == "patch"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, P, Dv]
        feats = self.vision_model.hidden_state(pixels, self.layers_used)
        return feats[:, 1:] if self.drop_cls else feats


def build_projector(cfg: ModelConfig) -> nn.Module:
    """`model.mm_projector`: mlp2x_gelu = Linear -> GELU -> Linear (keys .0 and .2)."""
    v, h = cfg.vision.hidden_size, cfg.decoder.hidden_size
    if cfg.projector.projector_type == "linear":
        return nn.Linear(v, h)
    return nn.Sequential(nn.Linear(v, h), nn.GELU(), nn.Linear(h, h))
