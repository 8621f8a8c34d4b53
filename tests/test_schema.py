import pytest

from mote_edge.presets import preset_config
from mote_edge.schema import canonical_name, checkpoint_tensors, parameter_counts


def _dense_equivalent(cfg) -> int:
    """Parameters of the dense decoder the MoE was up-cycled from (shared expert = its FFN)."""
    c = parameter_counts(cfg)
    return sum(c.get(r, 0) for r in ("embed", "lm_head", "attn", "attn_bias", "norm", "ffn", "shared_expert"))


def test_presets_have_the_published_qwen25_decoder_sizes():
    # Qwen2.5-0.5B and -1.5B model cards: 494,032,768 and 1,543,714,304 parameters (tied embeddings).
    assert _dense_equivalent(preset_config("qwen2.5-0.5b-e8")) == 494_032_768
    assert _dense_equivalent(preset_config("qwen2.5-1.5b-e8")) == 1_543_714_304


def test_expert_counts():
    cfg = preset_config("qwen2.5-0.5b-e8")
    c = parameter_counts(cfg)
    assert cfg.moe_layers == list(range(0, 24, 2))
    assert c["ternary_expert"] == 12 * 8 * 3 * 896 * 4864
    assert c["active"] == c["total"] - c["ternary_expert"] + 12 * 1 * 3 * 896 * 4864


def test_names_are_unique_and_roles_known():
    for expert_type in ("ternary", "fp"):
        specs = checkpoint_tensors(preset_config("tiny", expert_type))
        names = [s.name for s in specs]
        assert len(names) == len(set(names))
        routed = {s.role for s in specs if s.expert is not None}
        assert routed == {"ternary_expert" if expert_type == "ternary" else "fp_expert"}


@pytest.mark.parametrize("alias", ["model.vision_tower.vision_tower.vision_model.",
                                   "model.image_tower.image_tower.vision_model."])
def test_vision_aliases_map_to_canonical(alias):
    assert canonical_name(alias + "pre_layrnorm.weight") == "model.vision_tower.vision_model.pre_layrnorm.weight"
    assert canonical_name("model.layers.0.mlp.gate_proj.weight") == "model.layers.0.mlp.gate_proj.weight"
