"""Model presets for `mote-edge synth`: real shapes (or tiny ones for tests), random weights.

Decoder dims follow the published Qwen2.5 config.json files; vision towers follow CLIP
ViT-B/16-224 and ViT-L/14-336; MoE follows MoE-LLaVA's "sparse" mode (every other layer from 0).
"""

from __future__ import annotations

from mote_edge.config import DecoderConfig, ModelConfig, MoEConfig, ProjectorConfig, VisionConfig, default_moe_layers
from mote_edge.errors import ConfigError

# The shipped tokenizer (mote_edge/assets/tokenizer.json) has this many ids; tiny models use it.
TINY_VOCAB = 2048

CLIP_VIT_B16_224 = VisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16)
CLIP_VIT_L14_336 = VisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                num_attention_heads=16, image_size=336, patch_size=14)
QWEN25_05B = DecoderConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                           num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                           rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                           bos_token_id=None, eos_token_id=0)
QWEN25_15B = DecoderConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                           num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                           rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                           bos_token_id=None, eos_token_id=0)
QWEN25_3B = DecoderConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                          num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                          bos_token_id=None, eos_token_id=0)
TINY_DECODER = DecoderConfig(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                             bos_token_id=None, eos_token_id=0)
TINY_VISION = VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8)


def _moe(num_layers: int, experts: int, top_k: int, expert_type: str, mode: str = "sparse") -> MoEConfig:
    layers = default_moe_layers(num_layers, mode)
    return MoEConfig(moe_layers_idx=layers, num_experts=[experts] * len(layers), top_k_experts=top_k,
                     expert_type=expert_type, shared_expert=expert_type == "ternary")


def _copy(dc):
    return type(dc)(**dc.__dict__)


PRESETS = {
    # name: (decoder, vision, experts, top_k, MoE layers (MoE-LLaVA moe_mode), one-line description)
    "tiny": (TINY_DECODER, TINY_VISION, 4, 2, "sparse", "a few MB; for tests (4 experts, top-2)"),
    "qwen2.5-0.5b-e8": (QWEN25_05B, CLIP_VIT_B16_224, 8, 1, "sparse",
                        "Qwen2.5-0.5B decoder, CLIP ViT-B/16-224, 8 experts top-1"),
    "qwen2.5-1.5b-e8": (QWEN25_15B, CLIP_VIT_L14_336, 8, 1, "sparse",
                        "Qwen2.5-1.5B decoder, CLIP ViT-L/14-336, 8 experts top-1"),
    # the paper's MoTE-3B: a frozen shared expert and 4 ternary routed experts on every layer, top-1
    "qwen2.5-3b-e4": (QWEN25_3B, CLIP_VIT_L14_336, 4, 1, "dense",
                      "Qwen2.5-3B decoder, CLIP ViT-L/14-336, 4 experts top-1 on every layer (MoTE-3B)"),
}


def preset_config(name: str, expert_type: str = "ternary") -> ModelConfig:
    """A validated ModelConfig for a preset. `expert_type='fp'` gives a MoE-LLaVA-style model
    (full-precision experts, no shared expert)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    if expert_type not in ("ternary", "fp"):
        raise ConfigError(f"unknown expert type {expert_type!r} (choose ternary or fp)")
    decoder, vision, experts, top_k, mode, _ = PRESETS[name]
    return ModelConfig(decoder=_copy(decoder), vision=_copy(vision), projector=ProjectorConfig(),
                       moe=_moe(decoder.num_hidden_layers, experts, top_k, expert_type, mode)).validate()
