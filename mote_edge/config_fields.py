"""What mote-edge does with every config.json field of a checkpoint: read it, refuse it, or ignore it.

A field that changes the maths is either read (and honoured) or refused with a one-line ConfigError
naming the field and its value; a field that is present is never replaced by a silent default.
`FIELDS` is the table docs/CHECKPOINTS.md prints (a test keeps the two equal); `check_refusals`
applies the refusals to a raw config.json dict before the dataclasses are built.

transformers writes RoPE two ways: 4.x a top-level `rope_theta` (+ `rope_scaling`), 5.x a
`rope_parameters` block (`rope_theta`, `rope_type`). `rope_theta_of` reads both.
"""

from __future__ import annotations

from typing import Any

from mote_edge.errors import ConfigError

# transformers' Qwen2Config default when a config names no RoPE base at all (4.x and 5.x alike).
TRANSFORMERS_DEFAULT_ROPE_THETA = 10000.0

# model_type -> what it is; every other value is refused.
SUPPORTED_MODEL_TYPES = {
    "mote_llava_qwen2": "MoTE-LLaVA on a Qwen2 decoder (this project's checkpoints)",
    "moe_llava_qwen1_5": "MoE-LLaVA on a Qwen1.5 / Qwen2 decoder (PKU-YuanGroup/MoE-LLaVA)",
    "llava_qwen2": "LLaVA on a Qwen2 decoder",
    "qwen2": "a Qwen2 decoder config with LLaVA fields added",
}
# model_type -> why it is refused (the architectures MoE-LLaVA ships besides Qwen1.5).
REFUSED_MODEL_TYPES = {
    "moe_llava_qwen": "Qwen (v1) has a different decoder (fused c_attn projection, other weight names)",
    "qwen": "Qwen (v1) has a different decoder (fused c_attn projection, other weight names)",
    "moe_llava_phi": "Phi-2 has a different decoder (parallel attention/MLP, LayerNorm, partial RoPE)",
    "phi": "Phi-2 has a different decoder (parallel attention/MLP, LayerNorm, partial RoPE)",
    "moe_llava_stablelm": "StableLM has a different decoder (LayerNorm, partial RoPE)",
    "stablelm_epoch": "StableLM has a different decoder (LayerNorm, partial RoPE)",
    "stablelm": "StableLM has a different decoder (LayerNorm, partial RoPE)",
    "moe_llava_llama": "Llama has no q/k/v biases",
    "moe_llava_mistral": "Mistral has no q/k/v biases and uses a sliding window",
    "moe_llava_minicpm": "MiniCPM scales embeddings and residuals",
    "llava_llama": "Llama has no q/k/v biases",
    "llava_mistral": "Mistral has no q/k/v biases and uses a sliding window",
    "llava_mpt": "MPT has a different decoder (ALiBi)",
}

# (field, what mote-edge does, why) -- the rows of docs/CHECKPOINTS.md.
FIELDS: list[tuple[str, str, str]] = [
    ("model_type", "read", "one of " + ", ".join(SUPPORTED_MODEL_TYPES) + "; refused: "
     + ", ".join(REFUSED_MODEL_TYPES) + " and any other value; absent = Qwen2"),
    ("architectures", "ignored", "model_type decides"),
    ("vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
     "num_key_value_heads, max_position_embeddings, rms_norm_eps, tie_word_embeddings", "read", "the decoder's shape"),
    ("hidden_act", "read", "silu only; anything else refused"),
    ("head_dim", "read", "must equal hidden_size / num_attention_heads; refused otherwise"),
    ("rope_theta", "read", "transformers 4.x style; absent everywhere = 10000 (transformers' Qwen2 default)"),
    ("rope_parameters.rope_theta", "read", "transformers 5.x style; refused if it disagrees with a top-level rope_theta"),
    ("rope_parameters.rope_type, rope_scaling", "refused unless", "null or default (no YaRN, linear, dynamic, llama3 ...)"),
    ("partial_rotary_factor", "refused unless", "absent or 1.0"),
    ("use_sliding_window", "refused unless", "false or absent"),
    ("layer_types", "refused unless", "every entry full_attention"),
    ("sliding_window, max_window_layers", "ignored", "only used when use_sliding_window is true (refused)"),
    ("bos_token_id", "ignored", "a name only: the BOS comes from the tokenizer (tokenizer_config.json "
     "add_bos_token / bos_token, else the tokenizer.json post-processor), as transformers' AutoTokenizer adds it"),
    ("eos_token_id", "read", "an id or a list; generation stops on any of them"),
    ("pad_token_id, use_cache, attention_dropout, initializer_range, torch_dtype, dtype, "
     "transformers_version", "ignored", "no effect on inference"),
    ("quantization_config", "refused unless", "absent (export from the full-precision checkpoint)"),
    ("vision_config.{hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, image_size, "
     "patch_size, num_channels, layer_norm_eps}", "read", "the CLIP tower's shape"),
    ("vision_config.hidden_act", "read", "quick_gelu or gelu"),
    ("vision_config.model_type", "refused unless", "clip_vision_model (or absent)"),
    ("vision_config.projection_dim", "ignored", "LLaVA takes a hidden state, never the projection"),
    ("mm_projector_type / image_projector_type", "read", "mlp2x_gelu or linear (LLaVA / MoE-LLaVA name); "
     "refused if both are present and differ"),
    ("mm_hidden_size", "read", "must equal vision_config.hidden_size"),
    ("mm_vision_select_layer", "read", "which hidden state feeds the projector (default -2)"),
    ("mm_vision_select_feature", "read", "patch (class token dropped) or cls_patch"),
    ("image_aspect_ratio", "read", "pad or square"),
    ("mm_use_im_start_end", "refused unless", "false or absent"),
    ("mm_patch_merge_type", "refused unless", "flat or absent (no anyres tiling)"),
    ("mm_vision_tower / mm_image_tower", "ignored", "the tower's name; its weights come from the checkpoint "
     "or from `export --vision-tower DIR`"),
    ("image_token_index", "read", "the placeholder id in prompts (default -200)"),
    ("moe.moe_enable, moe.moe_mode, moe.moe_layers_idx, moe.num_experts, moe.top_k_experts, "
     "moe.use_residual", "read", "which layers are MoE and how they route (top-1 raw probability, "
     "top-2 renormalised)"),
    ("moe.expert_type, moe.shared_expert", "read", "MoTE's fields; absent = fp experts, no shared expert "
     "(plain MoE-LLaVA)"),
    ("moe.capacity_factor, moe.eval_capacity_factor, moe.min_capacity", "ignored",
     "inference never drops tokens (DeepSpeed drops tokens over capacity; not reproduced)"),
    ("moe.ep_size, moe.router_aux_loss_coef, moe.train_modules", "ignored", "training only"),
    ("lora.lora_enable", "refused unless", "false or absent (merge LoRA weights first)"),
]


def _refuse(field: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"config.json {field} = {value!r} is not supported ({why})")


def rope_theta_of(d: dict[str, Any]) -> float:
    """The RoPE base from either transformers style; refuses a disagreement between the two."""
    top = d.get("rope_theta")
    params = d.get("rope_parameters")
    nested = params.get("rope_theta") if isinstance(params, dict) else None
    for name, value in (("rope_theta", top), ("rope_parameters.rope_theta", nested)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"config.json {name} must be a number, got {value!r}")
    if top is not None and nested is not None and float(top) != float(nested):
        raise ConfigError(f"config.json rope_theta ({top}) and rope_parameters.rope_theta ({nested}) disagree")
    value = nested if nested is not None else top
    return float(value) if value is not None else TRANSFORMERS_DEFAULT_ROPE_THETA


def _check_rope(d: dict[str, Any]) -> None:
    params = d.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"config.json rope_parameters must be an object, got {params!r}")
    for field, block in (("rope_parameters", params), ("rope_scaling", d.get("rope_scaling"))):
        if block is None:
            continue
        if not isinstance(block, dict):
            raise ConfigError(f"config.json {field} must be an object or null, got {block!r}")
        kind = block.get("rope_type", block.get("type", "default"))
        if kind != "default":
            raise _refuse(f"{field}.rope_type", kind, "only default RoPE is implemented")
        factor = block.get("partial_rotary_factor", 1.0)
        if factor != 1.0:
            raise _refuse(f"{field}.partial_rotary_factor", factor, "RoPE on the whole head only")
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse("partial_rotary_factor", d["partial_rotary_factor"], "RoPE on the whole head only")


def check_refusals(d: dict[str, Any]) -> None:
    """Raise ConfigError for the first present field whose value mote-edge cannot honour."""
    model_type = d.get("model_type")
    if model_type is not None:
        if model_type in REFUSED_MODEL_TYPES:
            raise _refuse("model_type", model_type, REFUSED_MODEL_TYPES[model_type])
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise _refuse("model_type", model_type, "supported: " + ", ".join(SUPPORTED_MODEL_TYPES))
    _check_rope(d)
    if d.get("use_sliding_window"):
        raise _refuse("use_sliding_window", d["use_sliding_window"], "sliding-window attention is not implemented")
    layer_types = d.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list):
            raise ConfigError(f"config.json layer_types must be a list, got {layer_types!r}")
        other = [t for t in layer_types if t != "full_attention"]
        if other:
            raise _refuse("layer_types", other[0], "every layer must be full_attention")
    head_dim, hidden, heads = d.get("head_dim"), d.get("hidden_size"), d.get("num_attention_heads")
    if head_dim is not None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0 \
            and head_dim != hidden // heads:
        raise _refuse("head_dim", head_dim, f"must equal hidden_size / num_attention_heads = {hidden // heads}")
    if d.get("quantization_config") is not None:
        raise _refuse("quantization_config", "...", "export from the full-precision checkpoint")
    if d.get("mm_use_im_start_end"):
        raise _refuse("mm_use_im_start_end", d["mm_use_im_start_end"], "image start/end tokens are not implemented")
    merge = d.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise _refuse("mm_patch_merge_type", merge, "only flat patch features")
    vision = d.get("vision_config")
    if isinstance(vision, dict) and vision.get("model_type", "clip_vision_model") not in ("clip_vision_model",):
        raise _refuse("vision_config.model_type", vision["model_type"], "the vision tower must be CLIP")
    lora = d.get("lora")
    if isinstance(lora, dict) and lora.get("lora_enable"):
        raise _refuse("lora.lora_enable", True, "merge the LoRA weights into the checkpoint first")


def projector_type_of(d: dict[str, Any]) -> str:
    """LLaVA's `mm_projector_type` or MoE-LLaVA's `image_projector_type` (default mlp2x_gelu)."""
    llava, moe_llava = d.get("mm_projector_type"), d.get("image_projector_type")
    if llava is not None and moe_llava is not None and llava != moe_llava:
        raise ConfigError(f"config.json mm_projector_type ({llava!r}) and image_projector_type "
                          f"({moe_llava!r}) disagree")
    return llava if llava is not None else moe_llava if moe_llava is not None else "mlp2x_gelu"


def eos_ids_of(d: dict[str, Any]) -> list[int]:
    """config.json's eos_token_id as a list (an int, a list, or absent/null = [])."""
    value = d.get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"config.json eos_token_id must be an integer or a list of integers, got {value!r}")
    return list(values)


def fields_markdown() -> str:
    """The FIELDS table as markdown (docs/CHECKPOINTS.md holds exactly this; `python -m mote_edge.config_fields`)."""
    rows = ["| config.json field | mote-edge | detail |", "|---|---|---|"]
    rows += [f"| `{name}` | {action} | {why} |" for name, action, why in FIELDS]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(fields_markdown(), end="")
