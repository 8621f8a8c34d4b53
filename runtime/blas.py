"""numpy's BLAS thread count, through the OpenBLAS C API of the library numpy loaded (no threadpoolctl).

The runtime still hands some products to numpy's BLAS: the numpy reference layer's prefill attention
(`MOTE_DECODER=numpy`, runtime/decoder.py: a batch of [C, D] x [D, S] products per KV head group, D = head_dim
= 64-128; the native layer does its own), the vision encoder's attention
(runtime/vit.py: one head, 128 query rows at a time) and fp-stored weights (runtime/weights.py). Each
product is small, and OpenBLAS splits every one over its threads (one per core by default), beside the
Engine's own kernel threads. `Engine.load` sets BLAS_THREADS for the process (an app that embeds the Engine
and wants more BLAS threads for its own numpy work sets them after the load): measured on the 2-core EPYC
(benchmarks/blas_threads.py, docs/BENCHMARKS.md "BLAS threads"), a 900-position 0.5B prefill at one
BLAS thread against numpy's default two ran 1.45x faster with the Engine on 2 threads and the box idle,
3.5x faster with two other processes spinning (Engine on 1 or 2 threads); the image encode 1.0-1.9x.

Only OpenBLAS builds are handled (numpy's wheels bundle one, its symbols prefixed `scipy_` and suffixed
`64_` for the 64-bit-integer build); elsewhere (another BLAS, not Linux) nothing is changed and the
functions return None / False.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np  # noqa: F401  (loads the BLAS library this module looks for)

# (setter, getter) names, most specific first: numpy's scipy-openblas wheels, then plain OpenBLAS builds
_SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
            ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
            ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
            ("openblas_set_num_threads", "openblas_get_num_threads"))


def _loaded_openblas_paths() -> list[str]:
    """Shared objects mapped into this process whose file name contains "openblas"."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1]}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


class _OpenBLAS:
    def __init__(self, set_threads, get_threads) -> None:
        self._set, self._get = set_threads, get_threads

    def set(self, n: int) -> None:
        self._set(ctypes.c_int(n))

    def get(self) -> int:
        return int(self._get())


def _find() -> "_OpenBLAS | None":
    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle numpy uses
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                getter.restype, getter.argtypes = ctypes.c_int, []
                return _OpenBLAS(setter, getter)
    return None


BLAS_THREADS = 1  # what Engine.load sets, whatever its own threads (above)

_blas: "_OpenBLAS | None | bool" = False  # False: not looked up yet


def _get() -> "_OpenBLAS | None":
    global _blas
    if _blas is False:
        _blas = _find()
    return _blas  # type: ignore[return-value]


def blas_threads() -> int | None:
    """Threads numpy's OpenBLAS runs a product on, or None where it is not an OpenBLAS found here."""
    blas = _get()
    return blas.get() if blas is not None else None


def set_blas_threads(n: int) -> bool:
    """Run numpy's BLAS products on at most `n` threads (process-wide). False where it cannot be set."""
    blas = _get()
    if blas is None:
        return False
    blas.set(max(1, int(n)))
    return True
