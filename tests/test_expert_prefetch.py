"""The expert cache's prefetch bookkeeping with the loader held at a gate the test controls: a wave with a
miss aborts a running prefetch mispredicted for its own layer, never one for a later layer, and an
expert whose prefetch was aborted is still read when a wave needs it."""

from __future__ import annotations

import threading
import time

import pytest

from mote_edge.format import MoteFile
from mote_edge.runtime.expert_cache import ExpertCache

WAIT = 5.0


@pytest.fixture
def gated_cache(tiny_b4_mote):
    """An ExpertCache of the tiny model (MoE layers 0 and 2, 4 experts each) whose prefetch reads run
    until the gate opens (or they are aborted); demand reads run at once."""
    f = MoteFile(tiny_b4_mote)
    cache = ExpertCache(f, slabs=4, threads=1, layout="file", loader="thread")
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
