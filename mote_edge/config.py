"""Model configuration: dataclasses read from and written to an HF-style `config.json`.

The JSON layout is a Qwen2 config.json (decoder fields at the top level) plus:
  - `vision_config`: a CLIPVisionConfig-style block,
  - LLaVA's `mm_*` fields for the projector and feature selection,
  - MoE-LLaVA's `moe` block, extended with `expert_type` and `shared_expert` (MoTE).

Validation raises ConfigError with one line naming the field; see DESIGN.md section 3.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mote_edge.config_fields import check_refusals, eos_ids_of, projector_type_of, rope_theta_of
from mote_edge.errors import ConfigError

# LLaVA's placeholder id for "<image>" in input_ids; never looked up in the embedding table.
IMAGE_TOKEN_INDEX = -200
IMAGE_PLACEHOLDER = "<image>"

DECODER_ACTS = ("silu",)
VISION_ACTS = ("quick_gelu", "gelu")
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
EXPERT_TYPES = ("ternary", "fp")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _pick(cls, data: dict[str, Any], where: str) -> dict[str, Any]:
    """The subset of `data` that are fields of dataclass `cls`, type-checked for numbers."""
    out = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.type in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{f.name} must be a number, got {value!r}")
        if f.type == "int" and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}.{f.name} must be an integer, got {value!r}")
            value = int(value)
        out[f.name] = value
    return out


@dataclass
class VisionConfig:
    """CLIP-style ViT (transformers' CLIPVisionConfig field names)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        w = "vision_config"
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "image_size", "patch_size", "num_channels"):
            _require(getattr(self, name) > 0, f"{w}.{name} must be positive, got {getattr(self, name)}")
        _require(self.hidden_act in VISION_ACTS,
                 f"{w}.hidden_act {self.hidden_act!r} is not supported (expected one of {', '.join(VISION_ACTS)})")
        _require(self.hidden_size % self.num_attention_heads == 0,
                 f"{w}.num_attention_heads ({self.num_attention_heads}) does not divide "
                 f"hidden_size ({self.hidden_size})")
        _require(self.image_size % self.patch_size == 0,
                 f"{w}.patch_size ({self.patch_size}) does not divide image_size ({self.image_size})")


@dataclass
class ProjectorConfig:
    """LLaVA's multimodal projector: `mlp2x_gelu` = Linear -> GELU -> Linear."""

    projector_type: str = "mlp2x_gelu"
    select_layer: int = -2  # mm_vision_select_layer: which ViT hidden state feeds the projector
    select_feature: str = "patch"  # mm_vision_select_feature: "patch" drops the class token
    image_aspect_ratio: str = "pad"  # LLaVA "pad": pad to square with the mean colour first

    def validate(self, vision: VisionConfig) -> None:
        _require(self.projector_type in PROJECTOR_TYPES,
                 f"mm_projector_type {self.projector_type!r} is not supported "
                 f"(expected one of {', '.join(PROJECTOR_TYPES)})")
        _require(self.select_feature in ("patch", "cls_patch"),
                 f"mm_vision_select_feature {self.select_feature!r} is not supported (expected patch or cls_patch)")
        _require(self.image_aspect_ratio in ("pad", "square"),
                 f"image_aspect_ratio {self.image_aspect_ratio!r} is not supported (expected pad or square)")
        n = vision.num_hidden_layers
        # hidden_states has n + 1 entries: the embeddings, then the output of each block.
        _require(-(n + 1) <= self.select_layer <= n,
                 f"mm_vision_select_layer {self.select_layer} is out of range for a "
                 f"{n}-layer vision tower (allowed {-(n + 1)}..{n})")

    def vision_layers_used(self, vision: VisionConfig) -> int:
        """How many ViT blocks must run: hidden_states[select_layer] needs this many."""
        n = vision.num_hidden_layers
        return self.select_layer if self.select_layer >= 0 else n + 1 + self.select_layer


@dataclass
class DecoderConfig:
    """Qwen2 decoder, field names as in a Qwen2 config.json."""

    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None  # a name only: the BOS comes from the tokenizer files
    eos_token_id: int | list[int] | None = 0  # HF allows a list: generation stops on any of them

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def eos_ids(self) -> list[int]:
        """eos_token_id as a list ([] when the config names none)."""
        e = self.eos_token_id
        return [] if e is None else list(e) if isinstance(e, list) else [e]

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            _require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _require(self.hidden_act in DECODER_ACTS,
                 f"hidden_act {self.hidden_act!r} is not supported (expected one of {', '.join(DECODER_ACTS)})")
        _require(self.hidden_size % self.num_attention_heads == 0,
                 f"num_attention_heads ({self.num_attention_heads}) does not divide hidden_size ({self.hidden_size})")
        _require(self.num_attention_heads % self.num_key_value_heads == 0,
                 f"num_key_value_heads ({self.num_key_value_heads}) does not divide "
                 f"num_attention_heads ({self.num_attention_heads})")
        _require(self.head_dim % 2 == 0, f"head_dim ({self.head_dim}) must be even for RoPE")
        _require(self.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        _require(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
        for tid in self.eos_ids:
            _require(isinstance(tid, int) and not isinstance(tid, bool) and 0 <= tid < self.vocab_size,
                     f"eos_token_id {tid!r} is outside the vocabulary (vocab_size {self.vocab_size})")


@dataclass
class MoEConfig:
    """MoE-LLaVA's `moe` block plus MoTE's `expert_type` and `shared_expert`.

    `num_experts` is per MoE layer (MoE-LLaVA stores a list); an int in config.json means the
    same count on every MoE layer. Inference never drops tokens (capacity factors are kept only
    so a config round-trips).
    """

    moe_enable: bool = True
    moe_mode: str = "sparse"
    moe_layers_idx: list[int] = field(default_factory=list)
    num_experts: list[int] = field(default_factory=list)
    top_k_experts: int = 1
    expert_type: str = "ternary"
    shared_expert: bool = True
    use_residual: bool = False
    capacity_factor: float = 1.5
    eval_capacity_factor: float = 2.0
    min_capacity: int = 0
    router_aux_loss_coef: float = 0.01
    ep_size: int = 1

    def experts_in_layer(self, layer: int) -> int:
        return self.num_experts[self.moe_layers_idx.index(layer)]

    def validate(self, num_layers: int) -> None:
        _require(self.expert_type in EXPERT_TYPES,
                 f"moe.expert_type {self.expert_type!r} is not supported (expected one of {', '.join(EXPERT_TYPES)})")
        _require(len(set(self.moe_layers_idx)) == len(self.moe_layers_idx),
                 f"moe.moe_layers_idx has duplicates: {self.moe_layers_idx}")
        for i in self.moe_layers_idx:
            _require(isinstance(i, int) and 0 <= i < num_layers,
                     f"moe.moe_layers_idx entry {i} is out of range for a {num_layers}-layer decoder")
        _require(len(self.num_experts) == len(self.moe_layers_idx),
                 f"moe.num_experts has {len(self.num_experts)} entries but moe_layers_idx has "
                 f"{len(self.moe_layers_idx)}")
        for n in self.num_experts:
            _require(isinstance(n, int) and n >= 1, f"moe.num_experts entries must be >= 1, got {n}")
            _require(1 <= self.top_k_experts <= n,
                     f"moe.top_k_experts ({self.top_k_experts}) must be between 1 and num_experts ({n})")
        _require(self.top_k_experts in (1, 2),
                 f"moe.top_k_experts {self.top_k_experts} is not supported (MoE-LLaVA gating is top-1 or top-2)")


def default_moe_layers(num_layers: int, mode: str = "sparse") -> list[int]:
    """MoE-LLaVA's moe_mode: 'sparse' = every other layer from 0, 'dense' = all, first/second half."""
    if mode == "sparse":
        return list(range(0, num_layers, 2))
    if mode == "dense":
        return list(range(num_layers))
    if mode == "first_half":
        return list(range(num_layers // 2))
    if mode == "second_half":
        return list(range(num_layers // 2, num_layers))
    raise ConfigError(f"moe.moe_mode {mode!r} is not supported (expected sparse, dense, first_half or second_half)")


@dataclass
class ModelConfig:
    """The whole MoTE-LLaVA model: vision tower + projector + Qwen2 decoder with MoE layers."""

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    moe: MoEConfig | None = field(default_factory=MoEConfig)
    image_token_index: int = IMAGE_TOKEN_INDEX

    def validate(self) -> "ModelConfig":
        self.decoder.validate()
        self.vision.validate()
        self.projector.validate(self.vision)
        if self.moe is not None:
            self.moe.validate(self.decoder.num_hidden_layers)
        return self

    @property
    def moe_layers(self) -> list[int]:
        return list(self.moe.moe_layers_idx) if self.moe is not None and self.moe.moe_enable else []

    def is_moe_layer(self, layer: int) -> bool:
        return layer in self.moe_layers

    # ---------------------------------------------------------------- config.json
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "architectures": ["MoTELlavaQwen2ForCausalLM"],
            "model_type": "mote_llava_qwen2",
            **asdict(self.decoder),
            "vision_config": {"model_type": "clip_vision_model", **asdict(self.vision)},
            "mm_projector_type": self.projector.projector_type,
            "mm_hidden_size": self.vision.hidden_size,
            "mm_vision_select_layer": self.projector.select_layer,
            "mm_vision_select_feature": self.projector.select_feature,
            "image_aspect_ratio": self.projector.image_aspect_ratio,
            "image_token_index": self.image_token_index,
            "torch_dtype": "float32",
        }
        if self.moe is not None:
            d["moe"] = asdict(self.moe)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError("config.json must hold a JSON object")
        check_refusals(d)  # mote_edge.config_fields: every field that changes the maths is read or refused
        decoder = DecoderConfig(**_pick(DecoderConfig, {k: v for k, v in d.items() if k != "rope_theta"}, "config"))
        decoder.rope_theta = rope_theta_of(d)  # transformers 4.x rope_theta or 5.x rope_parameters
        eos = eos_ids_of(d)
        decoder.eos_token_id = None if not eos else eos[0] if len(eos) == 1 else eos
        vision_d = d.get("vision_config")
        if not isinstance(vision_d, dict):
            raise ConfigError("config.json has no vision_config block (a CLIP vision config is required)")
        vision = VisionConfig(**_pick(VisionConfig, vision_d, "vision_config"))
        if "mm_hidden_size" in d and d["mm_hidden_size"] != vision.hidden_size:
            raise ConfigError(f"mm_hidden_size ({d['mm_hidden_size']}) does not match "
                              f"vision_config.hidden_size ({vision.hidden_size})")
        projector = ProjectorConfig(
            projector_type=projector_type_of(d),
            select_layer=d.get("mm_vision_select_layer", -2),
            select_feature=d.get("mm_vision_select_feature", "patch"),
            image_aspect_ratio=d.get("image_aspect_ratio", "pad"),
        )
        moe = None
        moe_d = d.get("moe")
        if isinstance(moe_d, dict) and moe_d.get("moe_enable", True):
            moe = cls._moe_from_dict(moe_d, decoder.num_hidden_layers)
        elif moe_d is not None and not isinstance(moe_d, dict):
            raise ConfigError("config.json field moe must be an object")
        return cls(decoder=decoder, vision=vision, projector=projector, moe=moe,
                   image_token_index=d.get("image_token_index", IMAGE_TOKEN_INDEX)).validate()

    @staticmethod
    def _moe_from_dict(moe_d: dict[str, Any], num_layers: int) -> MoEConfig:
        known = _pick(MoEConfig, moe_d, "moe")
        mode = known.get("moe_mode", "sparse")
        layers = known.get("moe_layers_idx") or default_moe_layers(num_layers, mode)
        if not isinstance(layers, list):
            raise ConfigError(f"moe.moe_layers_idx must be a list, got {layers!r}")
        experts = known.get("num_experts", 4)
        if isinstance(experts, int) and not isinstance(experts, bool):
            experts = [experts] * len(layers)
        if not isinstance(experts, list):
            raise ConfigError(f"moe.num_experts must be an integer or a list, got {experts!r}")
        # MoE-LLaVA checkpoints have plain fp experts and no shared expert unless they say so.
        known.setdefault("expert_type", "fp")
        known.setdefault("shared_expert", False)
        known.update(moe_layers_idx=list(layers), num_experts=list(experts), moe_mode=mode)
        return MoEConfig(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        return cls.from_dict(read_json_object(path / "config.json" if path.is_dir() else path, "config"))


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object (config.json, tokenizer_config.json, ...); ConfigError naming `what`
    and the file otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data
