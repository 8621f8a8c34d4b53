"""Expert-cache trace replay: hit rates of cache policy x prefetch at every slab count.

A trace (`mote-edge run --trace-out routes.jsonl`) has one JSON line per MoE wave:
    {"layer": 3, "experts": [5, 1], "tokens": 1,
     "predicted": [{"layer": 5, "experts": [2]}, {"layer": 7, "experts": [0]}, ...]}
`experts` lists the distinct experts the wave used; `predicted` (decode waves) what the routers of the
next MoE layers (four in a runtime trace, nearest first), applied to this layer's MoE input, predicted
for them (runtime/decoder.py Lookahead). Replaying follows the runtime: within a wave, experts already
cached are used first, then the misses are loaded one by one (a wave never evicts an expert it still
needs, as long as at least one slab exists).

Policies (runtime/cache_policy.py, the same rule the runtime uses): lru, lfu, layer, expected (the
runtime's default) and belady (Belady's MIN, the offline optimum of demand loading).

Prefetch, after each decode wave (the runtime reads them while the wave computes):
    none         demand loads only
    lookahead-N  the trace's predictions for the next N MoE layers (a runtime trace records 4)
    oracle       the experts the next two decode waves really use (what a perfect lookahead-2 reads)
    oracle-N     ... the next N decode waves (a perfect predictor N MoE layers ahead: how far ahead a
                 prefetch must look to be in time on a clock; benchmarks/prefetch_replay.py)
A prefetch takes a free slab, or the slab of the cached expert (chosen by the policy) whose layer comes
back later than the prefetched one's, as the runtime does; it stops when there is none.

Without a clock a prefetched expert is in its slab when its wave comes and its use counts as a hit. With
a `Clock` (measured: a record's read time, a MoE wave's compute) time runs as in the runtime: one read
at a time on the disk, a wave's demand reads before every prefetch not started yet, each prefetch queued
when its wave routes; a wave computes `overlap_ms` (its dense parts) while its misses load, waits for
the last of them, then computes the rest of `wave_ms` (every expert cached: routing to the next wave).
A prefetch still reading when its wave needs it is a miss (`prefetch_late`) and the wait is a stall, so
only "prefetched before it is needed" is a hit, and `time_ms` is the replay's decode time. When a wave
routes, its layer's mispredicted prefetches that have not started are cancelled (their slabs freed), as
in the runtime; a started read always finishes (the runtime aborts a mispredicted one at its next 4 MiB
chunk: for records under 4 MiB, the same).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path

from mote_edge.errors import MoteError

from .cache_policy import POLICIES, Key, RoutingCounts, pick_victim, waves_until

PREFETCHES = ("none", "lookahead-N", "oracle", "oracle-N")
ORACLE_DEPTH = 2
NEVER = 1 << 62  # the next use of an expert the trace never uses again


@dataclass(frozen=True)
class Clock:
    """The replay's time in ms: one record reads in `read_ms` (its bytes over the measured disk speed);
    a MoE wave takes `wave_ms` from its routing to the next wave's with every expert cached (the decode
    step over the MoE layers), `overlap_ms` of it (the shared expert) before it needs its experts."""
    read_ms: float
    wave_ms: float
    overlap_ms: float = 0.0

    def __post_init__(self):
        if self.read_ms < 0 or self.wave_ms <= 0 or not 0 <= self.overlap_ms <= self.wave_ms:
            raise MoteError(f"a replay clock needs read >= 0, wave > 0 and 0 <= overlap <= wave ms, got "
                            f"{self.read_ms}, {self.wave_ms}, {self.overlap_ms}")


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


def oracle_depth(prefetch: str) -> int | None:
    """The horizon of an oracle prefetch ("oracle": ORACLE_DEPTH, "oracle-N": N >= 1), None for any other name."""
    if prefetch == "oracle":
        return ORACLE_DEPTH
    name, _, depth = prefetch.partition("-")
    return int(depth) if name == "oracle" and depth.isdigit() and int(depth) >= 1 else None


def lookahead_depth(prefetch: str) -> int | None:
    """The depth of a lookahead prefetch ("lookahead-N", N >= 1), None for any other name."""
    name, _, depth = prefetch.partition("-")
    return int(depth) if name == "lookahead" and depth.isdigit() and int(depth) >= 1 else None


def prediction_depth(waves: list[Wave]) -> int:
    """How many MoE layers ahead the trace's predictions go (0: none)."""
    return max((len(w.predicted) for w in waves), default=0)


def _prefetches(waves: list[Wave], i: int, oracle: int | None, ahead: int | None) -> list[Key]:
    """What wave i prefetches, nearest layer first: the next `oracle` waves' experts, or its predictions
    `ahead` MoE layers deep (neither: nothing)."""
    w = waves[i]
    if w.tokens != 1:
        return []
    if oracle is not None:
        return [(n.layer, e) for n in waves[i + 1:i + 1 + oracle] for e in n.experts]
    if ahead is not None:
        return [(layer, e) for layer, experts in w.predicted[:ahead] for e in experts]
    return []


class _Disk:
    """One read at a time: demand reads go before every prefetch that has not started by their wave."""

    def __init__(self, read_ms: float):
        self.read_ms, self.free_at = read_ms, 0.0
        self.queued: list[tuple[Key, float]] = []  # prefetches not started: (key, when queued)
        self.ready: dict[Key, float] = {}  # key -> when its read ends (started reads)

    def start_until(self, now: float) -> None:
        """Start the queued prefetches the disk reaches before `now`."""
        while self.queued and max(self.free_at, self.queued[0][1]) < now:
            key, at = self.queued.pop(0)
            self.free_at = self.ready[key] = max(self.free_at, at) + self.read_ms

    def demand(self, key: Key, now: float) -> float:
        self.drop(key)
        self.free_at = self.ready[key] = max(self.free_at, now) + self.read_ms
        return self.ready[key]

    def drop(self, key: Key) -> None:
        self.queued = [(k, at) for k, at in self.queued if k != key]
        self.ready.pop(key, None)

    def in_flight(self, now: float) -> set[Key]:
        return {k for k, _ in self.queued} | {k for k, t in self.ready.items() if t > now}


def simulate(waves: list[Wave], slabs: int, policy: str, prefetch: str = "none", clock: Clock | None = None) -> dict:
    """Replay `waves` with `slabs` cache slots; returns hits (prefetched experts included), misses, the
    hit rate and the prefetches issued / used / wasted (evicted unused); with a `clock`, also the late
    prefetches (misses), the stall and the replay's decode time in ms."""
    if policy not in POLICIES:
        raise MoteError(f"unknown cache policy {policy!r} (choose from {', '.join(POLICIES)})")
    oracle, ahead = oracle_depth(prefetch), lookahead_depth(prefetch)  # parsed once, not per wave
    if prefetch != "none" and oracle is None and ahead is None:
        raise MoteError(f"unknown prefetch {prefetch!r} (choose from {', '.join(PREFETCHES)})")
    if ahead is not None and ahead > (recorded := prediction_depth(waves)):
        raise MoteError(f"prefetch {prefetch} needs predictions {ahead} MoE layers ahead; the trace has {recorded}")
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
    routing = RoutingCounts()
    hits = misses = tick = pos = issued = used = wasted = late = cancelled = 0
    disk = _Disk(clock.read_ms) if clock is not None else None
    now = stall = 0.0

    def evict(victim: Key) -> None:
        nonlocal wasted
        del last[victim], count[victim], nxt[victim]
        if disk is not None:
            disk.drop(victim)
        if victim in prefetched:
            prefetched.discard(victim)
            wasted += 1

    for i, w in enumerate(waves):
        if disk is not None:
            disk.start_until(now)
            for key, _ in list(disk.queued):  # this layer's mispredicted prefetches not started: cancelled
                if key[0] == w.layer and key[1] not in w.experts:
                    evict(key)
                    wasted -= 1  # cancelled, not read
                    cancelled += 1
        routing.observe(w.layer, w.experts)
        busy = disk.in_flight(now) if disk is not None else set()
        order = sorted(w.experts, key=lambda e: (w.layer, e) not in last)  # hits first, as the runtime
        wave_keys = {(w.layer, e) for e in w.experts}
        index_of = {(w.layer, e): pos + j for j, e in enumerate(w.experts)}
        needed_at = now
        for e in order:
            key = (w.layer, e)
            tick += 1
            if key in last and key not in busy:
                hits += 1
                if key in prefetched:
                    prefetched.discard(key)
                    used += 1
            elif key in last:  # prefetched, still queued or reading: a miss that waits for it
                misses += 1
                late += 1
                used += key in prefetched
                prefetched.discard(key)
                ready = disk.ready.get(key)
                needed_at = max(needed_at, ready if ready is not None else disk.demand(key, now))
            else:
                misses += 1
                if len(last) >= slabs:
                    evict(pick_victim(last.keys(), policy, w.layer, cycle, last, count, wave_keys | busy, nxt, routing))
                count[key] = 0
                if disk is not None:
                    needed_at = max(needed_at, disk.demand(key, now))
            last[key], count[key], nxt[key] = tick, count[key] + 1, next_use(key, index_of[key])
        pos += len(w.experts)
        here = cycle[w.layer]
        for key in _prefetches(waves, i, oracle, ahead):
            if key in last:
                continue
            queued_at = now
            if len(last) >= slabs:
                gap = waves_until(cycle, key[0], here)
                later = [k for k in last if waves_until(cycle, k[0], here) > gap and k not in busy]
                if not later:
                    break
                victim = pick_victim(later, policy, w.layer, cycle, last, count, set(), nxt, routing)
                if victim in wave_keys:  # its slab is free once the wave has used it
                    queued_at = max(now + clock.overlap_ms, needed_at) if clock is not None else now
                evict(victim)
            last[key], count[key], nxt[key] = tick, 0, next_use(key, pos - 1)
            prefetched.add(key)
            issued += 1
            if disk is not None:
                disk.queued.append((key, queued_at))
        if clock is not None:
            stall += max(0.0, needed_at - (now + clock.overlap_ms))
            now = max(now + clock.overlap_ms, needed_at) + clock.wave_ms - clock.overlap_ms
    total = hits + misses
    out = {"policy": policy, "prefetch": prefetch, "slabs": slabs, "hits": hits, "misses": misses,
           "hit_rate": hits / total if total else 0.0, "prefetches": issued, "prefetch_used": used,
           "prefetch_wasted": wasted}
    if clock is not None:
        out.update(prefetch_late=late, prefetch_cancelled=cancelled, stall_ms=stall, time_ms=now)
    return out


def sweep(waves: list[Wave], slab_counts: list[int], policies: list[str], prefetches: list[str] = ("none",),
          clock: Clock | None = None) -> list[dict]:
    return [simulate(waves, s, p, f, clock) for s in slab_counts for p in policies for f in prefetches]


def default_slab_counts(waves: list[Wave]) -> list[int]:
    distinct = len(set(_accesses(waves)))
    counts = {1, 2, 4, distinct // 4, distinct // 2, (3 * distinct) // 4, distinct}
    return sorted(c for c in counts if c >= 1)


def best_pairs(results: list[dict], baseline: str = "belady") -> list[dict]:
    """Per slab count: the best policy x prefetch the runtime can run (no belady, no oracle; highest hit
    rate) and its gap to `baseline` without prefetch (Belady's MIN of demand loading), in points; with a
    clock, also the fastest pair (the shortest replayed decode time)."""
    out = []
    for slabs in sorted({r["slabs"] for r in results}):
        rows = [r for r in results if r["slabs"] == slabs]
        ref = next((r for r in rows if r["policy"] == baseline and r["prefetch"] == "none"), None)
        runtime = [r for r in rows if r["policy"] != "belady" and oracle_depth(r["prefetch"]) is None]
        if not runtime:
            continue
        best = max(runtime, key=lambda r: r["hit_rate"])
        row = {"slabs": slabs, "policy": best["policy"], "prefetch": best["prefetch"], "hit_rate": best["hit_rate"],
               "points_behind_belady": None if ref is None else 100 * (ref["hit_rate"] - best["hit_rate"])}
        if "time_ms" in best:
            fastest = min(runtime, key=lambda r: r["time_ms"])
            row["fastest"] = {k: fastest[k] for k in ("policy", "prefetch", "hit_rate", "time_ms")}
        out.append(row)
    return out
