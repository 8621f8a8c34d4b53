"""Expert-cache trace replay: hit rates of cache policies at every slab count.

A trace (`mote-edge run --trace-out routes.jsonl`) has one JSON line per MoE wave:
    {"layer": 3, "experts": [5, 1], "tokens": 1}
`experts` lists the distinct experts the wave used. Replaying follows the runtime: within a wave,
experts already cached are used first, then the misses are loaded one by one (a wave never evicts an
expert it still needs, as long as at least one slab exists).

Policies (runtime/cache_policy.py, the same rule the runtime uses): lru, lfu, layer (the runtime's
default) and belady (Belady's MIN, the offline optimum: the upper bound on any policy's hit rate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mote_edge.errors import MoteError

from .cache_policy import POLICIES, Key, pick_victim


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
    last: dict[Key, int] = {}
    count: dict[Key, int] = {}
    nxt: dict[Key, int] = {}
    hits = misses = clock = pos = 0
    for w in waves:
        order = sorted(w.experts, key=lambda e: (w.layer, e) not in last)  # hits first, as the runtime
        wave_keys = {(w.layer, e) for e in w.experts}
        index_of = {k: pos + j for j, k in enumerate((w.layer, e) for e in w.experts)}
        for e in order:
            key = (w.layer, e)
            clock += 1
            if key in last:
                hits += 1
            else:
                misses += 1
                if len(last) >= slabs:
                    victim = pick_victim(last.keys(), policy, w.layer, cycle, last, count, wave_keys, nxt)
                    del last[victim], count[victim], nxt[victim]
                count[key] = 0
            last[key], count[key], nxt[key] = clock, count[key] + 1, next_use[index_of[key]]
        pos += len(w.experts)
    total = hits + misses
    return {"policy": policy, "slabs": slabs, "hits": hits, "misses": misses, "hit_rate": hits / total if total else 0.0}


def sweep(waves: list[Wave], slab_counts: list[int], policies: list[str]) -> list[dict]:
    return [simulate(waves, s, p) for s in slab_counts for p in policies]


def default_slab_counts(waves: list[Wave]) -> list[int]:
    distinct = len(set(_accesses(waves)))
    counts = {1, 2, 4, distinct // 4, distinct // 2, (3 * distinct) // 4, distinct}
    return sorted(c for c in counts if c >= 1)
