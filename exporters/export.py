"""`mote-edge export`: checkpoint directory -> one .mote file.

Stages (each with a progress bar): open + validate the checkpoint; export an ONNX vision tower (with
--vision-format onnx); quantize every decoder tensor by the recipe and stream it into place (resident
tensors, then one record per routed expert); write the vision tower + projector (native: one block at a
time, int8 group-wise matrices by default; or the ONNX bytes); finalize.
Memory stays near the largest tensor (a native vision block at most): neither the decoder nor a native
vision tower is ever held whole (an ONNX tower is).
GPTQ (`method="gptq"`) first runs the float model on calibration data to collect Hessians.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mote_edge import __version__
from mote_edge.chat import template_for_tokenizer, template_named
from mote_edge.errors import ExportError
from mote_edge.format.encoding import encode
from mote_edge.format.stats import size_stats
from mote_edge.format.vision_blocks import (DEFAULT_VISION_GROUP_SIZE, VISION_FORMATS, encode_vision_blocks,
                                           plan_vision_blocks, section_nbytes)
from mote_edge.format.writer import MoteWriter
from mote_edge.progress import byte_progress, stderr_console
from mote_edge.quant.gptq import gptq_quantize
from mote_edge.quant.intn import GROUP_SIZES, IntNWeight, pack_intn
from mote_edge.quant.recipe import Recipe
from mote_edge.schema import SWIGLU_PROJS, VISION_ROLES, TensorSpec, checkpoint_tensors, projection_of

from .checkpoint import Checkpoint



@dataclass
class ExportOptions:
    bits: int = 4
    group_size: int = 128
    method: str = "rtn"
    recipe: str | None = None  # per-role overrides, "embed=4,attn=8g64"
    vision_bits: int = 8
    vision_format: str = "native"  # native blocks the runtime streams (int8 groups), or an ONNX model
    vision_group_size: int = DEFAULT_VISION_GROUP_SIZE  # int8 groups of the native section
    calib: Path | None = None  # GPTQ calibration: a .jsonl of {"prompt", "image"}; None = built-in set
    calib_samples: int = 16
    chat_template: str | None = None  # v1, qwen or plain; None = chosen from the tokenizer's EOS
    system: str | None = None  # the template's system prompt, replaced
    vision_tower: Path | None = None  # a CLIP directory for checkpoints that only name their tower
    force: bool = False
    progress: bool = True


@dataclass
class ExportSummary:
    path: Path
    file_bytes: int
    stats: dict
    seconds: float
    peak_rss_bytes: int
    stage_seconds: dict = field(default_factory=dict)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_metadata(ckpt: Checkpoint, recipe: Recipe, chat_template: str | None = None, system: str | None = None,
                   warn=None) -> dict:
    tok = ckpt.tokenizer(warn)
    template = template_named(chat_template) if chat_template else template_for_tokenizer(tok)
    stop_ids = sorted(set(ckpt.config.decoder.eos_ids) | ({tok.eos_id} if tok.eos_id is not None else set()))
    return {
        "format": "mote",
        "created_by": f"mote-edge {__version__}",
        "model": ckpt.config.to_dict(),
        "tokenizer": {"json": tok.to_str(), "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                      "stop_token_ids": stop_ids},
        "chat_template": template.with_system(system).to_dict(),
        "image_preprocess": {**ckpt.image_config().to_preprocessor_config(),
                             "image_aspect_ratio": ckpt.config.projector.image_aspect_ratio},
        "recipe": recipe.to_dict(),
    }


def assign_offsets(writer: MoteWriter, specs: list[TensorSpec], recipe: Recipe) -> None:
    """Resident tensors in schema order, then one record per (layer, expert)."""
    experts: dict[tuple[int, int], list[TensorSpec]] = {}
    for spec in specs:
        if spec.role in VISION_ROLES:
            continue
        if spec.expert is not None:
            experts.setdefault((spec.layer, spec.expert), []).append(spec)
            continue
        writer.add_tensor(spec.name, spec.role, recipe.scheme_for(spec.role), spec.shape)
    for (layer, expert), group in experts.items():
        by_proj = {projection_of(s.name): s for s in group}
        writer.add_expert(layer, expert, [(p, by_proj[p].role, recipe.scheme_for(by_proj[p].role), by_proj[p].shape)
                                          for p in SWIGLU_PROJS])


def vision_reference(ckpt: Checkpoint):
    """The torch reference model with only its vision tower + projector built and loaded (the decoder
    stays on the meta device: no memory)."""
    import torch

    from .reference import MoTELlavaForCausalLM

    with torch.device("meta"):
        model = MoTELlavaForCausalLM(ckpt.config)
    model.model.vision_tower.to_empty(device="cpu")
    model.model.mm_projector.to_empty(device="cpu")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for spec in ckpt.specs:
            if spec.role in VISION_ROLES:
                params[spec.name].copy_(torch.from_numpy(ckpt.tensor(spec.name)))
    return model.eval()


def _vision_onnx(ckpt: Checkpoint, bits: int) -> bytes:
    """The vision tower + projector exported to ONNX bytes."""
    from .vision_onnx import export_vision_onnx

    return export_vision_onnx(vision_reference(ckpt), weight_bits=bits)


def _vision_section(ckpt: Checkpoint, bits: int, opts: ExportOptions) -> tuple[bytes | None, dict, list]:
    """An ONNX section's bytes, or (native) None and its planned blocks (encoded while writing); its
    metadata entry."""
    if opts.vision_format == "onnx":
        info = {"format": "onnx", "weight_bits": bits, "input": "pixel_values", "output": "image_features"}
        return _vision_onnx(ckpt, bits), info, []
    blocks = plan_vision_blocks(ckpt.config, bits, opts.vision_group_size)
    return None, {"format": "native", "weight_bits": bits, "group_size": opts.vision_group_size}, blocks


def _write_vision(writer: MoteWriter, ckpt: Checkpoint, onnx: bytes | None) -> None:
    """The vision section: the ONNX bytes, or the native blocks encoded and written one at a time."""
    if onnx is not None:
        writer.write_vision(onnx)
        return
    for block, record in encode_vision_blocks(ckpt.config, writer.vision.blocks, ckpt.tensor):
        writer.write_vision_block(block, record)


def _check_vision_options(opts: ExportOptions) -> None:
    if opts.vision_format not in VISION_FORMATS:
        raise ExportError(f"unknown vision format {opts.vision_format!r} (choose {' or '.join(VISION_FORMATS)})")
    if opts.vision_group_size not in GROUP_SIZES:
        raise ExportError(f"unsupported vision group size {opts.vision_group_size} "
                          f"(choose from {', '.join(map(str, GROUP_SIZES))})")


def export_checkpoint(checkpoint_dir: str | Path, output: str | Path, opts: ExportOptions) -> ExportSummary:
    t0 = time.perf_counter()
    output = Path(output)
    if output.exists() and not opts.force:
        raise ExportError(f"{output} exists (use --force to overwrite)")
    if output.is_dir():
        raise ExportError(f"{output} is a directory")
    recipe = Recipe.default(opts.bits, opts.group_size, opts.method, opts.vision_bits, opts.recipe)
    if opts.chat_template is not None:
        template_named(opts.chat_template)  # an unknown name fails before any work
    _check_vision_options(opts)
    ckpt = Checkpoint.open(checkpoint_dir, opts.vision_tower)
    specs = checkpoint_tensors(ckpt.config)
    say = stderr_console.print if opts.progress else (lambda *a, **k: None)
    stages: dict[str, float] = {}

    hessians = None
    if recipe.gptq_roles():
        from .calibration import collect_hessians

        t = time.perf_counter()
        say(f"calibrating for GPTQ on {opts.calib or 'the built-in calibration set'}")
        hessians = collect_hessians(ckpt, recipe, opts.calib, opts.calib_samples, progress=opts.progress)
        stages["calibration"] = time.perf_counter() - t

    t = time.perf_counter()
    if opts.vision_format == "onnx":
        say(f"exporting the vision tower (onnx, {recipe.vision_bits}-bit weights)")
    onnx, vision_info, vision_blocks = _vision_section(ckpt, recipe.vision_bits, opts)
    stages["vision"] = time.perf_counter() - t

    t = time.perf_counter()
    warn = (lambda m: stderr_console.print(f"warning: {m}")) if opts.progress else None
    writer = MoteWriter(output, build_metadata(ckpt, recipe, opts.chat_template, opts.system, warn))
    assign_offsets(writer, specs, recipe)
    writer.add_vision(len(onnx) if onnx is not None else section_nbytes(vision_blocks), vision_info, vision_blocks)
    writer.metadata["sizes"] = size_stats(writer.tensors.values(), writer.experts.values(), writer.vision)
    decoder_bytes = sum(s.numel * 4 for s in specs if s.role not in VISION_ROLES)
    with writer:
        writer.begin()
        with byte_progress(f"quantizing {Path(checkpoint_dir).name}", decoder_bytes, opts.progress) as bar:
            _write_decoder(writer, ckpt, specs, hessians, bar)
        stages["decoder"] = time.perf_counter() - t
        t = time.perf_counter()
        if onnx is None:
            say(f"writing the vision tower (native, {recipe.vision_bits}-bit weights, block by block)")
        _write_vision(writer, ckpt, onnx)
        onnx = None
        writer.finalize()
    stages["vision"] += time.perf_counter() - t
    return ExportSummary(output, output.stat().st_size, writer.metadata["sizes"], time.perf_counter() - t0,
                         _peak_rss(), stages)


def _encode_spec(spec: TensorSpec, w: np.ndarray, scheme, hessians) -> dict:
    if scheme.kind == "intn" and scheme.method == "gptq" and hessians is not None and spec.name in hessians:
        q, scales, zeros = gptq_quantize(w, hessians[spec.name], scheme.bits, scheme.group_size)
        packed = IntNWeight(pack_intn(q, scheme.bits, scheme.group_size), scales, zeros, scheme.bits,
                            scheme.group_size, *w.shape)
        return encode(w, scheme, intn_weight=packed)
    return encode(w, scheme)


def _write_decoder(writer: MoteWriter, ckpt: Checkpoint, specs: list[TensorSpec], hessians, bar) -> None:
    pending: dict[tuple[int, int], dict[str, dict]] = {}
    for spec in specs:
        if spec.role in VISION_ROLES:
            continue
        w = ckpt.tensor(spec.name)
        if spec.expert is None:
            entry = writer.tensors[spec.name]
            writer.write_tensor(spec.name, _encode_spec(spec, w, entry.scheme, hessians))
        else:
            key = (spec.layer, spec.expert)
            proj = projection_of(spec.name)
            scheme = next(t.scheme for t in writer.experts[key].tensors if t.name == proj)
            pending.setdefault(key, {})[proj] = _encode_spec(spec, w, scheme, hessians)
            if len(pending[key]) == len(SWIGLU_PROJS):
                writer.write_expert(*key, pending.pop(key))
        bar.advance(spec.numel * 4)
        del w


def export_summary_text(s: ExportSummary) -> str:
    from mote_edge.format.stats import bits_per_weight

    roles = s.stats["by_role"]
    expert_role = "ternary_expert" if "ternary_expert" in roles else "fp_expert"
    lines = [f"wrote {s.path} ({s.file_bytes / 1e6:,.1f} MB) in {s.seconds:.1f} s, peak RSS {s.peak_rss_bytes / 1e6:,.0f} MB",
             f"  resident {s.stats['resident_bytes'] / 1e6:,.1f} MB, experts {s.stats['expert_bytes'] / 1e6:,.1f} MB, "
             f"vision {s.stats['vision_bytes'] / 1e6:,.1f} MB"]
    if expert_role in roles:
        lines.append(f"  routed experts: {bits_per_weight(roles[expert_role]):.3f} bits per weight")
    return "\n".join(lines)
