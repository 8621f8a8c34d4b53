"""A small pool of loader threads that fill expert slabs while the decoding thread computes.

The expert cache (runtime/expert_cache.py) decides which record goes into which slab; the loader only
runs the loads it is handed. Demand loads always go first: a prefetch starts only while no demand load
runs (so it never shares the disk with one it could delay), and prefetches never hold every reader: at
most `readers - 1` run at once, so a demand miss starts on a free reader at once instead of waiting
behind a prefetch (with one reader, a demand waits for at most the one record being read). A running
prefetch reads in chunks (its `chunk`: GAP_CHUNK into a slab a demand miss may need next, else
PREFETCH_CHUNK) until the wave it was predicted for confirms it (then the rest in one read); one that turned
out mispredicted is aborted between two chunks (`abort`), and a demand load may take over its slab (`after`:
it starts as soon as the aborted read has stopped), so a misprediction delays the demand read by at most
one chunk. A demand load that finds a reader idle hands it the
second half of its record (`assist`: both halves read and checksummed at once). The read, the checksum and the
2-bit slab re-layout all run here, with the GIL released, so the decoding thread waits only when it
needs a record that is not in yet.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(eq=False)
class Assist:
    """A piece of a running demand load handed to an idle reader (`ExpertLoader.assist`)."""
    run: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def wait(self) -> Any:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


# bytes per read of an unconfirmed prefetch into a loader buffer (records of the synth models are read whole)
PREFETCH_CHUNK = 4 << 20
# ... into the slab the next demand miss needs ("gap" prefetch): on the EPYC box's disk 512 KiB reads run at
# ~86% of whole 2.6 MB records (256 KiB ~67%, 1 MiB ~92%) and take ~0.4 ms, the most a misprediction delays
# the demand read
GAP_CHUNK = 512 << 10


class LoadAborted(Exception):
    """A prefetch's read stopped part way because its record is no longer wanted."""


@dataclass(eq=False)
class LoadJob:
    key: tuple[int, int]
    slab: int
    prefetch: bool
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    nbytes: int = 0
    started: bool = False
    aborted: bool = False  # set by the cache: stop reading at the next chunk (prefetches only)
    confirmed: bool = False  # set by the cache: the wave needs this prefetch, read the rest in one go
    chunk: int = PREFETCH_CHUNK  # bytes per read until confirmed (prefetches)
    # a load whose slab this one takes (an aborted prefetch, or a record used while its checksum runs): this
    # one starts once that one has ended
    after: "LoadJob | None" = None
    handed: bool = False  # set by the cache: this load's slab went to a later load (`after`): not free, not resident
    timing: Any = None  # the load's own account of where its time went (runtime/expert_io.py ReadTiming)
    queued_at: float = 0.0  # perf_counter() when submitted, started and finished (the cache's timeline)
    started_at: float = 0.0
    ended_at: float = 0.0
    reader: int = -1  # the loader thread that ran it
    # a demand load that lands its record's leading tensors early (runtime/expert_io.py): set once they are
    # in (`first`: their Linears, unverified until the load is done) or once the load ends, whichever first
    early: threading.Event | None = None
    first: Any = None
    # a demand load whose record may be used before its checksum (ExpertCache.verify checks it before the
    # result is kept): set once the whole record is in and placed (`unchecked`), or once the load ends
    landed: threading.Event | None = None
    unchecked: Any = None

    def check(self) -> int | None:
        """Called by a prefetch's read before each chunk: raises LoadAborted once the job is aborted, else
        the bytes to read next (None: the rest, once the wave confirmed it)."""
        if self.aborted:
            raise LoadAborted(self.key)
        return None if self.confirmed else self.chunk


@dataclass
class LoaderStats:
    readers: int = 1
    loads: int = 0
    aborted: int = 0  # prefetches stopped part way (their bytes are not counted as read)
    bytes_read: int = 0
    busy_ms: float = 0.0  # summed over readers: time spent reading, checking and placing records
    span_ms: float = 0.0  # wall time during which at least one reader was busy
    most_in_flight: int = 0  # the most reads running at the same time (records, or halves of one)
    assists: int = 0  # second halves of demand records read by an idle reader (ExpertLoader.assist)

    @property
    def throughput(self) -> float:
        """Bytes per second while at least one reader was busy (the pool's, not one reader's)."""
        return 1e3 * self.bytes_read / self.span_ms if self.span_ms > 0 else 0.0


class ExpertLoader:
    """Runs `load(job) -> (result, nbytes)` for queued jobs on `readers` background threads."""

    def __init__(self, load: Callable[[LoadJob], tuple[Any, int]], readers: int = 2):
        if readers < 1:
            raise ValueError(f"an expert loader needs at least 1 reader, got {readers}")
        self._load = load
        self._demand: deque[LoadJob] = deque()
        self._prefetch: deque[LoadJob] = deque()
        self._assists: deque[Assist] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._running = 0
        self._running_prefetch = 0
        self._busy_since = 0.0
        self.readers = readers
        self.stats = LoaderStats(readers=readers)
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"mote-expert-loader-{i}", daemon=True)
                         for i in range(readers)]
        for t in self._threads:
            t.start()

    def submit(self, job: LoadJob) -> None:
        job.queued_at = time.perf_counter()
        with self._wake:
            (self._prefetch if job.prefetch else self._demand).append(job)
            self._wake.notify()

    def promote(self, job: LoadJob) -> None:
        """A queued prefetch is needed now: move it to the front of the demand queue."""
        with self._wake:
            if not job.started and job in self._prefetch:
                self._prefetch.remove(job)
                job.prefetch = False
                self._demand.appendleft(job)
                self._wake.notify()

    def cancel(self, job: LoadJob) -> bool:
        """Drop a queued prefetch that has not started; True if it was dropped."""
        with self._wake:
            if not job.started and job in self._prefetch:
                self._prefetch.remove(job)
                return True
        return False

    def assist(self, run: Callable[[], Any]) -> Assist | None:
        """Run `run()` on an idle reader beside the running demand load that asks (the other half of its
        record); None when no reader is idle or a demand load waits to start (the caller reads it all)."""
        with self._wake:
            if self._stopping or self._demand or self._running + len(self._assists) >= self.readers:
                return None
            task = Assist(run)
            self._assists.append(task)
            self._wake.notify_all()
            return task

    def abort(self, job: LoadJob) -> None:
        """Stop a running prefetch at its next chunk (it finishes with LoadAborted); a no-op for demand loads."""
        if job.prefetch:
            job.aborted = True

    def _next(self) -> LoadJob | Assist | None:
        """The job to start now (called with the lock held): a running demand load's assist, then demand,
        then a prefetch if no demand load runs and a reader stays free for demand."""
        if self._assists:
            return self._assists.popleft()
        if self._demand:
            return self._demand.popleft()
        demand_running = self._running - self._running_prefetch
        if self._prefetch and not demand_running and (self.readers == 1 or self._running_prefetch < self.readers - 1):
            return self._prefetch.popleft()
        return None

    def _run(self, reader: int) -> None:
        while True:
            with self._wake:
                while not self._stopping and (job := self._next()) is None:
                    self._wake.wait()
                if self._stopping:
                    return
                helping = isinstance(job, Assist)
                prefetch = not helping and job.prefetch
                if not helping:
                    job.started, job.reader = True, reader
                if self._running == 0:
                    self._busy_since = time.perf_counter()
                self._running += 1
                self._running_prefetch += prefetch
                self.stats.most_in_flight = max(self.stats.most_in_flight, self._running)
            if not helping and job.after is not None:
                job.after.done.wait()  # the aborted prefetch whose slab this load reads into has stopped
            t0 = time.perf_counter()
            try:
                if helping:
                    job.result = job.run()
                else:
                    job.result, job.nbytes = self._load(job)
            except BaseException as e:  # handed to the thread that waits for it, raised there
                job.error = e
            t1 = time.perf_counter()
            with self._wake:
                self._running -= 1
                self._running_prefetch -= prefetch
                if self._running == 0:
                    self.stats.span_ms += 1e3 * (t1 - self._busy_since)
                self.stats.busy_ms += 1e3 * (t1 - t0)
                if helping:
                    self.stats.assists += 1
                else:
                    job.started_at, job.ended_at = t0, t1
                    self.stats.loads += 1
                    self.stats.aborted += isinstance(job.error, LoadAborted)
                    self.stats.bytes_read += job.nbytes
                self._wake.notify_all()  # a finished prefetch may let a queued one start
            for event in ((job.early, job.landed) if not helping else ()):
                if event is not None:
                    event.set()  # a load that failed part way must not leave a waiter behind
            job.done.set()

    def close(self) -> None:
        """Stop after the records being read (queued jobs are dropped: the cache is going away)."""
        with self._wake:
            self._stopping = True
            self._demand.clear()
            self._prefetch.clear()
            for task in self._assists:  # their loads wait for them: fail them
                task.error = RuntimeError("the expert loader closed")
                task.done.set()
            self._assists.clear()
            self._wake.notify_all()
        for t in self._threads:
            t.join()
