"""config.json fields as transformers and MoE-LLaVA write them: read, or refused in one line; chat
templates and stop strings; the field table in docs/CHECKPOINTS.md matches the code."""

from __future__ import annotations

import pytest

from conftest import REPO
from mote_edge.chat import TEMPLATES, ChatTemplate, encode_text, template_named
from mote_edge.config import ModelConfig
from mote_edge.config_fields import fields_markdown
from mote_edge.errors import ConfigError, MoteError
from mote_edge.presets import preset_config
from mote_edge.runtime.stop_strings import StopStrings
from mote_edge.schema import canonical_name


def _tiny(**changes):
    d = preset_config("tiny").to_dict()
    d.update(changes)
    return d


def test_rope_theta_from_transformers_4_and_5_styles():
    v4 = _tiny(rope_theta=123456.0)
    v5 = _tiny(rope_parameters={"rope_theta": 654321.0, "rope_type": "default"})
    v5.pop("rope_theta")
    assert ModelConfig.from_dict(v4).decoder.rope_theta == 123456.0
    assert ModelConfig.from_dict(v5).decoder.rope_theta == 654321.0
    neither = _tiny()
    neither.pop("rope_theta")
    assert ModelConfig.from_dict(neither).decoder.rope_theta == 10000.0  # transformers' Qwen2 default
    both_agree = _tiny(rope_theta=5e5, rope_parameters={"rope_theta": 5e5, "rope_type": "default"})
    assert ModelConfig.from_dict(both_agree).decoder.rope_theta == 5e5


@pytest.mark.parametrize("changes,field", [
    ({"rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}}, "rope_parameters.rope_type"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e6}}, "disagree"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window"),
    ({"layer_types": ["full_attention", "sliding_attention", "full_attention", "full_attention"]}, "layer_types"),
    ({"head_dim": 32}, "head_dim"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "moe_llava_phi"}, "Phi-2"),
    ({"model_type": "moe_llava_stablelm"}, "StableLM"),
    ({"model_type": "moe_llava_qwen"}, "Qwen (v1)"),
    ({"model_type": "gemma"}, "model_type"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
    ({"mm_patch_merge_type": "spatial_unpad"}, "mm_patch_merge_type"),
    ({"lora": {"lora_enable": True, "lora_r": 8}}, "lora.lora_enable"),
    ({"mm_projector_type": "linear", "image_projector_type": "mlp2x_gelu"}, "disagree"),
    ({"eos_token_id": "2"}, "eos_token_id"),
])
def test_fields_that_change_the_maths_are_refused_in_one_line(changes, field):
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(_tiny(**changes))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_vision_config_must_be_clip():
    d = _tiny()
    d["vision_config"]["model_type"] = "siglip_vision_model"
    with pytest.raises(ConfigError, match="vision_config.model_type"):
        ModelConfig.from_dict(d)


@pytest.mark.parametrize("changes", [
    {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 21},
    {"layer_types": ["full_attention"] * 4, "rope_scaling": None},
    {"rope_scaling": {"rope_type": "default"}},
    {"model_type": "moe_llava_qwen1_5", "image_projector_type": "mlp2x_gelu", "lora": {}},
    {"bos_token_id": 151643, "torch_dtype": "bfloat16", "attention_dropout": 0.0, "use_cache": True},
])
def test_fields_that_do_not_change_the_maths_are_accepted(changes):
    ModelConfig.from_dict(_tiny(**changes))


def test_moe_llava_projector_field_and_keys():
    d = _tiny(model_type="moe_llava_qwen1_5", image_projector_type="linear")
    d.pop("mm_projector_type")
    assert ModelConfig.from_dict(d).projector.projector_type == "linear"
    assert canonical_name("model.mm_projector.image_spatial_proj.0.weight") == "model.mm_projector.0.weight"
    tower = "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    for key in ("model.image_tower.image_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
                "model.vision_tower.vision_tower.encoder.layers.0.mlp.fc1.weight",  # without vision_model.
                tower):
        assert canonical_name(key) == tower
    assert canonical_name("model.layers.0.mlp.gate_proj.weight") == "model.layers.0.mlp.gate_proj.weight"


def test_docs_table_is_the_code_table():
    assert fields_markdown() in (REPO / "docs" / "CHECKPOINTS.md").read_text()


# -------------------------------------------------------------------------- chat templates
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def test_templates_render_as_moe_llava_conversations():
    # Expected strings written out from moellava/conversation.py's SeparatorStyle.TWO / PLAIN rules.
    q = "What color is the star?"
    assert TEMPLATES["v1"].format_prompt(q, True) == f"{SYSTEM} USER: <image>\n{q} ASSISTANT:"
    assert TEMPLATES["qwen"].format_prompt(q, False) == f"{SYSTEM} USER: {q} ASSISTANT:"
    assert TEMPLATES["plain"].format_prompt(q, True) == f"<image>{q}"
    assert TEMPLATES["v1"].stop == ("</s>",) and TEMPLATES["qwen"].stop == ("<|endoftext|>",)
    assert TEMPLATES["v1"].with_system("Be brief.").format_prompt(q, False) == f"Be brief. USER: {q} ASSISTANT:"


def test_template_metadata_round_trip_and_old_files():
    for t in TEMPLATES.values():
        assert ChatTemplate.from_dict(t.to_dict()) == t
    old = ChatTemplate.from_dict({"name": "moe-llava-v1", "system": "S"})  # files written before templates were data
    assert old == TEMPLATES["v1"].with_system("S")
    with pytest.raises(ConfigError, match="unknown chat template"):
        template_named("chatml")
    for bad in ({"name": "x", "style": "three"}, {"name": "x", "stop": [""]}, {"name": "x", "sep": 3}, []):
        with pytest.raises(MoteError):
            ChatTemplate.from_dict(bad)


def test_raw_text_needs_exactly_one_placeholder_with_an_image():
    from mote_edge.tokenizer import Tokenizer

    tok = Tokenizer.default()
    ids = encode_text(tok, "look <image> here", True)
    assert ids.count(-200) == 1
    with pytest.raises(MoteError, match="placeholder"):
        encode_text(tok, "no placeholder", True)


@pytest.mark.parametrize("pieces,want", [
    (["Red", "</s>", "tail"], "Red"),
    (["Red<", "/s", ">more"], "Red"),
    (["a<", "b"], "a<b"),  # held back, then released
    (["x</", "s"], "x</s"),  # the stream ends inside a possible stop string: released at flush
    (["one\ntwo"], "one\ntwo"),
])
def test_stop_strings_cut_the_stream(pieces, want):
    s = StopStrings(["</s>"])
    out = "".join(s.feed(p) for p in pieces) + s.flush()
    assert out == want
