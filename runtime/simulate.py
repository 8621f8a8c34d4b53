"""Expert-cache trace replay: hit rates of cache policies at every slab count.

A trace (`mote-edge run --trace-out routes.jsonl`) has one JSON line per MoE wave:
    {"layer": 3, "experts": [5, 1], "tokens": 1}
`experts` lists the distinct experts the wave used. Replaying follows the runtime: within a wave,
experts already cached are used first, then the misses are loaded one by one (a wave never evicts an
expert it still needs, as long as at least one slab exists).

Policies:
    lru     least recently used (the runtime's policy)
    lfu     least frequently used so far, ties broken by recency
    layer   evict the expert whose layer comes back last in the layer cycle (decode visits the MoE
            layers in order), ties by recency: Belady's idea using only the model's structure
    belady  Belady's MIN: evict the expert whose next use is farthest in the future (offline optimum,
            the upper bound on any policy's hit rate)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mote_edge.errors import MoteError

POLICIES = ("lru", "lfu", "layer", "belady")


@dataclass
class Wave:
    layer: int
    experts: list[int]


def read_trace(path: str | Path) -> list[Wave]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise MoteError(f"cannot read trace {path}: {e.strerror}") from None
    waves = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            waves.append(Wave(int(d["layer"]), [int(e) for e in d["experts"]]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise MoteError(f"trace {path} line {n} is not a wave record ({{\"layer\", \"experts\"}})") from None
    if not waves:
        raise MoteError(f"trace {path} has no waves")
    return waves


def _accesses(waves: list[Wave]) -> list[tuple[int, int]]:
    return [(w.layer, e) for w in waves for e in w.experts]


def simulate(waves: list[Wave], slabs: int, policy: str) -> dict:
    """Replay `waves` with `slabs` cache slots; returns hits, misses and the hit rate."""
    if policy not in POLICIES:
        raise MoteError(f"unknown cache policy {policy!r} (choose from {', '.join(POLICIES)})")
    if slabs < 1:
        raise MoteError("a cache needs at least 1 slab")
    layers = sorted({w.layer for w in waves})
    cycle = {layer: i for i, layer in enumerate(layers)}
    # next use of every access position (for belady): index of the next access to the same key
    keys = _accesses(waves)
    next_use = [0] * len(keys)
    last_seen: dict[tuple[int, int], int] = {}
    for i in range(len(keys) - 1, -1, -1):
        next_use[i] = last_seen.get(keys[i], len(keys) + 1)
        last_seen[keys[i]] = i
    cache: dict[tuple[int, int], dict] = {}  # key -> {"last", "count", "next"}
    hits = misses = clock = pos = 0
    for w in waves:
        order = sorted(w.experts, key=lambda e: (w.layer, e) not in cache)  # hits first, as the runtime
        wave_keys = {(w.layer, e) for e in w.experts}
        index_of = {k: pos + j for j, k in enumerate((w.layer, e) for e in w.experts)}
        for e in order:
            key = (w.layer, e)
            clock += 1
            i = index_of[key]
            if key in cache:
                hits += 1
            else:
                misses += 1
                if len(cache) >= slabs:
                    del cache[_victim(cache, policy, w.layer, cycle, len(layers), wave_keys)]
                cache[key] = {"last": 0, "count": 0, "next": 0}
            c = cache[key]
            c["last"], c["count"], c["next"] = clock, c["count"] + 1, next_use[i]
        pos += len(w.experts)
    total = hits + misses
    return {"policy": policy, "slabs": slabs, "hits": hits, "misses": misses, "hit_rate": hits / total if total else 0.0}


def _victim(cache: dict, policy: str, layer: int, cycle: dict, n_layers: int, wave_keys: set) -> tuple[int, int]:
    # never evict an expert the current wave still needs, unless nothing else is cached
    candidates = [k for k in cache if k not in wave_keys] or list(cache)
    if policy == "lru":
        return min(candidates, key=lambda k: cache[k]["last"])
    if policy == "lfu":
        return min(candidates, key=lambda k: (cache[k]["count"], cache[k]["last"]))
    if policy == "layer":
        here = cycle[layer]
        return max(candidates, key=lambda k: ((cycle[k[0]] - here - 1) % n_layers, -cache[k]["last"]))
    return max(candidates, key=lambda k: cache[k]["next"])  # belady


def sweep(waves: list[Wave], slab_counts: list[int], policies: list[str]) -> list[dict]:
    return [simulate(waves, s, p) for s in slab_counts for p in policies]


def default_slab_counts(waves: list[Wave]) -> list[int]:
    distinct = len(set(_accesses(waves)))
    counts = {1, 2, 4, distinct // 4, distinct // 2, (3 * distinct) // 4, distinct}
    return sorted(c for c in counts if c >= 1)
