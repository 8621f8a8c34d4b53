"""The routed-expert cache: fixed slabs, one pread per miss, a pluggable eviction policy
(runtime/cache_policy.py; default "layer", LRU available), honest counters.

A miss reads the expert's whole record into a free (or the least recently used) slab with one
preadv (or, for the 2-bit slab layout, into a staging buffer and converts it into the slab:
runtime/expert_layout.py), verifies its CRC, then drops the record's pages from the page cache (posix_fadvise
DONTNEED) so the kernel does not keep a second copy outside the budget. Slabs are allocated once
at load; nothing else is allocated per expert (the tensors are views into the slab).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from mote_edge.format.constants import SECTION_ALIGN
from mote_edge.format.layout import align
from mote_edge.format.reader import MoteFile, parse_parts

from .cache_policy import DEFAULT_POLICY, RUNTIME_POLICIES, Key, pick_victim
from .expert_layout import SLAB_LAYOUTS, place_slab2, slab_bytes, staging_bytes
from .hugepages import huge_buffer
from .memory import drop_page_cache, release_pages
from .weights import Linear


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    stall_ms: float = 0.0
    evictions: int = 0

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


class ExpertCache:
    def __init__(self, f: MoteFile, slabs: int, threads: int, drop_pages: bool = True, policy: str = DEFAULT_POLICY,
                 layout: str = "file"):
        if policy not in RUNTIME_POLICIES:
            raise ValueError(f"unknown cache policy {policy!r} (choose from {', '.join(RUNTIME_POLICIES)})")
        if layout not in SLAB_LAYOUTS:
            raise ValueError(f"unknown expert slab layout {layout!r} (choose from {', '.join(SLAB_LAYOUTS)})")
        self.file = f
        self.policy = policy
        self.layout = layout
        self.cycle = {layer: i for i, layer in enumerate(sorted(f.config.moe_layers))}  # decode order of MoE layers
        self.threads = threads
        self.drop_page_cache = drop_pages
        if drop_pages and hasattr(os, "posix_fadvise"):
            # expert reads are random: no readahead, whose pages the per-record DONTNEED would miss
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        self.slab_bytes = slab_bytes(f.experts.values(), layout)
        # one mapping for every slab, on huge pages where the OS grants them (runtime/hugepages.py):
        # expert weights are streamed from DRAM on every use
        self.region = huge_buffer(self.slab_bytes * slabs)
        self.staging = np.zeros(staging_bytes(f.experts.values(), layout), np.uint8)  # slab2: records land here
        self.slabs = [self.region[i * self.slab_bytes:(i + 1) * self.slab_bytes] for i in range(slabs)]
        self.free = list(range(slabs))
        self.resident: dict[Key, tuple[int, Expert]] = {}  # key -> (slab index, expert)
        self.last: dict[Key, int] = {}  # key -> clock of its last use
        self.count: dict[Key, int] = {}  # key -> uses since it was loaded
        self.clock = 0
        self.layer = next(iter(self.cycle), 0)  # the MoE layer of the running wave
        self.wave: set[Key] = set()
        self.stats = CacheStats()
        self.trace: list[dict] | None = None  # set to a list to record every MoE wave (for `simulate`)

    @property
    def nbytes(self) -> int:
        return self.slab_bytes * len(self.slabs) + self.staging.nbytes

    def is_cached(self, layer: int, expert: int) -> bool:
        return (layer, expert) in self.resident

    def begin_wave(self, layer: int, experts) -> None:
        """A MoE layer is about to use `experts`: loads during the wave spare them if they can."""
        self.layer, self.wave = layer, {(layer, e) for e in experts}

    def _touch(self, key: Key) -> None:
        self.clock += 1
        self.last[key] = self.clock
        self.count[key] = self.count.get(key, 0) + 1

    def get(self, layer: int, expert: int) -> Expert:
        key = (layer, expert)
        if key in self.resident:
            self.stats.hits += 1
            self._touch(key)
            return self.resident[key][1]
        t0 = time.perf_counter()
        if self.free:
            slab = self.free.pop()
        else:
            victim = pick_victim(self.resident.keys(), self.policy, layer, self.cycle, self.last, self.count,
                                 self.wave)
            slab, _ = self.resident.pop(victim)
            del self.last[victim], self.count[victim]
            self.stats.evictions += 1
        buf = self.slabs[slab]
        entry = self.file.read_expert_into(layer, expert, buf if self.layout == "file" else self.staging)
        if self.drop_page_cache:
            # records start page-aligned; round the length up so the last partial page goes too
            drop_page_cache(self.file.fileno(), self.file.header.data_offset + entry.offset,
                            align(entry.nbytes, SECTION_ALIGN))
        if self.layout == "file":
            placed = {t.name: (parse_parts(t, buf, t.offset), "file") for t in entry.tensors}
        else:
            placed = place_slab2(entry, self.staging, buf)
        projs = {t.name: Linear(placed[t.name][0], t.scheme, t.shape, self.threads, ternary_layout=placed[t.name][1])
                 for t in entry.tensors}
        value = (slab, Expert(projs))
        self.resident[key] = value
        self._touch(key)
        self.stats.misses += 1
        self.stats.bytes_read += entry.nbytes
        self.stats.stall_ms += 1e3 * (time.perf_counter() - t0)
        return value[1]

    def lend(self, keep: int) -> int:
        """Make room for a phase that needs memory (the vision encoder): evict experts until at most
        `keep` slabs hold one (by the eviction policy), and hand every free slab's pages back to the
        OS. Later misses refill them. Returns the bytes released."""
        while len(self.resident) > max(0, keep):
            victim = pick_victim(self.resident.keys(), self.policy, self.layer, self.cycle, self.last, self.count,
                                 set())
            slab, _ = self.resident.pop(victim)
            del self.last[victim], self.count[victim]
            self.free.append(slab)
            self.stats.evictions += 1
        released = sum(release_pages(self.slabs[i]) for i in self.free)
        return released + release_pages(self.staging)

    def release(self) -> None:
        self.resident.clear()
        self.last.clear()
        self.count.clear()
        self.slabs.clear()
        self.free.clear()
        self.staging = np.zeros(0, np.uint8)
        self.region = huge_buffer(0)  # the mapping goes with its last view
