"""The memory plan: what a run of a .mote model needs, item by item (DESIGN.md section 5).

    resident weights      every non-expert tensor, as stored
    KV cache              layers x 2 x kv_heads x head_dim x context x 4 bytes (fp32)
    scratch               activations of a prefill of `context` tokens (attention in query
                          chunks) + logits
    vision peak           the ONNX vision session while an image is encoded (weights + activations)
    expert cache          slabs x the largest expert record

The minimum feasible budget holds top_k slabs (one decode step of one MoE layer); the full plan
caches every expert. Pure arithmetic over the file's directory: no allocation happens here.
"""

from __future__ import annotations

from dataclasses import dataclass

from mote_edge.config import ModelConfig

ATTN_QUERY_CHUNK = 64
VISION_ACTIVATION_FACTOR = 12  # live [P, D] float32 buffers at a ViT block's peak (qkv, scores, mlp)


@dataclass
class MemoryPlan:
    context: int
    resident_bytes: int
    kv_cache_bytes: int
    scratch_bytes: int
    vision_peak_bytes: int
    expert_slab_bytes: int
    expert_slabs: int
    total_experts: int

    @property
    def expert_cache_bytes(self) -> int:
        return self.expert_slab_bytes * self.expert_slabs

    @property
    def total_bytes(self) -> int:
        return (self.resident_bytes + self.kv_cache_bytes + self.scratch_bytes + self.vision_peak_bytes
                + self.expert_cache_bytes)

    def breakdown(self) -> dict[str, int]:
        return {"resident weights": self.resident_bytes, "KV cache": self.kv_cache_bytes,
                "scratch": self.scratch_bytes, "vision peak": self.vision_peak_bytes,
                f"expert cache ({self.expert_slabs} slabs)": self.expert_cache_bytes}


def kv_cache_bytes(cfg: ModelConfig, context: int) -> int:
    dc = cfg.decoder
    return dc.num_hidden_layers * 2 * dc.num_key_value_heads * dc.head_dim * context * 4


def scratch_bytes(cfg: ModelConfig, context: int) -> int:
    dc = cfg.decoder
    per_token = 4 * dc.hidden_size + 3 * dc.intermediate_size + dc.head_dim * (dc.num_attention_heads + 2 * dc.num_key_value_heads)
    scores = dc.num_attention_heads * ATTN_QUERY_CHUNK * context
    return 4 * (context * per_token + scores + dc.vocab_size)


def vision_peak_bytes(cfg: ModelConfig, vision_bytes: int) -> int:
    v = cfg.vision
    tokens = v.num_patches + 1
    activations = VISION_ACTIVATION_FACTOR * tokens * max(v.intermediate_size, v.hidden_size) * 4
    scores = v.num_attention_heads * tokens * tokens * 4
    return vision_bytes + activations + scores if vision_bytes else 0


def plan(cfg: ModelConfig, sizes: dict, context: int, expert_slabs: int | None = None) -> MemoryPlan:
    """`sizes` is the file's size statistics; expert_slabs None = every expert cached."""
    total_experts = sizes["num_expert_records"]
    slabs = total_experts if expert_slabs is None else min(expert_slabs, total_experts)
    return MemoryPlan(context=context, resident_bytes=sizes["resident_bytes"],
                      kv_cache_bytes=kv_cache_bytes(cfg, context), scratch_bytes=scratch_bytes(cfg, context),
                      vision_peak_bytes=vision_peak_bytes(cfg, sizes["vision_bytes"]),
                      expert_slab_bytes=sizes["expert_record_max_bytes"], expert_slabs=slabs,
                      total_experts=total_experts)


def minimum_slabs(cfg: ModelConfig) -> int:
    return cfg.moe.top_k_experts if cfg.moe_layers else 0


def default_context(cfg: ModelConfig) -> int:
    return min(cfg.decoder.max_position_embeddings, 4096)
