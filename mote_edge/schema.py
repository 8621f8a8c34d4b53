"""The checkpoint tensor schema: every tensor name, its shape and its role, from a ModelConfig.

One place for the key names of DESIGN.md section 3 (Qwen2 + CLIPVisionModel + LLaVA projector +
MoE-LLaVA's DeepSpeed MoE + MoTE's shared expert). The synthesizer writes exactly these tensors,
the checkpoint loader checks them, the reference model loads them and the exporter assigns a
quantization scheme by `role`.

Roles:
  embed, lm_head            token embedding / output head
  attn, attn_bias           decoder q/k/v/o projections and the q/k/v biases
  norm                      RMSNorm weights of the decoder
  ffn                       dense SwiGLU FFN of a non-MoE layer
  shared_expert             MoTE's frozen pre-trained FFN in an MoE layer
  ternary_expert, fp_expert routed experts (latent weights for ternary ones)
  router                    the gate `wg` of an MoE layer
  residual_mlp, residual_coef   MoE-LLaVA `use_residual` (PR-MoE) dense branch and its mixer
  vision, projector         CLIP vision tower and the mm projector
  lookahead                 a fitted lookahead predictor (not in checkpoints: `mote-edge fit-lookahead`
                            adds them to a .mote file; lookahead_tensors)
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from mote_edge.config import ModelConfig

VISION_PREFIX = "model.vision_tower.vision_model."
# Where LLaVA-family checkpoints keep the CLIPVisionModel: a wrapper module's prefix, then the
# CLIPVisionModel's own keys (with "vision_model." as transformers 4 saves them, or without).
VISION_TOWER_PREFIXES = (
    "model.vision_tower.vision_tower.",  # LLaVA's CLIPVisionTower wrapper
    "model.image_tower.image_tower.",  # MoE-LLaVA's image tower wrapper
    "model.vision_tower.",  # this project's own checkpoints
    "",  # a CLIPVisionModel / CLIPModel directory of its own (`export --vision-tower DIR`)
)
CLIP_VISION_LEVEL = "vision_model."
CLIP_VISION_ROOTS = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
# MoE-LLaVA builds its projector as `mm_projector.image_spatial_proj` (moellava/model/multimodal_projector/builder.py).
PROJECTOR_PREFIX = "model.mm_projector."
PROJECTOR_PREFIX_ALIASES = ("model.mm_projector.image_spatial_proj.",)
SWIGLU_PROJS = ("gate_proj", "up_proj", "down_proj")
VISION_ROLES = ("vision", "projector")  # exported to the ONNX vision section, not stored as tensors
LOOKAHEAD_ROLE = "lookahead"
MAX_LOOKAHEAD_DEPTH = 4  # MoE layers ahead a stored predictor may look (the runtime traces 4)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    role: str
    layer: int | None = None  # decoder layer (or vision block) index
    expert: int | None = None  # routed expert index

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def swiglu_shapes(hidden: int, inter: int) -> dict[str, tuple[int, int]]:
    """nn.Linear weight shapes [out, in] of a SwiGLU FFN: down(silu(gate(x)) * up(x))."""
    return {"gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}


def projection_of(name: str) -> str:
    """"model.layers.0.mlp.deepspeed_moe.experts.deepspeed_experts.3.up_proj.weight" -> "up_proj"."""
    return name.rsplit(".", 2)[-2]


def expert_prefix(layer: int, expert: int) -> str:
    return f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.{expert}."


def router_name(layer: int) -> str:
    return f"model.layers.{layer}.mlp.deepspeed_moe.gate.wg.weight"


def vision_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    v = cfg.vision
    p = VISION_PREFIX
    d, c = v.hidden_size, v.num_channels
    out = [
        TensorSpec(p + "embeddings.class_embedding", (d,), "vision"),
        TensorSpec(p + "embeddings.patch_embedding.weight", (d, c, v.patch_size, v.patch_size), "vision"),
        TensorSpec(p + "embeddings.position_embedding.weight", (v.num_patches + 1, d), "vision"),
        TensorSpec(p + "pre_layrnorm.weight", (d,), "vision"),  # sic: transformers' spelling
        TensorSpec(p + "pre_layrnorm.bias", (d,), "vision"),
    ]
    for j in range(v.num_hidden_layers):
        b = f"{p}encoder.layers.{j}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out.append(TensorSpec(f"{b}self_attn.{proj}.weight", (d, d), "vision", layer=j))
            out.append(TensorSpec(f"{b}self_attn.{proj}.bias", (d,), "vision", layer=j))
        for ln in ("layer_norm1", "layer_norm2"):
            out.append(TensorSpec(f"{b}{ln}.weight", (d,), "vision", layer=j))
            out.append(TensorSpec(f"{b}{ln}.bias", (d,), "vision", layer=j))
        out.append(TensorSpec(f"{b}mlp.fc1.weight", (v.intermediate_size, d), "vision", layer=j))
        out.append(TensorSpec(f"{b}mlp.fc1.bias", (v.intermediate_size,), "vision", layer=j))
        out.append(TensorSpec(f"{b}mlp.fc2.weight", (d, v.intermediate_size), "vision", layer=j))
        out.append(TensorSpec(f"{b}mlp.fc2.bias", (d,), "vision", layer=j))
    # post_layernorm is not listed: LLaVA takes a hidden state, never the pooled output.
    return out


def projector_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    h, v = cfg.decoder.hidden_size, cfg.vision.hidden_size
    if cfg.projector.projector_type == "linear":
        return [TensorSpec("model.mm_projector.weight", (h, v), "projector"),
                TensorSpec("model.mm_projector.bias", (h,), "projector")]
    return [
        TensorSpec("model.mm_projector.0.weight", (h, v), "projector"),
        TensorSpec("model.mm_projector.0.bias", (h,), "projector"),
        TensorSpec("model.mm_projector.2.weight", (h, h), "projector"),
        TensorSpec("model.mm_projector.2.bias", (h,), "projector"),
    ]


def decoder_layer_tensors(cfg: ModelConfig, i: int) -> list[TensorSpec]:
    dc = cfg.decoder
    h, hd = dc.hidden_size, dc.head_dim
    q_out, kv_out = dc.num_attention_heads * hd, dc.num_key_value_heads * hd
    b = f"model.layers.{i}."
    out = [
        TensorSpec(b + "input_layernorm.weight", (h,), "norm", layer=i),
        TensorSpec(b + "self_attn.q_proj.weight", (q_out, h), "attn", layer=i),
        TensorSpec(b + "self_attn.q_proj.bias", (q_out,), "attn_bias", layer=i),
        TensorSpec(b + "self_attn.k_proj.weight", (kv_out, h), "attn", layer=i),
        TensorSpec(b + "self_attn.k_proj.bias", (kv_out,), "attn_bias", layer=i),
        TensorSpec(b + "self_attn.v_proj.weight", (kv_out, h), "attn", layer=i),
        TensorSpec(b + "self_attn.v_proj.bias", (kv_out,), "attn_bias", layer=i),
        TensorSpec(b + "self_attn.o_proj.weight", (h, q_out), "attn", layer=i),
        TensorSpec(b + "post_attention_layernorm.weight", (h,), "norm", layer=i),
    ]
    ffn = swiglu_shapes(h, dc.intermediate_size)
    if not cfg.is_moe_layer(i):
        out += [TensorSpec(f"{b}mlp.{n}.weight", s, "ffn", layer=i) for n, s in ffn.items()]
        return out
    moe = cfg.moe
    n_exp = moe.experts_in_layer(i)
    out.append(TensorSpec(router_name(i), (n_exp, h), "router", layer=i))
    expert_role = "ternary_expert" if moe.expert_type == "ternary" else "fp_expert"
    for k in range(n_exp):
        out += [TensorSpec(f"{expert_prefix(i, k)}{n}.weight", s, expert_role, layer=i, expert=k)
                for n, s in ffn.items()]
    if moe.shared_expert:
        out += [TensorSpec(f"{b}mlp.shared_expert.{n}.weight", s, "shared_expert", layer=i)
                for n, s in ffn.items()]
    if moe.use_residual:
        out += [TensorSpec(f"{b}mlp.mlp.{n}.weight", s, "residual_mlp", layer=i) for n, s in ffn.items()]
        out.append(TensorSpec(f"{b}mlp.coefficient.weight", (2, h), "residual_coef", layer=i))
        out.append(TensorSpec(f"{b}mlp.coefficient.bias", (2,), "residual_coef", layer=i))
    return out


def decoder_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    """The decoder's tensors (embedding, layers, final norm, lm_head): what a .mote directory lists."""
    dc = cfg.decoder
    out = [TensorSpec("model.embed_tokens.weight", (dc.vocab_size, dc.hidden_size), "embed")]
    for i in range(dc.num_hidden_layers):
        out += decoder_layer_tensors(cfg, i)
    out.append(TensorSpec("model.norm.weight", (dc.hidden_size,), "norm"))
    if not dc.tie_word_embeddings:
        out.append(TensorSpec("lm_head.weight", (dc.vocab_size, dc.hidden_size), "lm_head"))
    return out


def lookahead_target(cfg: ModelConfig, layer: int, depth: int) -> int:
    """The MoE layer `depth` MoE layers after MoE layer `layer` in decode order (past the last one, the next
    token's: the order wraps)."""
    moe = sorted(cfg.moe_layers)  # decode order
    return moe[(moe.index(layer) + depth) % len(moe)]


def lookahead_name(layer: int, depth: int, part: str) -> str:
    """"model.layers.4.mlp.lookahead.2.weight": MoE layer 4's predictor of the routing 2 MoE layers ahead."""
    return f"model.layers.{layer}.mlp.lookahead.{depth}.{part}"


def lookahead_tensors(cfg: ModelConfig, depth: int) -> list[TensorSpec]:
    """A .mote file's lookahead predictors 1 .. `depth` MoE layers ahead of every MoE layer: weight [E, H]
    and bias [E] score the target layer's experts (lookahead_target; E of them) from the rms-normalised
    residual at the layer's MoE input. Not part of a checkpoint."""
    out = []
    for i in sorted(cfg.moe_layers):
        for d in range(1, depth + 1):
            e = cfg.moe.experts_in_layer(lookahead_target(cfg, i, d))
            out.append(TensorSpec(lookahead_name(i, d, "weight"), (e, cfg.decoder.hidden_size), LOOKAHEAD_ROLE, layer=i))
            out.append(TensorSpec(lookahead_name(i, d, "bias"), (e,), LOOKAHEAD_ROLE, layer=i))
    return out


def checkpoint_tensors(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor of a MoTE-LLaVA / MoE-LLaVA checkpoint, in a stable (file) order."""
    out = decoder_tensors(cfg)
    out += vision_tensors(cfg)
    out += projector_tensors(cfg)
    return out


def canonical_name(name: str) -> str:
    """Map the key names LLaVA, MoE-LLaVA and transformers use for the vision tower and the
    projector to the schema's names; other names are returned unchanged."""
    for alias in PROJECTOR_PREFIX_ALIASES:
        if name.startswith(alias):
            return PROJECTOR_PREFIX + name[len(alias):]
    for prefix in VISION_TOWER_PREFIXES:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if rest.startswith(CLIP_VISION_LEVEL):
            return VISION_PREFIX + rest[len(CLIP_VISION_LEVEL):]
        if prefix and rest.startswith(CLIP_VISION_ROOTS):
            return VISION_PREFIX + rest
    return name


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by role, plus 'total' and 'active' (what one token touches)."""
    counts: dict[str, int] = {}
    for spec in checkpoint_tensors(cfg):
        counts[spec.role] = counts.get(spec.role, 0) + spec.numel
    total = sum(counts.values())
    routed = counts.get("ternary_expert", 0) + counts.get("fp_expert", 0)
    active = total - routed
    if cfg.moe is not None and routed:
        per_expert = 3 * cfg.decoder.hidden_size * cfg.decoder.intermediate_size
        active += per_expert * cfg.moe.top_k_experts * len(cfg.moe_layers)
    counts["total"] = total
    counts["active"] = active
    return counts
