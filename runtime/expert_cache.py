"""The routed-expert cache: fixed slabs, one read per miss, a pluggable eviction policy
(runtime/cache_policy.py; default "expected"), honest counters.

A miss reads the expert's whole record into a free (or evicted) slab (runtime/expert_io.py: O_DIRECT
where the filesystem allows it, else preadv + posix_fadvise DONTNEED, so the kernel never keeps a
second copy outside the budget; for the 2-bit slab layout the record lands in a staging buffer and is
converted into the slab: runtime/expert_layout.py) and verifies its CRC. With the thread loader
(runtime/expert_loader.py) that work runs off the decoding thread, overlapped with compute. Slabs and
the staging buffer are allocated once at load (they are the plan's expert cache); nothing else is
allocated per expert (the tensors are views into the slab).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mote_edge import _native
from mote_edge.format.reader import MoteFile, parse_parts

from .cache_policy import DEFAULT_POLICY, RUNTIME_POLICIES, Key, RoutingCounts, pick_victim, waves_until
from .expert_layout import SLAB_LAYOUTS, place_slab2, slab_bytes, staging_bytes
from .expert_io import ExpertReader, ReadTiming
from .expert_loader import PREFETCH_CHUNK, ExpertLoader, LoadAborted, LoadJob
from .hugepages import huge_buffer
from .memory import release_pages
from .weights import Linear

EXPERT_LOADERS = ("thread", "serial")
DEFAULT_READERS = 2  # loader threads: a demand miss never waits behind a prefetch's read
# how many MoE layers ahead the routers predict and prefetch (runtime/decoder.py Lookahead); "adaptive": at
# most 3, as deep as the lookahead's measured recall earns (runtime/lookahead_recall.py)
PREFETCH_DEPTH = {"none": 0, "gap": 1, "lookahead": 1, "lookahead2": 2, "lookahead3": 3, "lookahead4": 4, "adaptive": 3}
# "gap": lookahead-1 into the cache's own slabs (no loader buffers): the slab a wave frees at its end is
# refilled with the next MoE layer's predicted expert while the decoder computes up to that layer's routing.
# The others read into loader buffers: top_k slabs per MoE layer ahead
PREFETCH_BUFFERED = {mode: 0 if mode == "gap" else depth for mode, depth in PREFETCH_DEPTH.items()}
# auto: adaptive when the budget holds its loader buffers beside top_k cache slabs (runtime/engine.py)
PREFETCH_MODES = ("auto", *PREFETCH_DEPTH)
DEFAULT_PREFETCH = "auto"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    stall_ms: float = 0.0  # the decoding thread waiting for records
    evictions: int = 0
    prefetches: int = 0  # loads queued by router lookahead
    prefetch_used: int = 0  # of them, used by the wave they were predicted for
    prefetch_late: int = 0  # of the used ones, still loading when needed (the wait counts as a miss)
    prefetch_wasted_bytes: int = 0  # bytes of prefetched records evicted before any use
    prefetch_cancelled: int = 0  # mispredicted prefetches dropped before their read started
    prefetch_aborted: int = 0  # mispredicted prefetches stopped part way to free the disk for a demand miss
    prefetch_evicting: int = 0  # prefetches into the slab of a cached expert needed later (one freed by a wave's end)
    prefetch_handovers: int = 0  # demand loads that took an aborted prefetch's slab (started when its chunk ended)
    load_read_ms: float = 0.0  # summed over loads (readers run at once): reading records
    load_crc_ms: float = 0.0  # ... checking their CRC-32
    load_place_ms: float = 0.0  # ... parsing them into tensors (and the 2-bit re-layout)
    first_parts: int = 0  # misses whose gate and up computed while their down_proj still read
    checked_later: int = 0  # misses computed with before their CRC-32 was checked (checked before the token)

    @property
    def uses(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.uses if self.uses else 0.0


class Expert:
    """One routed expert's SwiGLU: down(silu(gate(x)) * up(x)), weights are views into a slab."""

    def __init__(self, projs: dict[str, Linear]):
        self.gate, self.up, self.down = projs["gate_proj"], projs["up_proj"], projs["down_proj"]

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [T, H] -> [T, H]
        g = self.gate(x)
        return self.down(g / (1.0 + np.exp(-g)) * self.up(x))

    def gate_up_specs(self) -> tuple:
        return self.gate.native_spec(), self.up.native_spec()

    def gate_up_step(self, h: np.ndarray, threads: int) -> np.ndarray:
        """One position, native: act [I] = silu(gate h) * up h for h [H] (ffn_step's first half)."""
        act = np.empty(self.gate.N, np.float32)
        _native.ffn_gate_up(h, act, 1.0, self.gate_up_specs(), None, threads)
        return act

    def down_step(self, act: np.ndarray, y: np.ndarray, coef: float, threads: int) -> None:
        """y [H] += coef * down(act) (ffn_step's second half: the two give ffn_step's result bit for bit)."""
        _native.ffn_down(act, y, coef, self.gate_up_specs(), self.down.native_spec(), threads)


class FirstPart(Expert):
    """An expert whose gate_proj and up_proj are in its slab while down_proj still loads (a demand miss of
    the thread loader, runtime/expert_io.py): `gate_up_step` computes with them; `rest()` waits for the
    record and returns the Expert. The record's CRC-32 covers all of it: nothing computed from it is kept
    before it is checked (by `rest()`, or by ExpertCache.verify() with `check_later`)."""

    def __init__(self, projs: dict[str, Linear], rest: Callable[[], Expert]):
        self.gate, self.up, self.rest = projs["gate_proj"], projs["up_proj"], rest


class ExpertCache:
    """`loader` "thread": `readers` background threads read records (runtime/expert_loader.py), with
    O_DIRECT where the filesystem allows it (runtime/expert_io.py); a wave queues all its misses at once
    and each get() waits only for its own record. "serial": each miss is read on the decoding thread
    when get() needs it (buffered read + DONTNEED, zlib's CRC). `prefetch(layer, experts)` queues loads
    for the next MoE layer (router lookahead) into slabs whose experts are needed later than it; a wave
    with a miss aborts the running prefetches it did not need."""

    def __init__(self, f: MoteFile, slabs: int, threads: int, drop_pages: bool = True, policy: str = DEFAULT_POLICY,
                 layout: str = "file", loader: str = "thread", readers: int = DEFAULT_READERS):
        if policy not in RUNTIME_POLICIES:
            raise ValueError(f"unknown cache policy {policy!r} (choose from {', '.join(RUNTIME_POLICIES)})")
        if layout not in SLAB_LAYOUTS:
            raise ValueError(f"unknown expert slab layout {layout!r} (choose from {', '.join(SLAB_LAYOUTS)})")
        if loader not in EXPERT_LOADERS:
            raise ValueError(f"unknown expert loader {loader!r} (choose from {', '.join(EXPERT_LOADERS)})")
        self.file = f
        self.policy = policy
        self.layout = layout
        self.cycle = {layer: i for i, layer in enumerate(sorted(f.config.moe_layers))}  # decode order of MoE layers
        self.threads = threads
        self.drop_page_cache = drop_pages
        if drop_pages and hasattr(os, "posix_fadvise"):
            # expert reads are random: no readahead, whose pages the per-record DONTNEED would miss
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        self.reader = ExpertReader(f, direct=drop_pages and loader == "thread", native_crc=loader == "thread")
        self.slab_bytes = slab_bytes(f.experts.values(), layout)
        # one mapping for every slab, on huge pages where the OS grants them (runtime/hugepages.py):
        # expert weights are streamed from DRAM on every use
        self.region = huge_buffer(self.slab_bytes * slabs)
        # slab2: records land here (page-aligned, for O_DIRECT); the loader reads one record at a time
        self.staging = huge_buffer(staging_bytes(f.experts.values(), layout))
        self.slabs = [self.region[i * self.slab_bytes:(i + 1) * self.slab_bytes] for i in range(slabs)]
        self.free = list(range(slabs))
        self.resident: dict[Key, tuple[int, Expert]] = {}  # key -> (slab index, expert), ready to use
        self.loading: dict[Key, LoadJob] = {}  # key -> its load, queued or running (thread loader)
        self.last: dict[Key, int] = {}  # key -> clock of its last use
        self.count: dict[Key, int] = {}  # key -> uses since it was loaded
        self.routing = RoutingCounts()  # every wave's experts (the "expected" policy)
        self.clock = 0
        self.layer = next(iter(self.cycle), 0)  # the MoE layer of the running wave
        self.wave: set[Key] = set()  # the running wave's experts
        self.pending: list[Key] = []  # the wave's experts not used yet, in the order it uses them
        self.wanted: list[Key] = []  # prefetches not issued yet (no slab could be taken for them)
        self.prefetched: set[Key] = set()  # loaded (or loading) by a prefetch and not used yet
        self.fresh: set[Key] = set()  # read ahead for the running wave and not used yet: a miss, not a hit
        self.current: Key | None = None  # the expert the last get() returned: in use until the next get()
        self.stats = CacheStats()
        self.trace: list[dict] | None = None  # set to a list to record every MoE wave (for `simulate`)
        # set to a list to record when waves begin and end, loads run and get() waits (perf_counter seconds;
        # benchmarks/expert_timeline.py)
        self.timeline: list[dict] | None = None
        # slab2 converts from the one staging buffer: one reader
        self.loader = (ExpertLoader(self._load, 1 if layout == "slab2" else readers) if loader == "thread" else None)
        # True: a demand read that finds a reader idle reads its record's two halves at once
        # (runtime/expert_io.py). Off: on the EPYC box's disk two halves at once read no faster than one
        # whole record (minimum-budget steps 1.00x / 0.98x on the 0.5B / 1.5B: benchmarks/expert_timeline.py --ab)
        self.split_reads = False
        # a demand miss lands gate_proj and up_proj first and the decode step computes with them while
        # down_proj reads (get(early=True); direct reads into "file" slabs)
        self.early_compute = True
        # get(early=True) hands out a record as soon as it is in; its CRC-32 runs on the loader while the
        # expert computes, and verify() (when the next MoE layer begins, and before the step's token) raises
        # a mismatch
        self.check_later = True
        self.unchecked: list[LoadJob] = []  # loads handed out before their checksum was checked
        # bytes per read of a prefetch not confirmed yet by its wave (runtime/expert_loader.py): the "gap"
        # prefetch, whose slab the next demand miss may need, reads in GAP_CHUNK
        self.prefetch_chunk = PREFETCH_CHUNK

    @property
    def nbytes(self) -> int:
        return self.slab_bytes * len(self.slabs) + self.staging.nbytes

    @property
    def io_path(self) -> str:
        return self.reader.io_path

    def is_cached(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self.resident

    def begin_wave(self, layer: int, experts) -> None:
        """A MoE layer is about to use `experts` (in this order): loads during the wave spare them, and
        the thread loader starts reading every one of them that is not cached."""
        self.verify()  # the last wave's records are checked (and resident) before this wave picks victims
        self._collect()
        self._mark("wave", layer=layer, experts=list(experts))
        self.routing.observe(layer, experts)
        self.layer, self.wave = layer, {(layer, e) for e in experts}
        self.pending = [(layer, e) for e in experts]
        self.wanted = []
        self.current = None
        misses = any(k not in self.resident and k not in self.loading for k in self.pending)
        for key, job in list(self.loading.items()):  # this layer's mispredicted prefetches (later layers' wait)
            if key in self.wave and key in self.prefetched:  # predicted right: the rest in one read, or first
                self._confirm(job)
            if not job.prefetch or key[0] != layer or key in self.wave:
                continue
            if self.loader.cancel(job):  # not started: its slab is free
                del self.loading[key]
                self.prefetched.discard(key)
                self.free.append(job.slab)
                self.stats.prefetch_cancelled += 1
            elif misses:  # reading: stop it at its next chunk, the demand reads need the disk
                self.loader.abort(job)
        self._pump()

    def end_wave(self) -> None:
        """The wave's experts are done: their slabs can take prefetches for the next layers (a record still
        being checked gives its slab once its checksum is done: see _pump)."""
        self.pending = []
        self.current = None
        self._mark("end", layer=self.layer)
        self._collect()
        self._pump()

    def _mark(self, event: str, **fields) -> None:
        if self.timeline is not None:
            self.timeline.append({"event": event, "t": time.perf_counter(), **fields})

    def prefetch(self, predicted) -> None:
        """Queue loads of the predicted experts `[(layer, experts), ...]` (the nearest layer first, each
        layer's most likely first), behind every demand load. A prefetch takes a free slab, or the slab
        of an expert whose next use (in the layer-aware order) comes after its own, never one of the
        running wave's still to be used."""
        if self.loader is None:
            return
        self.wanted = [(layer, e) for layer, experts in predicted for e in experts
                       if (layer, e) not in self.resident and (layer, e) not in self.loading]
        self._pump()

    def _confirm(self, job: LoadJob) -> None:
        """A prefetch its wave routed to: read the rest of it in one go, ahead of later prefetches."""
        job.confirmed = True
        self.loader.promote(job)

    def _touch(self, key: Key) -> None:
        self.clock += 1
        self.last[key] = self.clock
        self.count[key] = self.count.get(key, 0) + 1

    def get(self, layer: int, expert: int, early: bool = False) -> Expert:
        """The expert, loaded and checked. `early` (the decode step): a demand miss may come back before its
        record is checked, as a FirstPart as soon as its gate and up projections are in (its `rest()` the
        Expert), or as the Expert as soon as the whole record is; verify() checks them before their results
        are used."""
        key = (layer, expert)
        if key in self.pending:
            self.pending.remove(key)
        self.current = key  # a prefetch may take the slabs of the experts used before this one, not its slab
        self._collect()
        self._pump()
        if key in self.resident and key not in self.fresh:
            self.stats.hits += 1
            if key in self.prefetched:
                self.prefetched.discard(key)
                self.stats.prefetch_used += 1
            self._touch(key)
            return self.resident[key][1]
        t0 = time.perf_counter()
        if key in self.loading and key in self.prefetched:
            self._confirm(self.loading[key])
            self.prefetched.discard(key)
            self.stats.prefetch_used += 1
            self.stats.prefetch_late += 1
        if early and key not in self.resident:
            if key not in self.loading:
                self._demand(key)
            job = self.loading.get(key)
            if job is not None and job.early is not None:
                job.early.wait()  # its first part is in, or the load ended
                if job.first is not None and not job.done.is_set():
                    t1 = time.perf_counter()
                    self.stats.first_parts += 1
                    if self.timeline is not None:
                        self.timeline.append({"event": "first", "key": key, "t": t0, "end": t1})
                    return FirstPart(job.first, lambda: self._finish_miss(key, time.perf_counter(), 1e3 * (t1 - t0),
                                                                          unchecked=True))
        return self._finish_miss(key, t0, unchecked=early)

    def _finish_miss(self, key: Key, t0: float, waited_ms: float = 0.0, unchecked: bool = False) -> Expert:
        """Wait from `t0` until `key` is resident (checked), or with `unchecked` until its record is in (then
        verify() checks it); count the miss and the stall."""
        expert = None
        while key not in self.resident:  # a prefetch aborted before it was needed lands without its expert
            if key not in self.loading:
                self._demand(key)  # the serial loader reads it here
            job = self.loading.get(key)
            if job is None:
                continue
            if unchecked and job.landed is not None:
                job.landed.wait()
                if job.unchecked is not None and not job.done.is_set():
                    expert = job.unchecked
                    self.unchecked.append(job)
                    self.stats.checked_later += 1
                    break
            self._wait(job)
        self.fresh.discard(key)
        self._touch(key)
        self.stats.misses += 1
        t1 = time.perf_counter()
        self.stats.stall_ms += waited_ms + 1e3 * (t1 - t0)
        if self.timeline is not None:
            self.timeline.append({"event": "wait", "key": key, "t": t0, "end": t1})
        return expert if expert is not None else self.resident[key][1]

    def _demand(self, key: Key) -> None:
        """Load `key` now that it is needed and no slab was taken for it ahead of time."""
        slab = self._free_slab()
        if slab is None:
            for job in list(self.loading.values()):  # in-flight loads hold slabs: let them land first
                self._wait(job)
            slab = self._free_slab()  # an aborted prefetch gives its slab back
        if slab is None:
            slab = self._evict(self._victim(self.resident.keys(), key[0], self.wave))
        self._start(key, slab, prefetch=False)

    def _victim(self, keys, layer: int, protected: set[Key] = frozenset()) -> Key:
        """The policy's choice among `keys` while `layer` runs, sparing `protected` if it can."""
        return pick_victim(keys, self.policy, layer, self.cycle, self.last, self.count, protected, routing=self.routing)

    def _free_slab(self) -> int | None:
        return self.free.pop() if self.free else None

    def _evict(self, victim: Key) -> int:
        slab, _ = self.resident.pop(victim)
        del self.last[victim], self.count[victim]
        if victim in self.prefetched:
            self.prefetched.discard(victim)
            self.stats.prefetch_wasted_bytes += self.file.expert_entry(*victim).nbytes
        self.stats.evictions += 1
        return slab

    def _pump(self) -> None:
        """Take slabs for the wave's misses (the thread loader reads them ahead of their use), then for
        the wanted prefetches."""
        if self.loader is None:
            return
        for key in self.pending:
            if key in self.resident or key in self.loading:
                continue
            slab, after = self._free_slab(), None
            if slab is None:
                idle = [k for k in self.resident if k not in self.wave]
                aborting = next((j for j in self.loading.values() if j.aborted and not j.handed), None)
                if idle:
                    slab = self._evict(self._victim(idle, key[0]))
                elif aborting is not None:  # the slab of a prefetch being aborted: read once its chunk ends
                    aborting.handed, slab, after = True, aborting.slab, aborting
                    self.stats.prefetch_handovers += 1
                else:
                    return  # no slab without an expert this wave needs: get() decides when it is needed
            self._start(key, slab, prefetch=False, after=after)
        here = self.cycle[self.layer]

        def distance(k: Key) -> int:  # MoE layers until k's layer runs again
            return waves_until(self.cycle, k[0], here)

        while self.wanted:
            key = self.wanted[0]
            if key in self.resident or key in self.loading:
                self.wanted.pop(0)
                continue
            slab, after = self._free_slab(), None
            if slab is None:
                busy = {*self.pending, self.current}
                later = [k for k in self.resident if k not in busy and distance(k) > distance(key)]
                # a record used by this wave whose checksum still runs: its slab once the check is done
                checking = [j for j in self.unchecked if self.loading.get(j.key) is j and j.key not in busy
                            and not j.handed and distance(j.key) > distance(key)]
                if later:
                    slab = self._evict(self._victim(later, self.layer))
                elif checking:
                    checking[0].handed, slab, after = True, checking[0].slab, checking[0]
                    self.stats.evictions += 1
                else:
                    return
                self.stats.prefetch_evicting += 1
            self.wanted.pop(0)
            self.prefetched.add(key)
            self.stats.prefetches += 1
            self._start(key, slab, prefetch=True, after=after)

    def _start(self, key: Key, slab: int, prefetch: bool, after: LoadJob | None = None) -> None:
        if self.loader is None:
            timing, t0 = ReadTiming(), time.perf_counter()
            expert, nbytes = self._place(key, slab, timing=timing)
            self._mark_load(key, False, -1, t0, t0, time.perf_counter(), timing)
            self.resident[key] = (slab, expert)
            self.count[key] = 0
            self.stats.bytes_read += nbytes
            self._add_timing(timing)
            return
        if not prefetch:
            self.fresh.add(key)
        job = LoadJob(key, slab, prefetch, after=after, chunk=self.prefetch_chunk)
        # a prefetch gets them too: one still reading when its wave needs it is used like a demand miss
        if self.early_compute and self.layout == "file" and self.io_path == "direct":
            job.early = threading.Event()
        if self.check_later:
            job.landed = threading.Event()
        self.loading[key] = job
        self.loader.submit(job)

    def _wait(self, job: LoadJob) -> None:
        job.done.wait()
        self._land(job)

    def _collect(self) -> None:
        """Move finished loads into the resident set (the decoding thread owns every dict here)."""
        for job in [j for j in self.loading.values() if j.done.is_set()]:
            self._land(job)

    def _mark_load(self, key: Key, prefetch: bool, reader: int, queued: float, start: float, end: float,
                   timing: ReadTiming | None, aborted: bool = False) -> None:
        if self.timeline is not None:
            self.timeline.append({"event": "load", "key": key, "prefetch": prefetch, "reader": reader, "queued": queued,
                                  "t": start, "end": end, "aborted": aborted,
                                  "read_ms": timing.read_ms if timing else 0.0, "crc_ms": timing.crc_ms if timing else 0.0,
                                  "place_ms": timing.place_ms if timing else 0.0})

    def _land(self, job: LoadJob) -> None:
        if self.loading.pop(job.key, None) is None:
            return
        self._mark_load(job.key, job.prefetch, job.reader, job.queued_at, job.started_at, job.ended_at, job.timing,
                        isinstance(job.error, LoadAborted))
        if job.handed:  # its slab went to a later load: checked, counted, never resident
            self._land_handed(job)
            return
        if job.error is not None:
            self.free.append(job.slab)
            self.prefetched.discard(job.key)
            if isinstance(job.error, LoadAborted):
                self.stats.prefetch_aborted += 1
                return
            raise job.error
        self.resident[job.key] = (job.slab, job.result)
        self.stats.bytes_read += job.nbytes
        self._add_timing(job.timing)
        self.count.setdefault(job.key, 0)  # a record used before it was checked has its use counted already
        self.last.setdefault(job.key, self.clock)

    def _land_handed(self, job: LoadJob) -> None:
        """A load whose slab another load took (`LoadJob.after`): an aborted prefetch (a read that ended
        before its abort is wasted), or a record used before its checksum (a mismatch still raises)."""
        if job.key in self.prefetched:
            self.prefetched.discard(job.key)
            if job.error is None:
                self.stats.prefetch_wasted_bytes += job.nbytes
            elif isinstance(job.error, LoadAborted):
                self.stats.prefetch_aborted += 1
            return
        self.last.pop(job.key, None)
        self.count.pop(job.key, None)
        if job.error is not None:
            raise job.error
        self.stats.bytes_read += job.nbytes
        self._add_timing(job.timing)

    def _add_timing(self, timing: ReadTiming) -> None:
        self.stats.load_read_ms += timing.read_ms
        self.stats.load_crc_ms += timing.crc_ms
        self.stats.load_place_ms += timing.place_ms

    def _load(self, job: LoadJob) -> tuple[Expert, int]:
        """On the loader thread: read, check and place one record (its CRC and re-layout off the decoding thread)."""
        job.timing = ReadTiming()
        if job.prefetch:
            return self._place(job.key, job.slab, job.check, job.timing, None, job)
        return self._place(job.key, job.slab, None, job.timing, self.loader.assist if self.split_reads else None, job)

    def _place(self, key: Key, slab: int, check=None, timing: ReadTiming | None = None, assist=None,
               job: LoadJob | None = None) -> tuple[Expert, int]:
        """Read, check and place one record. A demand `job` with `early` gets its gate and up projections
        (`first`) as soon as they are in the slab; with `landed`, its Expert (`unchecked`) as soon as the whole
        record is, while the checksum is computed."""
        timing = timing if timing is not None else ReadTiming()
        buf = self.slabs[slab]
        entry = self.file.expert_entry(*key)
        placed: list[Expert] = []

        def early() -> None:
            t0 = time.perf_counter()
            job.first = {t.name: Linear(parse_parts(t, buf, t.offset), t.scheme, t.shape, self.threads)
                         for t in entry.tensors[:-1]}
            timing.place_ms += 1e3 * (time.perf_counter() - t0)
            job.early.set()

        def landed() -> None:
            placed.append(self._build(entry, buf, timing))
            job.unchecked = placed[0]
            job.landed.set()

        self.reader.read_into(*key, buf if self.layout == "file" else self.staging, check, timing, assist,
                              early if job is not None and job.early is not None else None,
                              landed if job is not None and job.landed is not None else None)
        return (placed[0] if placed else self._build(entry, buf, timing)), entry.nbytes

    def _build(self, entry, buf: np.ndarray, timing: ReadTiming) -> Expert:
        """The Expert over a record read into slab `buf` (or the staging buffer, converted into `buf`)."""
        t0 = time.perf_counter()
        if self.layout == "file":
            placed = {t.name: (parse_parts(t, buf, t.offset), "file") for t in entry.tensors}
        else:
            placed = place_slab2(entry, self.staging, buf)
        projs = {t.name: Linear(placed[t.name][0], t.scheme, t.shape, self.threads, ternary_layout=placed[t.name][1])
                 for t in entry.tensors}
        timing.place_ms += 1e3 * (time.perf_counter() - t0)
        return Expert(projs)

    def verify(self) -> None:
        """Wait for the checksums of the records get(early=True) handed out before they were checked, and
        raise a mismatch. The decode step calls it before its token is taken from what they computed."""
        if not self.unchecked:
            return
        jobs, self.unchecked = self.unchecked, []
        t0 = time.perf_counter()
        for job in jobs:
            self._wait(job)
        self.stats.stall_ms += 1e3 * (time.perf_counter() - t0)

    def drain(self) -> None:
        """Wait for every queued load and forget the wanted prefetches."""
        self.wanted = []
        for job in list(self.loading.values()):
            self._wait(job)

    def lend(self, keep: int) -> int:
        """Make room for a phase that needs memory (the vision encoder): evict experts until at most
        `keep` slabs hold one (by the eviction policy), and hand every free slab's pages back to the
        OS. Later misses refill them. Returns the bytes released."""
        self.drain()
        while len(self.resident) > max(0, keep):
            self.free.append(self._evict(self._victim(self.resident.keys(), self.layer)))
        released = sum(release_pages(self.slabs[i]) for i in self.free)
        return released + release_pages(self.staging)

    def release(self) -> None:
        if self.loader is not None:
            self.loader.close()
            self.loader = None
        self.loading.clear()
        self.unchecked.clear()
        self.fresh.clear()
        self.prefetched.clear()
        self.reader.close()
        self.resident.clear()
        self.last.clear()
        self.count.clear()
        self.slabs.clear()
        self.free.clear()
        self.staging = huge_buffer(0)
        self.region = huge_buffer(0)  # the mapping goes with its last view
