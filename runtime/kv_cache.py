"""The decoder's KV cache: float32, or int8 with one float32 scale per (head, position) (`kv_bits=8`,
like llama.cpp's `-ctk q8_0 -ctv q8_0` but per position rather than per 32 values).

    cache = KVCache(layers, kv_heads, context, head_dim, bits=8)
    cache.write(layer, start, k, v)         k, v [T, nKV, D] float32 at positions start .. start + T
    keys, values = cache.read(layer, end)   [nKV, end, D] float32 (dequantized for int8)

int8: scale = max|x| / 127 over the head's D values of one position; q = round(x / scale). Arrays are
allocated with np.zeros / np.empty (committed by the OS as positions are written).
"""

from __future__ import annotations

import numpy as np

KV_BITS = (32, 8)


def kv_bytes_per_position(kv_heads: int, head_dim: int, bits: int) -> int:
    """Bytes one position takes in one layer, K and V together."""
    per_head = 4 * head_dim if bits == 32 else head_dim + 4  # int8 values + one float32 scale
    return 2 * kv_heads * per_head


class KVCache:
    def __init__(self, layers: int, kv_heads: int, context: int, head_dim: int, bits: int = 32):
        if bits not in KV_BITS:
            raise ValueError(f"kv bits must be one of {KV_BITS}, got {bits}")
        self.bits = bits
        shape = (layers, 2, kv_heads, context, head_dim)  # [layers, k/v, nKV, context, D]
        if bits == 32:
            self.values = np.zeros(shape, np.float32)
            self.scales = None
        else:
            self.values = np.zeros(shape, np.int8)
            self.scales = np.zeros(shape[:-1] + (1,), np.float32)  # [layers, k/v, nKV, context, 1]

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """k, v [T, nKV, D] float32 -> positions start .. start + T of `layer`."""
        end = start + k.shape[0]
        for slot, x in enumerate((k, v)):
            x = x.transpose(1, 0, 2)  # [nKV, T, D]
            if self.scales is None:
                self.values[layer, slot, :, start:end] = x
                continue
            scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-12)) / np.float32(127)
            self.values[layer, slot, :, start:end] = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
            self.scales[layer, slot, :, start:end] = scale

    def read(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of positions 0 .. end - 1 of `layer`: [nKV, end, D] float32 each."""
        if self.scales is None:
            return self.values[layer, 0, :, :end], self.values[layer, 1, :, :end]
        k = self.values[layer, 0, :, :end].astype(np.float32) * self.scales[layer, 0, :, :end]
        v = self.values[layer, 1, :, :end].astype(np.float32) * self.scales[layer, 1, :, :end]
        return k, v
