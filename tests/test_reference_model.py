"""The torch reference model against independent implementations (transformers, hand loops)."""

import copy

import numpy as np
import pytest

from conftest import import_oracle

torch = import_oracle("torch")

from mote_edge.config import IMAGE_TOKEN_INDEX  # noqa: E402
from mote_edge.exporters.reference import MoTELlavaForCausalLM  # noqa: E402
from mote_edge.exporters.reference.layers import KVCache  # noqa: E402
from mote_edge.exporters.reference.moe import MoELayer  # noqa: E402
from mote_edge.presets import preset_config  # noqa: E402
from mote_edge.schema import checkpoint_tensors  # noqa: E402


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    m = MoTELlavaForCausalLM(cfg).eval()
    with torch.no_grad():  # nn.Embedding/LayerNorm defaults are too tame: randomise every tensor
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m


def _dense_config(tied=False):
    cfg = preset_config("tiny")
    cfg.moe = None
    cfg.decoder.tie_word_embeddings = tied
    return cfg


@pytest.mark.parametrize("expert_type", ["ternary", "fp"])
@pytest.mark.parametrize("tied", [False, True])
def test_parameters_are_exactly_the_checkpoint_schema(expert_type, tied):
    cfg = preset_config("tiny", expert_type)
    cfg.decoder.tie_word_embeddings = tied
    cfg.moe.use_residual = True
    params = MoTELlavaForCausalLM(cfg).checkpoint_parameters()
    schema = {s.name: s.shape for s in checkpoint_tensors(cfg)}
    assert {k: tuple(v.shape) for k, v in params.items()} == schema


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_matches_transformers_qwen2(tied):
    transformers = import_oracle("transformers")
    cfg = _dense_config(tied)
    dc = cfg.decoder
    hf_cfg = transformers.Qwen2Config(
        vocab_size=dc.vocab_size, hidden_size=dc.hidden_size, intermediate_size=dc.intermediate_size,
        num_hidden_layers=dc.num_hidden_layers, num_attention_heads=dc.num_attention_heads,
        num_key_value_heads=dc.num_key_value_heads, rms_norm_eps=dc.rms_norm_eps, rope_theta=dc.rope_theta,
        max_position_embeddings=dc.max_position_embeddings, tie_word_embeddings=tied, attn_implementation="eager")
    ours = _model(cfg)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if not k.startswith("model.vision_tower")
         and not k.startswith("model.mm_projector")}, strict=False)
    assert not [k for k in missing if "rotary" not in k] and not unexpected
    ids = torch.randint(0, dc.vocab_size, (1, 17))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours.forward_embeds(ours.model.embed_tokens(ids))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_vision_tower_matches_transformers_clip():
    transformers = import_oracle("transformers")
    cfg = preset_config("tiny")
    v = cfg.vision
    hf = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads, image_size=v.image_size, patch_size=v.patch_size,
        hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps, attn_implementation="eager")).eval()
    ours = _model(cfg)
    # transformers 5 drops the "vision_model." level from CLIPVisionModel's own state_dict keys
    has_level = any(k.startswith("vision_model.") for k in hf.state_dict())
    prefix = "model.vision_tower." if has_level else "model.vision_tower.vision_model."
    state = {k[len(prefix):]: t for k, t in ours.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert all("post_layernorm" in k or "position_ids" in k for k in missing) and not unexpected
    pixels = torch.randn(2, 3, v.image_size, v.image_size)
    with torch.no_grad():
        want = hf(pixels, output_hidden_states=True).hidden_states[cfg.projector.select_layer][:, 1:]
        got = ours.model.vision_tower(pixels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _moe_by_hand(layer: MoELayer, x: torch.Tensor, top_k: int) -> torch.Tensor:
    """Token-by-token MoE: p = softmax(x Wg^T); top-1 raw p, top-2 renormalised; + shared."""
    moe = layer.deepspeed_moe
    out = []
    for tok in x:
        p = torch.softmax(moe.gate.wg.weight @ tok, dim=0)
        order = sorted(range(len(p)), key=lambda e: -float(p[e]))[:top_k]
        w = [float(p[e]) for e in order]
        if top_k == 2:
            w = [wi / sum(w) for wi in w]
        y = sum(wi * moe.experts.deepspeed_experts[e](tok[None])[0] for wi, e in zip(w, order))
        if layer.shared_expert is not None:
            y = y + layer.shared_expert(tok[None])[0]
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("expert_type", ["ternary", "fp"])
def test_moe_gating_top1_raw_top2_renormalised(top_k, expert_type):
    cfg = preset_config("tiny", expert_type)
    cfg.moe.top_k_experts = top_k
    layer = _model(cfg).model.layers[0].mlp
    assert isinstance(layer, MoELayer)
    x = torch.randn(1, 9, cfg.decoder.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[0], _moe_by_hand(layer, x[0], top_k), rtol=1e-5, atol=1e-5)
    assert layer.last_routes.shape == (9, top_k)


def test_top1_weight_is_the_raw_probability_not_one():
    cfg = preset_config("tiny", "fp")
    cfg.moe.top_k_experts = 1
    layer = _model(cfg).model.layers[0].mlp
    x = torch.randn(5, cfg.decoder.hidden_size)
    idx, weight, probs = layer.deepspeed_moe.gate(x)
    assert torch.all(weight < 1) and torch.allclose(weight[:, 0], probs.max(-1).values)
    cfg.moe.top_k_experts = 2
    layer2 = _model(cfg).model.layers[0].mlp
    _, weight2, _ = layer2.deepspeed_moe.gate(x)
    torch.testing.assert_close(weight2.sum(-1), torch.ones(5))


@pytest.mark.parametrize("expert_type", ["ternary", "fp"])
def test_zero_routed_experts_equal_the_dense_model(expert_type):
    """MoTE with all-zero routed experts == the dense model it was up-cycled from (shared = FFN)."""
    cfg = preset_config("tiny", expert_type)
    cfg.moe.shared_expert = True
    moe_model = _model(cfg)
    dense_cfg = copy.deepcopy(cfg)
    dense_cfg.moe = None
    dense = MoTELlavaForCausalLM(dense_cfg).eval()
    dense_params = dense.checkpoint_parameters()
    moe_params = moe_model.checkpoint_parameters()
    with torch.no_grad():
        for name, p in moe_params.items():
            if ".deepspeed_experts." in name:
                p.zero_()
            key = name.replace(".mlp.shared_expert.", ".mlp.")
            if key in dense_params:
                dense_params[key].copy_(p)
    ids = torch.randint(0, cfg.decoder.vocab_size, (1, 12))
    with torch.no_grad():
        a = moe_model.forward_embeds(moe_model.model.embed_tokens(ids))
        b = dense.forward_embeds(dense.model.embed_tokens(ids))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kv_cache_decoding_equals_full_recompute():
    cfg = preset_config("tiny")
    m = _model(cfg, seed=3)
    ids = torch.randint(0, cfg.decoder.vocab_size, (1, 10))
    with torch.no_grad():
        full = m.forward_embeds(m.model.embed_tokens(ids))
        cache = KVCache(cfg.decoder.num_hidden_layers)
        first = m.forward_embeds(m.model.embed_tokens(ids[:, :6]), cache)
        rest = [m.forward_embeds(m.model.embed_tokens(ids[:, t:t + 1]), cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generate_matches_argmax_of_full_forward():
    cfg = preset_config("tiny")
    m = _model(cfg, seed=4)
    prompt = [5, 17, IMAGE_TOKEN_INDEX, 9, 33]
    pixels = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    got = m.generate(prompt, pixels, max_new_tokens=8)
    assert len(got) == 8
    with torch.no_grad():
        embeds = m.embed(torch.tensor(prompt), pixels)
        want = []
        for _ in range(8):
            token = int(m.forward_embeds(embeds[None])[0, -1].argmax())
            want.append(token)
            embeds = torch.cat([embeds, m.model.embed_tokens(torch.tensor([token]))])
    assert got == want


def test_image_splice_replaces_the_placeholder_with_patches():
    cfg = preset_config("tiny")
    m = _model(cfg)
    pixels = torch.randn(1, 3, cfg.vision.image_size, cfg.vision.image_size)
    ids = torch.tensor([3, IMAGE_TOKEN_INDEX, 4, 5])
    with torch.no_grad():
        e = m.embed(ids, pixels)
        patches = m.encode_image(pixels)[0]
    p = cfg.vision.num_patches
    assert e.shape == (3 + p, cfg.decoder.hidden_size)
    torch.testing.assert_close(e[1:1 + p], patches)
    torch.testing.assert_close(e[0], m.model.embed_tokens.weight[3])
    torch.testing.assert_close(e[1 + p], m.model.embed_tokens.weight[4])
    with pytest.raises(ValueError, match="placeholder"):
        m.embed(torch.tensor([3, 4]), pixels)


def test_use_residual_mixes_moe_and_dense_branch():
    cfg = preset_config("tiny", "fp")
    cfg.moe.use_residual = True
    layer = _model(cfg).model.layers[0].mlp
    x = torch.randn(4, cfg.decoder.hidden_size)
    with torch.no_grad():
        routed, _, _ = layer.deepspeed_moe(x)
        c = torch.softmax(layer.coefficient(x), -1)
        want = routed * c[:, :1] + layer.mlp(x) * c[:, 1:]
        torch.testing.assert_close(layer(x[None])[0], want)


def test_aux_loss_is_one_for_perfectly_uniform_routing():
    cfg = preset_config("tiny", "fp")
    m = _model(cfg)
    layer = m.model.layers[0].mlp
    with torch.no_grad():
        layer.deepspeed_moe.gate.wg.weight.zero_()  # every expert prob = 1/E, argmax -> expert 0
        layer(torch.randn(1, 8, cfg.decoder.hidden_size))
    # E * sum(me * ce) = E * (1/E * 1) = 1 when all tokens go to one expert with uniform probs
    assert float(layer.aux_loss) == pytest.approx(1.0)
    assert np.isfinite(float(m.aux_loss()))
