"""Tiny MoTE-LLaVA / MoE-LLaVA checkpoints made by transformers itself, and an oracle that runs them.

The independent side of the cross-implementation tests: nothing here comes from mote_edge. The
Qwen2 decoder, the CLIP vision tower and the image processor are transformers' own classes, saved
with the installed version's `save_pretrained`; the builders only rename keys and compose the
config the way LLaVA / MoE-LLaVA checkpoints lay them out. The oracle loads those parts back with
transformers' `from_pretrained`, swaps each MoE layer's FFN for the small module below (DESIGN.md
section 3: router softmax in fp32, top-1 raw probability / top-2 renormalised, shared expert,
BitLinear ternary experts, MoE-LLaVA's use_residual mixer), splices the projected patches where the
prompt holds IMAGE_TOKEN_INDEX and decodes greedily.

Every stored weight is fp16-representable, so a 16-bit export is exact.

What transformers 5.25 writes, as seen here:
  * Qwen2 config.json: `rope_parameters: {rope_theta, rope_type}` (no top-level rope_theta),
    `dtype` (not `torch_dtype`), `layer_types`; tied models have no `lm_head.weight` tensor.
  * A freshly built CLIPVisionModel saves its keys WITHOUT the `vision_model.` level
    (`embeddings.class_embedding`, ...). One loaded from a `vision_model.`-prefixed (transformers
    4) checkpoint saves them WITH the level again, and from_pretrained reads both spellings.
  * CLIPImageProcessor without torchvision falls back to the PIL backend (CLIPImageProcessorPil).
  * Qwen2Tokenizer / LlamaTokenizer rebuild normalizer, pre-tokenizer and decoder in their own
    __init__ from tokenizer.json's vocab and merges: tokenizer.json's pipeline is not what runs.
    The tokenizers built here use exactly the pipeline those classes build, and a test checks that
    AutoTokenizer and the plain `tokenizers` file agree.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for the image in prompt ids
IMAGE_PLACEHOLDER = "<image>"

TINY_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
ROPE_THETA = 50000.0  # neither transformers' default (1e4) nor Qwen2.5's (1e6): a loader that ignores the config is caught
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                   image_size=32, patch_size=8, projection_dim=32)
MOE_LAYERS = [0, 2]
NUM_EXPERTS = 4
SWIGLU_PROJS = ("gate_proj", "up_proj", "down_proj")

# Weight scales: large enough that greedy top-1 leads are clear (typically > 0.5 logits).
LINEAR_STD = 0.15
BIAS_STD = 0.1
EMBED_STD = 0.6
LM_HEAD_STD = 0.6
ROUTER_STD = 0.3
UPCYCLE_NOISE_STD = 0.05


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load reports (the MoE layers' dense FFN keys are missing on purpose)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# ================================================================== tokenizers

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "pink", "brown", "grey", "cyan"]
_SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart", "rectangle", "oval"]
_PLACES = ["top left", "top right", "bottom left", "bottom right", "centre", "middle", "left side", "right side"]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_FIXED_LINES = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    " USER: <image>\nWhat is in the picture? ASSISTANT:",
    " USER: How many shapes are there? ASSISTANT: There are 3 shapes.",
    " USER: What color is the star? ASSISTANT: The star is yellow.",
    "The quick brown fox jumps over the lazy dog.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 42 or 2024 appear in text.",
    "Please describe the image in one sentence.",
    "Answer the question using a single word or phrase.",
    "I don't know; it's hard to say, isn't it? We'll see, they're here, you've won.",
    "Hello, world! (brackets) [square] {curly} \"quotes\" - dash; colon: slash/ back\\ #hash @at $5 100% & *",
]


def tiny_corpus() -> list[str]:
    """A few hundred lines of varied English: chat phrases, colours, shapes, places and numbers."""
    lines = list(_FIXED_LINES)
    for i, colour in enumerate(_COLOURS):
        for j, shape in enumerate(_SHAPES):
            place = _PLACES[(i + j) % len(_PLACES)]
            count = _NUMBERS[(i * 3 + j) % len(_NUMBERS)]
            lines.append(f"There is a {colour} {shape} in the {place} of the image.")
            if (i + j) % 3 == 0:
                lines.append(f" USER: What color is the {shape}? ASSISTANT: The {shape} is {colour}.")
            if (i + j) % 4 == 1:
                lines.append(f" USER: How many {shape}s are there? ASSISTANT: There are {count} {shape}s.")
    return lines


def _train_bpe(pre_tokenizer, vocab_size: int, initial_alphabet: list[str]):
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=initial_alphabet, show_progress=False)
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    return tok


def _qwen_tokenizer():
    """Byte-level BPE with Qwen2's pipeline (the one transformers' Qwen2Tokenizer rebuilds); no BOS."""
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok = _train_bpe(pre, vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Qwen keeps its special tokens after the BPE vocabulary
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False,
              "add_prefix_space": False, "model_max_length": 32768, "clean_up_tokenization_spaces": False}
    return tok, config


def _with_byte_fallback_tokens(tok):
    """Insert <0x00>..<0xFF> after <unk>, <s>, </s> (Llama's layout) and switch on byte_fallback."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    specials = ["<unk>", "<s>", "</s>"]
    learned = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    ordered = specials + [f"<0x{b:02X}>" for b in range(256)] + learned
    data["model"]["vocab"] = {t: i for i, t in enumerate(ordered)}
    data["model"].update(byte_fallback=True, fuse_unk=True, unk_token="<unk>")
    data["added_tokens"] = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True} for i, t in enumerate(specials)]
    return Tokenizer.from_str(json.dumps(data))


def _llama_tokenizer():
    """SentencePiece-style BPE (Metaspace, byte fallback) with the pipeline LlamaTokenizer rebuilds;
    BOS `<s>` prepended by a TemplateProcessing post-processor."""
    from tokenizers import decoders, pre_tokenizers, processors

    trained = _train_bpe(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
                         vocab_size=200, initial_alphabet=[])
    tok = _with_byte_fallback_tokens(trained)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "add_bos_token": True, "add_eos_token": False,
              "legacy": False, "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    return tok, config


def build_tokenizer(out_dir: str | Path, style: str = "qwen") -> int:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the vocab size."""
    builders = {"qwen": _qwen_tokenizer, "llama": _llama_tokenizer}
    if style not in builders:
        raise ValueError(f"tokenizer style {style!r}: expected one of {sorted(builders)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, config = builders[style]()
    tok.save(str(out_dir / "tokenizer.json"))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}
    if style == "qwen":
        specials["additional_special_tokens"] = ["<|im_start|>", "<|im_end|>"]
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)
    return tok.get_vocab_size(with_added_tokens=True)


def _auto_tokenizer(tokenizer_dir: str | Path):
    from transformers import AutoTokenizer

    with _quiet_transformers():  # in a checkpoint dir it warns that config.json's model_type is unknown
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def hf_tokenize(tokenizer_dir: str | Path, text: str) -> list[int]:
    """transformers' AutoTokenizer ids for `text`, default special tokens (BOS only if it adds one)."""
    return list(_auto_tokenizer(tokenizer_dir)(text).input_ids)


def llava_tokenizer_image_token(tokenizer_dir: str | Path, prompt: str) -> list[int]:
    """LLaVA's tokenizer_image_token with AutoTokenizer: chunks around "<image>" are tokenized one by
    one; a leading BOS is kept once and stripped from every chunk; IMAGE_TOKEN_INDEX between chunks."""
    tokenizer = _auto_tokenizer(tokenizer_dir)
    chunks = [list(tokenizer(chunk).input_ids) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
    bos = tokenizer.bos_token_id
    strip = 1 if chunks and chunks[0] and bos is not None and chunks[0][0] == bos else 0
    ids = [bos] if strip else []
    for n, chunk in enumerate(chunks):
        if n > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[strip:])
    return ids


# ================================================================== checkpoint builders

@dataclass
class BuiltCheckpoint:
    ckpt_dir: Path
    config: dict  # what config.json holds
    vision_tower_dir: Path | None = None  # the CLIPVisionModel dir when the tower lives apart
    parts_dir: Path | None = None  # transformers' own saves (qwen2/, clip_vision/) when kept


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def fp16_exact_(module: nn.Module) -> None:
    """Round every parameter to the nearest fp16 value (kept as float32)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())


def _randomise_(module: nn.Module, generator: torch.Generator, *, embed_std: float, head_std: float) -> None:
    """Replace transformers' tame init: linear weights ~N(0, LINEAR_STD), biases ~N(0, BIAS_STD),
    norm scales ~U(0.8, 1.2), embeddings ~N(0, embed_std), lm_head ~N(0, head_std)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):  # RMSNorm / LayerNorm scales
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=generator))
            elif name.endswith("bias"):
                p.copy_(BIAS_STD * torch.randn(p.shape, generator=generator))
            elif "embed" in name:  # token / class / patch / position embeddings
                p.copy_(embed_std * torch.randn(p.shape, generator=generator))
            elif name.startswith("lm_head"):
                p.copy_(head_std * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(LINEAR_STD * torch.randn(p.shape, generator=generator))


def _tied_token_ids(tokenizer_dir: Path) -> dict:
    """config.json's token ids. Like Qwen2.5's, a tokenizer without BOS still gets a bos_token_id
    (the <|endoftext|> id) that it never adds: config.json's id is only a name."""
    tok = _auto_tokenizer(tokenizer_dir)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return {"bos_token_id": bos, "eos_token_id": tok.eos_token_id}


def _save_qwen2_part(out_dir: Path, vocab_size: int, tied: bool, token_ids: dict, generator) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=tied,
                         rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                         **TINY_DECODER, **token_ids)
    model = Qwen2ForCausalLM(config)
    _randomise_(model, generator, embed_std=EMBED_STD, head_std=LM_HEAD_STD)
    fp16_exact_(model)
    model.save_pretrained(out_dir)


def _save_clip_part(out_dir: Path, generator) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION))
    _randomise_(model, generator, embed_std=0.5, head_std=0.0)
    fp16_exact_(model)
    model.save_pretrained(out_dir)


def save_image_processor(out_dir: Path) -> None:
    from transformers import CLIPImageProcessor

    size = TINY_VISION["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       do_center_crop=True, do_convert_rgb=True).save_pretrained(out_dir)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _to_v4_rope(config: dict) -> dict:
    """transformers 4.x spelling: top-level rope_theta, rope_scaling null, torch_dtype."""
    out = {}
    for key, value in config.items():
        if key == "rope_parameters":
            out["rope_theta"] = value["rope_theta"]
            out["rope_scaling"] = None
        elif key == "dtype":
            out["torch_dtype"] = value
        else:
            out[key] = value
    return out


def _fp16_normal(shape, std: float, generator) -> torch.Tensor:
    return (std * torch.randn(shape, generator=generator)).half().float()


def _moe_layer_tensors(dense: dict[str, torch.Tensor], i: int, num_experts: int, generator, *,
                       experts_from_dense: bool) -> dict[str, torch.Tensor]:
    """Router + routed experts of layer i (DeepSpeed MoE names). MoE-LLaVA up-cycles: each expert is
    the dense FFN plus noise; MoTE's ternary experts start fresh."""
    h = TINY_DECODER["hidden_size"]
    base = f"model.layers.{i}.mlp."
    out = {base + "deepspeed_moe.gate.wg.weight": _fp16_normal((num_experts, h), ROUTER_STD, generator)}
    for k in range(num_experts):
        for proj in SWIGLU_PROJS:
            w = dense[f"{base}{proj}.weight"]  # [out, in]
            if experts_from_dense:
                expert = (w + UPCYCLE_NOISE_STD * torch.randn(w.shape, generator=generator)).half().float()
            else:
                expert = _fp16_normal(w.shape, LINEAR_STD, generator)
            out[f"{base}deepspeed_moe.experts.deepspeed_experts.{k}.{proj}.weight"] = expert
    return out


def _build_parts(parts: Path, *, tied: bool, tokenizer: str, seed: int) -> tuple[torch.Generator, dict]:
    generator = torch.Generator().manual_seed(seed)
    vocab_size = build_tokenizer(parts / "tokenizer", tokenizer)
    token_ids = _tied_token_ids(parts / "tokenizer")
    _save_qwen2_part(parts / "qwen2", vocab_size, tied, token_ids, generator)
    _save_clip_part(parts / "clip_vision", generator)
    save_image_processor(parts / "clip_vision")
    return generator, token_ids


def _copy_tokenizer_and_processor(parts: Path, ckpt: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(parts / "tokenizer" / name, ckpt / name)
    shutil.copy(parts / "clip_vision" / "preprocessor_config.json", ckpt / "preprocessor_config.json")
    shutil.copy(parts / "qwen2" / "generation_config.json", ckpt / "generation_config.json")


def _vision_tensors(parts: Path, prefix: str, vision_keys: str) -> dict[str, torch.Tensor]:
    """CLIP keys as CLIPVisionModel.save_pretrained wrote them (or with the transformers-4
    `vision_model.` level), under the LLaVA wrapper's prefix."""
    if vision_keys not in ("as_saved", "v4"):
        raise ValueError(f"vision_keys {vision_keys!r}: expected 'as_saved' or 'v4'")
    saved = _load_tensors(parts / "clip_vision" / "model.safetensors")
    level = "vision_model." if vision_keys == "v4" and not any(k.startswith("vision_model.") for k in saved) else ""
    return {prefix + level + k: v for k, v in saved.items()}


def _projector_tensors(prefix: str, generator) -> dict[str, torch.Tensor]:
    """mlp2x_gelu: Linear(vision -> hidden), GELU, Linear(hidden -> hidden); Sequential indices 0, 2."""
    h, v = TINY_DECODER["hidden_size"], TINY_VISION["hidden_size"]
    return {prefix + "0.weight": _fp16_normal((h, v), LINEAR_STD, generator),
            prefix + "0.bias": _fp16_normal((h,), BIAS_STD, generator),
            prefix + "2.weight": _fp16_normal((h, h), LINEAR_STD, generator),
            prefix + "2.bias": _fp16_normal((h,), BIAS_STD, generator)}


def _llava_fields(vision_cfg: dict) -> dict:
    return {"mm_hidden_size": vision_cfg["hidden_size"], "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "image_aspect_ratio": "pad"}


def _moe_block(top_k: int, use_residual: bool) -> dict:
    """MoE-LLaVA's config.moe fields, in the order its config class writes them."""
    return {"moe_enable": True, "moe_mode": "sparse", "moe_layers_idx": list(MOE_LAYERS), "ep_size": 1,
            "top_k_experts": top_k, "capacity_factor": 1.5, "eval_capacity_factor": 2.0, "min_capacity": 0,
            "use_residual": use_residual, "router_aux_loss_coef": 0.01, "train_modules": [],
            "num_experts": [NUM_EXPERTS] * len(MOE_LAYERS)}


def _decoder_config(parts: Path, rope_style: str) -> dict:
    if rope_style not in ("v5", "v4"):
        raise ValueError(f"rope_style {rope_style!r}: expected 'v5' or 'v4'")
    config = _read_json(parts / "qwen2" / "config.json")
    return _to_v4_rope(config) if rope_style == "v4" else config


def _parts_dir(ckpt: Path, keep_parts: bool) -> Path:
    if keep_parts:
        return ckpt.parent / (ckpt.name + ".parts")
    return Path(tempfile.mkdtemp(prefix="hf-parts-"))


def build_mote_llava(ckpt_dir: str | Path, *, top_k: int = 2, tied: bool = False, tokenizer: str = "qwen",
                     rope_style: str = "v5", vision_keys: str = "as_saved", seed: int = 0,
                     keep_parts: bool = False) -> BuiltCheckpoint:
    """A MoTE-LLaVA checkpoint: Qwen2 + CLIP tower (LLaVA wrapper keys) + mlp2x_gelu projector, MoE on
    layers MOE_LAYERS with NUM_EXPERTS latent ternary experts and the dense FFN as shared expert."""
    ckpt = Path(ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    parts = _parts_dir(ckpt, keep_parts)
    generator, _ = _build_parts(parts, tied=tied, tokenizer=tokenizer, seed=seed)
    dense = _load_tensors(parts / "qwen2" / "model.safetensors")
    tensors = {}
    for name, t in dense.items():
        layer_mlp = [i for i in MOE_LAYERS if name.startswith(f"model.layers.{i}.mlp.")]
        tensors[name.replace(".mlp.", ".mlp.shared_expert.") if layer_mlp else name] = t
    for i in MOE_LAYERS:
        tensors.update(_moe_layer_tensors(dense, i, NUM_EXPERTS, generator, experts_from_dense=False))
    tensors.update(_vision_tensors(parts, "model.vision_tower.vision_tower.", vision_keys))
    tensors.update(_projector_tensors("model.mm_projector.", generator))
    _save_tensors(tensors, ckpt / "model.safetensors")

    vision_cfg = _read_json(parts / "clip_vision" / "config.json")
    config = {**_decoder_config(parts, rope_style), "architectures": ["MoTELlavaQwen2ForCausalLM"],
              "model_type": "mote_llava_qwen2", "vision_config": vision_cfg, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_tower": "openai/clip-vit-tiny-patch8-32", **_llava_fields(vision_cfg),
              "moe": {**_moe_block(top_k, use_residual=False), "expert_type": "ternary", "shared_expert": True}}
    _write_json(ckpt / "config.json", config)
    _copy_tokenizer_and_processor(parts, ckpt)
    if not keep_parts:
        shutil.rmtree(parts)
    return BuiltCheckpoint(ckpt, config, parts_dir=parts if keep_parts else None)


def _residual_tensors(dense: dict[str, torch.Tensor], i: int, generator) -> dict[str, torch.Tensor]:
    """use_residual (PR-MoE): the dense FFN as `mlp.mlp.*` and the 2-way mixer `mlp.coefficient`."""
    h = TINY_DECODER["hidden_size"]
    base = f"model.layers.{i}.mlp."
    out = {f"{base}mlp.{proj}.weight": dense[f"{base}{proj}.weight"] for proj in SWIGLU_PROJS}
    out[base + "coefficient.weight"] = _fp16_normal((2, h), ROUTER_STD, generator)
    out[base + "coefficient.bias"] = _fp16_normal((2,), BIAS_STD, generator)
    return out


def build_moe_llava(ckpt_dir: str | Path, *, top_k: int = 2, use_residual: bool = False, tied: bool = False,
                    tokenizer: str = "qwen", rope_style: str = "v5", vision_keys: str = "as_saved",
                    vision_in_separate_dir: bool = False, seed: int = 0,
                    keep_parts: bool = False) -> BuiltCheckpoint:
    """A plain MoE-LLaVA (Qwen1.5/Qwen2 base) checkpoint: fp experts up-cycled from the dense FFN, no
    shared expert, optional use_residual; image tower under `model.image_tower.image_tower.`. With
    vision_in_separate_dir the tower is a CLIPVisionModel dir next to ckpt_dir (no vision_config,
    no tower tensors in the checkpoint)."""
    ckpt = Path(ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    parts = _parts_dir(ckpt, keep_parts)
    generator, _ = _build_parts(parts, tied=tied, tokenizer=tokenizer, seed=seed)
    dense = _load_tensors(parts / "qwen2" / "model.safetensors")
    moe_mlp_prefixes = tuple(f"model.layers.{i}.mlp." for i in MOE_LAYERS)
    tensors = {k: v for k, v in dense.items() if not k.startswith(moe_mlp_prefixes)}
    for i in MOE_LAYERS:
        tensors.update(_moe_layer_tensors(dense, i, NUM_EXPERTS, generator, experts_from_dense=True))
        if use_residual:
            tensors.update(_residual_tensors(dense, i, generator))
    tensors.update(_projector_tensors("model.mm_projector.image_spatial_proj.", generator))
    vision_cfg = _read_json(parts / "clip_vision" / "config.json")
    vision_dir = None
    if vision_in_separate_dir:
        vision_dir = ckpt.parent / (ckpt.name + ".vision_tower")
        shutil.copytree(parts / "clip_vision", vision_dir, dirs_exist_ok=True)
    else:
        tensors.update(_vision_tensors(parts, "model.image_tower.image_tower.", vision_keys))
    _save_tensors(tensors, ckpt / "model.safetensors")

    config = {**_decoder_config(parts, rope_style), "architectures": ["MoELLaVAQwen1_5ForCausalLM"],
              "model_type": "moe_llava_qwen1_5", "image_projector_type": "mlp2x_gelu",
              "mm_image_tower": str(vision_dir) if vision_dir else "openai/clip-vit-tiny-patch8-32",
              **_llava_fields(vision_cfg), "moe": _moe_block(top_k, use_residual), "lora": {}}
    if not vision_in_separate_dir:
        config["vision_config"] = vision_cfg
    _write_json(ckpt / "config.json", config)
    _copy_tokenizer_and_processor(parts, ckpt)
    if not keep_parts:
        shutil.rmtree(parts)
    return BuiltCheckpoint(ckpt, config, vision_tower_dir=vision_dir, parts_dir=parts if keep_parts else None)


# ================================================================== the oracle's MoE

class BitLinear(nn.Module):
    """y = (xq @ Wt^T) * gamma / s: ternary weights (absmean), int8 per-token absmax activations."""

    def __init__(self, latent_weight: torch.Tensor):  # [out, in]
        super().__init__()
        gamma = latent_weight.abs().mean()
        self.register_buffer("gamma", gamma)
        self.register_buffer("ternary", torch.clamp(torch.round(latent_weight / (gamma + 1e-5)), -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)  # [..., 1]
        xq = torch.clamp(torch.round(x * scale), -128, 127)
        return (xq @ self.ternary.T) * self.gamma / scale


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); each projection an nn.Linear or a BitLinear."""

    def __init__(self, weights: dict[str, torch.Tensor], ternary: bool):
        super().__init__()
        make = BitLinear if ternary else _linear
        self.gate_proj, self.up_proj, self.down_proj = (make(weights[p]) for p in SWIGLU_PROJS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., H]
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(experts [N, k], weights [N, k]): p = softmax in fp32; top-1 raw p; top-2 = argmax of the rest,
    the two weights renormalised to sum 1. No capacity limit: no token is dropped."""
    probs = torch.softmax(router_logits.float(), dim=-1)  # [N, E]
    first = probs.argmax(dim=-1)  # [N]
    if top_k == 1:
        return first[:, None], probs.gather(1, first[:, None])
    rest = probs.masked_fill(nn.functional.one_hot(first, probs.shape[-1]).bool(), float("-inf"))
    second = rest.argmax(dim=-1)  # [N]
    experts = torch.stack([first, second], dim=1)  # [N, 2]
    weights = probs.gather(1, experts)  # [N, 2]
    return experts, weights / weights.sum(dim=-1, keepdim=True)


class MoEFeedForward(nn.Module):
    """shared(x) + sum_k w_k E_k(x); with use_residual: moe * c0 + mlp(x) * c1, c = softmax(coef(x))."""

    def __init__(self, router_weight: torch.Tensor, experts: list[SwiGLU], top_k: int,
                 shared: SwiGLU | None = None, residual: SwiGLU | None = None, coefficient: nn.Linear | None = None):
        super().__init__()
        self.router_weight = nn.Parameter(router_weight, requires_grad=False)  # [E, H]
        self.experts = nn.ModuleList(experts)
        self.top_k = top_k
        self.shared, self.residual, self.coefficient = shared, residual, coefficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H]
        tokens = x.reshape(-1, x.shape[-1])  # [N, H]
        experts, weights = route(tokens.float() @ self.router_weight.float().T, self.top_k)  # [N, k] each
        every = torch.stack([expert(tokens) for expert in self.experts])  # [E, N, H]
        rows = torch.arange(tokens.shape[0])
        out = sum(weights[:, k, None] * every[experts[:, k], rows] for k in range(self.top_k))  # [N, H]
        if self.residual is not None:
            mix = torch.softmax(self.coefficient(tokens), dim=-1)  # [N, 2]
            out = out * mix[:, 0:1] + self.residual(tokens) * mix[:, 1:2]
        if self.shared is not None:
            out = out + self.shared(tokens)
        return out.reshape(x.shape)


def _swiglu_at(tensors: dict, prefix: str, ternary: bool) -> SwiGLU:
    return SwiGLU({p: tensors[f"{prefix}{p}.weight"] for p in SWIGLU_PROJS}, ternary)


def moe_feed_forward(tensors: dict[str, torch.Tensor], moe: dict, layer: int, n_experts: int) -> MoEFeedForward:
    """The MoE FFN of `layer` from checkpoint tensors and config.moe."""
    base = f"model.layers.{layer}.mlp."
    ternary = moe.get("expert_type", "fp") == "ternary"
    experts = [_swiglu_at(tensors, f"{base}deepspeed_moe.experts.deepspeed_experts.{k}.", ternary)
               for k in range(n_experts)]
    shared = _swiglu_at(tensors, base + "shared_expert.", False) if moe.get("shared_expert") else None
    residual = coefficient = None
    if moe.get("use_residual"):
        residual = _swiglu_at(tensors, base + "mlp.", False)
        w = tensors[base + "coefficient.weight"]  # [2, H]
        coefficient = nn.Linear(w.shape[1], 2)
        with torch.no_grad():
            coefficient.weight.copy_(w)
            coefficient.bias.copy_(tensors[base + "coefficient.bias"])
    return MoEFeedForward(tensors[base + "deepspeed_moe.gate.wg.weight"], experts, moe["top_k_experts"],
                          shared, residual, coefficient)


# ================================================================== the oracle

_LLAVA_ONLY_FIELDS = ("vision_config", "moe", "lora", "mm_projector_type", "image_projector_type", "mm_hidden_size",
                      "mm_vision_select_layer", "mm_vision_select_feature", "image_aspect_ratio",
                      "mm_vision_tower", "mm_image_tower", "image_token_index")
_VISION_PREFIXES = ("model.vision_tower.vision_tower.", "model.image_tower.image_tower.")
_PROJECTOR_PREFIXES = ("model.mm_projector.image_spatial_proj.", "model.mm_projector.")


@dataclass
class OracleResult:
    tokens: list[int]  # n_new greedy tokens
    margins: list[float]  # top-1 minus top-2 logit at each step
    logits_first: np.ndarray  # [vocab] float32 logits that chose tokens[0]


def _moe_layers(config: dict) -> dict[int, int]:
    """{layer: number of experts} of an enabled moe block."""
    moe = config.get("moe") or {}
    if not moe.get("moe_enable", False):
        return {}
    experts = moe["num_experts"]
    experts = experts if isinstance(experts, list) else [experts] * len(moe["moe_layers_idx"])
    return dict(zip(moe["moe_layers_idx"], experts))


def _load_decoder(config: dict, tensors: dict, tmp: Path, moe_override=None):
    """Qwen2ForCausalLM.from_pretrained on the checkpoint's Qwen2 parts; MoE layers' mlp swapped."""
    from transformers import Qwen2ForCausalLM

    qwen_dir = tmp / "qwen2"
    qwen_dir.mkdir()
    qwen_config = {k: v for k, v in config.items() if k not in _LLAVA_ONLY_FIELDS}
    qwen_config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    _write_json(qwen_dir / "config.json", qwen_config)
    moe_layers = _moe_layers(config)
    moe_mlp_prefixes = tuple(f"model.layers.{i}.mlp." for i in moe_layers)
    decoder_prefixes = ("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head.")
    decoder_keys = [k for k in tensors if k.startswith(decoder_prefixes)]
    _save_tensors({k: tensors[k] for k in decoder_keys if not k.startswith(moe_mlp_prefixes)},
                  qwen_dir / "model.safetensors")
    with _quiet_transformers():
        model, info = Qwen2ForCausalLM.from_pretrained(str(qwen_dir), dtype=torch.float32,
                                                       attn_implementation="eager", output_loading_info=True)
    expected_missing = {f"{p}{proj}.weight" for p in moe_mlp_prefixes for proj in SWIGLU_PROJS}
    if set(info["missing_keys"]) != expected_missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise RuntimeError(f"Qwen2 parts did not load cleanly: {info}")
    for i, n_experts in moe_layers.items():
        mlp = moe_override(i, tensors) if moe_override else moe_feed_forward(tensors, config["moe"], i, n_experts)
        model.model.layers[i].mlp = mlp
    return model.eval()


def _load_vision_tower(config: dict, tensors: dict, tmp: Path, vision_tower_dir: Path | None):
    """CLIPVisionModel.from_pretrained: from vision_tower_dir, or from the checkpoint's tower keys."""
    from transformers import CLIPVisionModel

    if vision_tower_dir is None:
        vision_tower_dir = tmp / "clip_vision"
        vision_tower_dir.mkdir()
        _write_json(vision_tower_dir / "config.json", config["vision_config"])
        prefix = next(p for p in _VISION_PREFIXES if any(k.startswith(p) for k in tensors))
        _save_tensors({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                      vision_tower_dir / "model.safetensors")
    with _quiet_transformers():
        model, info = CLIPVisionModel.from_pretrained(str(vision_tower_dir), dtype=torch.float32,
                                                      attn_implementation="eager", output_loading_info=True)
    if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise RuntimeError(f"CLIP tower did not load cleanly: {info}")
    return model.eval()


def _load_projector(tensors: dict) -> nn.Sequential:
    """mlp2x_gelu: Linear -> GELU (exact erf) -> Linear."""
    prefix = next(p for p in _PROJECTOR_PREFIXES if p + "0.weight" in tensors)
    w0, w2 = tensors[prefix + "0.weight"], tensors[prefix + "2.weight"]  # [H, V], [H, H]
    projector = nn.Sequential(nn.Linear(w0.shape[1], w0.shape[0]), nn.GELU(), nn.Linear(w2.shape[1], w2.shape[0]))
    projector.load_state_dict({k: tensors[prefix + k] for k in ("0.weight", "0.bias", "2.weight", "2.bias")})
    return projector.eval()


def expand2square(image, background: tuple[int, ...]):
    """LLaVA's pad: the image centred on a square of the background colour."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


class Oracle:
    """The loaded model: transformers' Qwen2ForCausalLM, CLIPVisionModel and CLIPImageProcessor."""

    def __init__(self, ckpt_dir: str | Path, vision_tower_dir: str | Path | None = None, moe_override=None):
        from transformers import CLIPImageProcessor

        ckpt = Path(ckpt_dir)
        self.config = _read_json(ckpt / "config.json")
        tensors = _load_tensors(ckpt / "model.safetensors")
        with tempfile.TemporaryDirectory(prefix="oracle-") as tmp:
            self.decoder = _load_decoder(self.config, tensors, Path(tmp), moe_override)
            self.vision = _load_vision_tower(self.config, tensors, Path(tmp),
                                             Path(vision_tower_dir) if vision_tower_dir else None)
        self.projector = _load_projector(tensors)
        with _quiet_transformers():  # it warns that config.json's model_type is not a CLIP one
            self.image_processor = CLIPImageProcessor.from_pretrained(str(ckpt))
        self.select_layer = self.config.get("mm_vision_select_layer", -2)
        if self.config.get("mm_vision_select_feature", "patch") != "patch":
            raise ValueError("the oracle handles mm_vision_select_feature 'patch' only")

    def pixel_values(self, image) -> torch.Tensor:  # -> [1, 3, S, S]
        """LLaVA process_images for image_aspect_ratio 'pad'."""
        background = tuple(int(x * 255) for x in self.image_processor.image_mean)
        square = expand2square(image.convert("RGB"), background)
        return self.image_processor(images=square, return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def image_embeddings(self, image) -> torch.Tensor:  # -> [P, H]
        hidden = self.vision(self.pixel_values(image), output_hidden_states=True).hidden_states
        features = hidden[self.select_layer][:, 1:]  # [1, P, V]: class token dropped
        return self.projector(features)[0]

    @torch.no_grad()
    def prompt_embeddings(self, prompt_ids: list[int], image=None) -> torch.Tensor:  # -> [T', H]
        """Token embeddings with the projected patches spliced in at IMAGE_TOKEN_INDEX."""
        embed = self.decoder.get_input_embeddings()
        n_images = prompt_ids.count(IMAGE_TOKEN_INDEX)
        if n_images != (1 if image is not None else 0):
            raise ValueError(f"prompt has {n_images} image placeholders for {int(image is not None)} image(s)")
        if image is None:
            return embed(torch.tensor(prompt_ids))
        at = prompt_ids.index(IMAGE_TOKEN_INDEX)
        before = torch.tensor(prompt_ids[:at], dtype=torch.long)  # [at]
        after = torch.tensor(prompt_ids[at + 1:], dtype=torch.long)  # [T - at - 1]
        return torch.cat([embed(before), self.image_embeddings(image), embed(after)])

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], image=None, n_new: int = 24, stop_at_eos: bool = False) -> OracleResult:
        """Greedy decoding, the whole sequence re-run on inputs_embeds at every step."""
        embeds = self.prompt_embeddings(prompt_ids, image)  # [T, H]
        embed = self.decoder.get_input_embeddings()
        eos = self.config.get("eos_token_id")
        tokens, margins, first = [], [], None
        for _ in range(n_new):
            logits = self.decoder(inputs_embeds=embeds[None]).logits[0, -1]  # [V]
            top = logits.topk(2)
            token = int(top.indices[0])
            tokens.append(token)
            margins.append(float(top.values[0] - top.values[1]))
            first = logits.numpy().copy() if first is None else first
            if stop_at_eos and token == eos:
                break
            embeds = torch.cat([embeds, embed(torch.tensor([token]))])
        return OracleResult(tokens, margins, first)


def oracle_generate(ckpt_dir: str | Path, prompt_ids: list[int], image=None, n_new: int = 24, *,
                    vision_tower_dir: str | Path | None = None, stop_at_eos: bool = False) -> OracleResult:
    """Load the checkpoint with transformers and decode n_new greedy tokens (see Oracle.generate)."""
    return Oracle(ckpt_dir, vision_tower_dir).generate(prompt_ids, image, n_new, stop_at_eos)
