import json

import pytest

from mote_edge.config import ModelConfig, default_moe_layers
from mote_edge.errors import ConfigError
from mote_edge.presets import PRESETS, preset_config


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("expert_type", ["ternary", "fp"])
def test_config_round_trips_through_json(tmp_path, preset, expert_type):
    cfg = preset_config(preset, expert_type)
    cfg.save(tmp_path / "config.json")
    again = ModelConfig.load(tmp_path)
    assert again == cfg
    assert json.loads((tmp_path / "config.json").read_text())["moe"]["expert_type"] == expert_type


def test_moe_llava_style_block_is_normalised():
    d = preset_config("tiny").to_dict()
    d["moe"] = {"moe_enable": True, "moe_mode": "sparse", "num_experts": 4, "top_k_experts": 2,
                "moe_layers_idx": None, "use_residual": False, "router_aux_loss_coef": 0.01}
    cfg = ModelConfig.from_dict(d)
    assert cfg.moe.moe_layers_idx == [0, 2]
    assert cfg.moe.num_experts == [4, 4]
    assert cfg.moe.expert_type == "fp" and cfg.moe.shared_expert is False  # plain MoE-LLaVA


def test_eos_list_is_kept_whole():
    d = preset_config("tiny").to_dict()
    d["eos_token_id"] = [0, 1]
    dc = ModelConfig.from_dict(d).decoder
    assert dc.eos_token_id == [0, 1] and dc.eos_ids == [0, 1]
    d["eos_token_id"] = [0, 1, 5000]
    with pytest.raises(ConfigError, match="eos_token_id 5000"):
        ModelConfig.from_dict(d)


def test_dense_model_has_no_moe_layers():
    d = preset_config("tiny").to_dict()
    d.pop("moe")
    cfg = ModelConfig.from_dict(d)
    assert cfg.moe is None and cfg.moe_layers == []


def test_default_moe_layers_modes():
    assert default_moe_layers(6, "sparse") == [0, 2, 4]
    assert default_moe_layers(4, "dense") == [0, 1, 2, 3]
    assert default_moe_layers(4, "second_half") == [2, 3]
    with pytest.raises(ConfigError, match="moe_mode"):
        default_moe_layers(4, "bogus")


def _mutated(path, value):
    d = preset_config("tiny").to_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,message", [
    (("hidden_act",), "gelu_new", "hidden_act 'gelu_new' is not supported"),
    (("num_attention_heads",), 5, r"num_attention_heads \(5\) does not divide hidden_size \(64\)"),
    (("num_key_value_heads",), 3, r"num_key_value_heads \(3\) does not divide num_attention_heads"),
    (("hidden_size",), -64, "hidden_size must be positive"),
    (("hidden_size",), "64", "must be a number"),
    (("eos_token_id",), 99999, "eos_token_id 99999 is outside the vocabulary"),
    (("moe", "moe_layers_idx"), [0, 7], "moe_layers_idx entry 7 is out of range for a 4-layer decoder"),
    (("moe", "moe_layers_idx"), [0, 0], "duplicates"),
    (("moe", "num_experts"), [4], "num_experts has 1 entries but moe_layers_idx has 2"),
    (("moe", "top_k_experts"), 3, "top_k_experts 3 is not supported"),
    (("moe", "top_k_experts"), 0, "top_k_experts"),
    (("moe", "expert_type"), "int2", "expert_type 'int2' is not supported"),
    (("vision_config", "num_attention_heads"), 5, r"vision_config.num_attention_heads \(5\) does not divide"),
    (("vision_config", "patch_size"), 5, r"patch_size \(5\) does not divide image_size"),
    (("vision_config", "hidden_act"), "relu", "vision_config.hidden_act 'relu'"),
    (("mm_projector_type",), "qformer", "mm_projector_type 'qformer' is not supported"),
    (("mm_vision_select_layer",), -9, "mm_vision_select_layer -9 is out of range"),
    (("mm_hidden_size",), 99, r"mm_hidden_size \(99\) does not match"),
])
def test_invalid_configs_give_one_line_errors(path, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        ModelConfig.from_dict(_mutated(path, value))
    assert "\n" not in str(e.value)


def test_missing_vision_config(tmp_path):
    d = preset_config("tiny").to_dict()
    d.pop("vision_config")
    with pytest.raises(ConfigError, match="no vision_config"):
        ModelConfig.from_dict(d)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config not found"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.load(tmp_path)


def test_vision_layers_used_follows_select_layer():
    cfg = preset_config("qwen2.5-0.5b-e8")
    assert cfg.projector.vision_layers_used(cfg.vision) == 11  # hidden_states[-2] of 12 blocks
    cfg.projector.select_layer = 12
    assert cfg.projector.vision_layers_used(cfg.vision) == 12
