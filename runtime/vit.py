"""The vision tower + projector run natively from a .mote file's native vision section (numpy + the
int-N kernels of mote_edge._native; no onnxruntime).

CLIP ViT as DESIGN.md section 3: the patch conv as a matmul over unfolded patches, the class token and
learned positions, pre_layrnorm, then blocks of LN -> MHA (q/k/v/out with bias) -> residual,
LN -> MLP (quick_gelu or gelu) -> residual; the hidden state after `mm_vision_select_layer` blocks,
the class token dropped for `patch`; then the projector (mlp2x_gelu: Linear -> GELU -> Linear, or
linear). Every matrix runs through runtime/weights.py's Linear (int8 groups: the C int-N kernel).

Streaming: the section is read block by block (mote_edge/format/vision_blocks.py) into one buffer
sized for the largest block, reused for every block, so the weights alive at a time are one block.
Attention runs in chunks of query rows, so the score matrix is [heads, ATTN_QUERY_CHUNK, tokens].
The buffer is dropped when the encode returns. `vision_peak_bytes` is the plan's bound on the peak.
"""

from __future__ import annotations

import time

import numpy as np

from mote_edge.config import ModelConfig
from mote_edge.format.directory import VisionBlock
from mote_edge.format.reader import MoteFile
from mote_edge.format.vision_blocks import runtime_block_bytes

from .memory import trim_heap
from .native_layer import held_scratch
from .weights import Linear

ATTN_QUERY_CHUNK = 128  # query rows per attention step of one head: scores [chunk, tokens]
QUICK_GELU_ALPHA = np.float32(1.702)
GELU_ROWS = 32
# erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, below float32's resolution of GELU's output)
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def erf(x: np.ndarray) -> np.ndarray:
    """erf(x) elementwise, computed in float64, returned as float32."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + _ERF_P * z)
    a1, a2, a3, a4, a5 = _ERF_A
    y = 1.0 - ((((a5 * t + a4) * t + a3) * t + a2) * t + a1) * t * np.exp(-z * z)
    return (np.sign(x) * y).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU, as torch's nn.GELU(), in place over rows of x [T, N], GELU_ROWS at a time
    (erf's float64 temporaries stay GELU_ROWS x N)."""
    for a in range(0, x.shape[0], GELU_ROWS):
        rows = x[a:a + GELU_ROWS]
        rows *= np.float32(0.5) * (np.float32(1.0) + erf(rows * np.float32(2 ** -0.5)))
    return x


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(1.702 x), in place (one temporary of x's size)."""
    t = x * -QUICK_GELU_ALPHA
    np.exp(t, out=t)
    t += np.float32(1.0)
    x /= t
    return x


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """x [T, D] -> [T, D]: LayerNorm over D (biased variance, as torch)."""
    mean = x.mean(axis=1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * weight + bias


def unfold_patches(pixels: np.ndarray, patch: int) -> np.ndarray:
    """pixels [C, S, S] -> [P, C * patch * patch]: row-major patches, each in (channel, row, column)
    order, so a conv with stride = kernel = patch is this times the flattened conv weight."""
    c, s, _ = pixels.shape
    g = s // patch
    x = pixels.reshape(c, g, patch, g, patch).transpose(1, 3, 0, 2, 4)  # [gy, gx, C, py, px]
    return np.ascontiguousarray(x.reshape(g * g, c * patch * patch))


class _BlockWeights:
    """The tensors of one block, as views into the reused block buffer."""

    def __init__(self, block: VisionBlock, parts: dict[str, dict[str, np.ndarray]], threads: int):
        self.entries = {t.name: t for t in block.tensors}
        self.parts, self.threads = parts, threads

    def linear(self, name: str) -> Linear:
        e = self.entries[name]
        return Linear(self.parts[name], e.scheme, e.shape, self.threads)

    def array(self, name: str) -> np.ndarray:
        return self.parts[name]["data"].reshape(self.entries[name].shape)


def attention(x: np.ndarray, w: _BlockWeights, heads: int) -> np.ndarray:
    """x [T, D] (layer-normed) -> the attention output [T, D] before out_proj's residual add. One head
    and ATTN_QUERY_CHUNK query rows at a time: q, k, v stay views into qkv, scores are [chunk, T]."""
    t, d = x.shape
    hd = d // heads
    qkv = w.linear("self_attn.qkv_proj.weight")(x)  # [T, 3D]: q, k, v, each head's hd columns in turn
    qkv += w.array("self_attn.qkv_proj.bias")
    qkv[:, :d] *= np.float32(hd ** -0.5)
    out = np.empty((t, d), np.float32)
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        q = qkv[:, cols]  # [T, hd] (row stride 3D: still one BLAS call per product)
        kt = np.ascontiguousarray(qkv[:, d:][:, cols].T)  # [hd, T]
        v = np.ascontiguousarray(qkv[:, 2 * d:][:, cols])  # [T, hd]
        for a in range(0, t, ATTN_QUERY_CHUNK):
            b = min(t, a + ATTN_QUERY_CHUNK)
            scores = q[a:b] @ kt  # [c, T]
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            out[a:b, cols] = scores @ v
    del qkv
    o = w.linear("self_attn.out_proj.weight")(out)
    o += w.array("self_attn.out_proj.bias")
    return o


def encoder_layer(x: np.ndarray, w: _BlockWeights, heads: int, act, eps: float) -> np.ndarray:
    """One CLIP block: x [T, D] -> [T, D]."""
    x = x + attention(layer_norm(x, w.array("layer_norm1.weight"), w.array("layer_norm1.bias"), eps), w, heads)
    h = w.linear("mlp.fc1.weight")(layer_norm(x, w.array("layer_norm2.weight"), w.array("layer_norm2.bias"), eps))
    h += w.array("mlp.fc1.bias")  # [T, I]
    h = w.linear("mlp.fc2.weight")(act(h))
    h += w.array("mlp.fc2.bias")
    return x + h


def embeddings(pixels: np.ndarray, w: _BlockWeights, patch: int, eps: float) -> np.ndarray:
    """pixels [C, S, S] -> pre_layrnorm(class token + patches + positions) [1 + P, D]."""
    patches = w.linear("patch_embedding.weight")(unfold_patches(pixels, patch))  # [P, D]
    x = np.concatenate([w.array("class_embedding")[None], patches]) + w.array("position_embedding.weight")
    return layer_norm(x, w.array("pre_layrnorm.weight"), w.array("pre_layrnorm.bias"), eps)


def projector(x: np.ndarray, w: _BlockWeights) -> np.ndarray:
    """x [P, Dv] -> [P, H]: mlp2x_gelu (keys 0 and 2) or linear."""
    if "weight" in w.entries:
        y = w.linear("weight")(x)
        y += w.array("bias")
        return y
    h = w.linear("0.weight")(x)
    h += w.array("0.bias")
    y = w.linear("2.weight")(gelu(h))
    y += w.array("2.bias")
    return y


def run_vision_blocks(cfg: ModelConfig, pixels: np.ndarray, blocks, threads: int = 1) -> np.ndarray:
    """pixels [C, S, S] -> image features [P, H]. `blocks` yields (VisionBlock, its parts) in order."""
    v = cfg.vision
    act = quick_gelu if v.hidden_act == "quick_gelu" else gelu
    x: np.ndarray | None = None
    for block, parts in blocks:
        w = _BlockWeights(block, parts, threads)
        if block.name == "embeddings":
            x = embeddings(pixels, w, v.patch_size, v.layer_norm_eps)
        elif block.name == "projector":
            if cfg.projector.select_feature == "patch":
                x = x[1:]
            x = projector(np.ascontiguousarray(x), w)
        else:
            x = encoder_layer(x, w, v.num_attention_heads, act, v.layer_norm_eps)
        del w, parts
    return x


def vision_peak_bytes(cfg: ModelConfig, blocks: list[VisionBlock]) -> int:
    """The native encoder's peak beside what the process held before: the block buffer (+ the float32
    copies of f16 matrices) and the activations, from the config.

    tokens T = P + 1, width D, head width d_h, MLP width I, projector width H:
      attention   x, its layer norm, qkv [T, 3D], the output [T, D], out_proj's result [T, D]
                  (7 x [T, D]); one head's k^T and v [T, d_h] each; scores [chunk, T]
      MLP         x, the layer norm, fc2's output [T, D]; fc1's output [T, I] and the activation's
                  temporary [T, I] (quick_gelu in place; gelu's float64 erf over GELU_ROWS rows at a time)
      projector   [P, D] + 3 x [P, H]
      kernels     int8 activations and their interleaved copy (2 bytes per input)
    The allocator may keep what attention freed while the MLP allocates (freed arrays below its mmap
    threshold stay in the heap until trimmed), so both are counted.
    """
    v, h = cfg.vision, cfg.decoder.hidden_size
    t, d, i = v.num_patches + 1, v.hidden_size, v.intermediate_size
    attn = 4 * (7 * t * d + 2 * t * v.head_dim + min(t, ATTN_QUERY_CHUNK) * t)
    mlp = 4 * (3 * t * d + 2 * t * i)
    proj = 4 * (t * d + 3 * t * h)
    gelu_rows = 8 * 6 * GELU_ROWS * max(i if v.hidden_act == "gelu" else 0, h)
    kernel = 2 * t * max(d, i, h, v.num_channels * v.patch_size ** 2)
    weights = max(runtime_block_bytes(b) for b in blocks)
    return weights + attn + max(mlp, proj) + gelu_rows + kernel


class NativeVisionEncoder:
    """Encodes one image at a time, reading the native vision section block by block.

    `read_block_into(block, buf)` reads one block into `buf` and returns its parts (tensor name ->
    parts, views into buf); MoteFile.read_vision_block_into does it with one checksum-verified pread."""

    def __init__(self, cfg: ModelConfig, blocks: list[VisionBlock], read_block_into, threads: int = 1):
        self.config, self.blocks, self._read = cfg, blocks, read_block_into
        self.threads = max(1, int(threads))
        self.buffer_bytes = max(b.nbytes for b in blocks)
        self.last_encode_ms: float | None = None
        self.encodes = 0

    @classmethod
    def from_file(cls, f: MoteFile, threads: int = 1) -> "NativeVisionEncoder":
        return cls(f.config, f.vision.blocks, f.read_vision_block_into, threads)

    def _stream(self, buf: np.ndarray):
        for block in self.blocks:
            yield block, self._read(block, buf)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [1, C, S, S] -> image features float32 [P, H] (a fresh array)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        v = self.config.vision
        want = (1, v.num_channels, v.image_size, v.image_size)
        if pixels.shape != want:
            raise ValueError(f"the vision encoder takes one image, pixels {list(want)}; got {list(pixels.shape)}")
        start = time.perf_counter()
        buf = np.empty(self.buffer_bytes, np.uint8)
        try:
            with held_scratch():  # the kernels' buffers, faulted in once for the whole image
                features = run_vision_blocks(self.config, pixels[0], self._stream(buf), self.threads)
        finally:
            del buf
            trim_heap()
        self.encodes += 1
        self.last_encode_ms = (time.perf_counter() - start) * 1e3
        return features
