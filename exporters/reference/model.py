"""MoTE-LLaVA in torch: vision tower -> projector -> Qwen2 decoder with MoE layers.

Module names mirror the checkpoint keys (mote_edge.schema), so `named_parameters()` of this model
is exactly the checkpoint's tensor list. All maths in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mote_edge.config import ModelConfig
from mote_edge.errors import CheckpointError
from mote_edge.schema import checkpoint_tensors

from .layers import Attention, KVCache, RMSNorm, SwiGLU, rope_cos_sin
from .moe import MoELayer
from .vision import VisionTower, build_projector


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        dc = cfg.decoder
        self.input_layernorm = RMSNorm(dc.hidden_size, dc.rms_norm_eps)
        self.self_attn = Attention(dc, layer)
        self.post_attention_layernorm = RMSNorm(dc.hidden_size, dc.rms_norm_eps)
        self.mlp = MoELayer(cfg, layer) if cfg.is_moe_layer(layer) else SwiGLU(dc.hidden_size, dc.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class MoTELlavaModel(nn.Module):
    """`model.*`: embeddings, decoder layers, final norm, vision tower and projector."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dc = cfg.decoder
        self.embed_tokens = nn.Embedding(dc.vocab_size, dc.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(dc.num_hidden_layers))
        self.norm = RMSNorm(dc.hidden_size, dc.rms_norm_eps)
        self.vision_tower = VisionTower(cfg)
        self.mm_projector = build_projector(cfg)


class MoTELlavaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = MoTELlavaModel(cfg)
        self.lm_head = nn.Linear(cfg.decoder.hidden_size, cfg.decoder.vocab_size, bias=False)
        if cfg.decoder.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ------------------------------------------------------------------ weights
    def checkpoint_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters by checkpoint key (the tied lm_head is not a separate tensor)."""
        params = dict(self.named_parameters(remove_duplicate=True))
        if self.config.decoder.tie_word_embeddings:
            params.pop("lm_head.weight", None)
        return params

    @torch.no_grad()
    def load_tensors(self, get: Callable[[str], np.ndarray]) -> None:
        """Copy every schema tensor from `get(name)` (float32 numpy) into the model."""
        params = self.checkpoint_parameters()
        for spec in checkpoint_tensors(self.config):
            if spec.name not in params:
                raise CheckpointError(f"reference model has no parameter for tensor {spec.name}")
            value = torch.from_numpy(np.ascontiguousarray(get(spec.name), dtype=np.float32))
            if tuple(value.shape) != tuple(params[spec.name].shape):
                raise CheckpointError(f"tensor {spec.name} has shape {list(value.shape)}, "
                                      f"expected {list(params[spec.name].shape)}")
            params[spec.name].copy_(value)

    def named_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """The model's tensors as float32 numpy, in checkpoint order (for saving)."""
        params = self.checkpoint_parameters()
        for spec in checkpoint_tensors(self.config):
            yield spec.name, params[spec.name].detach().float().numpy()

    # ------------------------------------------------------------------ forward
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> projected patch embeddings [B, P, H]."""
        return self.model.mm_projector(self.model.vision_tower(pixels))

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """One sequence: ids [T] (LLaVA's image_token_index marks the image) -> embeddings [T', H].

        The placeholder is replaced by the image's P patch embeddings, so T' = T - 1 + P.
        """
        placeholder = self.config.image_token_index
        at = (input_ids == placeholder).nonzero().flatten()
        if len(at) > 1:
            raise ValueError("at most one image placeholder per sequence is supported")
        if (len(at) == 1) != (pixels is not None):
            raise ValueError("an image needs exactly one image placeholder in the prompt, and vice versa")
        if pixels is None:
            return self.model.embed_tokens(input_ids)
        i = int(at[0])
        image = self.encode_image(pixels)[0]  # [P, H]
        text = self.model.embed_tokens(torch.cat([input_ids[:i], input_ids[i + 1:]]))
        return torch.cat([text[:i], image, text[i:]], dim=0)

    def forward_embeds(self, embeds: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """embeds [B, T, H] at positions cache.length .. + T -> logits [B, T, V]."""
        return self.lm_head(self.forward_hidden(embeds, cache))

    def forward_hidden(self, embeds: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """embeds [B, T, H] -> final-normed hidden states [B, T, H] (the lm_head's input)."""
        start = cache.length if cache is not None else 0
        positions = torch.arange(start, start + embeds.shape[1])
        dc = self.config.decoder
        cos, sin = rope_cos_sin(positions, dc.head_dim, dc.rope_theta)
        x = embeds
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache)
        return self.model.norm(x)

    def aux_loss(self) -> torch.Tensor:
        """Sum of the MoE layers' load-balancing losses from the last forward."""
        losses = [m.mlp.aux_loss for m in self.model.layers if isinstance(m.mlp, MoELayer)]
        return torch.stack(losses).sum() if losses else torch.zeros(())

    def generate(self, input_ids: list[int], pixels: torch.Tensor | None = None, max_new_tokens: int = 32,
                 eos_token_id: int | None = None) -> list[int]:
        """Greedy decoding with a KV cache; returns the new token ids (EOS excluded)."""
        return list(self.generate_tokens(input_ids, pixels, max_new_tokens, eos_token_id))

    @torch.no_grad()
    def generate_tokens(self, input_ids: list[int], pixels: torch.Tensor | None = None, max_new_tokens: int = 32,
                        eos_token_id: int | None = None) -> Iterator[int]:
        """Greedy decoding with a KV cache, yielding each new token id as it is chosen."""
        self.eval()
        cache = KVCache(self.config.decoder.num_hidden_layers)
        embeds = self.embed(torch.tensor(input_ids, dtype=torch.long), pixels)[None]  # [1, T', H]
        if embeds.shape[1] + max_new_tokens > self.config.decoder.max_position_embeddings:
            raise ValueError(f"prompt of {embeds.shape[1]} positions + {max_new_tokens} new tokens exceeds "
                             f"the context of {self.config.decoder.max_position_embeddings}")
        logits = self.forward_embeds(embeds, cache)
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            if token == eos_token_id:
                return
            yield token
            logits = self.forward_embeds(self.model.embed_tokens(torch.tensor([[token]])), cache)


def load_reference_model(checkpoint: "str | Path | Checkpoint") -> MoTELlavaForCausalLM:
    """Build the reference model from a checkpoint (directory or opened), float32, eval mode."""
    from ..checkpoint import Checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
    with torch.device("meta"):  # no random init: every parameter is loaded below
        model = MoTELlavaForCausalLM(ckpt.config)
    model = model.to_empty(device="cpu")
    if ckpt.config.decoder.tie_word_embeddings:  # to_empty breaks the tie; restore it
        model.lm_head.weight = model.model.embed_tokens.weight
    model.load_tensors(ckpt.tensor)
    return model.eval()
