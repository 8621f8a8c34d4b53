"""GGUF files for the llama.cpp peer benchmark (benchmarks/peer_llamacpp.py): our synth decoder's dims,
random weights, written with the `gguf` package's GGUFWriter and quantized by its numpy quants module.

Two layouts, both Qwen2 decoders with the dims of a mote-edge preset:
  * "dense":    llama.cpp arch qwen2; every matrix Q4_0, the tied embedding / lm_head Q8_0.
  * "qwen2moe": llama.cpp arch qwen2moe, which puts its MoE on *every* layer (it has no dense layers, so
                our "sparse" layout, MoE on every other layer, has no equivalent): router over E experts,
                top-k, plus a shared expert of the dense FFN's width (sigmoid-gated, as Qwen2-MoE is).
                Routed experts are ternary (TQ2_0 or TQ1_0) where the row length is a multiple of 256 and
                Q4_0 where it is not: at Qwen2.5-0.5B dims the down projection (rows of 4864 = 19 x 256) is
                ternary, gate and up (rows of 896) fall back to Q4_0. Attention, the shared expert Q4_0;
                token_embd and output (qwen2moe needs its own output matrix) Q8_0.
Norm weights are ones, biases zeros, matrices N(0, 0.02); the same seed gives the same file.

bytes_per_token() reads a GGUF back and counts the weight bytes one decoded token touches.
No torch, no llama_cpp here: only numpy and gguf.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

TERNARY_BLOCK = 256  # TQ1_0 / TQ2_0 quantize rows in blocks of 256 weights
RECIPE_KEY = "mote_edge.peer.recipe"  # a GGUF string field: the GgufSpec a file was written from (JSON)


@dataclass(frozen=True)
class GgufSpec:
    """What one peer GGUF holds: the decoder dims, the layout and the quant types."""
    layout: str  # "dense" | "qwen2moe"
    vocab: int
    hidden: int
    intermediate: int  # the dense FFN's width; also each expert's and the shared expert's
    layers: int
    heads: int
    kv_heads: int
    rope_theta: float
    rms_eps: float
    max_positions: int
    experts: int = 0
    top_k: int = 0
    ternary: str = "TQ2_0"  # the routed experts' type where rows allow it: TQ2_0 | TQ1_0
    seed: int = 0

    @property
    def arch(self) -> str:
        return "qwen2" if self.layout == "dense" else "qwen2moe"


def spec_from_preset(preset: str, layout: str, ternary: str = "TQ2_0", seed: int = 0) -> GgufSpec:
    """The GgufSpec with a mote-edge synth preset's decoder dims (and its experts / top-k for qwen2moe)."""
    from mote_edge.presets import preset_config

    if layout not in ("dense", "qwen2moe"):
        raise ValueError(f"unknown GGUF layout {layout!r} (choose dense or qwen2moe)")
    if ternary not in ("TQ2_0", "TQ1_0"):
        raise ValueError(f"unknown ternary type {ternary!r} (choose TQ2_0 or TQ1_0)")
    cfg = preset_config(preset)
    d = cfg.decoder
    moe = layout == "qwen2moe"
    return GgufSpec(layout=layout, vocab=d.vocab_size, hidden=d.hidden_size, intermediate=d.intermediate_size,
                    layers=d.num_hidden_layers, heads=d.num_attention_heads, kv_heads=d.num_key_value_heads,
                    rope_theta=float(d.rope_theta), rms_eps=float(d.rms_norm_eps),
                    max_positions=d.max_position_embeddings,
                    experts=cfg.moe.num_experts[0] if moe else 0, top_k=cfg.moe.top_k_experts if moe else 0,
                    ternary=ternary, seed=seed)


@dataclass(frozen=True)
class TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order: [..., rows, row length]
    qtype: str  # a GGMLQuantizationType name: F32, Q4_0, Q8_0, TQ2_0, TQ1_0
    fill: str  # "normal" | "ones" | "zeros"


def expert_qtype(spec: GgufSpec, row_length: int) -> str:
    """The routed experts' type for rows of this length: ternary where its 256-blocks fit, else Q4_0."""
    return spec.ternary if row_length % TERNARY_BLOCK == 0 else "Q4_0"


def tensor_plan(spec: GgufSpec) -> list[TensorPlan]:
    """Every tensor of the file, in write order, named as llama.cpp's qwen2 / qwen2moe loaders expect."""
    H, F, E = spec.hidden, spec.intermediate, spec.experts
    head_dim = H // spec.heads
    kv = spec.kv_heads * head_dim
    plan = [TensorPlan("token_embd.weight", (spec.vocab, H), "Q8_0", "normal")]
    for i in range(spec.layers):
        b = f"blk.{i}."
        plan += [TensorPlan(b + "attn_norm.weight", (H,), "F32", "ones"),
                 TensorPlan(b + "attn_q.weight", (H, H), "Q4_0", "normal"),
                 TensorPlan(b + "attn_q.bias", (H,), "F32", "zeros"),
                 TensorPlan(b + "attn_k.weight", (kv, H), "Q4_0", "normal"),
                 TensorPlan(b + "attn_k.bias", (kv,), "F32", "zeros"),
                 TensorPlan(b + "attn_v.weight", (kv, H), "Q4_0", "normal"),
                 TensorPlan(b + "attn_v.bias", (kv,), "F32", "zeros"),
                 TensorPlan(b + "attn_output.weight", (H, H), "Q4_0", "normal"),
                 TensorPlan(b + "ffn_norm.weight", (H,), "F32", "ones")]
        if spec.layout == "dense":
            plan += [TensorPlan(b + "ffn_gate.weight", (F, H), "Q4_0", "normal"),
                     TensorPlan(b + "ffn_up.weight", (F, H), "Q4_0", "normal"),
                     TensorPlan(b + "ffn_down.weight", (H, F), "Q4_0", "normal")]
        else:
            plan += [TensorPlan(b + "ffn_gate_inp.weight", (E, H), "F32", "normal"),
                     TensorPlan(b + "ffn_gate_exps.weight", (E, F, H), expert_qtype(spec, H), "normal"),
                     TensorPlan(b + "ffn_up_exps.weight", (E, F, H), expert_qtype(spec, H), "normal"),
                     TensorPlan(b + "ffn_down_exps.weight", (E, H, F), expert_qtype(spec, F), "normal"),
                     TensorPlan(b + "ffn_gate_inp_shexp.weight", (H,), "F32", "normal"),
                     TensorPlan(b + "ffn_gate_shexp.weight", (F, H), "Q4_0", "normal"),
                     TensorPlan(b + "ffn_up_shexp.weight", (F, H), "Q4_0", "normal"),
                     TensorPlan(b + "ffn_down_shexp.weight", (H, F), "Q4_0", "normal")]
    plan.append(TensorPlan("output_norm.weight", (H,), "F32", "ones"))
    if spec.layout == "qwen2moe":  # qwen2moe requires an output matrix; qwen2 ties it to token_embd
        plan.append(TensorPlan("output.weight", (spec.vocab, H), "Q8_0", "normal"))
    return plan


def _values(t: TensorPlan, rng: np.random.Generator) -> np.ndarray:
    if t.fill == "ones":
        return np.ones(t.shape, np.float32)
    if t.fill == "zeros":
        return np.zeros(t.shape, np.float32)
    return rng.standard_normal(t.shape, dtype=np.float32) * np.float32(0.02)


def write_gguf(spec: GgufSpec, path: Path) -> Path:
    """Write the peer GGUF for `spec` to `path`, one tensor in memory at a time (the qwen2moe file at
    Qwen2.5-0.5B dims is ~1.5 GB). Returns path."""
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    plan = tensor_plan(spec)
    w = gguf.GGUFWriter(tmp, spec.arch)
    w.add_name(f"mote-edge peer {spec.layout}")
    w.add_string(RECIPE_KEY, json.dumps(asdict(spec), sort_keys=True))
    w.add_context_length(spec.max_positions)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(spec.layers)
    w.add_feed_forward_length(spec.intermediate)
    w.add_head_count(spec.heads)
    w.add_head_count_kv(spec.kv_heads)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.rms_eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    if spec.layout == "qwen2moe":
        w.add_expert_count(spec.experts)
        w.add_expert_used_count(spec.top_k)
        w.add_expert_feed_forward_length(spec.intermediate)
        w.add_expert_shared_feed_forward_length(spec.intermediate)
    # no tokenizer: the benchmark feeds token ids; llama.cpp then makes `vocab_size` placeholder tokens
    w.add_tokenizer_model("none")
    w.add_vocab_size(spec.vocab)
    for t in plan:
        qtype = gguf.GGMLQuantizationType[t.qtype]
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), int(np.prod(t.shape)) * 4)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(t.shape, qtype)
            w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(spec.seed)
    for t in plan:
        w.write_tensor_data(gguf.quants.quantize(_values(t, rng), gguf.GGMLQuantizationType[t.qtype]))
    w.close()
    tmp.replace(path)
    return path


def read_spec(path: Path) -> GgufSpec | None:
    """The GgufSpec a peer GGUF was written from, or None for any other file."""
    import gguf

    field = gguf.GGUFReader(path).get_field(RECIPE_KEY)
    if field is None:
        return None
    return GgufSpec(**json.loads(field.contents()))


def ensure_gguf(spec: GgufSpec, path: Path) -> Path:
    """path, written anew unless it already holds exactly this spec."""
    path = Path(path)
    if path.exists():
        try:
            if read_spec(path) == spec:
                return path
        except (ValueError, OSError, TypeError, KeyError):
            pass  # unreadable or foreign: rewrite it
    return write_gguf(spec, path)


@dataclass(frozen=True)
class TokenBytes:
    """Weight bytes one decoded token reads from a GGUF."""
    total: int  # the whole file's tensors
    per_token: int  # all non-expert tensors (the lm_head once) + top_k / experts of every expert tensor
    types: dict  # tensor-name suffix -> GGML type, for the table (e.g. {"ffn_down_exps": "TQ2_0"})


def bytes_per_token(path: Path) -> TokenBytes:
    """Reads every tensor once per token except: expert tensors (*_exps) count top_k / n_expert of their
    bytes; token_embd counts one row when the file has its own output matrix (otherwise it is the lm_head,
    read whole)."""
    import gguf

    r = gguf.GGUFReader(path)
    arch = r.get_field("general.architecture").contents()
    experts = r.get_field(f"{arch}.expert_count")
    used = r.get_field(f"{arch}.expert_used_count")
    share = used.contents() / experts.contents() if experts is not None else 1.0
    names = {t.name for t in r.tensors}
    total = per_token = 0.0
    types = {}
    for t in r.tensors:
        total += t.n_bytes
        suffix = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name.rsplit(".", 1)[0]
        types.setdefault(suffix, t.tensor_type.name)
        if "_exps" in t.name:
            per_token += t.n_bytes * share
        elif t.name == "token_embd.weight" and "output.weight" in names:
            per_token += t.n_bytes / int(t.shape[-1])  # one row (ggml shape: [row length, rows])
        else:
            per_token += t.n_bytes
    return TokenBytes(total=int(total), per_token=int(round(per_token)), types=types)
