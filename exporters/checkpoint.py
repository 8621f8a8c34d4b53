"""HF-style checkpoint directories: lazy per-tensor reading and streaming writing.

A directory holds `config.json`, `model.safetensors` (or shards + `model.safetensors.index.json`),
`tokenizer.json` and `preprocessor_config.json`. Tensor names follow mote_edge.schema; alias
prefixes used by LLaVA / MoE-LLaVA for the vision tower are accepted when reading.

Reading never holds more than one tensor: peak memory ~ the largest tensor, as the exporter needs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mote_edge.config import ModelConfig, read_json_object
from mote_edge.errors import CheckpointError
from mote_edge.image import ImagePreprocessConfig, clip_defaults
from mote_edge.progress import byte_progress
from mote_edge.schema import CLIP_VISION_LEVEL, CLIP_VISION_ROOTS, TensorSpec, canonical_name, checkpoint_tensors
from mote_edge.tokenizer import Tokenizer, bos_of_tokenizer

from .safetensors_io import ITEMSIZE, WRITE_DTYPES, SafetensorsFile, SafetensorsWriter

SINGLE_FILE = "model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


class Checkpoint:
    """An opened checkpoint directory; validated against the schema at open time."""

    def __init__(self, directory: Path, config: ModelConfig, files: dict[str, SafetensorsFile],
                 key_of: dict[str, str], vision_dir: Path | None = None):
        self.dir = directory
        self.vision_dir = vision_dir  # a separate CLIP directory the tower came from, if any
        self.config = config
        self._files = files  # canonical name -> file holding it
        self._key_of = key_of  # canonical name -> name inside the file
        self.specs: list[TensorSpec] = checkpoint_tensors(config)
        self._spec_of = {s.name: s for s in self.specs}

    @classmethod
    def open(cls, directory: str | Path, vision_tower: str | Path | None = None) -> "Checkpoint":
        """Open `directory`; `vision_tower` is a CLIPVisionModel / CLIPModel directory for checkpoints
        that, like LLaVA's and MoE-LLaVA's, name their tower (mm_vision_tower / mm_image_tower) but
        do not hold it."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {directory}")
        data = read_json_object(directory / "config.json", "config")
        files, key_of = _open_weight_files(directory)
        vision_dir = None
        if vision_tower is not None:
            vision_dir = Path(vision_tower)
            data = {**data, "vision_config": _clip_vision_config(vision_dir)}
            tower_files, tower_keys = _open_weight_files(vision_dir)
            for key, f in tower_files.items():
                name = _tower_key(tower_keys[key])
                if name is not None:
                    files[name], key_of[name] = f, tower_keys[key]
        elif "vision_config" not in data and (data.get("mm_image_tower") or data.get("mm_vision_tower")):
            tower = data.get("mm_image_tower") or data.get("mm_vision_tower")
            raise CheckpointError(f"config.json has no vision_config: the vision tower is {tower!r}; "
                                  f"pass its directory with --vision-tower DIR")
        ckpt = cls(directory, ModelConfig.from_dict(data), files, key_of, vision_dir)
        ckpt._check_schema()
        return ckpt

    def _check_schema(self) -> None:
        for spec in self.specs:
            if spec.name not in self._files:
                raise CheckpointError(f"checkpoint {self.dir.name} is missing tensor {spec.name} "
                                      f"(expected shape {list(spec.shape)})")
            got = self._files[spec.name].shape(self._key_of[spec.name])
            if tuple(got) != spec.shape:
                raise CheckpointError(f"tensor {spec.name} has shape {list(got)}, expected {list(spec.shape)}")

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as float32, read from disk now (nothing is cached)."""
        if name not in self._spec_of:
            raise CheckpointError(f"tensor {name} is not part of this model")
        return self._files[name].get(self._key_of[name])

    def stored_dtype(self, name: str) -> str:
        return self._files[name].dtype(self._key_of[name])

    @property
    def extra_keys(self) -> list[str]:
        """Tensors in the files that the model does not use (e.g. CLIP's post_layernorm)."""
        return sorted(k for k in self._files if k not in self._spec_of)

    def tokenizer(self, warn=None) -> Tokenizer:
        """tokenizer.json with the BOS transformers' AutoTokenizer would add (the tokenizer's, not
        config.json's bos_token_id) and config.json's first eos_token_id."""
        eos = self.config.decoder.eos_ids
        tok = Tokenizer.from_file(self.dir / "tokenizer.json", eos_token_id=eos[0] if eos else None)
        tokenizer_config = None
        if (self.dir / TOKENIZER_CONFIG).exists():
            tokenizer_config = read_json_object(self.dir / TOKENIZER_CONFIG, "tokenizer config")
        tok.bos_id = bos_of_tokenizer(tok, tokenizer_config, warn)
        return tok

    def image_config(self) -> ImagePreprocessConfig:
        path = self.dir / PREPROCESSOR_CONFIG
        if not path.exists() and self.vision_dir is not None:
            path = self.vision_dir / PREPROCESSOR_CONFIG
        aspect = self.config.projector.image_aspect_ratio
        if not path.exists():
            return clip_defaults(self.config.vision.image_size, aspect_ratio=aspect)
        try:
            return ImagePreprocessConfig.from_preprocessor_config(json.loads(path.read_text()), aspect_ratio=aspect)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid preprocessor config ({e})") from None


def _clip_vision_config(directory: Path) -> dict:
    """The vision config of a CLIPVisionModel directory (flat) or a CLIPModel one (`vision_config`)."""
    if not directory.is_dir():
        raise CheckpointError(f"vision tower directory not found: {directory}")
    data = read_json_object(directory / "config.json", "vision tower config")
    vision = data.get("vision_config", data)
    if not isinstance(vision, dict) or vision.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise CheckpointError(f"{directory} is not a CLIP vision model (model_type "
                              f"{vision.get('model_type') if isinstance(vision, dict) else None!r})")
    return vision


def _tower_key(key: str) -> str | None:
    """A CLIPVisionModel / CLIPModel key -> the schema's vision name (None for text-model keys)."""
    if key.startswith(CLIP_VISION_LEVEL) or key.startswith(CLIP_VISION_ROOTS):
        return canonical_name(key if key.startswith(CLIP_VISION_LEVEL) else CLIP_VISION_LEVEL + key)
    return None


def _open_weight_files(directory: Path) -> tuple[dict[str, SafetensorsFile], dict[str, str]]:
    index_path = directory / INDEX_FILE
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError(f"{index_path} is not a valid safetensors index") from None
        shard_names = sorted(set(weight_map.values()))
    elif (directory / SINGLE_FILE).exists():
        shard_names = [SINGLE_FILE]
    else:
        raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}")
    files: dict[str, SafetensorsFile] = {}
    key_of: dict[str, str] = {}
    for shard in shard_names:
        if not (directory / shard).exists():
            raise CheckpointError(f"checkpoint shard {shard} listed in {INDEX_FILE} is missing")
        f = SafetensorsFile(directory / shard)
        for key in f.keys():
            name = canonical_name(key)
            files[name] = f
            key_of[name] = key
    return files, key_of


@dataclass
class CheckpointSummary:
    directory: Path
    nbytes: int
    shards: int
    params: int


def write_checkpoint(out_dir: str | Path, config: ModelConfig, get_tensor: Callable[[TensorSpec], np.ndarray],
                     dtype: str = "bf16", tokenizer_json: str | None = None,
                     image_config: ImagePreprocessConfig | None = None,
                     max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = True,
                     force: bool = False) -> CheckpointSummary:
    """Write an HF-style checkpoint directory, calling `get_tensor(spec)` once per tensor in
    schema order and writing it straight to disk (memory ~ the largest tensor)."""
    out = Path(out_dir)
    if dtype not in WRITE_DTYPES:
        raise CheckpointError(f"unsupported checkpoint dtype {dtype!r} (choose {', '.join(WRITE_DTYPES)})")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CheckpointError(f"output directory {out} is not empty (use --force to overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    (out / "tokenizer.json").write_text(tokenizer_json if tokenizer_json is not None else Tokenizer.default().to_str())
    image_config = image_config or clip_defaults(config.vision.image_size,
                                                 aspect_ratio=config.projector.image_aspect_ratio)
    (out / "preprocessor_config.json").write_text(json.dumps(image_config.to_preprocessor_config(), indent=2) + "\n")

    specs = checkpoint_tensors(config)
    itemsize = ITEMSIZE[WRITE_DTYPES[dtype]]
    shards = _plan_shards(specs, itemsize, max_shard_bytes)
    total = sum(s.numel for s in specs) * itemsize
    weight_map: dict[str, str] = {}
    with byte_progress(f"writing {out.name}", total, enabled=progress) as bar:
        for k, shard_specs in enumerate(shards):
            name = SINGLE_FILE if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            plan = [(s.name, s.shape) for s in shard_specs]
            with SafetensorsWriter(out / name, plan, dtype=dtype) as writer:
                for spec in shard_specs:
                    array = get_tensor(spec)
                    writer.write(spec.name, array)
                    weight_map[spec.name] = name
                    bar.advance(spec.numel * itemsize)
                    del array
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return CheckpointSummary(out, total, len(shards), sum(s.numel for s in specs))


def _plan_shards(specs: list[TensorSpec], itemsize: int, max_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        nbytes = spec.numel * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return shards
