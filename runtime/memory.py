"""Honest process memory readings (Linux), for the budget report (DESIGN.md section 5).

- `read_status()`: VmRSS, VmHWM (peak RSS), RssAnon, RssFile, RssShmem, VmSwap from
  /proc/self/status, in bytes. RssFile counts mapped file pages only; file pages the process has
  read with pread live in the page cache and appear in none of these, hence:
- `page_cache_bytes(path)`: how much of a file sits in the page cache, via mincore(2) on a
  PROT_READ mapping that is never touched (mapping does not fault pages in; mincore only looks).
- `drop_page_cache(fd, offset, length)`: posix_fadvise(DONTNEED) so the kernel drops the clean
  file pages of a range we have copied into our own memory (no second copy of an expert).
- `reset_peak()`: resets VmHWM to the current RSS (writes "5" to /proc/self/clear_refs), so a
  peak can be measured for one phase.
- `PeakTracker`: the peak RSS of each phase of a request (VmHWM reset at a phase's start), without
  losing the process's overall peak.
- `trim_heap()`: glibc malloc_trim(0): hand freed heap pages back to the OS.
- `release_pages(array)`: madvise(MADV_DONTNEED) on the whole pages inside an anonymous-memory
  array: they leave RSS now and read as zeros when touched again.
- `filesystem_type(path)`: "ext4", "tmpfs", ... from /proc/self/mountinfo (tmpfs pages are the
  file itself: posix_fadvise cannot drop them).

Every function degrades to a neutral answer where the OS lacks the feature (zeros, None, False).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from contextlib import contextmanager
from typing import Iterator

import numpy as np

__all__ = ["STATUS_KEYS", "read_status", "reset_peak", "PeakTracker", "page_cache_bytes", "drop_page_cache", "trim_heap",
           "release_pages", "filesystem_type"]

STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSwap")
PAGE_SIZE = mmap.PAGESIZE
MINCORE_WINDOW = 256 * 2**20  # map at most this much address space at a time (32-bit devices)
CAP_FOWNER = 3

_PROT_READ = 0x1
_MAP_SHARED = 0x01


def read_status() -> dict[str, int]:
    """/proc/self/status memory fields in bytes; a missing field (or a non-Linux OS) reads 0."""
    out = dict.fromkeys(STATUS_KEYS, 0)
    try:
        with open("/proc/self/status", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in out:
            parts = rest.split()
            if parts and parts[0].isdigit():
                scale = 1024 if len(parts) < 2 or parts[1].lower() == "kb" else 1
                out[key] = int(parts[0]) * scale
    return out


def reset_peak() -> bool:
    """Reset VmHWM to the current VmRSS (Linux >= 4.0). True if the kernel accepted it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakTracker:
    """Peak RSS per phase: `start()` resets VmHWM (remembering the peak so far), `end(name)` records
    the phase's VmHWM. `overall()` is the process's peak since the tracker was made, as if VmHWM had
    never been reset. Where VmHWM cannot be reset, phases are not recorded and `overall()` is VmHWM."""

    def __init__(self) -> None:
        self._overall = read_status()["VmHWM"]
        self._resettable = False
        self.phases: dict[str, int] = {}  # phase -> VmHWM during it (bytes)

    def start(self) -> None:
        self._overall = max(self._overall, read_status()["VmHWM"])
        self._resettable = reset_peak()

    def end(self, name: str) -> None:
        hwm = read_status()["VmHWM"]
        self._overall = max(self._overall, hwm)
        if self._resettable:
            self.phases[name] = max(self.phases.get(name, 0), hwm)

    def overall(self) -> int:
        return max(self._overall, read_status()["VmHWM"])


def drop_page_cache(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Advise the kernel to drop the page-cache pages of fd[offset : offset + length] (length 0 =
    to the end of the file). Dirty pages are written back first and may stay until that is done.
    Returns False where posix_fadvise is unavailable or refused (nothing else happens)."""
    fadvise = getattr(os, "posix_fadvise", None)
    if fadvise is None:
        return False
    try:
        fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------- libc
class _Libc:
    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)  # the process's global symbols, libc included
        self.mmap = getattr(lib, "mmap64", None) or lib.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int64 if self.mmap.__name__ == "mmap64" else ctypes.c_long]
        self.munmap = lib.munmap
        self.munmap.restype = ctypes.c_int
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.mincore = lib.mincore
        self.mincore.restype = ctypes.c_int
        self.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.madvise = lib.madvise
        self.madvise.restype = ctypes.c_int
        self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.malloc_trim = getattr(lib, "malloc_trim", None)  # glibc only
        if self.malloc_trim is not None:
            self.malloc_trim.restype = ctypes.c_int
            self.malloc_trim.argtypes = [ctypes.c_size_t]
        self.mallopt = getattr(lib, "mallopt", None) if self.malloc_trim is not None else None  # glibc's
        if self.mallopt is not None:
            self.mallopt.restype = ctypes.c_int
            self.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]


_libc: "_Libc | None | bool" = False  # False: not tried yet; None: unavailable


def _get_libc() -> "_Libc | None":
    global _libc
    if _libc is False:
        try:
            _libc = _Libc() if sys.platform.startswith("linux") else None
        except (OSError, AttributeError):
            _libc = None
    return _libc  # type: ignore[return-value]


def trim_heap() -> bool:
    """glibc malloc_trim(0): return free heap memory to the OS. False if unavailable."""
    libc = _get_libc()
    if libc is None or libc.malloc_trim is None:
        return False
    libc.malloc_trim(0)
    return True


# glibc mallopt parameters and thresholds (malloc/malloc.c)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_START = 128 * 1024  # glibc's initial mmap threshold
MMAP_THRESHOLD_CEILING = 32 * 2**20  # where glibc's dynamic threshold stops rising (64-bit)


@contextmanager
def large_allocations_mapped() -> Iterator[bool]:
    """While inside, glibc gives every allocation of >= 128 KiB its own mapping, unmapped when freed,
    instead of carving it from the heap. For a foreign library's burst of big buffers (an onnxruntime
    session: ~3x its model): from the heap, they raise glibc's dynamic thresholds to their ceiling and
    leave a heap of hundreds of MB whose top cannot be trimmed past the chunks still live in it (the
    copied features, the library's own state); later prefill buffers reuse that heap's scattered free
    chunks and fault in pages nobody returns: a 3B prefill after an ONNX encode peaked 12-21 MB higher
    than the same run with the burst mapped, up to 4.9 MB over its plan (docs/BENCHMARKS.md). On exit the thresholds are left fixed at
    the ceiling the burst would have raised them to (mmap 32 MiB, trim 64 MiB: with a lower one numpy's
    big temporaries are faulted in afresh on every use, prefill up to 2.4x slower). Yields False (and
    changes nothing) where glibc's mallopt is unavailable."""
    libc = _get_libc()
    if libc is None or libc.mallopt is None:
        yield False
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_START)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_CEILING)


MADV_DONTNEED = 4  # Linux


def release_pages(array: np.ndarray) -> int:
    """Drop the whole pages inside `array` (anonymous private memory, e.g. a huge_buffer view) from
    RSS; their contents become zeros. Returns the bytes released (0 where madvise is unavailable)."""
    libc = _get_libc()
    if libc is None or array.nbytes == 0:
        return 0
    start = array.ctypes.data
    first = -(-start // PAGE_SIZE) * PAGE_SIZE
    last = (start + array.nbytes) // PAGE_SIZE * PAGE_SIZE
    if last <= first:
        return 0
    if libc.madvise(ctypes.c_void_p(first), last - first, MADV_DONTNEED) != 0:
        return 0
    return last - first


# ------------------------------------------------------------------------------- page cache
def _mincore_is_honest(path: str, st: os.stat_result) -> bool:
    """Since Linux 5.0, mincore() on a file mapping reports real residency only if the caller owns
    the file, may write to it, or has CAP_FOWNER; otherwise it claims every page is resident."""
    if st.st_uid == os.geteuid() or os.access(path, os.W_OK):
        return True
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    if int(line.split()[1], 16) >> CAP_FOWNER & 1:
                        return True
                    break
    except (OSError, ValueError, IndexError):
        pass
    return False


def page_cache_bytes(path: "str | os.PathLike[str]") -> "int | None":
    """Bytes of `path` resident in the page cache, or None where this cannot be measured honestly
    (no mincore, not Linux, or a file the kernel would answer "all resident" for regardless)."""
    libc = _get_libc()
    if libc is None:
        return None
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if not _mincore_is_honest(os.fspath(path), st):
            return None
        size = st.st_size
        if size == 0:
            return 0
        resident = 0
        for start in range(0, size, MINCORE_WINDOW):
            length = min(MINCORE_WINDOW, size - start)
            pages = -(-length // PAGE_SIZE)
            vec = np.zeros(pages, dtype=np.uint8)
            addr = libc.mmap(None, length, _PROT_READ, _MAP_SHARED, fd, start)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                return None
            try:
                rc = libc.mincore(addr, length, vec.ctypes.data)
            finally:
                libc.munmap(addr, length)
            if rc != 0:
                return None
            in_core = (vec & 1).astype(bool)
            resident += int(in_core.sum()) * PAGE_SIZE
            if in_core[-1]:  # the last page of a window may be partial
                resident -= pages * PAGE_SIZE - length
        return resident
    finally:
        os.close(fd)


def filesystem_type(path: "str | os.PathLike[str]") -> "str | None":
    """The type of the filesystem holding `path` ("ext4", "tmpfs", "overlay", ...), None if unknown."""
    try:
        real = os.path.realpath(os.fspath(path))
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    best, best_len = None, -1
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = _unescape(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best_len:  # later entries over the same point win (stacked mounts)
            best, best_len = right.split()[0], len(mount)
    return best


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
