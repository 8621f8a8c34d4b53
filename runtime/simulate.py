"""Expert-cache trace replay: hit rates of cache policy x prefetch at every slab count.

A trace (`mote-edge run --trace-out routes.jsonl`) has one JSON line per MoE wave:
    {"layer": 3, "experts": [5, 1], "tokens": 1,
     "predicted": [{"layer": 5, "experts": [2]}, {"layer": 7, "experts": [0]}]}
`experts` lists the distinct experts the wave used; `predicted` (decode waves) what the routers of the
next two MoE layers, applied to this layer's MoE input, predicted for them (runtime/decoder.py
Lookahead). Replaying follows the runtime: within a wave, experts already cached are used first, then
the misses are loaded one by one (a wave never evicts an expert it still needs, as long as at least
one slab exists).

Policies (runtime/cache_policy.py, the same rule the runtime uses): lru, lfu, layer (the runtime's
default) and belady (Belady's MIN, the offline optimum of demand loading).

Prefetch, after each decode wave (the runtime reads them while the wave computes):
    none         demand loads only
    lookahead-1  the trace's predictions for the next MoE layer
    lookahead-2  ... for the next two MoE layers
    oracle       the experts the next two decode waves really use (what a perfect lookahead-2 reads)
A prefetch takes a free slab, or the slab of the cached expert (chosen by the policy) whose layer comes
back later than the prefetched one's, as the runtime does; it stops when there is none. The replay
has no clock: a prefetched expert is in its slab when its wave comes, and its use counts as a hit
("prefetched before it is needed"), so with prefetch a policy can pass Belady's MIN of demand loading.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

from mote_edge.errors import MoteError

from .cache_policy import POLICIES, Key, pick_victim

PREFETCHES = ("none", "lookahead-1", "lookahead-2", "oracle")
ORACLE_DEPTH = 2
NEVER = 1 << 62  # the next use of an expert the trace never uses again


@dataclass
class Wave:
    layer: int
    experts: list[int]
    tokens: int = 1
    predicted: list[tuple[int, list[int]]] = field(default_factory=list)  # (layer, experts), nearest first


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
            predicted = [(int(p["layer"]), [int(e) for e in p["experts"]]) for p in d.get("predicted", [])]
            waves.append(Wave(int(d["layer"]), [int(e) for e in d["experts"]], int(d.get("tokens", 1)), predicted))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            raise MoteError(f"trace {path} line {n} is not a wave record ({{\"layer\", \"experts\"}})") from None
    if not waves:
        raise MoteError(f"trace {path} has no waves")
    return waves


def write_trace(waves: list[Wave], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(wave_record(w)) + "\n" for w in waves))


def wave_record(w: Wave) -> dict:
    d = {"layer": w.layer, "experts": w.experts, "tokens": w.tokens}
    if w.predicted:
        d["predicted"] = [{"layer": layer, "experts": experts} for layer, experts in w.predicted]
    return d


def _accesses(waves: list[Wave]) -> list[Key]:
    return [(w.layer, e) for w in waves for e in w.experts]


def _prefetches(waves: list[Wave], i: int, prefetch: str) -> list[Key]:
    """What wave i prefetches, nearest layer first."""
    w = waves[i]
    if prefetch == "none" or w.tokens != 1:
        return []
    if prefetch == "oracle":
        return [(n.layer, e) for n in waves[i + 1:i + 1 + ORACLE_DEPTH] for e in n.experts]
    depth = int(prefetch.rsplit("-", 1)[1])
    return [(layer, e) for layer, experts in w.predicted[:depth] for e in experts]


def simulate(waves: list[Wave], slabs: int, policy: str, prefetch: str = "none") -> dict:
    """Replay `waves` with `slabs` cache slots; returns hits (prefetched experts included), misses, the
    hit rate and the prefetches issued / used / wasted (evicted unused)."""
    if policy not in POLICIES:
        raise MoteError(f"unknown cache policy {policy!r} (choose from {', '.join(POLICIES)})")
    if prefetch not in PREFETCHES:
        raise MoteError(f"unknown prefetch {prefetch!r} (choose from {', '.join(PREFETCHES)})")
    if slabs < 1:
        raise MoteError("a cache needs at least 1 slab")
    layers = sorted({w.layer for w in waves} | {layer for w in waves for layer, _ in w.predicted})
    cycle = {layer: i for i, layer in enumerate(layers)}
    uses: dict[Key, list[int]] = {}  # key -> the positions of its accesses (for belady's next use)
    for p, key in enumerate(_accesses(waves)):
        uses.setdefault(key, []).append(p)

    def next_use(key: Key, after: int) -> int:
        at = uses.get(key, [])
        j = bisect.bisect_right(at, after)
        return at[j] if j < len(at) else NEVER

    last: dict[Key, int] = {}
    count: dict[Key, int] = {}
    nxt: dict[Key, int] = {}
    prefetched: set[Key] = set()
    hits = misses = clock = pos = issued = used = wasted = 0

    def evict(victim: Key) -> None:
        nonlocal wasted
        del last[victim], count[victim], nxt[victim]
        if victim in prefetched:
            prefetched.discard(victim)
            wasted += 1

    for i, w in enumerate(waves):
        order = sorted(w.experts, key=lambda e: (w.layer, e) not in last)  # hits first, as the runtime
        wave_keys = {(w.layer, e) for e in w.experts}
        index_of = {(w.layer, e): pos + j for j, e in enumerate(w.experts)}
        for e in order:
            key = (w.layer, e)
            clock += 1
            if key in last:
                hits += 1
                if key in prefetched:
                    prefetched.discard(key)
                    used += 1
            else:
                misses += 1
                if len(last) >= slabs:
                    evict(pick_victim(last.keys(), policy, w.layer, cycle, last, count, wave_keys, nxt))
                count[key] = 0
            last[key], count[key], nxt[key] = clock, count[key] + 1, next_use(key, index_of[key])
        pos += len(w.experts)
        here, n = cycle[w.layer], len(cycle)
        for key in _prefetches(waves, i, prefetch):
            if key in last:
                continue
            if len(last) >= slabs:
                gap = (cycle[key[0]] - here - 1) % n
                later = [k for k in last if (cycle[k[0]] - here - 1) % n > gap]
                if not later:
                    break
                evict(pick_victim(later, policy, w.layer, cycle, last, count, set(), nxt))
            last[key], count[key], nxt[key] = clock, 0, next_use(key, pos - 1)
            prefetched.add(key)
            issued += 1
    total = hits + misses
    return {"policy": policy, "prefetch": prefetch, "slabs": slabs, "hits": hits, "misses": misses,
            "hit_rate": hits / total if total else 0.0, "prefetches": issued, "prefetch_used": used,
            "prefetch_wasted": wasted}


def sweep(waves: list[Wave], slab_counts: list[int], policies: list[str], prefetches: list[str] = ("none",)) -> list[dict]:
    return [simulate(waves, s, p, f) for s in slab_counts for p in policies for f in prefetches]


def has_predictions(waves: list[Wave]) -> bool:
    return any(w.predicted for w in waves)


def default_slab_counts(waves: list[Wave]) -> list[int]:
    distinct = len(set(_accesses(waves)))
    counts = {1, 2, 4, distinct // 4, distinct // 2, (3 * distinct) // 4, distinct}
    return sorted(c for c in counts if c >= 1)


def best_pairs(results: list[dict], baseline: str = "belady") -> list[dict]:
    """Per slab count: the best policy x prefetch the runtime can run (no belady, no oracle; highest hit
    rate) and its gap to `baseline` without prefetch (Belady's MIN of demand loading), in points."""
    out = []
    for slabs in sorted({r["slabs"] for r in results}):
        rows = [r for r in results if r["slabs"] == slabs]
        ref = next((r for r in rows if r["policy"] == baseline and r["prefetch"] == "none"), None)
        runtime = [r for r in rows if r["policy"] != "belady" and r["prefetch"] != "oracle"]
        if not runtime:
            continue
        best = max(runtime, key=lambda r: r["hit_rate"])
        out.append({"slabs": slabs, "policy": best["policy"], "prefetch": best["prefetch"],
                    "hit_rate": best["hit_rate"],
                    "points_behind_belady": None if ref is None else 100 * (ref["hit_rate"] - best["hit_rate"])})
    return out
