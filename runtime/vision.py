"""The vision encoder of a .mote file: `vision_encoder(f)` picks the native encoder for a native
section (runtime/vit.py: block by block through our own kernels) or, for an ONNX section (files
exported with --vision-format onnx), the onnxruntime encoder below.

numpy + onnxruntime only (no torch, no onnx package). The section's input and output names are format
constants (mote_edge.format.constants VISION_INPUT / VISION_OUTPUT) that the exporter writes.

`VisionEncoder` is what the engine uses (DESIGN.md section 5: everything the process allocates for
the model counts, including the vision encoder's peak). The vision model occupies memory only
while an image is encoded: each `encode` loads the ONNX bytes, builds a session, runs it, then
drops the session and the bytes and hands freed heap back to the OS before returning. The session
is built without onnxruntime's CPU memory arena and memory-pattern planner, which would otherwise
keep their buffers for the session's lifetime (and the arena, in some builds, for the process's).
The cost is rebuilding the session per image (graph optimisation + weight prepacking); measure it
with `last_encode_ms`.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import numpy as np

from mote_edge.errors import FormatError
from mote_edge.format.constants import VISION_INPUT, VISION_OUTPUT

from mote_edge.format.reader import MoteFile

from .memory import large_allocations_mapped, trim_heap
from .vit import NativeVisionEncoder

__all__ = ["run_vision_onnx", "vision_encoder", "VisionEncoder", "VisionSectionError", "VisionShapeError"]


def _session(onnx_bytes: bytes, threads: int, release_memory: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    if release_memory:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


class VisionShapeError(FormatError, ValueError):
    """The vision section does not take or give the shapes the rest of the file says (its
    image_preprocess or model config disagrees with the ONNX model). A ValueError too, as for any
    caller of run_vision_onnx passing pixels of the wrong shape."""


class VisionSectionError(FormatError):
    """The vision section's bytes are not an ONNX model onnxruntime can load and run (its checksum
    held: the file was crafted or written by a broken exporter)."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _run(session: Any, pixels: np.ndarray) -> np.ndarray:
    expected = session.get_inputs()[0].shape  # ['batch', 3, S, S]
    if pixels.ndim != len(expected) or any(isinstance(d, int) and d != n for d, n in zip(expected, pixels.shape)):
        want = ["batch" if not isinstance(d, int) else d for d in expected]
        raise VisionShapeError(f"pixels must have shape {want}, got {list(pixels.shape)}")
    return session.run([VISION_OUTPUT], {VISION_INPUT: pixels})[0]


def run_vision_onnx(onnx_bytes: bytes, pixels: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an exported vision model: pixels [B, 3, S, S] float32 -> image features [B, P, H]."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    session = _session(onnx_bytes, threads, release_memory=False)
    return _run(session, pixels)


class VisionEncoder:
    """Encodes one image at a time; holds no onnxruntime state between calls.

    `onnx_bytes_loader()` returns the serialized ONNX model (e.g. a checksum-verified pread of the
    .mote vision section); it is called once per `encode`, and the encoder keeps no reference to
    its result, so the caller must not keep one either if the memory is to be returned.
    """

    def __init__(self, onnx_bytes_loader: Callable[[], bytes], threads: int = 1,
                 hidden_size: int | None = None) -> None:
        self._loader = onnx_bytes_loader
        self.threads = max(1, int(threads))
        self.hidden_size = hidden_size  # the feature width the decoder takes (checked per encode)
        self.last_encode_ms: float | None = None  # wall time of the last encode: load + session + run
        self.encodes = 0

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """pixels float32 [1, 3, S, S] -> image features float32 [P, H] (a fresh array)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[0] != 1:
            raise ValueError(f"VisionEncoder.encode takes one image, pixels [1, 3, S, S]; got {list(pixels.shape)}")
        start = time.perf_counter()
        with large_allocations_mapped():  # the session's buffers leave no heap behind (runtime/memory.py)
            features = self._encode(pixels)
        if features.ndim != 2 or (self.hidden_size is not None and features.shape[1] != self.hidden_size):
            raise VisionShapeError(f"the vision section gives image features of shape {list(features.shape)}, "
                                   f"the decoder takes [P, {self.hidden_size}]")
        self.encodes += 1
        self.last_encode_ms = (time.perf_counter() - start) * 1e3
        return features

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        """Load the section, build the session, run it, copy the features out, drop the session, trim."""
        blob: Any = self._loader()
        session: Any = None
        try:
            try:
                session = _session(blob, self.threads, release_memory=True)
            except Exception as e:  # noqa: BLE001  (onnxruntime's errors share no base class below Exception)
                raise VisionSectionError(f"the vision section is not a model onnxruntime can load "
                                         f"({_first_line(e)})") from None
            # The session holds its own copy of the weights from here on. onnxruntime's Python
            # wrapper also keeps the model bytes (to rebuild the session on an execution-provider
            # fallback, which a CPU-only session never does): drop that reference too, or the
            # bytes stay alive for the whole run.
            if getattr(session, "_model_bytes", None) is not None:
                session._model_bytes = None
            blob = None
            try:
                out = _run(session, pixels)
            except VisionShapeError:
                raise
            except Exception as e:  # noqa: BLE001
                raise VisionSectionError(f"the vision section failed to run ({_first_line(e)})") from None
            features = np.array(out[0], dtype=np.float32, copy=True)  # owns its memory, not the session's
            out = None
        finally:
            session = blob = None
            gc.collect()
            trim_heap()
        return features


def vision_encoder(f: MoteFile, threads: int = 1) -> "VisionEncoder | NativeVisionEncoder":
    """The encoder for an opened MoteFile's vision section (it must have one)."""
    if f.vision.format == "native":
        return NativeVisionEncoder.from_file(f, threads)
    return VisionEncoder(f.read_vision, threads, f.config.decoder.hidden_size)
