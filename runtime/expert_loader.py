"""One loader thread that fills expert slabs while the decoding thread computes.

The expert cache (runtime/expert_cache.py) decides which record goes into which slab; the loader only
runs the loads it is handed, demand loads always before prefetches (a prefetch never waits in front of
a demand miss: at most the one record being read when the demand arrives is finished first). The read,
the checksum and the 2-bit slab re-layout all run here, with the GIL released, so the decoding thread
waits only when it needs a record that is not in yet.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class LoadJob:
    key: tuple[int, int]
    slab: int
    prefetch: bool
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    nbytes: int = 0
    started: bool = False


@dataclass
class LoaderStats:
    loads: int = 0
    bytes_read: int = 0
    busy_ms: float = 0.0  # time the loader spent reading, checking and placing records

    @property
    def throughput(self) -> float:
        """Bytes per second while the loader was busy."""
        return 1e3 * self.bytes_read / self.busy_ms if self.busy_ms > 0 else 0.0


class ExpertLoader:
    """Runs `load(job) -> (result, nbytes)` for queued jobs on one background thread."""

    def __init__(self, load: Callable[[LoadJob], tuple[Any, int]]):
        self._load = load
        self._demand: deque[LoadJob] = deque()
        self._prefetch: deque[LoadJob] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self.stats = LoaderStats()
        self._thread = threading.Thread(target=self._run, name="mote-expert-loader", daemon=True)
        self._thread.start()

    def submit(self, job: LoadJob) -> None:
        with self._wake:
            (self._prefetch if job.prefetch else self._demand).append(job)
            self._wake.notify()

    def promote(self, job: LoadJob) -> None:
        """A queued prefetch is needed now: move it to the front of the demand queue."""
        with self._wake:
            if not job.started and job in self._prefetch:
                self._prefetch.remove(job)
                self._demand.appendleft(job)

    def cancel(self, job: LoadJob) -> bool:
        """Drop a queued prefetch that has not started; True if it was dropped."""
        with self._wake:
            if not job.started and job in self._prefetch:
                self._prefetch.remove(job)
                return True
        return False

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._demand or self._prefetch or self._stopping):
                    self._wake.wait()
                if self._stopping:
                    return
                job = (self._demand or self._prefetch).popleft()
                job.started = True
            t0 = time.perf_counter()
            try:
                job.result, job.nbytes = self._load(job)
            except BaseException as e:  # handed to the decoding thread, raised where it waits
                job.error = e
            self.stats.busy_ms += 1e3 * (time.perf_counter() - t0)
            self.stats.loads += 1
            self.stats.bytes_read += job.nbytes
            job.done.set()

    def close(self) -> None:
        """Stop after the record being read (queued jobs are dropped: the cache is going away)."""
        with self._wake:
            self._stopping = True
            self._demand.clear()
            self._prefetch.clear()
            self._wake.notify()
        self._thread.join()
