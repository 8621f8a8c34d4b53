"""Validation of a .mote file's metadata: every structural fact a reader relies on, checked once when
the file is opened (MoteFile), before anything big is allocated or any data is read.

A .mote file is untrusted input: its CRCs only prove the bytes are the ones its writer wrote. So every
field is checked for its JSON type and range before use, every entry against the layout its scheme and
shape imply, every extent against the data section, and (for a model file) the whole directory against
the tensors the model config implies and the schemes the recipe names. Each problem is a FormatError
with one line naming it (the reader prefixes the file name). docs/FORMAT.md section 10 lists the checks.

`tokenizer` is checked for its ids (the tokenizer.json text is parsed by the runtime); `chat_template` must be a
template mote_edge.chat can use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from mote_edge.chat import ChatTemplate
from mote_edge.config import ModelConfig
from mote_edge.errors import ConfigError, FormatError
from mote_edge.image import ImagePreprocessConfig
from mote_edge.quant.intn import BITS as INTN_BITS
from mote_edge.quant.intn import GROUP_SIZES
from mote_edge.quant.recipe import FLOAT_ONLY_ROLES, METHODS, RECIPE_ROLES, Recipe, Scheme
from mote_edge.schema import (LOOKAHEAD_ROLE, MAX_LOOKAHEAD_DEPTH, SWIGLU_PROJS, decoder_tensors, lookahead_tensors,
                               projection_of)

from .constants import FLAG_HAS_VISION, SECTION_ALIGN, TENSOR_ALIGN
from .encoding import PART_DTYPES
from .directory import BlobEntry, ExpertEntry, TensorEntry, VisionBlock, place_back_to_back
from .stats import size_stats
from .vision_blocks import BLOCK_ALIGN, VISION_FORMATS, plan_vision_blocks, section_nbytes

MAX_INT32 = (1 << 31) - 1  # tensor dimensions reach the C kernels as int
MAX_FLOAT32 = 3.4028234663852886e38
MAX_NAME = 512
MAX_DIMS = 4
MAX_LAYERS = 4096  # decoder or vision blocks a config may claim (the directory then bounds them)
SCHEME_KINDS = ("f32", "f16", "intn", "ternary")
SCHEME_KEYS = ("kind", "bits", "group_size", "method")
DIRECTORY_ROLES = tuple(r for r in RECIPE_ROLES if r != "vision") + ("ternary_expert", LOOKAHEAD_ROLE)
VISION_BITS = (8, 16, 32)
VISION_FIELDS = {"input": "pixel_values", "output": "image_features"}  # of an ONNX vision section
VISION_TENSOR_ROLES = ("vision", "projector")
CRC_HEX = re.compile(r"[0-9a-f]{8}")
MODEL_BLOCKS = ("tokenizer", "chat_template", "image_preprocess")
MAX_RESIZE_FACTOR = 8  # image_preprocess shortest_edge at most this many times the vision image size


@dataclass
class Directory:
    """What a validated metadata describes, ready for the reader."""

    config: ModelConfig
    recipe: Recipe
    tensors: dict[str, TensorEntry]
    experts: dict[tuple[int, int], ExpertEntry]
    vision: BlobEntry | None
    extents: list[tuple[int, int]]  # (offset, nbytes) of every entry, sorted
    lookahead_depth: int = 0  # stored lookahead predictors 1 .. this many MoE layers ahead (0: none)


def fail(what: str) -> FormatError:
    return FormatError(what)


def show(value: Any) -> str:
    """A JSON value for an error message: short and on one line."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------- JSON types
def as_dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise fail(f"{what} must be an object, got {show(value)}")
    return value


def as_list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise fail(f"{what} must be a list, got {show(value)}")
    return value


def as_int(value: Any, what: str, lo: int = 0, hi: int = (1 << 62)) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"{what} must be an integer, got {show(value)}")
    if not lo <= value <= hi:
        raise fail(f"{what} {value} is out of range {lo}..{hi}")
    return value


def as_str(value: Any, what: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str):
        raise fail(f"{what} must be a string, got {show(value)}")
    if choices is not None and value not in choices:
        raise fail(f"{what} {show(value)} is not one of {', '.join(choices)}")
    return value


def field_of(d: dict, key: str, what: str) -> Any:
    if key not in d:
        raise fail(f"{what} has no {key!r}")
    return d[key]


def as_crc(value: Any, what: str) -> int:
    if not isinstance(value, str) or not CRC_HEX.fullmatch(value):
        raise fail(f"{what} crc32 must be 8 lowercase hex digits, got {show(value)}")
    return int(value, 16)


# ---------------------------------------------------------------------- schemes and recipe
def scheme_from_json(value: Any, what: str) -> Scheme:
    d = as_dict(value, f"{what} scheme")
    unknown = sorted(set(d) - set(SCHEME_KEYS))
    if unknown:
        raise fail(f"{what} scheme has an unknown key {unknown[0]!r}")
    kind = as_str(field_of(d, "kind", f"{what} scheme"), f"{what} scheme kind", SCHEME_KINDS)
    if kind != "intn":
        extra = [k for k in ("bits", "group_size", "method") if d.get(k) is not None]
        if extra:
            raise fail(f"{what} scheme {kind} must not have {extra[0]!r}")
        return Scheme(kind)
    bits = field_of(d, "bits", f"{what} scheme")
    if type(bits) is not int or bits not in INTN_BITS:
        raise fail(f"{what} scheme bits {show(bits)} is not one of {', '.join(map(str, INTN_BITS))}")
    group = field_of(d, "group_size", f"{what} scheme")
    if type(group) is not int or group not in GROUP_SIZES:
        raise fail(f"{what} scheme group_size {show(group)} is not one of {', '.join(map(str, GROUP_SIZES))}")
    method = as_str(field_of(d, "method", f"{what} scheme"), f"{what} scheme method", METHODS)
    return Scheme("intn", bits, group, method)


def allowed_kinds(role: str) -> tuple[str, ...]:
    """Scheme kinds the runtime can run a tensor of `role` with."""
    if role == "ternary_expert":
        return ("ternary",)
    if role in FLOAT_ONLY_ROLES or role == LOOKAHEAD_ROLE:
        return ("f32", "f16")
    return ("f32", "f16", "intn")


def recipe_from_json(value: Any) -> Recipe:
    d = as_dict(value, "recipe")
    roles = as_dict(field_of(d, "roles", "recipe"), "recipe roles")
    out = {}
    for role, scheme in roles.items():
        as_str(role, "recipe role", DIRECTORY_ROLES)
        s = scheme_from_json(scheme, f"recipe role {role}")
        if s.kind not in allowed_kinds(role):
            raise fail(f"recipe role {role} cannot be stored as {s.kind} (allowed: {', '.join(allowed_kinds(role))})")
        out[role] = s
    vision_bits = field_of(d, "vision_bits", "recipe")
    if type(vision_bits) is not int or vision_bits not in VISION_BITS:
        raise fail(f"recipe vision_bits {show(vision_bits)} is not one of 8, 16, 32")
    return Recipe(out, vision_bits)


# ---------------------------------------------------------------------- directory entries
def shape_from_json(value: Any, what: str) -> tuple[int, ...]:
    dims = as_list(value, f"{what} shape")
    if not 1 <= len(dims) <= MAX_DIMS:
        raise fail(f"{what} shape must have 1 to {MAX_DIMS} dimensions, got {len(dims)}")
    return tuple(as_int(n, f"{what} shape entry", 1, MAX_INT32) for n in dims)


def tensor_from_json(value: Any, owner: str, with_crc: bool, max_bytes: int,
                     roles: tuple[str, ...] = DIRECTORY_ROLES) -> TensorEntry:
    """One tensor entry: types and ranges first, then its parts against the layout its scheme and
    shape imply (docs/FORMAT.md section 6); `max_bytes` bounds the tensor (the data section).
    `owner` prefixes messages about an expert record's or a vision block's tensors."""
    what = f"{owner}tensor entry"
    d = as_dict(value, what)
    name = as_str(field_of(d, "name", what), f"{what} name")
    if not 0 < len(name) <= MAX_NAME:
        raise fail(f"{what} name must have 1 to {MAX_NAME} characters")
    what = f"{owner}tensor {name}"
    role = as_str(field_of(d, "role", what), f"{what} role", roles)
    scheme = scheme_from_json(field_of(d, "scheme", what), what)
    shape = shape_from_json(field_of(d, "shape", what), what)
    if scheme.kind in ("intn", "ternary") and len(shape) != 2:
        raise fail(f"{what} is stored as {scheme.kind} and needs a 2-D shape, got {list(shape)}")
    if math.prod(shape) > 8 * max_bytes:
        raise fail(f"{what} shape {list(shape)} is larger than its section")
    entry = TensorEntry.plan(name, role, scheme, shape)
    if entry.nbytes > max_bytes:
        raise fail(f"{what} needs {entry.nbytes} bytes, more than its section")
    entry.offset = as_int(field_of(d, "offset", what), f"{what} offset")
    nbytes = as_int(field_of(d, "nbytes", what), f"{what} nbytes")
    if nbytes != entry.nbytes:
        raise fail(f"{what} nbytes {nbytes} does not match its scheme and shape ({entry.nbytes})")
    parts = as_list(field_of(d, "parts", what), f"{what} parts")
    if len(parts) != len(entry.parts):
        raise fail(f"{what} has {len(parts)} parts, its scheme has {len(entry.parts)}")
    for p, spec, off in zip(parts, entry.parts, entry.part_offsets):
        p = as_dict(p, f"{what} part")
        got = (as_str(field_of(p, "name", f"{what} part"), f"{what} part name"),
               as_str(field_of(p, "dtype", f"{what} part"), f"{what} part dtype", tuple(PART_DTYPES)),
               shape_from_json(field_of(p, "shape", f"{what} part"), f"{what} part"),
               as_int(field_of(p, "offset", f"{what} part"), f"{what} part offset"))
        if got != (spec.name, spec.dtype, spec.shape, off):
            raise fail(f"{what} part {got[0]} does not match its scheme and shape "
                       f"(expected {spec.name} {spec.dtype} {list(spec.shape)} at {off})")
    if with_crc:
        entry.crc32 = as_crc(field_of(d, "crc32", what), what)
    return entry


def expert_from_json(value: Any, max_bytes: int) -> ExpertEntry:
    d = as_dict(value, "expert record")
    layer = as_int(field_of(d, "layer", "expert record"), "expert record layer", 0, MAX_INT32)
    expert = as_int(field_of(d, "expert", "expert record"), "expert record expert", 0, MAX_INT32)
    what = f"expert ({layer}, {expert})"
    return ExpertEntry(layer, expert, *record_from_json(d, what, max_bytes, DIRECTORY_ROLES))


def record_from_json(d: dict, what: str, max_bytes: int, roles: tuple[str, ...]) -> tuple[list[TensorEntry], int, int]:
    """A record's tensors (an expert record, a vision block): uniquely named, laid out back to back at
    64-byte boundaries, `nbytes` ending at the last one; (tensors, offset, crc32)."""
    items = as_list(field_of(d, "tensors", what), f"{what} tensors")
    if not items:
        raise fail(f"{what} has no tensors")
    tensors = [tensor_from_json(t, f"{what} ", False, max_bytes, roles) for t in items]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise fail(f"{what} has two tensors named {next(n for n in names if names.count(n) > 1)}")
    stored_offsets = [t.offset for t in tensors]
    planned = place_back_to_back(tensors)
    if stored_offsets != [t.offset for t in tensors]:
        raise fail(f"{what} tensor offsets are not laid out back to back at 64-byte boundaries")
    nbytes = as_int(field_of(d, "nbytes", what), f"{what} nbytes")
    if nbytes != planned:
        raise fail(f"{what} nbytes {nbytes} does not match its tensors ({planned})")
    return tensors, as_int(field_of(d, "offset", what), f"{what} offset"), as_crc(field_of(d, "crc32", what), what)


def vision_from_json(value: Any, max_bytes: int) -> BlobEntry | None:
    if value is None:
        return None
    d = as_dict(value, "vision")
    info = {k: v for k, v in d.items() if k not in ("offset", "nbytes", "crc32", "blocks")}
    vision = BlobEntry(as_int(field_of(d, "nbytes", "vision"), "vision nbytes", 1),
                       as_int(field_of(d, "offset", "vision"), "vision offset"),
                       as_crc(field_of(d, "crc32", "vision"), "vision"), info)
    fmt = as_str(field_of(d, "format", "vision"), "vision format", VISION_FORMATS)
    if fmt == "native":
        vision.blocks = vision_blocks_from_json(field_of(d, "blocks", "vision"), min(vision.nbytes, max_bytes))
    return vision


def vision_blocks_from_json(value: Any, section_bytes: int) -> list[VisionBlock]:
    """The native vision section's blocks: each laid out like an expert record (tensors back to back at
    64-byte boundaries), at BLOCK_ALIGN boundaries of the section, in order, inside it."""
    items = as_list(value, "vision blocks")
    if not items:
        raise fail("vision blocks is empty")
    blocks, end = [], 0
    for item in items:
        d = as_dict(item, "vision block")
        name = as_str(field_of(d, "name", "vision block"), "vision block name")
        if not 0 < len(name) <= MAX_NAME:
            raise fail(f"vision block name must have 1 to {MAX_NAME} characters")
        what = f"vision block {name}"
        block = VisionBlock(name, *record_from_json(d, what, section_bytes, VISION_TENSOR_ROLES))
        if block.offset % BLOCK_ALIGN or block.offset < end or block.offset + block.nbytes > section_bytes:
            raise fail(f"{what} lies outside the vision section, overlaps the previous block or is misaligned")
        end = block.offset + block.nbytes
        blocks.append(block)
    return blocks


def tensors_from_json(value: Any, max_bytes: int) -> dict[str, TensorEntry]:
    out: dict[str, TensorEntry] = {}
    for d in as_list(value, "tensors"):
        t = tensor_from_json(d, "", True, max_bytes)
        if t.name in out:
            raise fail(f"tensor {t.name} is listed twice")
        out[t.name] = t
    return out


def experts_from_json(value: Any, max_bytes: int) -> dict[tuple[int, int], ExpertEntry]:
    out: dict[tuple[int, int], ExpertEntry] = {}
    for d in as_list(value, "experts"):
        e = expert_from_json(d, max_bytes)
        if (e.layer, e.expert) in out:
            raise fail(f"expert ({e.layer}, {e.expert}) is listed twice")
        out[(e.layer, e.expert)] = e
    return out


# ---------------------------------------------------------------------- extents and sections
def check_extents(tensors: dict[str, TensorEntry], experts: dict[tuple[int, int], ExpertEntry],
                  vision: BlobEntry | None, data_size: int) -> list[tuple[int, int]]:
    """Every entry inside the data section, aligned, and no two overlapping; the sorted extents."""
    extents = [(t.offset, t.nbytes, TENSOR_ALIGN, f"tensor {t.name}") for t in tensors.values()]
    extents += [(e.offset, e.nbytes, SECTION_ALIGN, f"expert ({e.layer}, {e.expert})") for e in experts.values()]
    if vision is not None:
        extents.append((vision.offset, vision.nbytes, SECTION_ALIGN, "vision section"))
    extents.sort(key=lambda x: (x[0], x[1]))
    end = 0
    for off, n, al, what in extents:
        if off % al or off + n > data_size:
            raise fail(f"{what} lies outside the data section or is misaligned (file is corrupt)")
        if off < end:
            raise fail(f"{what} overlaps the previous entry (file is corrupt)")
        end = off + n
    return [(off, n) for off, n, _, _ in extents]


def section_from_json(sections: dict, key: str, data_size: int) -> tuple[int, int]:
    d = as_dict(field_of(sections, key, "sections"), f"sections {key}")
    off = as_int(field_of(d, "offset", f"sections {key}"), f"sections {key} offset")
    n = as_int(field_of(d, "nbytes", f"sections {key}"), f"sections {key} nbytes")
    if off + n > data_size:
        raise fail(f"sections {key} lies outside the data section")
    return off, n


def check_sections(value: Any, tensors: dict[str, TensorEntry], experts: dict[tuple[int, int], ExpertEntry],
                   data_size: int) -> None:
    """Resident tensors inside the resident section, expert records inside the experts section."""
    sections = as_dict(value, "sections")
    for key, entries in (("resident", [(t.offset, t.nbytes, f"tensor {t.name}") for t in tensors.values()]),
                         ("experts", [(e.offset, e.nbytes, f"expert ({e.layer}, {e.expert})")
                                      for e in experts.values()])):
        start, n = section_from_json(sections, key, data_size)
        for off, size, what in entries:
            if not (start <= off and off + size <= start + n):
                raise fail(f"{what} lies outside the {key} section")


# ---------------------------------------------------------------------- the model
def config_from_json(value: Any) -> ModelConfig:
    """The model config, validated by ModelConfig itself, then every field's type checked."""
    d = as_dict(value, "model config")
    for block, where in ((d, "model config"), (d.get("vision_config"), "model config vision_config")):
        if isinstance(block, dict):
            n = block.get("num_hidden_layers")
            if isinstance(n, (int, float)) and not isinstance(n, bool) and n > MAX_LAYERS:
                raise fail(f"{where} num_hidden_layers {show(n)} is over {MAX_LAYERS}")
    try:
        cfg = ModelConfig.from_dict(d)
    except ConfigError as e:
        raise fail(f"metadata holds an invalid model config: {one_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise fail(f"metadata holds a malformed model config ({type(e).__name__}: {one_line(e)})") from None
    for block, where in ((cfg.decoder, "model config"), (cfg.vision, "model config vision_config"),
                         (cfg.projector, "model config"), (cfg.moe, "model config moe")):
        if block is not None:
            check_field_types(block, where)
    as_int(cfg.image_token_index, "model config image_token_index", -MAX_INT32, MAX_INT32)
    return cfg


CHECKED_FIELD_TYPES = ("int", "int | None", "float", "bool", "str", "list[int]", "int | list[int] | None")  # a test keeps config to these


def annotation(f: Any) -> str:
    """A dataclass field's annotation as text ("int", "int | None", ...), postponed or not."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def check_field_types(block: Any, where: str) -> None:
    """Each field of a config dataclass holds what its annotation says (JSON gives any type)."""
    for f in fields(block):
        v, what, kind = getattr(block, f.name), f"{where} {f.name}", annotation(f)
        if kind == "int":
            as_int(v, what, -MAX_INT32, MAX_INT32)
        elif kind == "int | None":
            if v is not None:
                as_int(v, what, -MAX_INT32, MAX_INT32)
        elif kind == "float":  # the runtime computes in float32
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not abs(v) <= MAX_FLOAT32:
                raise fail(f"{what} must be a finite float32 number, got {show(v)}")
        elif kind == "bool":
            if not isinstance(v, bool):
                raise fail(f"{what} must be true or false, got {show(v)}")
        elif kind == "str":
            as_str(v, what)
        elif kind == "list[int]":
            for x in as_list(v, what):
                as_int(x, f"{what} entry", 0, MAX_INT32)
        elif kind == "int | list[int] | None":  # e.g. eos_token_id: one id or several
            for x in ([] if v is None else as_list(v, what) if isinstance(v, list) else [v]):
                as_int(x, f"{what} entry", 0, MAX_INT32)


def check_blocks(meta: dict) -> None:
    if meta.get("format") != "mote":
        raise fail(f"metadata format must be \"mote\", got {show(meta.get('format'))}")
    for key in MODEL_BLOCKS:
        as_dict(field_of(meta, key, "metadata"), f"metadata {key}")
    check_prompt_blocks(meta)


def check_prompt_blocks(meta: dict) -> None:
    """The tokenizer block's ids and the chat template: what the runtime uses to build and end prompts
    (the tokenizer.json text itself is parsed by the runtime)."""
    tok = meta["tokenizer"]
    as_str(field_of(tok, "json", "metadata tokenizer"), "metadata tokenizer json")
    for name in ("bos_token_id", "eos_token_id"):
        if tok.get(name) is not None:
            as_int(tok[name], f"metadata tokenizer {name}", 0, MAX_INT32)
    if "stop_token_ids" in tok:
        for i in as_list(tok["stop_token_ids"], "metadata tokenizer stop_token_ids"):
            as_int(i, "metadata tokenizer stop_token_ids entry", 0, MAX_INT32)
    try:
        ChatTemplate.from_dict(meta["chat_template"])
    except ConfigError as e:
        raise fail(f"metadata chat_template is invalid: {one_line(e)}") from None


def image_config_from_json(value: Any, cfg: ModelConfig) -> ImagePreprocessConfig:
    """image_preprocess as the runtime reads it; it must yield the vision tower's S x S input."""
    pre = dict(as_dict(value, "metadata image_preprocess"))
    try:
        aspect = pre.pop("image_aspect_ratio", cfg.projector.image_aspect_ratio)
        image = ImagePreprocessConfig.from_preprocessor_config(pre, aspect_ratio=aspect)
    except ConfigError as e:
        raise fail(f"metadata image_preprocess is invalid: {one_line(e)}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise fail(f"metadata image_preprocess is malformed ({type(e).__name__}: {one_line(e)})") from None
    for name in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
        if not isinstance(getattr(image, name), bool):
            raise fail(f"metadata image_preprocess {name} must be true or false")
    if type(image.resample) is not int:
        raise fail(f"metadata image_preprocess resample must be an integer, got {show(image.resample)}")
    s = cfg.vision.image_size
    if not (image.do_resize and image.do_center_crop and image.crop_height == image.crop_width == s):
        raise fail(f"metadata image_preprocess does not produce the vision tower's {s}x{s} input "
                   f"(needs do_resize, do_center_crop and crop size {s})")
    if image.shortest_edge > MAX_RESIZE_FACTOR * s:
        raise fail(f"metadata image_preprocess shortest_edge {image.shortest_edge} is over {MAX_RESIZE_FACTOR}x "
                   f"the vision image size {s}")
    return image


def lookahead_from_json(value: Any, cfg: ModelConfig) -> int:
    """The `lookahead` block (docs/FORMAT.md section 11): the depth of the stored predictors, 0 when the
    block is absent or null. Its other fields describe the fit (shown by `info`, not used to run)."""
    if value is None:
        return 0
    d = as_dict(value, "metadata lookahead")
    depth = as_int(field_of(d, "depth", "metadata lookahead"), "metadata lookahead depth", 1, MAX_LOOKAHEAD_DEPTH)
    if not cfg.moe_layers:
        raise fail("metadata lookahead is set, but the model has no MoE layers")
    for key in ("samples", "waves"):
        if key in d:
            as_int(d[key], f"metadata lookahead {key}")
    for key in ("recall", "router_recall"):
        if key in d:
            items = as_list(d[key], f"metadata lookahead {key}")
            if len(items) != depth:
                raise fail(f"metadata lookahead {key} has {len(items)} entries, its depth is {depth}")
            for v in items:
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                    raise fail(f"metadata lookahead {key} entries must be numbers from 0 to 1 or null, got {show(v)}")
    return depth


def expected_tensor_count(cfg: ModelConfig, lookahead_depth: int = 0) -> tuple[int, int]:
    """(resident tensors, expert records) the config (and `lookahead_depth` predictors) imply, without
    listing them."""
    moe_layers = set(cfg.moe_layers)
    per_moe = 10 + 3 * cfg.moe.shared_expert + 5 * cfg.moe.use_residual if cfg.moe is not None else 0
    layers = cfg.decoder.num_hidden_layers
    resident = 2 + (not cfg.decoder.tie_word_embeddings) + 12 * (layers - len(moe_layers)) + per_moe * len(moe_layers)
    resident += 2 * lookahead_depth * len(moe_layers)
    records = sum(cfg.moe.num_experts) if moe_layers else 0
    return resident, records


def check_model(cfg: ModelConfig, recipe: Recipe, d: Directory) -> None:
    """The directory holds exactly the tensors the config implies (and the lookahead predictors its
    `lookahead` block does), with their shapes and roles, stored with the schemes the recipe says."""
    want_resident, want_records = expected_tensor_count(cfg, d.lookahead_depth)
    if len(d.tensors) != want_resident:
        raise fail(f"tensor directory has {len(d.tensors)} tensors, the model config implies {want_resident}")
    if len(d.experts) != want_records:
        raise fail(f"expert directory has {len(d.experts)} records, the model config implies {want_records}")
    want_experts: dict[tuple[int, int], dict[str, Any]] = {}
    seen = set()
    for spec in decoder_tensors(cfg) + lookahead_tensors(cfg, d.lookahead_depth):
        if spec.expert is not None:
            want_experts.setdefault((spec.layer, spec.expert), {})[projection_of(spec.name)] = spec
            continue
        t = d.tensors.get(spec.name)
        if t is None:
            raise fail(f"tensor directory does not match the model config (missing {spec.name})")
        seen.add(spec.name)
        check_entry(t, f"tensor {spec.name}", spec.shape, spec.role, recipe)
    if len(seen) != len(d.tensors):
        raise fail(f"tensor directory does not match the model config "
                   f"(unexpected {sorted(set(d.tensors) - seen)[0]})")
    for key, projs in want_experts.items():
        e = d.experts.get(key)
        if e is None:
            raise fail(f"expert directory does not match the model config (expert {key} is missing)")
        if [t.name for t in e.tensors] != list(SWIGLU_PROJS):
            raise fail(f"expert {key} must hold {', '.join(SWIGLU_PROJS)} in that order")
        for t in e.tensors:
            spec = projs[t.name]
            check_entry(t, f"expert {key} tensor {t.name}", spec.shape, spec.role, recipe)


def check_entry(t: TensorEntry, what: str, shape: tuple[int, ...], role: str, recipe: Recipe) -> None:
    if t.shape != shape or t.role != role:
        raise fail(f"{what} has shape {list(t.shape)} / role {t.role}, expected {list(shape)} / {role}")
    want = recipe.roles.get(role)
    if want is None:
        raise fail(f"the recipe has no scheme for role {role} (used by {what})")
    if t.scheme != want:
        raise fail(f"{what} is stored as {t.scheme.label}, but the recipe says {want.label}")


def check_vision_entry(vision: BlobEntry | None, recipe: Recipe, cfg: ModelConfig) -> None:
    if vision is None:
        return
    if not same_json(vision.info.get("weight_bits"), recipe.vision_bits):
        raise fail(f"vision weight_bits {show(vision.info.get('weight_bits'))} does not match the recipe's "
                   f"vision_bits {recipe.vision_bits}")
    if vision.format == "native":
        check_native_vision(vision, cfg)
        return
    for key, want in VISION_FIELDS.items():
        if vision.info.get(key) != want:
            raise fail(f"vision {key} must be {want!r}, got {show(vision.info.get(key))}")


def check_native_vision(vision: BlobEntry, cfg: ModelConfig) -> None:
    """The blocks are exactly the ones the model config implies (docs/FORMAT.md section 8.2): names,
    tensors, shapes, schemes and offsets, and the section ends with the last block."""
    group = vision.info.get("group_size")
    if type(group) is not int or group not in GROUP_SIZES:
        raise fail(f"vision group_size {show(group)} is not one of {', '.join(map(str, GROUP_SIZES))}")
    want = plan_vision_blocks(cfg, vision.info["weight_bits"], group)
    if len(vision.blocks) != len(want):
        raise fail(f"vision section has {len(vision.blocks)} blocks, the model config implies {len(want)}")
    for got, planned in zip(vision.blocks, want):
        if got.name != planned.name or got.offset != planned.offset:
            raise fail(f"vision block {got.name} at {got.offset} does not match the model config "
                       f"(expected {planned.name} at {planned.offset})")
        if [t.name for t in got.tensors] != [t.name for t in planned.tensors]:
            raise fail(f"vision block {got.name} must hold {', '.join(t.name for t in planned.tensors)} in that order")
        for t, p in zip(got.tensors, planned.tensors):
            if (t.role, t.shape, t.scheme) != (p.role, p.shape, p.scheme):
                raise fail(f"vision block {got.name} tensor {t.name} is {t.role} {list(t.shape)} {t.scheme.label}, "
                           f"expected {p.role} {list(p.shape)} {p.scheme.label}")
    if vision.nbytes != section_nbytes(want):
        raise fail(f"vision nbytes {vision.nbytes} does not end with its last block ({section_nbytes(want)})")


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included (8.0 and true are not 8)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return a == b


def check_sizes(value: Any, d: Directory) -> None:
    if not same_json(value, size_stats(d.tensors.values(), d.experts.values(), d.vision)):
        raise fail("stored size statistics do not match the directory")


# ---------------------------------------------------------------------- entry point
def validate_metadata(meta: Any, flags: int, data_size: int, container_only: bool = False) -> Directory:
    """Check a parsed metadata object against a data section of `data_size` bytes; the directory it
    describes. container_only: the container's own rules (entries, extents, sections) without the
    model-level ones (config against directory, recipe, sizes), for tests of the container itself."""
    meta = as_dict(meta, "metadata")
    if not container_only:
        check_blocks(meta)
    cfg = config_from_json(field_of(meta, "model", "metadata"))
    recipe = recipe_from_json(field_of(meta, "recipe", "metadata"))
    tensors = tensors_from_json(field_of(meta, "tensors", "metadata"), data_size)
    experts = experts_from_json(field_of(meta, "experts", "metadata"), data_size)
    vision = vision_from_json(field_of(meta, "vision", "metadata"), data_size)
    if (vision is not None) != bool(flags & FLAG_HAS_VISION):
        raise fail("header flags and metadata disagree about the vision section")
    extents = check_extents(tensors, experts, vision, data_size)
    check_sections(field_of(meta, "sections", "metadata"), tensors, experts, data_size)
    d = Directory(cfg, recipe, tensors, experts, vision, extents)
    if not container_only:
        d.lookahead_depth = lookahead_from_json(meta.get("lookahead"), cfg)
        check_model(cfg, recipe, d)
        check_vision_entry(vision, recipe, cfg)
        image_config_from_json(meta["image_preprocess"], cfg)
        check_sizes(field_of(meta, "sizes", "metadata"), d)
    return d
