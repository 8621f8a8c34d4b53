"""The memory plan: what a run of a .mote model needs, phase by phase (DESIGN.md section 5).

A request goes through phases that never overlap, and the plan is the largest of them:

    image encode      resident weights + KV cache + runtime/metadata + vision peak
                      + the expert slabs kept while encoding (the rest are lent to the vision
                      encoder: emptied before it runs, refilled by later misses)
    prefill / decode  resident weights + KV cache + runtime/metadata + scratch + every expert slab
                      (+ the image inputs when vision is planned)

    resident weights  every non-expert tensor, as loaded
    KV cache          layers x 2 x kv_heads x context x (head_dim x 4 bytes (fp32), or head_dim + a
                      4-byte scale (int8, kv_bits 8))
    scratch           activations of one prefill chunk (PREFILL_CHUNK positions; attention in query
                      chunks over the whole context; the kernels' int8 input copies) + the prompt's
                      embeddings [context, H] (held while its chunks run) + logits
    vision peak       the vision encoder while an image is encoded: the native encoder's largest
                      block + its activations (runtime/vit.py), or an ONNX section's onnxruntime session
    image inputs      what an image adds to the prefill: its pixels and its features [P, H] (their copy
                      in the prompt's embeddings is scratch)
    expert cache      slabs x the largest expert record, rounded up to whole 2 MiB huge pages if >= 16 MiB
                      (in the 2-bit slab layout: ternary tensors at 2 bpw, plus one staging record)
    loader buffers    with prefetch, top_k slabs per MoE layer predicted ahead, beside the cache's: the
                      loader reads the next layers' experts into them while this layer computes

A plan without vision (an Engine loaded with vision=False, or a file without a vision section) has
no image phase. The minimum feasible budget holds top_k slabs (one decode step of one MoE layer),
plus the loader buffers;
the full plan caches every expert. Pure arithmetic over the file's directory: nothing is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mote_edge.config import ModelConfig
from mote_edge.format.constants import SECTION_ALIGN
from mote_edge.format.directory import align

from .budget import BudgetError, format_bytes
from .expert_layout import slab_bytes, staging_bytes
from .hugepages import huge_rounded
from .kv_cache import kv_bytes_per_position
from .vit import vision_peak_bytes as native_vision_peak_bytes
from .weights import STREAMED_KINDS, runtime_nbytes

ATTN_QUERY_CHUNK = 64
PREFILL_CHUNK = 256  # prompt positions per decoder pass: bounds the prefill activations (runtime/decoder.py)
# An ONNX vision section (runtime/vision.py): live [P, D] float32 buffers at a ViT block's peak (qkv,
# scores, mlp); building an onnxruntime session from bytes holds ~3 copies of the model at its peak
# (our bytes, the wrapper's reference, ORT's weights; measured 403 MB for a 134 MB model) plus the session.
VISION_ACTIVATION_FACTOR = 12
VISION_MODEL_COPIES = 3
VISION_SESSION_BYTES = 8 * 10**6  # measured ~4 MB of anonymous memory per session
# Shared-library code paged in on first use and thread stacks: not model data, but RSS over the baseline, so
# the budget covers it. A text-only run pages in numpy's BLAS, tokenizers and the kernel and loader threads
# (measured ~5 MB over the model's own memory: tiny model, 2 threads); the first image through an ONNX
# section adds onnxruntime's kernels, whose code pages then stay resident for the rest of the process
# (hence every phase of such a plan carries them). The native vision encoder runs on the same code as
# the decoder.
RUNTIME_CODE_BYTES = 10 * 10**6
VISION_CODE_BYTES = 14 * 10**6


@dataclass
class MemoryPlan:
    context: int
    resident_bytes: int
    kv_cache_bytes: int
    scratch_bytes: int
    vision_peak_bytes: int
    expert_slab_bytes: int
    expert_slabs: int
    total_experts: int
    overhead_bytes: int = 0  # metadata, tokenizer, RoPE tables
    expert_layout: str = "file"  # how experts sit in the slabs (runtime/expert_layout.py)
    expert_staging_bytes: int = 0  # the read buffer of a converting slab layout
    encode_slabs: int | None = None  # slabs kept while an image is encoded (None = all)
    kv_bits: int = 32  # the KV cache's storage: 32 (float32) or 8 (int8 + a scale per head and position)
    image_input_bytes: int = 0  # pixels + features of the image a prefill splices in (plans with vision)
    loader_slabs: int = 0  # slabs the expert loader prefetches into, beside expert_slabs (same mapping)

    def _cache_bytes(self, slabs: int) -> int:
        """The slabs share one huge-page mapping, faulted in whole 2 MiB pages (runtime/hugepages.py),
        plus the staging buffer of a converting layout."""
        return huge_rounded(self.expert_slab_bytes * slabs) + self.expert_staging_bytes

    @property
    def expert_cache_bytes(self) -> int:
        return self._cache_bytes(self.expert_slabs)

    @property
    def kept_while_encoding(self) -> int:
        return self.expert_slabs if self.encode_slabs is None else min(self.encode_slabs, self.expert_slabs)

    @property
    def fixed_bytes(self) -> int:
        """What every phase holds: resident weights, KV cache, runtime code and metadata."""
        return self.resident_bytes + self.kv_cache_bytes + self.overhead_bytes

    def phases(self) -> dict[str, dict[str, int]]:
        """Phase -> its parts (bytes). The image phase exists only when a vision peak is planned."""
        common = {"resident weights": self.resident_bytes, "KV cache": self.kv_cache_bytes,
                  "runtime + metadata": self.overhead_bytes}
        out = {}
        if self.vision_peak_bytes:
            kept = self.kept_while_encoding
            out["image encode"] = {**common, "vision peak": self.vision_peak_bytes,
                                   f"expert cache ({_slabs(kept)} kept)": self._cache_bytes(kept)}
        layout = ", 2-bit layout" if self.expert_layout == "slab2" else ""
        out["prefill / decode"] = {**common, "scratch": self.scratch_bytes,
                                   f"expert cache ({_slabs(self.expert_slabs)}{layout})": self.expert_cache_bytes}
        if self.image_input_bytes:
            out["prefill / decode"]["image inputs"] = self.image_input_bytes
        if self.loader_slabs:
            out["prefill / decode"][f"expert loader buffers ({_slabs(self.loader_slabs)})"] = (
                self._cache_bytes(self.expert_slabs + self.loader_slabs) - self.expert_cache_bytes)
        return out

    def phase_bytes(self) -> dict[str, int]:
        return {name: sum(parts.values()) for name, parts in self.phases().items()}

    @property
    def binding_phase(self) -> str:
        """The phase that sets the plan's total."""
        sizes = self.phase_bytes()
        return max(sizes, key=sizes.get)

    @property
    def total_bytes(self) -> int:
        return max(self.phase_bytes().values())

    def breakdown(self) -> dict[str, int]:
        """The parts of the binding phase."""
        return self.phases()[self.binding_phase]


def _slabs(n: int) -> str:
    return f"{n} slab{'' if n == 1 else 's'}"


def kv_cache_bytes(cfg: ModelConfig, context: int, kv_bits: int = 32) -> int:
    dc = cfg.decoder
    return dc.num_hidden_layers * context * kv_bytes_per_position(dc.num_key_value_heads, dc.head_dim, kv_bits)


def scratch_bytes(cfg: ModelConfig, context: int) -> int:
    """Per prefill position (float32): 4 x [H] (the residual stream, its norm, a layer's output, the sum),
    q/k/v [(nH + 2 nKV) x head_dim], and the SwiGLU's 4 x [I] (gate and up, and silu's two temporaries
    beside them); the int-N kernels' int8 copy of the widest matrix input and its interleaved copy (2 bytes
    per input, as runtime/vit.py counts); one query chunk's scores; the prompt's embeddings; the logits.
    Measured on a context-filling prompt routed over every expert (benchmarks/plan_tightness.py): with
    3 x [I] and no kernel copies the synth 1.5B's prefill peaked 4.6-4.9 MB over its plan."""
    dc = cfg.decoder
    chunk = min(context, PREFILL_CHUNK)
    per_token = 4 * dc.hidden_size + 4 * dc.intermediate_size + dc.head_dim * (dc.num_attention_heads + 2 * dc.num_key_value_heads)
    kernel = 2 * chunk * max(dc.intermediate_size, dc.hidden_size)
    scores = dc.num_attention_heads * ATTN_QUERY_CHUNK * context
    prompt = context * dc.hidden_size  # the embedded prompt, whole, while the chunks run
    return 4 * (chunk * per_token + scores + prompt + dc.vocab_size) + kernel


def onnx_vision_peak_bytes(cfg: ModelConfig, vision_bytes: int) -> int:
    """An onnxruntime session over an ONNX vision section of `vision_bytes`."""
    v = cfg.vision
    tokens = v.num_patches + 1
    activations = VISION_ACTIVATION_FACTOR * tokens * max(v.intermediate_size, v.hidden_size) * 4
    scores = v.num_attention_heads * tokens * tokens * 4
    return VISION_MODEL_COPIES * vision_bytes + VISION_SESSION_BYTES + activations + scores


@dataclass(frozen=True)
class VisionCost:
    """What an image costs: the encoder's peak, code it pages in for good, and its inputs to the prefill."""
    peak_bytes: int
    code_bytes: int = 0
    input_bytes: int = 0


def image_input_bytes(cfg: ModelConfig) -> int:
    """The preprocessed pixels [C, S, S] and the features [P, H], float32 (their copy in the prompt's
    embeddings is scratch)."""
    v = cfg.vision
    positions = v.num_patches + (cfg.projector.select_feature == "cls_patch")
    return 4 * (v.num_channels * v.image_size ** 2 + positions * cfg.decoder.hidden_size)


def file_vision_cost(f) -> VisionCost | None:
    """The vision cost of an opened MoteFile's section (None without one)."""
    if f.vision is None:
        return None
    inputs = image_input_bytes(f.config)
    if f.vision.format == "native":
        return VisionCost(native_vision_peak_bytes(f.config, f.vision.blocks), 0, inputs)
    return VisionCost(onnx_vision_peak_bytes(f.config, f.vision.nbytes), VISION_CODE_BYTES, inputs)


def overhead_bytes(cfg: ModelConfig, metadata_bytes: int, vision_code_bytes: int = 0) -> int:
    """Parsed metadata and the tokenizer (~4x their JSON), the RoPE cos/sin tables, runtime code."""
    return 4 * metadata_bytes + 2 * 4 * cfg.decoder.head_dim * default_context(cfg) + RUNTIME_CODE_BYTES + vision_code_bytes


@dataclass(frozen=True)
class SlabSpec:
    """How the expert cache lays out its slabs: bytes per slab, the staging buffer, the layout name."""
    slab_bytes: int
    staging_bytes: int = 0
    layout: str = "file"


def plan(cfg: ModelConfig, sizes: dict, context: int, expert_slabs: int | None = None,
         resident_bytes: int | None = None, metadata_bytes: int = 0, slab: SlabSpec | None = None,
         vision: VisionCost | None = None, encode_slabs: int | None = None, kv_bits: int = 32,
         loader_slabs: int = 0) -> MemoryPlan:
    """`sizes` is the file's size statistics; expert_slabs None = every expert cached;
    resident_bytes overrides the stored size (the runtime widens fp16 to fp32); `slab` overrides the
    file layout's slabs (one stored record each); vision None = no image phase; encode_slabs = slabs
    kept while an image is encoded (None = all); loader_slabs: prefetch buffers (none past every expert)."""
    total_experts = sizes["num_expert_records"]
    slabs = total_experts if expert_slabs is None else min(expert_slabs, total_experts)
    slab = slab or SlabSpec(align(sizes["expert_record_max_bytes"], SECTION_ALIGN))
    return MemoryPlan(context=context,
                      overhead_bytes=overhead_bytes(cfg, metadata_bytes, vision.code_bytes if vision else 0),
                      resident_bytes=sizes["resident_bytes"] if resident_bytes is None else resident_bytes,
                      kv_cache_bytes=kv_cache_bytes(cfg, context, kv_bits), scratch_bytes=scratch_bytes(cfg, context),
                      vision_peak_bytes=vision.peak_bytes if vision else 0,
                      expert_slab_bytes=slab.slab_bytes, expert_slabs=slabs, total_experts=total_experts,
                      expert_layout=slab.layout, expert_staging_bytes=slab.staging_bytes,
                      encode_slabs=encode_slabs, kv_bits=kv_bits,
                      image_input_bytes=vision.input_bytes if vision else 0,
                      loader_slabs=max(0, min(loader_slabs, total_experts - slabs)))


def loader_slabs(cfg: ModelConfig, depth: int) -> int:
    """Prefetch buffers for `depth` MoE layers predicted ahead: top_k slabs each."""
    return cfg.moe.top_k_experts * depth if cfg.moe_layers else 0


def minimum_slabs(cfg: ModelConfig) -> int:
    return cfg.moe.top_k_experts if cfg.moe_layers else 0


def default_context(cfg: ModelConfig) -> int:
    return min(cfg.decoder.max_position_embeddings, 4096)


def file_slab_spec(f, layout: str = "file") -> SlabSpec:
    """The slabs of an opened MoteFile's experts in `layout` ("file" or "slab2")."""
    experts = f.experts.values()
    return SlabSpec(slab_bytes(experts, layout), staging_bytes(experts, layout), layout)


def plan_file(f, context: int, expert_slabs: int | None = None, layout: str = "file", vision: bool = True,
              encode_slabs: int | None = None, kv_bits: int = 32, loader_slabs: int = 0) -> MemoryPlan:
    """The plan of an opened MoteFile (resident bytes as loaded: fp16 is widened to fp32)."""
    return plan(f.config, f.metadata["sizes"], context, expert_slabs, _resident_runtime_bytes(f),
                f.header.metadata_length, file_slab_spec(f, layout), file_vision_cost(f) if vision else None,
                encode_slabs, kv_bits, loader_slabs)


def minimum_plan_file(f, context: int, layout: str = "file", vision: bool = True, kv_bits: int = 32,
                      loader_slabs: int = 0) -> MemoryPlan:
    """The smallest feasible plan: top_k slabs (+ the loader buffers), all of them lent while an image is encoded."""
    return plan_file(f, context, minimum_slabs(f.config), layout, vision, encode_slabs=0, kv_bits=kv_bits,
                     loader_slabs=loader_slabs)


def fit_file_budget(f, context: int, budget: int | None, layout: str = "file", vision: bool = True,
                    kv_bits: int = 32, loader_slabs: int = 0) -> MemoryPlan:
    """fit_budget for an opened MoteFile. layout "auto": the 2-bit slab layout when the budget caches
    every expert in it, else the file layout (runtime/expert_layout.py)."""
    args = (f.config, f.metadata["sizes"], context, budget, _resident_runtime_bytes(f), f.header.metadata_length)
    cost = file_vision_cost(f) if vision else None
    if layout == "auto":
        if not f.config.moe_layers or not any(t.scheme.kind == "ternary" for e in f.experts.values() for t in e.tensors):
            return fit_budget(*args, file_slab_spec(f, "file"), cost, kv_bits, loader_slabs)
        try:
            p = fit_budget(*args, file_slab_spec(f, "slab2"), cost, kv_bits, loader_slabs)
            if p.expert_slabs == p.total_experts:
                return p
        except BudgetError:  # the file layout's smaller slabs may still fit; it reports the numbers if not
            pass
        layout = "file"
    return fit_budget(*args, file_slab_spec(f, layout), cost, kv_bits, loader_slabs)


def _resident_runtime_bytes(f) -> int:
    """Resident tensors as loaded, plus what the huge-page arena of the streamed (int-N / ternary)
    weights can add: 64-byte alignment of <= 3 arrays per tensor and the rounding to whole huge pages
    (runtime/weights.py ResidentWeights)."""
    streamed = [t.nbytes for t in f.tensors.values() if t.scheme.kind in STREAMED_KINDS]
    arena = sum(streamed) + 3 * 64 * len(streamed)
    return sum(runtime_nbytes(t) for t in f.tensors.values()) + huge_rounded(arena) - sum(streamed)


def _most_slabs(room: int, slab_bytes: int, limit: int, fits) -> int:
    """The largest n <= limit with fits(n), starting from room // slab_bytes (huge-page rounding may
    cost a slab or two)."""
    n = int(max(0, min(room // slab_bytes if slab_bytes else limit, limit)))
    while n > 0 and not fits(n):
        n -= 1
    return n


def fit_budget(cfg: ModelConfig, sizes: dict, context: int, budget: int | None, resident_bytes: int,
               metadata_bytes: int, slab: SlabSpec | None = None, vision: VisionCost | None = None,
               kv_bits: int = 32, loader_slabs: int = 0) -> MemoryPlan:
    """The plan with as many expert slabs as `budget` allows in the prefill / decode phase (all when
    budget is None) and as many kept while an image is encoded as the image phase allows; raises
    BudgetError naming the numbers when even the minimum does not fit. Allocates nothing."""
    def with_slabs(n, kept=None):
        return plan(cfg, sizes, context, n, resident_bytes, metadata_bytes, slab, vision, kept, kv_bits, loader_slabs)

    full = with_slabs(None)
    if budget is None:
        return full
    per_slab = full.expert_slab_bytes
    staging = full.expert_staging_bytes
    decode_fixed = full.fixed_bytes + full.scratch_bytes + full.image_input_bytes + staging
    slabs = _most_slabs(budget - decode_fixed, per_slab, full.total_experts,
                        lambda n: with_slabs(n).phase_bytes()["prefill / decode"] <= budget)
    kept = slabs
    if full.vision_peak_bytes:
        encode_fixed = full.fixed_bytes + full.vision_peak_bytes + staging
        kept = _most_slabs(budget - encode_fixed, per_slab, slabs,
                           lambda n: with_slabs(slabs, n).phase_bytes()["image encode"] <= budget)
    need = minimum_slabs(cfg)
    result = with_slabs(slabs, kept)
    if slabs < need or result.total_bytes > budget:
        minimum = with_slabs(need, 0)
        parts = "; ".join(f"{phase}: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in items.items())
                          for phase, items in minimum.phases().items())
        least = math.ceil(minimum.total_bytes / 1e5) * 100_000  # rounded up: the printed minimum fits
        have, need = format_bytes(budget), format_bytes(least)
        if have == need:  # never "13.0 MB is below the minimum 13.0 MB"
            have, need = f"{budget / 1e6:,.3f} MB", f"{least / 1e6:,.3f} MB"
        raise BudgetError(f"memory budget {have} is below the minimum {need} "
                          f"for this model at context {context}, set by its {minimum.binding_phase} phase ({parts}); "
                          f"raise --memory-budget or lower --max-context")
    return result
