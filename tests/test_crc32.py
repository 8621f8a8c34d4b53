"""The native CRC-32 (native/crc32.c) that checks every expert record: zlib's value bit for bit on both
paths (PCLMULQDQ folding and the scalar slice-by-8 tables), at every length and start offset around
its 16- and 64-byte blocks, continuing from any running value."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from mote_edge.quant import kernels


@pytest.fixture(params=["scalar", "auto"])
def crc_path(request):
    kernels.set_kernel_path(request.param)
    yield kernels.crc32_path()
    kernels.set_kernel_path("auto")


def test_crc32_equals_zlib_on_both_paths(crc_path):
    if crc_path == "scalar":
        assert kernels.kernel_path() == "scalar"
    rng = random.Random(0)
    data = bytes(rng.getrandbits(8) for _ in range(5000))
    for n in [*range(0, 200), 255, 256, 257, 1023, 1024, 4095, 4096, 4097]:
        off = rng.randrange(16)
        start = rng.getrandbits(32)
        view = memoryview(data)[off:off + n]
        assert kernels.crc32(view) == zlib.crc32(view), (crc_path, n, off)
        assert kernels.crc32(view, start) == zlib.crc32(view, start), (crc_path, n, off, start)
    big = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)  # an expert record's size
    assert kernels.crc32(big) == zlib.crc32(big)
    # continuing chunk by chunk gives the whole buffer's value (how the direct reader checks a record)
    crc = 0
    for a in range(0, big.nbytes, 1 << 20):
        crc = kernels.crc32(big[a:a + (1 << 20)], crc)
    assert crc == zlib.crc32(big)
    assert kernels.crc32(b"123456789") == 0xCBF43926


def test_crc32_path_follows_the_kernel_path():
    kernels.set_kernel_path("scalar")
    try:
        assert kernels.crc32_path() == "scalar"
    finally:
        kernels.set_kernel_path("auto")
    assert kernels.crc32_path() in ("clmul", "scalar")
