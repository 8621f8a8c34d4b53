"""Reading one expert record into a 4096-aligned buffer (a cache slab or the staging buffer), checksum
verified, without leaving a second copy in the page cache (DESIGN.md section 5).

    direct    a second descriptor opened with O_DIRECT: the read bypasses the page cache. Records
              start 4096-aligned and slabs are whole multiples of 4096 bytes, so the read length is
              rounded up to 4096 inside the buffer (the bytes past the record are never used). A
              demand read is one preadv of the whole record (the kernel queues all of it at once:
              on the EPYC box's disk 1 MiB chunks read 8.3 MB records ~35% slower, 4 MiB ~15%); a
              read that may be aborted (a prefetch: `check` given) asks `check()` before each chunk
              how much to read next (it raises to abort): small chunks while its prediction is not
              confirmed (a demand read waits for at most one), the rest in one preadv once it is. A demand read given an `assist` (an idle loader thread) reads its first
              half here and has the second half read and checksummed there at the same time; the
              record's CRC-32 is the halves' combined (`crc32_combine`), checked before the record is used.
              A demand read given `early` reads the record's leading tensors (gate_proj, up_proj) first and
              calls `early()` as soon as they are in, then the rest (by an idle reader where `assist`
              finds one, while this thread checksums the first part); the caller may compute with the
              first part meanwhile but uses no result before read_into has checked the whole record.
    buffered  the filesystem refused O_DIRECT (tmpfs does), or a buffer is not aligned: one preadv,
              then posix_fadvise(DONTNEED) on the record's pages.

The checksum is mote_edge._native's CRC-32 (PCLMULQDQ on x86-64: ~3x zlib's, faster than the disk);
`native_crc=False` keeps zlib's (the serial loader). Both release the GIL while they read and
checksum, so loader threads read while the decoding thread computes.
"""

from __future__ import annotations

import os
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mote_edge.errors import FormatError
from mote_edge.format.constants import SECTION_ALIGN
from mote_edge.format.directory import align
from mote_edge.format.reader import ExpertEntry, MoteFile
from mote_edge.quant import kernels

from .memory import drop_page_cache

IO_PATHS = ("direct", "buffered")
DIRECT_ALIGN = 4096


@dataclass
class ReadTiming:
    """Where one record's load went, in ms (summed into the cache's counters by the decoding thread)."""
    read_ms: float = 0.0
    crc_ms: float = 0.0
    place_ms: float = 0.0  # parsing the record into tensors, the 2-bit re-layout


def _add(total: ReadTiming, part: ReadTiming) -> None:
    total.read_ms += part.read_ms
    total.crc_ms += part.crc_ms


def _gf2_times(mat: list[int], vec: int) -> int:
    """A 32 x 32 matrix over GF(2) (mat[i]: the image of bit i) times a 32-bit vector."""
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _zeros_operator(nbytes: int) -> list[int]:
    """The linear map c -> crc32(zeros(nbytes), c) ^ crc32(zeros(nbytes), 0): what appending `nbytes` bytes
    does to a CRC-32 (the map zlib's crc32_combine applies), by squaring the one-zero-bit operator."""
    op = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit: shift right, xor the polynomial on bit 0
    for _ in range(3):  # one zero byte = 8 bits
        op = [_gf2_times(op, col) for col in op]
    result = [1 << i for i in range(32)]  # identity
    while nbytes:
        if nbytes & 1:
            result = [_gf2_times(op, col) for col in result]
        nbytes >>= 1
        if nbytes:
            op = [_gf2_times(op, col) for col in op]
    return result


_ZEROS_OPERATORS: dict[int, list[int]] = {}


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC-32 of A + B from CRC-32(A), CRC-32(B) and len(B) (zlib's crc32_combine); the operator of each
    length is computed once (~2 ms) and kept."""
    op = _ZEROS_OPERATORS.get(len_b)
    if op is None:
        op = _ZEROS_OPERATORS.setdefault(len_b, _zeros_operator(len_b))
    return _gf2_times(op, crc_a) ^ crc_b


def _open_direct(path, data_offset: int) -> int | None:
    """An O_DIRECT descriptor of `path`, or None where the OS or the filesystem refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or data_offset % DIRECT_ALIGN:
        return None
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | flag)
    except OSError:
        return None
    probe = np.frombuffer(_aligned_page(), np.uint8)
    try:  # some filesystems accept the flag at open and refuse the read
        os.preadv(fd, [probe], data_offset)
    except OSError:
        os.close(fd)
        return None
    return fd


def _aligned_page():
    import mmap

    return mmap.mmap(-1, DIRECT_ALIGN, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class ExpertReader:
    """Reads expert records of an open MoteFile; `io_path` says which path runs ("direct" or "buffered")."""

    def __init__(self, f: MoteFile, direct: bool = True, native_crc: bool = True):
        self.file = f
        self.data_offset = f.header.data_offset
        self.file_size = f.header.file_size
        self._direct_fd = _open_direct(f.path, self.data_offset) if direct else None
        self.io_path = "direct" if self._direct_fd is not None else "buffered"
        self._crc = kernels.crc32 if native_crc else zlib.crc32
        self.crc_path = kernels.crc32_path() if native_crc else "zlib"
        if self._direct_fd is not None:  # the split reads' CRC operators, built now rather than on a first miss
            for e in f.experts.values():
                for split in (align(e.nbytes // 2, DIRECT_ALIGN), align(e.tensors[-1].offset, DIRECT_ALIGN)):
                    if split < e.nbytes:
                        crc32_combine(0, 0, e.nbytes - split)

    def read_into(self, layer: int, expert: int, buf: np.ndarray, check: Callable[[], None] | None = None,
                  timing: ReadTiming | None = None, assist: Callable | None = None,
                  early: Callable[[], None] | None = None, landed: Callable[[], None] | None = None) -> ExpertEntry:
        """Read expert (layer, expert) into `buf` (uint8, at least the record rounded up to 4096) and
        verify its checksum; returns its directory entry. `check` runs between direct chunks (it may raise);
        `timing` gets the read and checksum times added; `assist(fn)` (an ExpertLoader's) may run half of a
        direct read without `check` on another thread (it returns None when no thread is free); `early()`
        runs once the tensors before the last are in, before the checksum (direct reads without `check`);
        `landed()` once the whole record is in, before its checksum is computed where the path allows.
        `check() -> int | None` (an abortable read): the bytes to read next (a multiple of DIRECT_ALIGN; None:
        the rest), or raises to stop; `early()` runs there too once the leading tensors are in."""
        entry = self.file.expert_entry(layer, expert)
        timing = timing if timing is not None else ReadTiming()
        landed = landed or (lambda: None)
        what = f"expert ({layer}, {expert})"
        if self._direct_fd is None or buf.ctypes.data % DIRECT_ALIGN or buf.nbytes < align(entry.nbytes, DIRECT_ALIGN):
            t0 = time.perf_counter()
            self.file.read_expert_into(layer, expert, buf, verify=False)
            drop_page_cache(self.file.fileno(), self.data_offset + entry.offset, align(entry.nbytes, SECTION_ALIGN))
            timing.read_ms += 1e3 * (time.perf_counter() - t0)
            landed()
            crc, ms = self._timed_crc(memoryview(buf).cast("B")[:entry.nbytes])
            timing.crc_ms += ms
        elif check is None and early is not None and DIRECT_ALIGN <= entry.tensors[-1].offset:
            crc = self._read_early(entry, buf, what, timing, early, assist, landed)
        elif check is None and assist is not None and entry.nbytes > DIRECT_ALIGN:
            crc = self._read_halves(entry, buf, what, timing, assist)
            landed()
        elif check is not None:
            crc = self._read_chunks(entry, buf, what, check, timing, early, landed)
        else:
            crc = self._read_direct(entry, buf, what, timing, landed)
        if crc != entry.crc32:
            raise FormatError(f"{self.file.name}: checksum mismatch in expert ({layer}, {expert})")
        return entry

    def _read_direct(self, entry: ExpertEntry, buf: np.ndarray, what: str, timing: ReadTiming,
                     landed: Callable[[], None] = lambda: None) -> int:
        """The record in one read, then `landed()` and its CRC-32."""
        view = memoryview(buf).cast("B")
        t0 = time.perf_counter()
        n = os.preadv(self._direct_fd, [view[:align(entry.nbytes, DIRECT_ALIGN)]], self.data_offset + entry.offset)
        if n < entry.nbytes:
            raise FormatError(f"{self.file.name} is truncated: cannot read {what}")
        timing.read_ms += 1e3 * (time.perf_counter() - t0)
        landed()
        crc, ms = self._timed_crc(view[:entry.nbytes])
        timing.crc_ms += ms
        return crc

    def _read_chunks(self, entry: ExpertEntry, buf: np.ndarray, what: str, check: Callable[[], int | None],
                     timing: ReadTiming, early: Callable[[], None] | None, landed: Callable[[], None]) -> int:
        """An abortable read: before each chunk `check()` gives its length (None: the rest) or raises;
        `early()` once the leading tensors are in, `landed()` once the whole record is, then its CRC-32 (after
        the reads: a prefetch reads while the decoder computes, its checksum runs while the decoder waits)."""
        offset = self.data_offset + entry.offset
        length = align(entry.nbytes, DIRECT_ALIGN)
        split = align(entry.tensors[-1].offset, DIRECT_ALIGN) if early is not None else None
        view = memoryview(buf).cast("B")
        done = 0
        while done < entry.nbytes:
            step = check()
            t0 = time.perf_counter()
            n = os.preadv(self._direct_fd, [view[done:length if step is None else min(length, done + step)]],
                          offset + done)
            if n <= 0:
                raise FormatError(f"{self.file.name} is truncated: cannot read {what}")
            timing.read_ms += 1e3 * (time.perf_counter() - t0)
            done += n
            if split is not None and done >= min(split, entry.nbytes):
                early()
                split = None
        landed()
        crc, ms = self._timed_crc(view[:entry.nbytes])
        timing.crc_ms += ms
        return crc

    def _read_span(self, view: memoryview, entry: ExpertEntry, start: int, end: int, what: str,
                   crc: bool = True) -> tuple[int, ReadTiming]:
        """Bytes [start, end) of the record (4096-aligned start) into `view` in one preadv; their CRC-32
        (0 without `crc`)."""
        timing = ReadTiming()
        t0 = time.perf_counter()
        length = min(align(end, DIRECT_ALIGN), align(entry.nbytes, DIRECT_ALIGN)) - start
        n = os.preadv(self._direct_fd, [view[start:start + length]], self.data_offset + entry.offset + start)
        if n < min(length, end - start):
            raise FormatError(f"{self.file.name} is truncated: cannot read {what}")
        timing.read_ms = 1e3 * (time.perf_counter() - t0)
        if not crc:
            return 0, timing
        value, timing.crc_ms = self._timed_crc(view[start:end])
        return value, timing

    def _read_halves(self, entry: ExpertEntry, buf: np.ndarray, what: str, timing: ReadTiming, assist) -> int:
        """The record's two halves read at once, the second by `assist`'s thread; the combined CRC-32."""
        view = memoryview(buf).cast("B")
        half = align(entry.nbytes // 2, DIRECT_ALIGN)
        other = assist(lambda: self._read_span(view, entry, half, entry.nbytes, what))
        if other is None:
            return self._read_direct(entry, buf, what, timing)
        try:
            crc_a, mine = self._read_span(view, entry, 0, half, what)
        finally:
            crc_b, theirs = other.wait()  # never leave the other thread writing into a slab we hand back
        _add(timing, mine)
        _add(timing, theirs)
        return crc32_combine(crc_a, crc_b, entry.nbytes - half)

    def _read_early(self, entry: ExpertEntry, buf: np.ndarray, what: str, timing: ReadTiming, early,
                    assist, landed) -> int:
        """The leading tensors, `early()`, then the rest (on an idle reader if `assist` finds one, while this
        thread checksums the first part); the combined CRC-32."""
        view = memoryview(buf).cast("B")
        split = align(entry.tensors[-1].offset, DIRECT_ALIGN)  # the last tensor's first bytes may come along
        crc_a, first = self._read_span(view, entry, 0, min(split, entry.nbytes), what, crc=False)
        if split >= entry.nbytes:
            early()
            landed()
            crc_a, first.crc_ms = self._timed_crc(view[:entry.nbytes])
            _add(timing, first)
            return crc_a
        other = assist(lambda: self._read_span(view, entry, split, entry.nbytes, what)) if assist else None
        try:
            early()
            if other is None:  # one reader: the rest read first, the disk kept busy; then both checksums
                _, rest = self._read_span(view, entry, split, entry.nbytes, what, crc=False)
                landed()
                crc_b, rest.crc_ms = self._timed_crc(view[split:entry.nbytes])
                crc_a, first.crc_ms = self._timed_crc(view[:split])
            else:
                crc_a, first.crc_ms = self._timed_crc(view[:split])
        finally:
            if other is not None:
                crc_b, rest = other.wait()  # never leave the other thread writing into a slab we hand back
        if other is not None:
            landed()
        _add(timing, first)
        _add(timing, rest)
        return crc32_combine(crc_a, crc_b, entry.nbytes - split)

    def _timed_crc(self, view: memoryview, crc: int = 0) -> tuple[int, float]:
        t0 = time.perf_counter()
        crc = self._crc(view, crc)
        return crc, 1e3 * (time.perf_counter() - t0)

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
