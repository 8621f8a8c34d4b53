"""Crafted .mote files past the checksums: replace a file's metadata and recompute every header and
trailer field (docs/FORMAT.md sections 1-3), and mutate metadata the way a hostile file would.

    with_metadata(src, metadata)   the file `src` (bytes) with new metadata (a JSON value or raw bytes):
                                   data section byte-identical, data_offset re-aligned to 4096,
                                   metadata CRC, file_size, header CRC and trailer recomputed
    with_data_crcs(src, metadata)  the entries' own crc32 recomputed too (a mutated extent then
                                   passes its checksum: garbage data in bounds reaches the runtime)
    Mutator(metadata).mutant(rng)  (description, new metadata) for one random structural mutation
    consistent_mutant(src, metadata, rng)  a config change with the whole directory rebuilt to match
    exercise(path)                 open + info + verify, and Engine.load + a 2-token answer: None when
                                   all ran, the MoteErrors' messages when something was refused
"""

from __future__ import annotations

import copy
import json
import random
import zlib
from typing import Any

from mote_edge.format.constants import HEADER, HEADER_SIZE, SECTION_ALIGN, TRAILER, TRAILER_MAGIC, TRAILER_SIZE

JsonPath = tuple  # a path into the metadata: keys and list indices


def with_metadata(src: bytes, metadata: Any, flags: int | None = None) -> bytes:
    magic, major, minor, old_flags, _, _, _, doff, fsize, _ = HEADER.unpack(src[:HEADER_SIZE])
    data = src[doff:fsize - TRAILER_SIZE]
    meta = metadata if isinstance(metadata, bytes) else json.dumps(metadata, separators=(",", ":")).encode()
    data_offset = -(-(HEADER_SIZE + len(meta)) // SECTION_ALIGN) * SECTION_ALIGN
    file_size = data_offset + len(data) + TRAILER_SIZE
    mcrc = zlib.crc32(meta)
    fields = [magic, major, minor, old_flags if flags is None else flags, 0, HEADER_SIZE, len(meta), data_offset,
              file_size, mcrc]
    fields[4] = zlib.crc32(HEADER.pack(*fields))
    return b"".join([HEADER.pack(*fields), meta, bytes(data_offset - HEADER_SIZE - len(meta)), data,
                     TRAILER.pack(TRAILER_MAGIC, file_size, mcrc)])


def with_data_crcs(src: bytes, metadata: Any) -> Any:
    """`metadata` with the crc32 of every tensor, expert record and the vision section recomputed over
    the bytes its (possibly mutated) offset and nbytes now cover: what a crafted file whose author
    also rewrote the data checksums looks like, so garbage-but-in-bounds data reaches the runtime."""
    _, _, _, _, _, _, _, doff, fsize, _ = HEADER.unpack(src[:HEADER_SIZE])
    data = src[doff:fsize - TRAILER_SIZE]
    if not isinstance(metadata, dict):
        return metadata
    entries = [metadata.get("vision")]
    for key in ("tensors", "experts"):
        if isinstance(metadata.get(key), list):
            entries += metadata[key]
    for e in entries:
        if not isinstance(e, dict):
            continue
        off, n = e.get("offset"), e.get("nbytes")
        if type(off) is int and type(n) is int and 0 <= off and 0 <= n and off + n <= len(data):
            e["crc32"] = f"{zlib.crc32(data[off:off + n]):08x}"
    return metadata


def replan(entry: dict, shape: list[int]) -> None:
    """Give a tensor entry a new shape with parts and nbytes laid out consistently (offset kept)."""
    from mote_edge.format.directory import TensorEntry
    from mote_edge.quant.recipe import Scheme

    t = TensorEntry.plan(entry["name"], entry["role"], Scheme.from_dict(entry["scheme"]), tuple(shape))
    t.offset = entry["offset"]
    entry.update(t.to_json(with_crc=False))


def restat(metadata: dict) -> None:
    """Recompute `sizes` from the directory (as the writer does)."""
    from mote_edge.format.stats import size_stats
    from mote_edge.format.validate import experts_from_json, tensors_from_json, vision_from_json

    big = 1 << 62
    metadata["sizes"] = size_stats(tensors_from_json(metadata["tensors"], big).values(),
                                   experts_from_json(metadata["experts"], big).values(),
                                   vision_from_json(metadata["vision"]))


def metadata_of(src: bytes) -> dict:
    _, _, _, _, _, moff, mlen, _, _, _ = HEADER.unpack(src[:HEADER_SIZE])
    return json.loads(src[moff:moff + mlen])


# ---------------------------------------------------------------------- paths
def get(meta: Any, path: JsonPath) -> Any:
    for k in path:
        meta = meta[k]
    return meta


def put(meta: Any, path: JsonPath, value: Any) -> None:
    get(meta, path[:-1])[path[-1]] = value


def delete(meta: Any, path: JsonPath) -> None:
    del get(meta, path[:-1])[path[-1]]


def walk(value: Any, path: JsonPath = ()):
    """Every path in a JSON value (the tokenizer's own JSON text is one leaf)."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, path + (i,))


def show_path(path: JsonPath) -> str:
    return "/".join(map(str, path)) or "<root>"


def json_diff(base: Any, new: Any, path: JsonPath = ()) -> list[dict]:
    """The edits that turn `base` into `new`: [{"path": [...], "value": v}] or [{"path": [...],
    "delete": true}] (lists of another length are replaced whole). Small enough to keep in the repo."""
    if type(base) is not type(new) or (isinstance(base, list) and len(base) != len(new)):
        return [{"path": list(path), "value": new}]
    if isinstance(base, dict):
        ops = [{"path": list(path + (k,)), "delete": True} for k in base if k not in new]
        for k, v in new.items():
            ops += json_diff(base[k], v, path + (k,)) if k in base else [{"path": list(path + (k,)), "value": v}]
        return ops
    if isinstance(base, list):
        return [op for i, (a, b) in enumerate(zip(base, new)) for op in json_diff(a, b, path + (i,))]
    return [] if base == new else [{"path": list(path), "value": new}]


def json_patch(base: Any, ops: list[dict]) -> Any:
    out = copy.deepcopy(base)
    for op in ops:
        path = tuple(op["path"])
        if not path:
            out = op["value"]
        elif op.get("delete"):
            delete(out, path)
        else:
            put(out, path, op["value"])
    return out


# ---------------------------------------------------------------------- mutations
HUGE = (2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63, 2 ** 64 + 7, 10 ** 30)
ODD = (None, True, False, "", "x", [], {}, 0.5, -1, 0)


class Mutator:
    """Random structural mutations of one metadata object (deterministic for a given rng)."""

    def __init__(self, metadata: dict):
        self.base = metadata
        self.paths = [p for p in walk(metadata) if p]
        self.by_key: dict[Any, list[Any]] = {}  # key -> values seen under it (other valid names, ...)
        for p in self.paths:
            v = get(metadata, p)
            if isinstance(v, (str, int, float)) and not (isinstance(v, str) and len(v) > 200):
                self.by_key.setdefault(p[-1], []).append(v)
        self.lists = [p for p in self.paths if isinstance(get(metadata, p), list)]
        self.dicts = [p for p in self.paths if isinstance(get(metadata, p), dict)]
        self.sections: dict[Any, list[JsonPath]] = {}  # top-level key -> its paths (each key as likely)
        for p in self.paths:
            self.sections.setdefault(p[0], []).append(p)

    def _path(self, rng: random.Random, among: list[JsonPath] | None = None) -> JsonPath:
        """A random path, the top-level section chosen first so the small sections get their share."""
        among = self.paths if among is None else among
        key = rng.choice(sorted({p[0] for p in among}))
        return rng.choice([p for p in among if p[0] == key])

    def mutant(self, rng: random.Random, count: int = 1) -> tuple[str, dict]:
        meta = copy.deepcopy(self.base)
        done = []
        for _ in range(count):
            try:
                done.append(self._one(rng, meta))
            except (KeyError, IndexError, TypeError, AttributeError):  # an earlier mutation moved the path
                done.append("skipped")
        return "; ".join(done), meta

    def _one(self, rng: random.Random, meta: dict) -> str:
        kind = rng.choice(("value", "value", "value", "same_key", "same_key", "list", "dict", "swap"))
        if kind == "list":
            return self._list(rng, meta, self._path(rng, self.lists))
        if kind == "dict":
            return self._dict(rng, meta, self._path(rng, self.dicts))
        if kind == "swap":
            return self._swap(rng, meta)
        path = self._path(rng)
        try:
            old = get(meta, path)
        except (KeyError, IndexError, TypeError):
            return f"{show_path(path)} gone"
        if kind == "same_key":
            choices = [v for v in self.by_key.get(path[-1], []) if v != old or type(v) is not type(old)]
            new = rng.choice(choices) if choices else None
        else:
            new = self._value(rng, old)
        put(meta, path, new)
        return f"{show_path(path)}: {_short(old)} -> {_short(new)}"

    def _value(self, rng: random.Random, old: Any) -> Any:
        if isinstance(old, bool):
            return rng.choice((not old, 0, 1, "true", None))
        if isinstance(old, int):
            return rng.choice((0, -1, 1, old + 1, old - 1, old * 2, old + 64, old + 4096, -old, float(old),
                               old + 0.5, str(old), None, True, False, 1e308, *HUGE))
        if isinstance(old, float):
            return rng.choice((0.0, -old, 0, 1e308, -1e308, 1e-320, str(old), None, True, int(old)))
        if isinstance(old, str):
            return rng.choice(("", "unknown", old + "x", old.upper(), old[:-1], " " + old, 0, None, [old],
                               "0" * 8, "ffffffff", "0x" + old, "zzzzzzzz"))
        return rng.choice(ODD)

    def _list(self, rng: random.Random, meta: dict, path: JsonPath) -> str:
        items = get(meta, path)
        if not isinstance(items, list):
            return f"{show_path(path)} is no longer a list"
        op = rng.choice(("drop", "duplicate", "shuffle", "empty", "append", "replace"))
        if op == "drop" and items:
            items.pop(rng.randrange(len(items)))
        elif op == "duplicate" and items:
            items.append(copy.deepcopy(rng.choice(items)))
        elif op == "shuffle":
            rng.shuffle(items)
        elif op == "empty":
            items.clear()
        elif op == "append":
            items.append(rng.choice(ODD))
        else:
            put(meta, path, rng.choice((None, {}, "list", 3)))
        return f"{show_path(path)}: list {op}"

    def _dict(self, rng: random.Random, meta: dict, path: JsonPath) -> str:
        d = get(meta, path)
        if not isinstance(d, dict):
            return f"{show_path(path)} is no longer an object"
        op = rng.choice(("delete", "delete", "unknown_key", "replace"))
        if op == "delete" and d:
            key = rng.choice(list(d))
            del d[key]
            return f"{show_path(path)}: delete {key}"
        if op == "unknown_key":
            d["zz_unknown"] = rng.choice(ODD)
            return f"{show_path(path)}: add an unknown key"
        put(meta, path, rng.choice((None, [], "object", 7)))
        return f"{show_path(path)}: object replaced"

    def _swap(self, rng: random.Random, meta: dict) -> str:
        """Two values under the same key swapped (offsets of two tensors, names of two parts, ...)."""
        key = rng.choice([k for k, v in self.by_key.items() if len(v) > 1])
        paths = [p for p in self.paths if p[-1] == key]
        a, b = rng.sample(paths, 2)
        try:
            va, vb = get(meta, a), get(meta, b)
            if va == vb:
                return f"swap {show_path(a)} <-> {show_path(b)}: equal values"
            put(meta, a, vb)
            put(meta, b, va)
        except (KeyError, IndexError, TypeError):
            return f"swap {key} skipped"
        return f"swap {show_path(a)} <-> {show_path(b)}"


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 30 else text[:27] + "..."


# ---------------------------------------------------------------------- consistent model mutations
CONFIG_CHANGES = (  # (path in the model config, values): each rebuilt into a consistent directory
    (("hidden_size",), (16, 32, 48, 128)),
    (("intermediate_size",), (16, 96, 320)),
    (("num_attention_heads",), (1, 2, 8)),
    (("num_key_value_heads",), (1, 4)),
    (("vocab_size",), (1, 100, 1024, 4096)),
    (("num_hidden_layers",), (1, 2, 3, 5)),
    (("tie_word_embeddings",), (True,)),
    (("max_position_embeddings",), (1, 8, 16, 64)),
    (("eos_token_id",), (None, 1, 2047)),
    (("moe", "num_experts"), ([2, 2], [1, 1], [3, 5], [8, 8])),
    (("moe", "top_k_experts"), (1,)),
    (("moe", "moe_layers_idx"), ([0, 1], [1, 3], [2, 0])),
    (("moe", "shared_expert"), (True, False)),
    (("moe", "use_residual"), (True,)),
    (("moe", "moe_enable"), (False,)),
    (("vision_config", "hidden_size"), (16, 96)),
    (("vision_config", "image_size"), (16, 64)),
)


def change_config(meta: dict, path: JsonPath, value: Any) -> None:
    """Set a model config field, with the fields that must move with it."""
    put(meta["model"], path, value)
    if path == ("vision_config", "image_size"):
        meta["image_preprocess"]["crop_size"] = {"height": value, "width": value}
        meta["image_preprocess"]["size"] = {"shortest_edge": value}
    if path == ("vision_config", "hidden_size"):
        meta["model"]["mm_hidden_size"] = value
    if path == ("moe", "moe_layers_idx"):
        meta["model"]["moe"]["num_experts"] = [meta["model"]["moe"]["num_experts"][0]] * len(value)


def consistent_mutant(src: bytes, base: dict, rng: random.Random) -> tuple[str, dict] | None:
    """One or two random CONFIG_CHANGES with the directory rebuilt to match (rebuilt_for_config)."""
    meta = copy.deepcopy(base)
    done = []
    for _ in range(rng.choice((1, 1, 2))):
        path, values = rng.choice(CONFIG_CHANGES)
        value = copy.deepcopy(rng.choice(values))
        change_config(meta, path, value)
        done.append(f"model/{show_path(path)} = {json.dumps(value)}")
    meta = rebuilt_for_config(src, meta)
    return None if meta is None else ("; ".join(done) + " (directory rebuilt)", meta)


def rebuilt_for_config(src: bytes, meta: dict) -> dict | None:
    """`meta` with the whole directory rebuilt for its model config (shapes, parts, offsets, sections,
    sizes, data CRCs over whatever bytes the new extents cover), or None when the config is invalid
    or the model does not fit the data section before the vision section: a well-formed file whose
    data belongs to another model, so only the runtime's own checks stand between it and a crash."""
    from mote_edge.config import ModelConfig
    from mote_edge.errors import MoteError
    from mote_edge.format.constants import TENSOR_ALIGN
    from mote_edge.format.directory import ExpertEntry, TensorEntry, align
    from mote_edge.quant.recipe import Recipe
    from mote_edge.schema import decoder_tensors

    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except MoteError:
        return None
    recipe = Recipe.from_dict(meta["recipe"])
    limit = meta["vision"]["offset"] if meta.get("vision") else 1 << 62
    tensors, records, pos = [], {}, 0
    for spec in decoder_tensors(cfg):
        t = TensorEntry.plan(spec.name if spec.expert is None else spec.name.rsplit(".", 2)[-2], spec.role,
                             recipe.scheme_for(spec.role), spec.shape)
        if spec.expert is None:
            t.offset = pos = align(pos, TENSOR_ALIGN)
            pos += t.nbytes
            tensors.append(t)
        else:
            records.setdefault((spec.layer, spec.expert), []).append(t)
    resident_end = pos
    pos = expert_start = align(pos, SECTION_ALIGN)
    experts = []
    for (layer, expert), ts in records.items():
        e = ExpertEntry.plan(layer, expert, ts)
        e.offset = pos = align(pos, SECTION_ALIGN)
        pos += e.nbytes
        experts.append(e)
    if pos > limit:
        return None
    meta["tensors"] = [t.to_json(with_crc=True) for t in tensors]
    meta["experts"] = [e.to_json() for e in experts]
    meta["sections"] = {"resident": {"offset": 0, "nbytes": resident_end},
                        "experts": {"offset": expert_start, "nbytes": pos - expert_start}}
    restat(meta)
    return with_data_crcs(src, meta)


# ---------------------------------------------------------------------- raw JSON mutations
def raw_json_mutants(meta: dict) -> list[tuple[str, bytes]]:
    """Metadata bytes that are not the JSON a writer produces."""
    text = json.dumps(meta, separators=(",", ":"))
    return [
        ("NaN number", text.replace('"rms_norm_eps":1e-06', '"rms_norm_eps":NaN').encode()),
        ("Infinity number", text.replace('"rope_theta":10000.0', '"rope_theta":Infinity').encode()),
        ("overflowing float", text.replace('"rope_theta":10000.0', '"rope_theta":1e999').encode()),
        ("5000-digit integer", text.replace('"vocab_size":2048', '"vocab_size":' + "9" * 5000).encode()),
        ("repeated key", text.replace('"format":"mote"', '"format":"mote","format":"mote"').encode()),
        ("invalid UTF-8", text.encode().replace(b'"created_by":"', b'"created_by":"\xff\xfe')),
        ("deep nesting", text.replace('"created_by":', '"zz":' + "[" * 100000 + "]" * 100000 + ',"created_by":')
         .encode()),
        ("not an object", b"[1, 2, 3]"),
        ("empty", b""),
        ("truncated JSON", text[:-1].encode()),
    ]


# ---------------------------------------------------------------------- running a file
PROMPT = "What color is the circle?"


def exercise(path, image=None, **load_options) -> str | None:
    """Everything a user can do with a file: `info` + `verify`, and (whatever they said) a run.
    None if all of it ran, else the MoteErrors' messages joined by " | ". Any other exception
    propagates (that is the bug a fuzz case looks for). `load_options` go to Engine.load
    (memory_budget, expert_layout, ...)."""
    from mote_edge.errors import MoteError
    from mote_edge.runtime.info import info_dict, info_text
    from mote_edge.format.reader import MoteFile
    from mote_edge.format.verify import verify_file
    from mote_edge.runtime.engine import Engine

    def inspect():
        with MoteFile(path) as f:
            info_text(info_dict(f))
            verify_file(f)

    def run():
        with Engine.load(path, threads=1, **load_options) as engine:
            "".join(engine.generate(PROMPT, image, max_new_tokens=2))
            engine.report()

    messages = []
    for step in (inspect, run):
        try:
            step()
        except MoteError as e:
            messages.append(str(e))
    return " | ".join(messages) or None
