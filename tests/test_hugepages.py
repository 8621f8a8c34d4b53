"""runtime/hugepages.py: huge-page buffers and the arena that holds the streamed weights."""

from __future__ import annotations

import numpy as np
import pytest

from mote_edge.runtime import hugepages
from mote_edge.runtime.hugepages import HUGE_MIN_BYTES, HUGE_PAGE, Arena, huge_buffer, huge_rounded


def _smaps_entry(addr: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that contains addr."""
    fields, inside = {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside:
                key, _, val = line.partition(":")
                fields[key] = val.strip()
    return fields


def test_small_buffer_is_plain_zeroed_and_exact() -> None:
    b = huge_buffer(12345)
    assert b.dtype == np.uint8 and b.nbytes == 12345 and b.flags.writeable
    assert not b.any()
    b[:] = 7
    assert int(b.sum()) == 7 * 12345
    assert huge_rounded(12345) == 12345


def test_large_buffer_is_2mib_aligned_and_counted_in_whole_huge_pages() -> None:
    n = HUGE_MIN_BYTES + 4096 + 3
    b = huge_buffer(n)
    assert b.nbytes == n and not b[::4096].any()
    assert huge_rounded(n) == -(-n // HUGE_PAGE) * HUGE_PAGE and huge_rounded(n) - n < HUGE_PAGE
    if hugepages.huge_pages_enabled():
        assert b.ctypes.data % HUGE_PAGE == 0
        b[:] = 1  # touch it
        smaps = _smaps_entry(b.ctypes.data)
        if "THPeligible" in smaps:  # the mapping asked for huge pages (MADV_HUGEPAGE took)
            assert smaps["THPeligible"] == "1"
        assert "hg" in smaps.get("VmFlags", "hg").split()


def test_buffer_survives_its_creator_and_zero_size() -> None:
    views = [huge_buffer(HUGE_MIN_BYTES)[100:200] for _ in range(2)]  # only a view is kept
    for v in views:
        v[:] = 5
        assert int(v.sum()) == 500
    assert huge_buffer(0).nbytes == 0


def test_arena_places_arrays_aligned_and_falls_back_when_full() -> None:
    sizes = [10, 100, 64, 1]
    arena = Arena(Arena.capacity_for(sizes))
    arrays = [arena.empty((n,), np.uint8) for n in sizes]
    for a in arrays:
        assert np.shares_memory(a, arena.buffer) and a.ctypes.data % 64 == 0
    assert arena.used <= arena.capacity
    spill = arena.empty((3, 5), np.float16)  # no room left: an ordinary array, still correct
    assert spill.shape == (3, 5) and spill.dtype == np.float16 and not np.shares_memory(spill, arena.buffer)
    f = Arena(Arena.capacity_for([40])).empty((2, 5), np.float32)
    f[...] = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert f.sum() == 45


@pytest.mark.parametrize("mode, expected", [("always [madvise] never\n", "madvise"),
                                            ("[always] madvise never\n", "always"), ("garbage", "")])
def test_thp_mode_parsing(tmp_path, monkeypatch, mode, expected) -> None:
    p = tmp_path / "enabled"
    p.write_text(mode)
    monkeypatch.setattr(hugepages, "THP_SETTING", str(p))
    assert hugepages.thp_mode() == expected
    monkeypatch.setattr(hugepages, "THP_SETTING", str(tmp_path / "missing"))
    assert hugepages.thp_mode() == "" and not hugepages.huge_pages_enabled()
    b = huge_buffer(HUGE_MIN_BYTES)  # without THP: plain memory, same behaviour
    b[-1] = 9
    assert b.nbytes == HUGE_MIN_BYTES and b[-1] == 9


def test_env_switch_turns_huge_pages_off(monkeypatch) -> None:
    monkeypatch.setenv("MOTE_HUGEPAGES", "0")
    assert not hugepages.huge_pages_enabled()
    b = huge_buffer(HUGE_MIN_BYTES + 1)
    assert b.nbytes == HUGE_MIN_BYTES + 1 and not b.any()
    assert huge_rounded(HUGE_MIN_BYTES + 1) == HUGE_MIN_BYTES + HUGE_PAGE  # the plan does not change
