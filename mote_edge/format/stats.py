"""Size statistics of a .mote file, computed from its directory (the writer stores them in the
metadata; `verify` recomputes and compares; `info` prints them)."""

from __future__ import annotations

from typing import Iterable

from .directory import BlobEntry, ExpertEntry, TensorEntry


def size_stats(tensors: Iterable[TensorEntry], experts: Iterable[ExpertEntry], vision: BlobEntry | None) -> dict:
    by_role: dict[str, dict[str, int]] = {}

    def add(t: TensorEntry) -> None:
        r = by_role.setdefault(t.role, {"params": 0, "bytes": 0})
        r["params"] += t.numel
        r["bytes"] += t.nbytes

    tensors, experts = list(tensors), list(experts)
    for t in tensors:
        add(t)
    for e in experts:
        for t in e.tensors:
            add(t)
    return {
        "by_role": by_role,
        "resident_bytes": sum(t.nbytes for t in tensors),
        "expert_bytes": sum(e.nbytes for e in experts),
        "expert_record_max_bytes": max((e.nbytes for e in experts), default=0),
        "num_expert_records": len(experts),
        "vision_bytes": vision.nbytes if vision is not None else 0,
    }


def bits_per_weight(role_stats: dict[str, int]) -> float:
    return 8.0 * role_stats["bytes"] / max(1, role_stats["params"])
