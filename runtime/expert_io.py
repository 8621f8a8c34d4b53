"""Reading one expert record into a 4096-aligned buffer (a cache slab or the staging buffer), checksum
verified, without leaving a second copy in the page cache (DESIGN.md section 5).

    direct    a second descriptor opened with O_DIRECT: the read bypasses the page cache. Records
              start 4096-aligned and slabs are whole multiples of 4096 bytes, so the read length is
              rounded up to 4096 inside the buffer (the bytes past the record are never used).
    buffered  the filesystem refused O_DIRECT (tmpfs does), or a buffer is not aligned: one preadv,
              then posix_fadvise(DONTNEED) on the record's pages.

Both release the GIL while they read and checksum (os.preadv; zlib.crc32 on more than 5 KiB), so a
loader thread reads while the decoding thread computes.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

from mote_edge.errors import FormatError
from mote_edge.format.constants import SECTION_ALIGN
from mote_edge.format.directory import align
from mote_edge.format.reader import ExpertEntry, MoteFile

from .memory import drop_page_cache

IO_PATHS = ("direct", "buffered")
DIRECT_ALIGN = 4096


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

    def __init__(self, f: MoteFile, direct: bool = True):
        self.file = f
        self.data_offset = f.header.data_offset
        self.file_size = f.header.file_size
        self._direct_fd = _open_direct(f.path, self.data_offset) if direct else None
        self.io_path = "direct" if self._direct_fd is not None else "buffered"

    def read_into(self, layer: int, expert: int, buf: np.ndarray) -> ExpertEntry:
        """Read expert (layer, expert) into `buf` (uint8, at least the record rounded up to 4096) and
        verify its checksum; returns its directory entry."""
        entry = self.file.expert_entry(layer, expert)
        if self._direct_fd is None or buf.ctypes.data % DIRECT_ALIGN or buf.nbytes < align(entry.nbytes, DIRECT_ALIGN):
            self.file.read_expert_into(layer, expert, buf)
            drop_page_cache(self.file.fileno(), self.data_offset + entry.offset, align(entry.nbytes, SECTION_ALIGN))
            return entry
        offset = self.data_offset + entry.offset
        length = align(entry.nbytes, DIRECT_ALIGN)
        view = memoryview(buf).cast("B")
        done = 0
        while done < entry.nbytes:
            n = os.preadv(self._direct_fd, [view[done:length]], offset + done)
            if n <= 0:
                raise FormatError(f"{self.file.name} is truncated: cannot read expert ({layer}, {expert})")
            done += n
        if zlib.crc32(view[:entry.nbytes]) != entry.crc32:
            raise FormatError(f"{self.file.name}: checksum mismatch in expert ({layer}, {expert})")
        return entry

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
