"""Crafted .mote files past the checksums: metadata edited and every CRC recomputed.

Each mutant goes through open + info + verify + Engine.load + a 2-token answer and must end as a
one-line MoteError or a run; any other exception (KeyError, ZeroDivisionError, MemoryError, ...) is a
bug in the validation (mote_edge/format/validate.py). The random part is deterministic (case i uses
random.Random(i)); MOTE_FUZZ_CASES sets how many cases run on the MoTE model (default below; a third
as many run on an fp-expert model; ~1 minute in all on one core).
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import traceback

import pytest

from conftest import REPO, run_cli
from mote_edge.errors import MoteError
from mote_edge.format.reader import MoteFile
from mote_mutants import (Mutator, change_config, consistent_mutant, exercise, json_patch, metadata_of,
                          raw_json_mutants, rebuilt_for_config, with_data_crcs, with_metadata)

CASES = int(os.environ.get("MOTE_FUZZ_CASES", "3000"))
CASE_SECONDS = 20  # a case that takes longer is a hang
IMAGE = REPO / "examples" / "images" / "shapes.png"
IMAGE_EVERY = 25  # one case in this many also encodes an image (an onnxruntime session costs ~0.1 s)
CORPUS = REPO / "tests" / "fuzz_corpus"  # reproducers saved by `make fuzz` (tests/fuzz_long.py)
WRAPPED = "tokenizer or chat template metadata is unusable"
# a file whose data belongs to another model computes garbage (overflows, NaN): expected, not a finding
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def export_4bit(ckpt, tmp_path_factory, vision_format: str = "native"):
    from mote_edge.exporters.export import ExportOptions, export_checkpoint

    path = tmp_path_factory.mktemp("fuzz") / f"{ckpt.name}-{vision_format}.mote"
    export_checkpoint(ckpt, path, ExportOptions(bits=4, vision_format=vision_format, progress=False))
    return path.read_bytes()


@pytest.fixture(scope="module")
def source(tiny_ckpt, tmp_path_factory):
    """The tiny MoTE (ternary experts, shared expert) at 4 bits."""
    return export_4bit(tiny_ckpt, tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_source(tiny_ckpt, tmp_path_factory):
    """The tiny MoTE at 4 bits with an ONNX vision section (run by onnxruntime)."""
    return export_4bit(tiny_ckpt, tmp_path_factory, vision_format="onnx")


@pytest.fixture(scope="module")
def fp_source(tiny_fp_ckpt, tmp_path_factory):
    """The tiny MoE-LLaVA (int4 experts, no shared expert) at 4 bits."""
    return export_4bit(tiny_fp_ckpt, tmp_path_factory)


@pytest.fixture(scope="module")
def fitted_source(tiny_ckpt, tmp_path_factory):
    """The tiny MoTE at 4 bits with lookahead predictors 1..3 ahead (`fit-lookahead`, docs/FORMAT.md section 11)."""
    from mote_edge.calibration import builtin_samples
    from mote_edge.lookahead_fit import FitOptions, fit_lookahead

    folder = tmp_path_factory.mktemp("fuzz-fitted")
    plain = folder / "plain.mote"
    plain.write_bytes(export_4bit(tiny_ckpt, tmp_path_factory))
    fit_lookahead(plain, folder / "fitted.mote", builtin_samples(4), FitOptions(depth=3, tokens=4, ignore_eos=True))
    return (folder / "fitted.mote").read_bytes()


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout(f"over {CASE_SECONDS} s")


def run_case(path, data: bytes, image=None, **load_options) -> str | None:
    """Write a mutant and exercise it under a time cap; the MoteError message or None."""
    path.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        return exercise(path, image, **load_options)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_outcome(message: str | None, description: str) -> None:
    if message is None:
        return
    assert "\n" not in message, f"{description}: multi-line error {message!r}"
    if WRAPPED in message:  # only the blocks that are read at run time may reach the engine's wrapper
        assert description.startswith(("tokenizer", "chat_template")) or "; " in description, \
            f"{description}: validation missed it, the engine wrapped {message!r}"


def test_every_model_config_field_has_a_type_validation_checks():
    """A config field of a new type would pass unchecked: validate.check_field_types must learn it."""
    from dataclasses import fields

    from mote_edge.config import DecoderConfig, MoEConfig, ProjectorConfig, VisionConfig
    from mote_edge.format.validate import CHECKED_FIELD_TYPES, annotation

    for cls in (DecoderConfig, VisionConfig, ProjectorConfig, MoEConfig):
        for f in fields(cls):
            assert annotation(f) in CHECKED_FIELD_TYPES, (cls.__name__, f.name, annotation(f))


def test_rewriting_the_metadata_unchanged_gives_the_same_bytes(source, tmp_path):
    assert with_metadata(source, metadata_of(source)) == source
    meta = metadata_of(source)
    meta["created_by"] = "x" * 5000  # longer metadata: the data section moves to the next 4096 boundary
    assert run_case(tmp_path / "long.mote", with_metadata(source, meta)) is None


def test_raw_metadata_that_is_not_the_writers_json(source, tmp_path):
    for description, raw in raw_json_mutants(metadata_of(source)):
        message = run_case(tmp_path / "raw.mote", with_metadata(source, raw))
        assert message is not None and "\n" not in message, description


def fuzz(source: bytes, path, cases: int, first_seed: int, consistent: bool = False) -> None:
    """`cases` random mutants of `source`: structural ones (in one case of four the entries' data CRCs
    are recomputed too, so moved extents reach the runtime), or with `consistent` config changes with
    the directory rebuilt to match. Expert slabs alternate between the 2-bit slab layout (auto, as
    every expert fits) and the file layout."""
    base = metadata_of(source)
    mutator = Mutator(base)
    failures, outcomes = [], {"ran": 0, "refused": 0, "skipped": 0}
    for i in range(first_seed, first_seed + cases):
        rng = random.Random(i)
        if consistent:
            mutant = consistent_mutant(source, base, rng)
            if mutant is None:
                outcomes["skipped"] += 1
                continue
            description, meta = mutant
        else:
            description, meta = mutator.mutant(rng, rng.choice((1, 1, 1, 2, 3)))
            if i % 4 == 3:
                meta, description = with_data_crcs(source, meta), description + " (data CRCs recomputed)"
        image = IMAGE if i % (4 if consistent else IMAGE_EVERY) == 0 else None
        layout = "file" if i % 2 else "auto"
        try:
            message = run_case(path, with_metadata(source, meta), image, expert_layout=layout)
            check_outcome(message, description)
            outcomes["ran" if message is None else "refused"] += 1
        except Exception as e:  # noqa: BLE001  (any other exception is the finding)
            where = traceback.extract_tb(e.__traceback__)[-1]
            failures.append(f"case {i} [{description}] ({layout} layout): {type(e).__name__}: {str(e)[:200]} "
                            f"at {where.filename}:{where.lineno}")
            if len(failures) >= 10:
                break
    assert not failures, "\n".join(failures)
    assert outcomes["refused"] > 0 and outcomes["ran"] > 0, outcomes
    if not consistent:
        assert outcomes["refused"] > cases // 2, outcomes


def test_random_structural_mutations_give_one_line_errors_or_runs(source, tmp_path):
    fuzz(source, tmp_path / "m.mote", CASES, 0)


def test_random_structural_mutations_of_an_fp_expert_model(fp_source, tmp_path):
    fuzz(fp_source, tmp_path / "m.mote", CASES // 3, 1_000_000)


def test_random_structural_mutations_of_a_file_with_lookahead_predictors(fitted_source, tmp_path):
    assert metadata_of(fitted_source)["lookahead"]["depth"] == 3
    fuzz(fitted_source, tmp_path / "m.mote", CASES // 6, 4_000_000)


def test_config_changes_with_a_rebuilt_directory_run_or_give_one_line_errors(source, fp_source, tmp_path):
    """Well-formed files whose data belongs to another model (hidden size, vocabulary, heads, layers,
    experts, vision input changed): only the runtime's own checks stand between them and a crash."""
    fuzz(source, tmp_path / "c.mote", CASES // 10, 2_000_000, consistent=True)
    fuzz(fp_source, tmp_path / "c.mote", CASES // 20, 3_000_000, consistent=True)


def test_saved_reproducers_give_one_line_errors_or_runs(source, fp_source, tmp_path):
    sources = {"tiny": source, "tiny-fp": fp_source}
    cases = sorted(CORPUS.glob("*.json"))
    assert cases, f"no reproducers in {CORPUS}"
    for path in cases:
        case = json.loads(path.read_text())
        meta = json_patch(metadata_of(sources[case["model"]]), case["edits"])
        message = run_case(tmp_path / "r.mote", with_metadata(sources[case["model"]], meta), IMAGE)
        check_outcome(message, case["description"])


# ---------------------------------------------------------------------- named cases, one per bug class
def tensor_index(meta: dict, name: str) -> int:
    return next(i for i, t in enumerate(meta["tensors"]) if t["name"] == name)


def set_path(*path_and_value):
    *path, value = path_and_value

    def edit(meta):
        target = meta
        for k in path[:-1]:
            target = target[k if not callable(k) else k(meta)]
        target[path[-1]] = value
    return edit


def tensor(name):
    return lambda meta: tensor_index(meta, name)


Q = "model.layers.0.self_attn.q_proj.weight"
NORM = "model.norm.weight"


def rename_tensor(meta):
    meta["tensors"][tensor_index(meta, Q)]["name"] = Q.replace("q_proj", "qq_proj")


def rename_expert_part(meta):
    meta["experts"][0]["tensors"][0]["name"] = "gate"


def drop_expert_records(meta):
    meta["experts"] = []


def reshape_norm(meta):
    """A consistent entry (parts match) with the wrong shape: what `verify` reported and `run` crashed on."""
    t = meta["tensors"][tensor_index(meta, NORM)]
    t["shape"] = [2, 32]
    t["parts"][0]["shape"] = [2, 32]


def duplicate_tensor(meta):
    meta["tensors"].append(copy.deepcopy(meta["tensors"][0]))


def overlap_tensors(meta):
    meta["tensors"][1]["offset"] = meta["tensors"][0]["offset"]


def expert_on_a_dense_layer(meta):
    meta["experts"][0]["layer"] = 1


def huge_shape(meta):
    t = meta["tensors"][tensor_index(meta, NORM)]
    t["shape"] = [2 ** 31 - 1, 2 ** 31 - 1]


def vision_flag_without_section(meta):
    meta["vision"] = None


def vision_block(i):
    return lambda meta: meta["vision"]["blocks"][i]


def reshape_vision_tensor(meta):
    """A consistent entry (parts match its scheme) with another shape than the config implies."""
    from mote_mutants import replan

    t = meta["vision"]["blocks"][0]["tensors"][2]  # embeddings position_embedding.weight [P + 1, D]
    replan(t, t["shape"][::-1])


def swap_vision_blocks(meta):
    blocks = meta["vision"]["blocks"]
    blocks[1]["name"], blocks[2]["name"] = blocks[2]["name"], blocks[1]["name"]


NAMED = {  # name: (edit, words the one-line error must contain)
    "renamed tensor": (rename_tensor, "missing " + Q),
    "renamed expert part": (rename_expert_part, "must hold gate_proj, up_proj, down_proj"),
    "zero expert records": (drop_expert_records, "expert directory has 0 records"),
    "group size 0 in a tensor": (set_path("tensors", tensor(Q), "scheme", "group_size", 0), "group_size 0"),
    "group size 0 in the recipe": (set_path("recipe", "roles", "attn", "group_size", 0), "group_size 0"),
    "group size 48": (set_path("recipe", "roles", "attn", "group_size", 48), "group_size 48"),
    "bits 5": (set_path("recipe", "roles", "attn", "bits", 5), "bits 5"),
    "bits true": (set_path("tensors", tensor(Q), "scheme", "bits", True), "bits True"),
    "unknown scheme kind": (set_path("tensors", tensor(Q), "scheme", "kind", "int5"), "'int5' is not one of"),
    "shape disagrees with the config": (reshape_norm, "expected [64]"),
    "huge shape": (huge_shape, "larger than its section"),
    "nbytes disagrees with the shape": (set_path("tensors", tensor(NORM), "nbytes", 200), "nbytes 200"),
    "offset is a string": (set_path("tensors", 0, "offset", "0"), "offset must be an integer"),
    "offset is null": (set_path("tensors", 0, "offset", None), "offset must be an integer"),
    "offset is a float": (set_path("tensors", 0, "offset", 0.0), "offset must be an integer"),
    "offset is negative": (set_path("tensors", 0, "offset", -64), "offset -64 is out of range"),
    "offset past the data section": (set_path("tensors", 0, "offset", 1 << 40), "outside the data section"),
    "overlapping tensors": (overlap_tensors, "overlaps"),
    "duplicate tensor name": (duplicate_tensor, "listed twice"),
    "expert record on a dense layer": (expert_on_a_dense_layer, "expert directory does not match"),
    "top_k over num_experts": (set_path("model", "moe", "top_k_experts", 8), "top_k_experts"),
    "vocab_size is a string": (set_path("model", "vocab_size", "2048"), "vocab_size must be a number"),
    "num_hidden_layers huge": (set_path("model", "num_hidden_layers", 10 ** 9), "num_hidden_layers"),
    "num_experts huge": (set_path("model", "moe", "num_experts", [10 ** 9, 4]), "records, the model config implies"),
    "tie_word_embeddings is a string": (set_path("model", "tie_word_embeddings", "no"), "tie_word_embeddings"),
    "rope_theta over float32": (set_path("model", "rope_theta", 1e308), "finite float32"),
    "missing tensors": (lambda m: m.pop("tensors"), "has no 'tensors'"),
    "crc is not hex": (set_path("tensors", 0, "crc32", "0x123456"), "8 lowercase hex digits"),
    "sizes disagree": (set_path("sizes", "resident_bytes", 1), "size statistics"),
    "section too small": (set_path("sections", "resident", "nbytes", 64), "outside the resident section"),
    "vision entry missing": (vision_flag_without_section, "disagree about the vision section"),
    "vision weight bits": (set_path("vision", "weight_bits", 4), "weight_bits"),
    "vision format unknown": (set_path("vision", "format", "tflite"), "'tflite' is not one of native, onnx"),
    "vision blocks missing": (lambda m: m["vision"].pop("blocks"), "vision has no 'blocks'"),
    "vision blocks empty": (set_path("vision", "blocks", []), "vision blocks is empty"),
    "vision group size 48": (set_path("vision", "group_size", 48), "group_size 48"),
    "vision section shorter than its blocks": (set_path("vision", "nbytes", 4096), "more than its section"),
    "vision block misaligned": (lambda m: m["vision"]["blocks"][1].update(offset=m["vision"]["blocks"][1]["offset"] + 64),
                                "misaligned"),
    "vision block nbytes": (set_path("vision", "blocks", 1, "nbytes", 64), "does not match its tensors"),
    "vision block crc": (set_path("vision", "blocks", 1, "crc32", "xyz"), "8 lowercase hex digits"),
    "vision blocks out of order": (swap_vision_blocks, "does not match the model config"),
    "vision block tensor shape": (reshape_vision_tensor, "expected vision"),
    "vision block tensor role": (set_path("vision", "blocks", 1, "tensors", 0, "role", "attn"), "is not one of vision"),
    "vision block tensor renamed": (set_path("vision", "blocks", 1, "tensors", 0, "name", "ln1.weight"),
                                    "must hold layer_norm1.weight"),
    "crop size huge": (set_path("image_preprocess", "crop_size", {"height": 10 ** 6, "width": 10 ** 6}),
                       "vision tower's"),
    "tokenizer is a list": (set_path("tokenizer", []), "tokenizer must be an object"),
    "tokenizer has no json": (lambda m: m["tokenizer"].pop("json"), "metadata tokenizer has no 'json'"),
    "tokenizer json not a tokenizer": (set_path("tokenizer", "json", "{}"), "not a valid tokenizer.json"),
    "stop ids not a list": (set_path("tokenizer", "stop_token_ids", 7), "stop_token_ids"),
    "chat template without a name": (lambda m: m["chat_template"].pop("name"), "chat_template is invalid"),
    "tokenizer bos id huge": (set_path("tokenizer", "bos_token_id", 2 ** 40), None),
    "tokenizer eos id a string": (set_path("tokenizer", "eos_token_id", "0"), None),
    "chat template is a string": (set_path("chat_template", "hi"), "chat_template must be an object"),
}


CONSISTENT = {  # name: (vision format of the source, config changes, image?, words the one-line error must
    # contain; None: a run (the native blocks are rebuilt for the new config, so garbage weights of the right
    # shapes run) or any one-line error)
    "vocabulary smaller than the tokenizer's": ("native", {("vocab_size",): 100}, False, "outside the embedding table"),
    "vision input size not the ONNX model's": ("onnx", {("vision_config", "image_size"): 16}, True,
                                               "pixels must have shape"),
    "decoder hidden size not the ONNX features'": ("onnx", {("hidden_size",): 32}, True, "the decoder takes [P, 32]"),
    "native vision blocks of another tower size": ("native", {("vision_config", "image_size"): 16}, True, None),
    "native vision blocks of another width": ("native", {("vision_config", "hidden_size"): 32}, True, None),
    "native projector of another decoder width": ("native", {("hidden_size",): 32}, True, None),
}


def test_truncated_vision_section_with_its_checksum_rewritten(onnx_source, tmp_path):
    meta = metadata_of(onnx_source)
    meta["vision"]["nbytes"] = 5000
    meta["sizes"]["vision_bytes"] = 5000
    message = run_case(tmp_path / "v.mote", with_metadata(onnx_source, with_data_crcs(onnx_source, meta)), IMAGE)
    assert message is not None and "\n" not in message, message
    assert "the vision section is not a model onnxruntime can load" in message


def test_native_vision_section_longer_than_its_blocks(source):
    """Bytes after the last block inside the section (a data section with room for them)."""
    from mote_edge.format.validate import validate_metadata

    meta = metadata_of(source)
    meta["vision"]["nbytes"] += 4096
    meta["sizes"]["vision_bytes"] += 4096
    data_size = meta["vision"]["offset"] + meta["vision"]["nbytes"]
    with pytest.raises(MoteError, match="does not end with its last block"):
        validate_metadata(meta, 1, data_size)


def test_native_vision_block_with_garbage_data_and_its_checksum_rewritten(source, tmp_path):
    """A block whose bytes are another block's (CRCs recomputed): the run computes garbage or stops with
    a one-line error, never a crash."""
    meta = metadata_of(source)
    blocks = meta["vision"]["blocks"]
    blocks[1]["offset"], blocks[2]["offset"] = blocks[2]["offset"], blocks[1]["offset"]
    message = run_case(tmp_path / "g.mote", with_metadata(source, with_data_crcs(source, meta)), IMAGE)
    assert message is None or "\n" not in message, message


@pytest.mark.parametrize("name", CONSISTENT)
def test_named_file_whose_data_belongs_to_another_model(name, source, onnx_source, tmp_path):
    fmt, changes, with_image, words = CONSISTENT[name]
    src = source if fmt == "native" else onnx_source
    meta = metadata_of(src)
    for path, value in changes.items():
        change_config(meta, path, value)
    meta = rebuilt_for_config(src, meta)
    assert meta is not None, "the rebuilt directory does not fit the data section"
    message = run_case(tmp_path / "other.mote", with_metadata(src, meta), IMAGE if with_image else None)
    if words is None:
        assert message is None or "\n" not in message, message
        return
    assert message is not None and "\n" not in message and words in message, message


@pytest.mark.parametrize("name", NAMED)
def test_named_crafted_file(name, source, tmp_path):
    edit, words = NAMED[name]
    meta = metadata_of(source)
    edit(meta)
    message = run_case(tmp_path / "named.mote", with_metadata(source, meta))
    if words is None:  # a run or any one-line MoteError
        assert message is None or "\n" not in message
        return
    assert message is not None and "\n" not in message, message
    assert words in message, message
    if "tokenizer.json" not in words:  # a tokenizer.json the runtime cannot parse is found when the Engine reads it
        with pytest.raises(MoteError):
            MoteFile(tmp_path / "named.mote").close()  # refused on open, before any big allocation


CLI_CASES = ("renamed tensor", "renamed expert part", "zero expert records", "group size 0 in a tensor",
             "shape disagrees with the config", "tokenizer has no json")


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_run_prints_one_line_errors(name, source, tmp_path):
    edit, words = NAMED[name]
    meta = metadata_of(source)
    edit(meta)
    path = tmp_path / "cli.mote"
    path.write_bytes(with_metadata(source, meta))
    commands = [("run", str(path), "--prompt", "hi", "--max-new-tokens", "2")]
    if name == "shape disagrees with the config":
        commands += [("info", str(path)), ("verify", str(path))]
    for args in commands:
        r = run_cli(*args, timeout=120)
        assert r.returncode != 0, (args, r.stdout)
        assert "Traceback" not in r.stderr, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and words in errors[0], r.stderr
