"""The native vision section (docs/FORMAT.md section 8.2): the CLIP vision tower and the projector as
blocks of tensors, one block per step of the forward pass, so a reader streams the tower block by
block (one pread and one crc each) into one reused buffer.

    embeddings   patch_embedding.weight [D, C*p*p] (the conv as a matmul over unfolded patches,
                 columns in (channel, row, column) order), class_embedding [D],
                 position_embedding.weight [P+1, D], pre_layrnorm.weight / .bias [D]
    layers.j     layer_norm1.weight / .bias, self_attn.qkv_proj.weight [3D, D] (q, k, v rows),
                 self_attn.qkv_proj.bias [3D], self_attn.out_proj.weight [D, D] / .bias,
                 layer_norm2.weight / .bias, mlp.fc1.weight [I, D] / .bias, mlp.fc2.weight [D, I] / .bias
                 for j < the blocks mm_vision_select_layer needs
    projector    mlp2x_gelu: 0.weight [H, D], 0.bias, 2.weight [H, H], 2.bias; linear: weight, bias

Matrices ("linear" tensors) are stored by weight_bits: 8 = int8 group-wise (the intn scheme, bits 8),
16 = f16, 32 = f32; every vector, the class token and the position table are f32. The writer,
the validator and the runtime all take the block list from `vision_block_specs`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mote_edge.config import ModelConfig
from mote_edge.quant.recipe import F16, F32, Scheme
from mote_edge.schema import VISION_PREFIX, projector_tensors

from .constants import SECTION_ALIGN
from .encoding import encode
from .directory import TensorEntry, VisionBlock, align
from .writer import record_bytes

VISION_FORMATS = ("native", "onnx")
NATIVE_WEIGHT_BITS = (8, 16, 32)
DEFAULT_VISION_GROUP_SIZE = 32  # int8 groups along K (activations are quantized per group too)
BLOCK_ALIGN = SECTION_ALIGN  # each block starts page-aligned in the section


@dataclass(frozen=True)
class VisionTensorSpec:
    name: str  # inside its block
    role: str  # "vision" or "projector"
    shape: tuple[int, ...]
    sources: tuple[str, ...]  # checkpoint tensors, concatenated along dim 0 (then reshaped to `shape`)
    linear: bool  # a matrix a kernel multiplies (stored by weight_bits) or a float32 vector/table


def linear_scheme(weight_bits: int, group_size: int) -> Scheme:
    """How the section's matrices are stored for `weight_bits`."""
    if weight_bits == 8:
        return Scheme("intn", 8, group_size, "rtn")
    return {16: F16, 32: F32}[weight_bits]


def vision_block_specs(cfg: ModelConfig) -> list[tuple[str, list[VisionTensorSpec]]]:
    """(block name, its tensors) in the order the forward pass runs them."""
    v, p = cfg.vision, VISION_PREFIX
    d, inter = v.hidden_size, v.intermediate_size

    def vec(name: str, n: int, *sources: str, role: str = "vision") -> VisionTensorSpec:
        return VisionTensorSpec(name, role, (n,), sources, False)

    blocks = [("embeddings", [
        VisionTensorSpec("patch_embedding.weight", "vision", (d, v.num_channels * v.patch_size ** 2),
                         (p + "embeddings.patch_embedding.weight",), True),
        vec("class_embedding", d, p + "embeddings.class_embedding"),
        VisionTensorSpec("position_embedding.weight", "vision", (v.num_patches + 1, d),
                         (p + "embeddings.position_embedding.weight",), False),
        vec("pre_layrnorm.weight", d, p + "pre_layrnorm.weight"),
        vec("pre_layrnorm.bias", d, p + "pre_layrnorm.bias"),
    ])]
    for j in range(cfg.projector.vision_layers_used(v)):
        b = f"{p}encoder.layers.{j}."
        qkv = ("q_proj", "k_proj", "v_proj")
        blocks.append((f"layers.{j}", [
            vec("layer_norm1.weight", d, b + "layer_norm1.weight"),
            vec("layer_norm1.bias", d, b + "layer_norm1.bias"),
            VisionTensorSpec("self_attn.qkv_proj.weight", "vision", (3 * d, d),
                             tuple(f"{b}self_attn.{q}.weight" for q in qkv), True),
            vec("self_attn.qkv_proj.bias", 3 * d, *(f"{b}self_attn.{q}.bias" for q in qkv)),
            VisionTensorSpec("self_attn.out_proj.weight", "vision", (d, d), (b + "self_attn.out_proj.weight",), True),
            vec("self_attn.out_proj.bias", d, b + "self_attn.out_proj.bias"),
            vec("layer_norm2.weight", d, b + "layer_norm2.weight"),
            vec("layer_norm2.bias", d, b + "layer_norm2.bias"),
            VisionTensorSpec("mlp.fc1.weight", "vision", (inter, d), (b + "mlp.fc1.weight",), True),
            vec("mlp.fc1.bias", inter, b + "mlp.fc1.bias"),
            VisionTensorSpec("mlp.fc2.weight", "vision", (d, inter), (b + "mlp.fc2.weight",), True),
            vec("mlp.fc2.bias", d, b + "mlp.fc2.bias"),
        ]))
    projector = []
    for spec in projector_tensors(cfg):
        name = spec.name[len("model.mm_projector."):]
        projector.append(VisionTensorSpec(name, "projector", spec.shape, (spec.name,), len(spec.shape) == 2))
    blocks.append(("projector", projector))
    return blocks


def plan_vision_blocks(cfg: ModelConfig, weight_bits: int, group_size: int) -> list[VisionBlock]:
    """The blocks' layout (tensor entries and offsets in the section); CRCs are filled when written."""
    scheme = linear_scheme(weight_bits, group_size)
    blocks, pos = [], 0
    for name, specs in vision_block_specs(cfg):
        block = VisionBlock.plan(name, [TensorEntry.plan(s.name, s.role, scheme if s.linear else F32, s.shape)
                                        for s in specs])
        pos = align(pos, BLOCK_ALIGN)
        block.offset = pos
        pos += block.nbytes
        blocks.append(block)
    return blocks


def section_nbytes(blocks: list[VisionBlock]) -> int:
    return blocks[-1].offset + blocks[-1].nbytes if blocks else 0


def runtime_block_bytes(block: VisionBlock) -> int:
    """A block's buffer plus the float32 copies a reader makes of its f16 matrices."""
    return block.nbytes + sum(t.numel * 4 for t in block.tensors if t.scheme.kind == "f16")


def source_tensor(spec: VisionTensorSpec, tensor) -> np.ndarray:
    """The float32 array a spec stores, from `tensor(name)` (a checkpoint reader)."""
    parts = [np.asarray(tensor(name), dtype=np.float32) for name in spec.sources]
    w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return np.ascontiguousarray(w.reshape(spec.shape))


def encode_vision_blocks(cfg: ModelConfig, blocks: list[VisionBlock], tensor) -> Iterator[tuple[VisionBlock, bytearray]]:
    """Each planned block (plan_vision_blocks) with its record's bytes, in order, its CRC filled: every spec
    read with `tensor(name)` (a checkpoint reader), encoded by the shared quantizer, packed at its planned
    offset. One block's tensors and record are alive at a time (a writer streams them to the file)."""
    for block, (_, specs) in zip(blocks, vision_block_specs(cfg)):
        parts = {s.name: encode(source_tensor(s, tensor), t.scheme) for s, t in zip(specs, block.tensors)}
        record = record_bytes(block.tensors, parts, f"vision block {block.name}")
        block.crc32 = zlib.crc32(record)
        yield block, record


def build_vision_section(cfg: ModelConfig, weight_bits: int, group_size: int, tensor) -> tuple[bytearray, list[VisionBlock]]:
    """The whole native section in memory and its blocks (CRCs filled), for readers that take bytes."""
    blocks = plan_vision_blocks(cfg, weight_bits, group_size)
    data = bytearray(section_nbytes(blocks))
    for block, record in encode_vision_blocks(cfg, blocks, tensor):
        data[block.offset:block.offset + block.nbytes] = record
    return data, blocks
