"""safetensors files in numpy: a lazy reader over np.memmap and a streaming writer.

Format (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes
of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the
tensor bytes (offsets relative to the end of the header). bf16 has no numpy dtype: it is read
as uint16 and widened to float32 (exact), and written by rounding float32 to nearest-even.

Why not the `safetensors` package: it cannot produce bf16 without torch and cannot write a
file tensor by tensor; the exporter must stream models larger than RAM.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from mote_edge.errors import CheckpointError

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
                "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
ITEMSIZE = {**{k: np.dtype(v).itemsize for k, v in NUMPY_DTYPES.items()}, "BF16": 2}
WRITE_DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}
MAX_HEADER = 100 * 1024 * 1024
WRITE_CHUNK = 1 << 22  # elements converted and written at a time
READ_CHUNK_BYTES = 1 << 24


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


class SafetensorsFile:
    """Lazy read access to one .safetensors file; `get` copies one tensor into memory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path.name} is not a safetensors file (too short)")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER or 8 + n > size:
                    raise CheckpointError(f"{self.path.name} is not a safetensors file (bad header length {n})")
                header = json.loads(f.read(n))
        except OSError as e:
            raise CheckpointError(f"cannot read {self.path}: {e.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{self.path.name} has a corrupt safetensors header") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path.name} has a corrupt safetensors header")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self.entries: dict[str, dict[str, Any]] = header
        for name, e in header.items():
            self._check_entry(name, e, size - self.data_start)
        # Keep the file open: later reads see this file even if the path is replaced.
        self._fd = os.open(self.path, os.O_RDONLY)

    def _check_entry(self, name: str, e: Any, data_size: int) -> None:
        try:
            dtype, shape, (begin, end) = e["dtype"], e["shape"], e["data_offsets"]
            numel = int(np.prod(shape, dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path.name}: corrupt header entry for tensor {name}") from None
        if dtype not in ITEMSIZE:
            raise CheckpointError(f"{self.path.name}: tensor {name} has unsupported dtype {dtype}")
        if not (0 <= begin <= end <= data_size) or end - begin != numel * ITEMSIZE[dtype]:
            raise CheckpointError(f"{self.path.name}: tensor {name} has bad data offsets "
                                  f"[{begin}, {end}] (file truncated?)")

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def get(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        """A copy of tensor `name`, converted to `dtype` (float32 by default).

        Read with pread in chunks straight into the result: no mmap (whose pages would pile up in
        RSS over a whole checkpoint) and no full-size conversion temporaries.
        """
        e = self.entries[name]
        begin, end = e["data_offsets"]
        src = np.dtype(np.uint16) if e["dtype"] == "BF16" else np.dtype(NUMPY_DTYPES[e["dtype"]])
        out = np.empty(tuple(e["shape"]), dtype=dtype)
        flat = out.reshape(-1)
        per_chunk = max(1, READ_CHUNK_BYTES // src.itemsize)
        for start in range(0, flat.size, per_chunk):
            n = min(per_chunk, flat.size - start)
            raw = self._pread(n * src.itemsize, self.data_start + begin + start * src.itemsize)
            chunk = np.frombuffer(raw, dtype=src)
            flat[start:start + n] = bf16_bits_to_float32(chunk) if e["dtype"] == "BF16" else chunk
        return out

    def _pread(self, n: int, offset: int) -> bytes:
        data = os.pread(self._fd, n, offset)
        while len(data) < n:
            more = os.pread(self._fd, n - len(data), offset + len(data))
            if not more:
                raise CheckpointError(f"{self.path.name} is truncated (reading at offset {offset})")
            data += more
        return data

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None


class SafetensorsWriter:
    """Writes one .safetensors file tensor by tensor, in the order the header was planned.

    States: planned (header written at open) -> writing (tensors in order) -> closed. Closing
    before every planned tensor was written is an error, so a crash never leaves a file that
    looks complete.
    """

    def __init__(self, path: str | Path, plan: list[tuple[str, tuple[int, ...]]], dtype: str = "bf16",
                 metadata: dict[str, str] | None = None):
        if dtype not in WRITE_DTYPES:
            raise CheckpointError(f"unsupported checkpoint dtype {dtype!r} (choose {', '.join(WRITE_DTYPES)})")
        self.path = Path(path)
        self.st_dtype = WRITE_DTYPES[dtype]
        header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for name, shape in plan:
            nbytes = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[self.st_dtype]
            header[name] = {"dtype": self.st_dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # align the data section to 8 bytes
        self.plan = list(plan)
        self.next_index = 0
        self.nbytes = 8 + len(blob) + offset
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)

    def write(self, name: str, array: np.ndarray) -> None:
        if self.next_index >= len(self.plan):
            raise CheckpointError(f"tensor {name} was not planned for {self.path.name}")
        want_name, want_shape = self.plan[self.next_index]
        if name != want_name or tuple(array.shape) != tuple(want_shape):
            raise CheckpointError(f"expected tensor {want_name} {list(want_shape)} next in {self.path.name}, "
                                  f"got {name} {list(array.shape)}")
        flat = np.ascontiguousarray(array).reshape(-1)
        for start in range(0, flat.size, WRITE_CHUNK):  # chunks: conversion temporaries stay small
            chunk = flat[start:start + WRITE_CHUNK]
            if self.st_dtype == "BF16":
                data = float32_to_bf16_bits(chunk)
            else:
                data = np.ascontiguousarray(chunk, dtype=NUMPY_DTYPES[self.st_dtype])
            self._file.write(memoryview(data).cast("B"))
        self.next_index += 1

    def close(self) -> None:
        self._file.close()
        if self.next_index != len(self.plan):
            missing = self.plan[self.next_index][0]
            raise CheckpointError(f"{self.path.name} is incomplete: tensor {missing} was never written")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.close()
