"""Anonymous memory on transparent huge pages, for the weights a decode step streams from DRAM.

A GEMV reads every weight byte once per token, and the weights (resident int-N tensors, the expert
cache) are far larger than the L3, so decode is a stream from DRAM. On 4 KiB pages the hardware
prefetchers stop at every page boundary and every page needs its own TLB entry (in a VM a two-level
walk); on 2 MiB pages a stream runs through 512x fewer boundaries. Measured on the 2-core Zen 4 VM
(`benchmarks/kernel_speed.py --pages both`): a plain streaming read 22.1 -> 29.5 GB/s, the ternary GEMV
+5-11% and the int4 GEMV +20-30% cold.

Linux only grants these to a mapping that asks (`/sys/kernel/mm/transparent_hugepage/enabled` is
`[madvise]` on most distributions): `huge_buffer()` maps anonymous memory 2 MiB-aligned and
`madvise(MADV_HUGEPAGE)`s it. Elsewhere (or if the kernel refuses) it is plain anonymous memory, so
callers never need a second code path. `MOTE_HUGEPAGES=0` turns them off (A/B measurements).

Memory is honest: a huge page is faulted in whole on first touch, so a buffer of n bytes can
occupy `huge_rounded(n)` bytes of RSS; the memory plan counts that (runtime/plan.py).
"""

from __future__ import annotations

import mmap
import os

import numpy as np

HUGE_PAGE = 2 << 20
HUGE_MIN_BYTES = 16 << 20  # smaller buffers stay on 4 KiB pages (they fit the L3; rounding would dominate)
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode: "always", "madvise", "never" or "" (unknown)."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def huge_pages_enabled() -> bool:
    """THP available and not switched off with MOTE_HUGEPAGES=0 (for A/B runs)."""
    if os.environ.get("MOTE_HUGEPAGES", "1").strip() == "0":
        return False
    return thp_mode() in ("always", "madvise") and hasattr(mmap, "MADV_HUGEPAGE")


def wants_huge_pages(nbytes: int) -> bool:
    return nbytes >= HUGE_MIN_BYTES


def huge_rounded(nbytes: int) -> int:
    """What a huge_buffer of nbytes may occupy once touched, on any machine: rounded up to whole
    huge pages when the buffer asks for them (the memory plan uses this, so plans do not depend on
    the machine's THP setting)."""
    return -(-nbytes // HUGE_PAGE) * HUGE_PAGE if wants_huge_pages(nbytes) else nbytes


def huge_buffer(nbytes: int) -> np.ndarray:
    """A zero-filled, writable uint8 array of nbytes, 2 MiB-aligned, on huge pages where the OS
    grants them. Nothing is touched (no RSS) until written."""
    if nbytes <= 0:
        return np.zeros(0, dtype=np.uint8)
    huge = wants_huge_pages(nbytes) and huge_pages_enabled()
    pad = HUGE_PAGE if huge else 0  # address space only (never touched): room to align the start
    region = mmap.mmap(-1, (huge_rounded(nbytes) if huge else nbytes) + pad, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = np.frombuffer(region, dtype=np.uint8)  # keeps `region` alive as long as any view lives
    start = (-whole.ctypes.data) % HUGE_PAGE if huge else 0
    if huge:
        try:
            region.madvise(mmap.MADV_HUGEPAGE, start, huge_rounded(nbytes))
        except (OSError, ValueError):
            pass  # refused: plain pages, same contents
    return whole[start:start + nbytes]


class Arena:
    """Bump allocator over one huge_buffer: many arrays, one mapping, no per-array page rounding.
    `capacity_for(sizes)` is enough for arrays of those byte sizes taken in any order."""

    def __init__(self, nbytes: int, align: int = 64):
        self.buffer = huge_buffer(nbytes)
        self.align = align
        self.used = 0

    @staticmethod
    def capacity_for(sizes, align: int = 64) -> int:
        return sum(-(-n // align) * align for n in sizes)

    @property
    def capacity(self) -> int:
        return self.buffer.nbytes

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised array in the arena (a plain np.empty if the arena is full)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        start = -(-self.used // self.align) * self.align
        if start + nbytes > self.capacity:
            return np.empty(shape, dtype)
        self.used = start + nbytes
        return self.buffer[start:self.used].view(dtype).reshape(shape)
