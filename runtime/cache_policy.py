"""Which cached expert to evict: the one rule shared by the runtime's ExpertCache and the trace
simulator (`mote-edge simulate`), so a replay predicts the runtime's counters exactly.

    lru     least recently used
    lfu     least frequently used while resident, ties by recency
    layer   evict the expert whose layer comes back last in the MoE-layer cycle (decoding visits the
            MoE layers in order, so an expert of the layer that just ran is needed again only after
            every other layer has run), ties by recency: Belady's rule using only the model's structure
    belady  Belady's MIN: the expert whose next use is farthest (needs the future: simulator only)
"""

from __future__ import annotations

Key = tuple[int, int]  # (layer, expert)
POLICIES = ("lru", "lfu", "layer", "belady")
RUNTIME_POLICIES = ("lru", "lfu", "layer")
DEFAULT_POLICY = "layer"


def pick_victim(keys, policy: str, layer: int, cycle: dict[int, int], last: dict[Key, int], count: dict[Key, int],
                protected: set[Key] = frozenset(), next_use: dict[Key, int] | None = None) -> Key:
    """The key to evict among `keys` while `layer` runs. `cycle` maps each MoE layer to its place in
    the decode order; `protected` (the running wave's experts) is spared unless nothing else is cached."""
    candidates = [k for k in keys if k not in protected] or list(keys)
    if policy == "lru":
        return min(candidates, key=lambda k: last[k])
    if policy == "lfu":
        return min(candidates, key=lambda k: (count[k], last[k]))
    if policy == "layer":
        here, n = cycle[layer], len(cycle)
        return max(candidates, key=lambda k: ((cycle[k[0]] - here - 1) % n, -last[k]))
    if policy == "belady" and next_use is not None:
        return max(candidates, key=lambda k: next_use[k])
    raise ValueError(f"unknown cache policy {policy!r}")
