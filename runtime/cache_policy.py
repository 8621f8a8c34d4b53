"""Which cached expert to evict: the one rule shared by the runtime's ExpertCache and the trace
simulator (`mote-edge simulate`), so a replay predicts the runtime's counters exactly.

    lru     least recently used
    lfu     least frequently used while resident, ties by recency
    layer   evict the expert whose layer comes back last in the MoE-layer cycle (decoding visits the
            MoE layers in order, so an expert of the layer that just ran is needed again only after
            every other layer has run), ties by recency: Belady's rule using only the model's structure
    expected
            evict the expert whose next use is expected farthest: its layer's distance in the cycle plus
            a cycle for every visit of that layer it is expected to sit out, from the routing the cache
            has seen (`RoutingCounts`: how often each expert was routed per visit of its layer, and how
            often the experts of one visit were routed again at the next), ties by recency
    belady  Belady's MIN: the expert whose next use is farthest (needs the future: simulator only)
"""

from __future__ import annotations

Key = tuple[int, int]  # (layer, expert)
POLICIES = ("lru", "lfu", "layer", "expected", "belady")
RUNTIME_POLICIES = ("lru", "lfu", "layer", "expected")
DEFAULT_POLICY = "expected"  # wins the replays and the runtime A/Bs (docs/BENCHMARKS.md, "Prefetch replay")


def waves_until(cycle: dict[int, int], layer: int, here: int) -> int:
    """MoE waves from the wave at place `here` in the decode cycle until `layer` runs again (0: next)."""
    return (cycle[layer] - here - 1) % len(cycle)


# A layer's first waves say little about its routing: counts of a few waves evicted worse than the layer
# rule (fitted-routing replays at 17 slabs of 96: 4-token answers 22.5% hits against 30.2, 16-token ones 32.8
# against 40.7); from 16 waves on they are level or better, and 2,000-token replays do not change.
CONFIDENT_VISITS = 16


class RoutingCounts:
    """The routing of every wave so far, per MoE layer (`observe` at each wave's start, in the runtime and
    the replay alike): the `expected` policy's estimate of each expert's chance to be routed at its
    layer's next visit."""

    def __init__(self):
        self.visits: dict[int, int] = {}  # layer -> waves
        self.routed: dict[Key, int] = {}  # key -> waves that routed to it
        self.previous: dict[int, frozenset[int]] = {}  # layer -> the experts of its last wave
        self.carried: dict[int, int] = {}  # layer -> experts of a wave that had a next wave at the layer
        self.repeated: dict[int, int] = {}  # layer -> ... of them routed again by that next wave

    def observe(self, layer: int, experts) -> None:
        now, before = frozenset(experts), self.previous.get(layer)
        if before is not None:
            self.carried[layer] = self.carried.get(layer, 0) + len(before)
            self.repeated[layer] = self.repeated.get(layer, 0) + len(before & now)
        self.previous[layer] = now
        self.visits[layer] = self.visits.get(layer, 0) + 1
        for e in now:
            self.routed[(layer, e)] = self.routed.get((layer, e), 0) + 1

    def reuse_probability(self, key: Key) -> float:
        """The chance that `key`'s layer routes to it at its next wave, in (0, 1]: the layer's repeat rate
        if its last wave used it, else its share of the layer's waves (half a use of prior each way). Until
        the layer has run CONFIDENT_VISITS waves every expert counts as equally likely (the layer rule)."""
        layer, expert = key
        if self.visits.get(layer, 0) < CONFIDENT_VISITS:
            return 0.5
        if expert in self.previous.get(layer, ()):
            return (self.repeated.get(layer, 0) + 0.5) / (self.carried.get(layer, 0) + 1)
        return (self.routed.get(key, 0) + 0.5) / (self.visits.get(layer, 0) + 1)

    def expected_distance(self, key: Key, here: int, cycle: dict[int, int]) -> float:
        """MoE waves until `key` is expected to be used again, seen from the wave at place `here`."""
        return waves_until(cycle, key[0], here) + len(cycle) * (1.0 / self.reuse_probability(key) - 1.0)


def pick_victim(keys, policy: str, layer: int, cycle: dict[int, int], last: dict[Key, int], count: dict[Key, int],
                protected: set[Key] = frozenset(), next_use: dict[Key, int] | None = None,
                routing: RoutingCounts | None = None) -> Key:
    """The key to evict among `keys` while `layer` runs. `cycle` maps each MoE layer to its place in
    the decode order; `protected` (the running wave's experts) is spared unless nothing else is cached;
    `routing` is what `expected` estimates from."""
    candidates = [k for k in keys if k not in protected] or list(keys)
    if policy == "lru":
        return min(candidates, key=lambda k: last[k])
    if policy == "lfu":
        return min(candidates, key=lambda k: (count[k], last[k]))
    if policy == "layer":
        here = cycle[layer]
        return max(candidates, key=lambda k: (waves_until(cycle, k[0], here), -last[k]))
    if policy == "expected" and routing is not None:
        here = cycle[layer]
        return max(candidates, key=lambda k: (routing.expected_distance(k, here, cycle), -last[k]))
    if policy == "belady" and next_use is not None:
        return max(candidates, key=lambda k: next_use[k])
    raise ValueError(f"unknown cache policy {policy!r}")
