"""The transformers-built checkpoints and their oracle (tests/hf_checkpoints.py) check themselves."""

import time

import numpy as np
import pytest

from conftest import import_oracle

torch = import_oracle("torch")
import_oracle("transformers")

from hf_checkpoints import (  # noqa: E402
    IMAGE_TOKEN_INDEX, MOE_LAYERS, NUM_EXPERTS, ROPE_THETA, SWIGLU_PROJS, TINY_DECODER, TINY_VISION, BitLinear,
    Oracle, SwiGLU, build_moe_llava, build_mote_llava, expand2square, hf_tokenize, llava_tokenizer_image_token,
    oracle_generate, route)

PROMPT = ("A chat between a curious user and an artificial intelligence assistant."
          " USER: <image>\nWhat color is the star? ASSISTANT:")
H = TINY_DECODER["hidden_size"]
PATCHES = (TINY_VISION["image_size"] // TINY_VISION["patch_size"]) ** 2


def _tensors(ckpt_dir):
    from safetensors.torch import load_file

    return load_file(str(ckpt_dir / "model.safetensors"))


def _config(ckpt_dir):
    import json

    return json.loads((ckpt_dir / "config.json").read_text())


def _image(width=40, height=24, seed=0):
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def mote(tmp_path_factory):
    return build_mote_llava(tmp_path_factory.mktemp("hf") / "mote", seed=1, keep_parts=True)


@pytest.fixture(scope="module")
def moe_residual(tmp_path_factory):
    return build_moe_llava(tmp_path_factory.mktemp("hf") / "moe", seed=2, use_residual=True, keep_parts=True)


# ------------------------------------------------------------------ what the builders write

def test_mote_llava_keys(mote):
    keys = set(_tensors(mote.ckpt_dir))
    for i in range(TINY_DECODER["num_hidden_layers"]):
        dense_ffn = {f"model.layers.{i}.mlp.{p}.weight" for p in SWIGLU_PROJS}
        shared = {f"model.layers.{i}.mlp.shared_expert.{p}.weight" for p in SWIGLU_PROJS}
        if i in MOE_LAYERS:
            assert shared <= keys and not dense_ffn & keys
            assert f"model.layers.{i}.mlp.deepspeed_moe.gate.wg.weight" in keys
            assert {f"model.layers.{i}.mlp.deepspeed_moe.experts.deepspeed_experts.{k}.{p}.weight"
                    for k in range(NUM_EXPERTS) for p in SWIGLU_PROJS} <= keys
        else:
            assert dense_ffn <= keys and not shared & keys
    # transformers 5 writes CLIPVisionModel keys without the `vision_model.` level
    assert "model.vision_tower.vision_tower.embeddings.class_embedding" in keys
    assert "model.vision_tower.vision_tower.post_layernorm.weight" in keys
    assert {"model.mm_projector.0.weight", "model.mm_projector.0.bias",
            "model.mm_projector.2.weight", "model.mm_projector.2.bias"} <= keys
    assert "lm_head.weight" in keys


def test_mote_llava_shared_expert_is_the_saved_dense_ffn_and_router_shape(mote):
    from safetensors.torch import load_file

    dense = load_file(str(mote.parts_dir / "qwen2" / "model.safetensors"))
    tensors = _tensors(mote.ckpt_dir)
    for p in SWIGLU_PROJS:
        shared = tensors[f"model.layers.0.mlp.shared_expert.{p}.weight"]
        assert torch.equal(shared, dense[f"model.layers.0.mlp.{p}.weight"])
    assert tensors["model.layers.2.mlp.deepspeed_moe.gate.wg.weight"].shape == (NUM_EXPERTS, H)
    decoder = ("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")
    renamed = {k.replace(".mlp.shared_expert.", ".mlp."): v for k, v in tensors.items()
               if k.startswith(decoder) and ".deepspeed_moe." not in k}
    assert renamed.keys() == dense.keys() and all(torch.equal(renamed[k], dense[k]) for k in dense)


def test_mote_llava_config(mote):
    cfg = _config(mote.ckpt_dir)
    assert cfg["model_type"] == "mote_llava_qwen2" and cfg["architectures"] == ["MoTELlavaQwen2ForCausalLM"]
    assert cfg["rope_parameters"] == {"rope_theta": ROPE_THETA, "rope_type": "default"} and "rope_theta" not in cfg
    assert cfg["vision_config"]["model_type"] == "clip_vision_model"
    assert cfg["mm_hidden_size"] == TINY_VISION["hidden_size"]
    assert cfg["mm_projector_type"] == "mlp2x_gelu" and cfg["mm_vision_select_layer"] == -2
    assert cfg["mm_vision_select_feature"] == "patch" and cfg["image_aspect_ratio"] == "pad"
    moe = cfg["moe"]
    assert moe["moe_layers_idx"] == MOE_LAYERS and moe["num_experts"] == [NUM_EXPERTS] * 2
    assert moe["expert_type"] == "ternary" and moe["shared_expert"] is True and moe["use_residual"] is False
    assert moe["top_k_experts"] == 2 and moe["moe_enable"] and moe["moe_mode"] == "sparse"
    assert cfg["vocab_size"] == 423 and cfg["eos_token_id"] == 420 and cfg["bos_token_id"] == 420  # a name only
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
        assert (mote.ckpt_dir / name).is_file()


def test_moe_llava_keys_and_config(moe_residual):
    from safetensors.torch import load_file

    tensors = _tensors(moe_residual.ckpt_dir)
    dense = load_file(str(moe_residual.parts_dir / "qwen2" / "model.safetensors"))
    assert not [k for k in tensors if "shared_expert" in k or k.startswith("model.vision_tower")]
    assert "model.image_tower.image_tower.embeddings.class_embedding" in tensors
    assert "model.mm_projector.image_spatial_proj.2.bias" in tensors
    for i in MOE_LAYERS:
        base = f"model.layers.{i}.mlp."
        assert not any(f"{base}{p}.weight" in tensors for p in SWIGLU_PROJS)
        assert tensors[base + "coefficient.weight"].shape == (2, H) and tensors[base + "coefficient.bias"].shape == (2,)
        for p in SWIGLU_PROJS:
            assert torch.equal(tensors[f"{base}mlp.{p}.weight"], dense[f"{base}{p}.weight"])  # residual = dense FFN
            for k in range(NUM_EXPERTS):  # up-cycled: a perturbed copy of the dense FFN
                expert = tensors[f"{base}deepspeed_moe.experts.deepspeed_experts.{k}.{p}.weight"]
                diff = expert - dense[f"{base}{p}.weight"]
                assert 0.03 < float(diff.std()) < 0.07
    cfg = _config(moe_residual.ckpt_dir)
    assert cfg["model_type"] == "moe_llava_qwen1_5" and cfg["architectures"] == ["MoELLaVAQwen1_5ForCausalLM"]
    assert cfg["image_projector_type"] == "mlp2x_gelu" and "mm_projector_type" not in cfg
    assert cfg["mm_image_tower"] and cfg["lora"] == {} and "vision_config" in cfg
    assert set(cfg["moe"]) == {"moe_enable", "moe_mode", "moe_layers_idx", "ep_size", "top_k_experts",
                               "capacity_factor", "eval_capacity_factor", "min_capacity", "use_residual",
                               "router_aux_loss_coef", "train_modules", "num_experts"}
    assert cfg["moe"]["use_residual"] is True


def test_tied_checkpoint_has_no_lm_head(tmp_path):
    built = build_mote_llava(tmp_path / "tied", tied=True, seed=3)
    assert "lm_head.weight" not in _tensors(built.ckpt_dir) and built.config["tie_word_embeddings"] is True


def test_every_saved_tensor_is_fp16_exact(mote, moe_residual):
    for built in (mote, moe_residual):
        for name, t in _tensors(built.ckpt_dir).items():
            assert t.dtype == torch.float32, name
            assert torch.equal(t, t.half().float()), name


# ------------------------------------------------------------------ tokenizers

def test_llama_style_prepends_bos_and_qwen_style_adds_nothing(mote, tmp_path):
    from tokenizers import Tokenizer

    llama = build_mote_llava(tmp_path / "llama", tokenizer="llama", seed=4).ckpt_dir
    text = "What color is the star?"
    qwen_ids, llama_ids = hf_tokenize(mote.ckpt_dir, text), hf_tokenize(llama, text)
    assert 420 not in qwen_ids  # <|endoftext|>
    assert qwen_ids == Tokenizer.from_file(str(mote.ckpt_dir / "tokenizer.json")).encode(text).ids
    assert llama_ids[0] == 1 and 1 not in llama_ids[1:]
    assert llama_ids == Tokenizer.from_file(str(llama / "tokenizer.json")).encode(text).ids
    assert _config(llama)["bos_token_id"] == 1 and _config(llama)["eos_token_id"] == 2


@pytest.mark.parametrize("style", ["qwen", "llama"])
def test_autotokenizer_agrees_with_the_tokenizer_json(style, tmp_path):
    """transformers 5's Qwen2Tokenizer / LlamaTokenizer rebuild their pipeline in __init__: the ids must
    still be those of tokenizer.json as the `tokenizers` library runs it."""
    from tokenizers import Tokenizer

    ckpt = build_mote_llava(tmp_path / style, tokenizer=style, seed=5).ckpt_dir
    raw = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    for text in [PROMPT, "Zebra quux 123 ünïcode €!", "\nWhat", " two  spaces", ""]:
        assert hf_tokenize(ckpt, text) == raw.encode(text).ids, text


@pytest.mark.parametrize("style", ["qwen", "llama"])
def test_llava_tokenizer_image_token(style, tmp_path):
    ckpt = build_mote_llava(tmp_path / style, tokenizer=style, seed=6).ckpt_dir
    ids = llava_tokenizer_image_token(ckpt, PROMPT)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    before, after = PROMPT.split("<image>")
    at = ids.index(IMAGE_TOKEN_INDEX)
    if style == "llama":
        assert ids[0] == 1 and 1 not in ids[1:]
        assert ids[:at] == hf_tokenize(ckpt, before) and ids[at + 1:] == hf_tokenize(ckpt, after)[1:]
    else:
        assert ids[:at] == hf_tokenize(ckpt, before) and ids[at + 1:] == hf_tokenize(ckpt, after)


# ------------------------------------------------------------------ the oracle's pieces

def test_route_top1_raw_probability_top2_renormalised():
    logits = torch.randn(7, NUM_EXPERTS)
    probs = torch.softmax(logits, -1)
    experts, weights = route(logits, 1)
    assert torch.equal(experts[:, 0], probs.argmax(-1)) and torch.allclose(weights[:, 0], probs.max(-1).values)
    experts, weights = route(logits, 2)
    for n in range(7):
        order = sorted(range(NUM_EXPERTS), key=lambda e: -float(probs[n, e]))[:2]
        assert experts[n].tolist() == order
        p = probs[n, order]
        torch.testing.assert_close(weights[n], p / p.sum())


def test_bitlinear_by_hand():
    w = torch.randn(5, 8)
    x = torch.randn(3, 8)
    gamma = float(w.abs().mean())
    got = BitLinear(w)(x)
    for n in range(3):
        s = 127 / max(float(x[n].abs().max()), 1e-5)
        xq = [min(127, max(-128, round(float(v) * s))) for v in x[n]]
        for o in range(5):
            wt = [min(1, max(-1, round(float(v) / (gamma + 1e-5)))) for v in w[o]]
            want = sum(a * b for a, b in zip(xq, wt)) * gamma / s
            assert abs(float(got[n, o]) - want) < 1e-5


def test_expand2square_centres_on_the_mean_colour():
    from PIL import Image

    square = expand2square(Image.new("RGB", (6, 2), (255, 0, 0)), (1, 2, 3))
    assert square.size == (6, 6)
    pixels = np.asarray(square)
    assert (pixels[:2] == (1, 2, 3)).all() and (pixels[2:4] == (255, 0, 0)).all() and (pixels[4:] == (1, 2, 3)).all()


def test_image_splice_puts_the_patches_at_the_placeholder(mote):
    oracle = Oracle(mote.ckpt_dir)
    ids = [5, 6, IMAGE_TOKEN_INDEX, 7]
    image = _image()
    with torch.no_grad():
        embeds = oracle.prompt_embeddings(ids, image)
        table = oracle.decoder.get_input_embeddings().weight
        patches = oracle.image_embeddings(image)
    assert embeds.shape == (3 + PATCHES, H) and patches.shape == (PATCHES, H)
    assert torch.equal(embeds[2:2 + PATCHES], patches)
    assert torch.equal(embeds[:2], table[[5, 6]]) and torch.equal(embeds[-1], table[7])
    with pytest.raises(ValueError, match="placeholder"):
        oracle.prompt_embeddings([5, 6], image)


def test_vision_tower_is_loaded_not_initialised(mote):
    """The tower's hidden states equal a CLIPVisionModel loaded from transformers' own save."""
    from transformers import CLIPVisionModel

    oracle = Oracle(mote.ckpt_dir)
    saved = CLIPVisionModel.from_pretrained(str(mote.parts_dir / "clip_vision"), attn_implementation="eager").eval()
    pixels = oracle.pixel_values(_image())
    assert pixels.shape == (1, 3, TINY_VISION["image_size"], TINY_VISION["image_size"])
    with torch.no_grad():
        want = saved(pixels, output_hidden_states=True).hidden_states[-2]
        got = oracle.vision(pixels, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(got, want)


# ------------------------------------------------------------------ the oracle end to end

def _dense_override(ckpt_dir):
    """The MoE layers' FFN replaced by the shared expert = the dense FFN it was up-cycled from."""
    tensors = _tensors(ckpt_dir)

    def dense_ffn(layer, _):
        return SwiGLU({p: tensors[f"model.layers.{layer}.mlp.shared_expert.{p}.weight"] for p in SWIGLU_PROJS}, False)
    return dense_ffn


@pytest.mark.parametrize("tied", [False, True])
def test_dense_oracle_equals_qwen2_generate(tied, mote, tmp_path):
    from transformers import Qwen2ForCausalLM

    built = mote if not tied else build_mote_llava(tmp_path / "tied", tied=True, seed=7, keep_parts=True)
    ids = [i for i in llava_tokenizer_image_token(built.ckpt_dir, PROMPT) if i != IMAGE_TOKEN_INDEX]
    got = Oracle(built.ckpt_dir, moe_override=_dense_override(built.ckpt_dir)).generate(ids, None, 24)
    hf = Qwen2ForCausalLM.from_pretrained(str(built.parts_dir / "qwen2"), attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, min_new_tokens=24)
        first_logits = hf(torch.tensor([ids])).logits[0, -1].numpy()
    assert got.tokens == out[0, len(ids):].tolist()
    np.testing.assert_allclose(got.logits_first, first_logits, rtol=1e-5, atol=1e-5)


def test_moe_layers_change_the_output(mote):
    ids = [i for i in llava_tokenizer_image_token(mote.ckpt_dir, PROMPT) if i != IMAGE_TOKEN_INDEX]
    moe = Oracle(mote.ckpt_dir).generate(ids, None, 1)
    dense = Oracle(mote.ckpt_dir, moe_override=_dense_override(mote.ckpt_dir)).generate(ids, None, 1)
    assert np.abs(moe.logits_first - dense.logits_first).max() > 0.1


def test_v4_spellings_load_to_the_same_model(mote, tmp_path):
    """rope_theta / rope_scaling / torch_dtype at top level and `vision_model.`-level CLIP keys: the
    same weights, the same tokens and logits."""
    built = build_mote_llava(tmp_path / "v4", rope_style="v4", vision_keys="v4", seed=1)
    cfg = built.config
    assert cfg["rope_theta"] == ROPE_THETA and cfg["rope_scaling"] is None and "rope_parameters" not in cfg
    assert cfg["torch_dtype"] == "float32" and "dtype" not in cfg
    assert "model.vision_tower.vision_tower.vision_model.embeddings.class_embedding" in _tensors(built.ckpt_dir)
    ids = llava_tokenizer_image_token(mote.ckpt_dir, PROMPT)
    a = oracle_generate(mote.ckpt_dir, ids, _image(), 8)
    b = oracle_generate(built.ckpt_dir, ids, _image(), 8)
    assert a.tokens == b.tokens and np.array_equal(a.logits_first, b.logits_first)


def test_rope_theta_is_read_from_the_config(mote, tmp_path):
    import json
    import shutil

    other = tmp_path / "theta"
    shutil.copytree(mote.ckpt_dir, other)
    cfg = _config(other)
    cfg["rope_parameters"]["rope_theta"] = 1e6
    (other / "config.json").write_text(json.dumps(cfg))
    ids = llava_tokenizer_image_token(mote.ckpt_dir, PROMPT)
    a = oracle_generate(mote.ckpt_dir, ids, _image(), 1)
    b = oracle_generate(other, ids, _image(), 1)
    assert np.abs(a.logits_first - b.logits_first).max() > 1e-3


def test_separate_vision_dir_loads_the_same_tower(moe_residual, tmp_path):
    apart = build_moe_llava(tmp_path / "apart", seed=2, use_residual=True, vision_in_separate_dir=True)
    assert "vision_config" not in apart.config and not any("image_tower" in k for k in _tensors(apart.ckpt_dir))
    assert apart.config["mm_image_tower"] == str(apart.vision_tower_dir)
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (apart.vision_tower_dir / name).is_file()
    ids = llava_tokenizer_image_token(moe_residual.ckpt_dir, PROMPT)
    a = oracle_generate(moe_residual.ckpt_dir, ids, _image(), 8)
    b = oracle_generate(apart.ckpt_dir, ids, _image(), 8, vision_tower_dir=apart.vision_tower_dir)
    assert a.tokens == b.tokens and np.array_equal(a.logits_first, b.logits_first)


@pytest.mark.parametrize("kind", ["mote", "moe_residual"])
@pytest.mark.parametrize("with_image", [False, True])
def test_greedy_margins_are_clear_and_generation_is_fast(kind, with_image, request):
    built = request.getfixturevalue(kind)
    ids = llava_tokenizer_image_token(built.ckpt_dir, PROMPT)
    ids = ids if with_image else [i for i in ids if i != IMAGE_TOKEN_INDEX]
    oracle = Oracle(built.ckpt_dir)
    start = time.perf_counter()
    result = oracle.generate(ids, _image() if with_image else None, 24)
    seconds = time.perf_counter() - start
    margins = np.array(result.margins)
    print(f"{kind} image={with_image}: {seconds:.2f} s; margins min {margins.min():.2f} "
          f"median {np.median(margins):.2f}, < 0.1: {(margins < 0.1).sum()}/24, > 0.5: {(margins > 0.5).sum()}/24")
    assert len(result.tokens) == 24 and result.logits_first.shape == (_config(built.ckpt_dir)["vocab_size"],)
    assert seconds < 2.0
    assert np.median(margins) > 0.5 and (margins < 0.05).sum() <= 3
