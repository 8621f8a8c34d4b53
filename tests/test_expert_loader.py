"""The loader pool's scheduling, with a fake load whose timing the test controls: a demand load starts on
a free reader while a prefetch reads (one reader always stays free for demand), a second prefetch waits,
and an aborted prefetch stops at its next chunk."""

from __future__ import annotations

import threading
import time

import pytest

from mote_edge.runtime.expert_loader import ExpertLoader, LoadAborted, LoadJob

WAIT = 5.0  # seconds: generous on a loaded CI machine; the test passes as soon as the event is set


class SlowPrefetches:
    """load(): demand loads return at once; prefetches read 'chunks' until released or aborted."""

    def __init__(self):
        self.release = threading.Event()
        self.started: dict[tuple[int, int], threading.Event] = {}

    def started_event(self, key) -> threading.Event:
        return self.started.setdefault(key, threading.Event())

    def __call__(self, job: LoadJob):
        self.started_event(job.key).set()
        while job.prefetch and not self.release.is_set():
            job.check()  # between chunks
            time.sleep(0.001)
        return job.key, 100


def test_demand_starts_while_a_prefetch_reads_and_a_second_prefetch_waits():
    load = SlowPrefetches()
    loader = ExpertLoader(load, readers=2)
    try:
        first = LoadJob((0, 1), slab=0, prefetch=True)
        loader.submit(first)
        assert load.started_event(first.key).wait(WAIT)
        second = LoadJob((0, 2), slab=1, prefetch=True)
        loader.submit(second)
        demand = LoadJob((2, 0), slab=2, prefetch=False)
        loader.submit(demand)
        assert demand.done.wait(WAIT) and demand.result == (2, 0)  # done while the prefetch still reads
        assert not first.done.is_set()
        time.sleep(0.05)
        assert not load.started_event(second.key).is_set()  # one reader stays free for demand
        load.release.set()
        assert first.done.wait(WAIT) and second.done.wait(WAIT)
        assert loader.stats.most_in_flight == 2 and loader.stats.loads == 3 and loader.stats.bytes_read == 300
    finally:
        loader.close()


def test_abort_stops_a_running_prefetch_and_never_a_demand_load():
    load = SlowPrefetches()
    loader = ExpertLoader(load, readers=2)
    try:
        job = LoadJob((0, 3), slab=0, prefetch=True)
        loader.submit(job)
        assert load.started_event(job.key).wait(WAIT)
        loader.abort(job)
        assert job.done.wait(WAIT) and isinstance(job.error, LoadAborted) and job.nbytes == 0
        assert loader.stats.aborted == 1
        demand = LoadJob((0, 4), slab=1, prefetch=False)
        loader.abort(demand)
        loader.submit(demand)
        assert demand.done.wait(WAIT) and demand.error is None
    finally:
        loader.close()


def test_a_queued_prefetch_can_be_cancelled_or_promoted():
    load = SlowPrefetches()
    loader = ExpertLoader(load, readers=1)  # one reader: queued jobs wait behind the running prefetch
    try:
        running = LoadJob((0, 0), slab=0, prefetch=True)
        loader.submit(running)
        assert load.started_event(running.key).wait(WAIT)
        dropped, needed = LoadJob((0, 1), slab=1, prefetch=True), LoadJob((0, 2), slab=2, prefetch=True)
        loader.submit(dropped)
        loader.submit(needed)
        assert loader.cancel(dropped) and not loader.cancel(running)
        loader.promote(needed)
        assert not needed.prefetch  # a demand load now: it no longer waits for the release
        loader.abort(running)
        assert needed.done.wait(WAIT) and needed.error is None
        assert not load.started_event(dropped.key).is_set()
    finally:
        loader.close()


def test_a_pool_needs_a_reader():
    with pytest.raises(ValueError, match="at least 1 reader"):
        ExpertLoader(lambda job: (None, 0), readers=0)


def test_a_prefetch_waits_while_a_demand_load_reads():
    release = threading.Event()
    started: dict = {}

    def load(job):
        started[job.key] = time.perf_counter()
        if not job.prefetch:
            release.wait(WAIT)
        return job.key, 1

    loader = ExpertLoader(load, readers=2)
    try:
        demand = LoadJob((0, 0), slab=0, prefetch=False)
        loader.submit(demand)
        prefetch = LoadJob((2, 1), slab=1, prefetch=True)
        loader.submit(prefetch)
        time.sleep(0.05)
        assert prefetch.key not in started  # the disk is the demand's
        release.set()
        assert demand.done.wait(WAIT) and prefetch.done.wait(WAIT)
        assert started[prefetch.key] >= started[demand.key]
    finally:
        loader.close()


def test_assist_runs_on_an_idle_reader_only():
    gate = threading.Event()

    def load(job: LoadJob):
        if job.key == (0, 0):  # the asking demand load: its helper runs on the other reader
            helper = loader.assist(threading.current_thread)
            return (helper.wait(), threading.current_thread()), 10
        gate.wait(WAIT)
        return None, 10

    loader = ExpertLoader(load, readers=2)
    try:
        job = LoadJob((0, 0), slab=0, prefetch=False)
        loader.submit(job)
        assert job.done.wait(WAIT) and job.error is None
        helper_thread, own_thread = job.result
        assert helper_thread is not own_thread and loader.stats.assists == 1
        blockers = [LoadJob((0, 1), slab=1, prefetch=False), LoadJob((0, 2), slab=2, prefetch=False)]
        for b in blockers:  # both readers busy
            loader.submit(b)
        queued = LoadJob((0, 3), slab=3, prefetch=False)
        loader.submit(queued)
        time.sleep(0.05)
        assert loader.assist(lambda: None) is None  # no idle reader (and a demand load waits): declined
        gate.set()
        assert all(j.done.wait(WAIT) and j.error is None for j in (*blockers, queued))
    finally:
        loader.close()
    one = ExpertLoader(lambda job: (one.assist(lambda: None), 0), readers=1)
    try:
        job = LoadJob((0, 0), slab=0, prefetch=False)
        one.submit(job)
        assert job.done.wait(WAIT) and job.error is None and job.result is None  # one reader: nobody to help
    finally:
        one.close()


def test_a_load_after_an_aborted_prefetch_starts_once_that_prefetch_has_stopped():
    """A demand load given `after` (it reads into that prefetch's slab) runs only once the prefetch ended."""
    load = SlowPrefetches()
    ended: list[tuple[int, int]] = []
    loader = ExpertLoader(lambda job: (ended.append(job.key), load(job))[1], readers=2)
    try:
        prefetch = LoadJob((2, 1), slab=0, prefetch=True)
        loader.submit(prefetch)
        assert load.started_event((2, 1)).wait(WAIT)
        demand = LoadJob((2, 3), slab=0, prefetch=False, after=prefetch)
        loader.submit(demand)
        time.sleep(0.05)
        assert not load.started_event((2, 3)).is_set()  # a reader is free, but the slab is still being written
        loader.abort(prefetch)
        assert demand.done.wait(WAIT) and demand.error is None
        assert isinstance(prefetch.error, LoadAborted) and prefetch.ended_at <= demand.started_at
    finally:
        load.release.set()
        loader.close()
