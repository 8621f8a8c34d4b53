"""The expert cache's prefetch bookkeeping with the loader held at a gate the test controls: a wave with a
miss aborts a running prefetch mispredicted for its own layer, never one for a later layer, and an
expert whose prefetch was aborted is still read when a wave needs it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mote_edge.format import MoteFile
from mote_edge.runtime.expert_cache import ExpertCache

WAIT = 5.0


def _gated(tiny_b4_mote, slabs: int):
    """An ExpertCache of the tiny model (MoE layers 0 and 2, 4 experts each) on `slabs` slabs whose prefetch
    reads run until the gate opens (or they are aborted); demand reads run at once."""
    f = MoteFile(tiny_b4_mote)
    cache = ExpertCache(f, slabs=slabs, threads=1, layout="file", loader="thread")
    gate, started = threading.Event(), threading.Event()
    load = cache.loader._load

    def gated(job):
        if job.prefetch:
            started.set()
            while not gate.is_set():
                job.check()
                time.sleep(0.001)
        return load(job)

    cache.loader._load = gated
    yield cache, gate, started
    gate.set()
    cache.release()
    f.close()


@pytest.fixture
def gated_cache(tiny_b4_mote):
    yield from _gated(tiny_b4_mote, slabs=4)


def test_a_prefetch_for_a_later_layer_survives_a_wave_with_misses(gated_cache):
    cache, gate, started = gated_cache
    cache.begin_wave(0, [0])
    cache.prefetch([(2, [1])])
    assert started.wait(WAIT)
    cache.get(0, 0)
    cache.end_wave()
    cache.begin_wave(0, [3])  # the next token's layer 0, with a miss: (2, 1) is still wanted
    cache.get(0, 3)
    cache.end_wave()
    gate.set()
    cache.begin_wave(2, [1])
    cache.get(2, 1)
    cache.end_wave()
    assert cache.stats.prefetch_aborted == 0 and cache.stats.prefetch_used == 1


def test_a_mispredicted_prefetch_is_aborted_and_a_later_need_reads_it_again(gated_cache):
    cache, gate, started = gated_cache
    cache.begin_wave(0, [0])
    cache.prefetch([(2, [1])])
    assert started.wait(WAIT)
    cache.get(0, 0)
    cache.end_wave()
    cache.begin_wave(2, [3])  # layer 2 routes elsewhere, with a miss: the running prefetch stops
    expert = cache.get(2, 3)
    assert expert is not None
    cache.end_wave()
    cache.drain()  # the aborted read lands (without its expert)
    assert cache.stats.prefetch_aborted == 1 and not cache.is_cached(2, 1)
    gate.set()
    cache.begin_wave(2, [1])  # now needed: read on demand
    assert cache.get(2, 1) is not None and cache.is_cached(2, 1)
    cache.end_wave()


def _reference(mote, key, x):
    """The expert's output on x, read by a cache of its own (serial loader)."""
    with MoteFile(mote) as f:
        ref = ExpertCache(f, slabs=1, threads=1, layout="file", loader="serial")
        try:
            return ref.get(*key)(x)
        finally:
            ref.release()


@pytest.fixture
def gated_gap_cache(tiny_b4_mote):
    """The gated cache of one slab: the gap prefetch's only room is the slab a wave frees at its end."""
    yield from _gated(tiny_b4_mote, slabs=1)


def test_a_gap_prefetch_takes_the_slab_a_wave_frees_and_the_next_wave_uses_it(gated_gap_cache):
    cache, gate, started = gated_gap_cache
    cache.begin_wave(0, [0])
    cache.prefetch([(2, [1])])
    cache.get(0, 0)
    assert not started.is_set() and cache.stats.prefetches == 0  # the only slab is in use
    cache.end_wave()
    assert started.wait(WAIT) and cache.stats.prefetch_evicting == 1
    gate.set()
    cache.begin_wave(2, [1])
    cache.get(2, 1)
    cache.end_wave()
    assert cache.stats.prefetch_used == 1 and cache.stats.prefetch_aborted == 0


def test_a_demand_miss_reads_into_the_slab_of_the_mispredicted_prefetch_it_aborts(gated_gap_cache, tiny_b4_mote):
    cache, gate, started = gated_gap_cache
    cache.begin_wave(0, [0])
    cache.prefetch([(2, [1])])
    cache.get(0, 0)
    cache.end_wave()
    assert started.wait(WAIT)
    cache.begin_wave(2, [3])  # mispredicted: the prefetch stops at its next chunk, the demand takes its slab
    assert cache.stats.prefetch_handovers == 1
    x = np.random.default_rng(0).standard_normal((2, cache.file.config.decoder.hidden_size)).astype(np.float32)
    np.testing.assert_array_equal(cache.get(2, 3)(x), _reference(tiny_b4_mote, (2, 3), x))
    cache.end_wave()
    cache.drain()
    assert cache.stats.prefetch_aborted == 1 and cache.is_cached(2, 3) and not cache.is_cached(2, 1)


def test_a_record_whose_slab_a_prefetch_took_before_its_check_still_raises_a_mismatch(tiny_b4_mote):
    """A gap prefetch may take the slab of a record the wave used before its CRC-32 was checked (it reads once
    the check is done): the record is not kept, but a mismatch still raises when it lands."""
    from mote_edge.errors import FormatError
    from mote_edge.runtime.expert_loader import LoadJob

    with MoteFile(tiny_b4_mote) as f:
        cache = ExpertCache(f, slabs=1, threads=1, layout="file", loader="thread")
        try:
            job = LoadJob((0, 0), 0, prefetch=False, handed=True)
            job.error = FormatError("checksum mismatch in expert (0, 0)")
            job.done.set()
            cache.loading[(0, 0)] = job
            with pytest.raises(FormatError, match="checksum mismatch"):
                cache.drain()
            assert not cache.is_cached(0, 0) and (0, 0) not in cache.loading
        finally:
            cache.release()
