"""The expert loader and router-lookahead prefetch change when records are read, never what is computed:
identical greedy tokens with the serial loader, the thread loader, and the thread loader with
lookahead prefetch, at budgets from the minimum to every expert cached (with evictions below full)."""

from __future__ import annotations

import numpy as np
import pytest

from mote_edge.format import MoteFile
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.expert_io import ExpertReader
from mote_edge.runtime.hugepages import huge_buffer
from mote_edge.runtime.plan import plan_file

PROMPT = "What color is the circle? Is it left or right of the star?"
MODES = [("serial", "none"), ("thread", "none"), ("thread", "lookahead")]


def _budgets(mote):
    with MoteFile(mote) as f:
        top_k, total = f.config.moe.top_k_experts, len(f.experts)
        counts = sorted({top_k, top_k + 1, total // 2, total})
        return [(n, plan_file(f, 256, n, vision=False).total_bytes) for n in counts], total


def _run(mote, budget, loader, prefetch):
    with Engine.load(mote, memory_budget=budget, threads=1, max_context=256, vision=False, expert_layout="file",
                     prefetch=prefetch, expert_loader=loader) as engine:
        ids = list(engine.generate_ids(PROMPT, max_new_tokens=24, ignore_eos=True))
        return ids, engine.report()["experts"]


def test_same_tokens_with_and_without_prefetch_at_every_budget(tiny_b4_mote):
    budgets, total = _budgets(tiny_b4_mote)
    issued = 0
    for slabs, budget in budgets:
        results = {mode: _run(tiny_b4_mote, budget, *mode) for mode in MODES}
        reference, serial = results[("serial", "none")]
        for mode, (ids, experts) in results.items():
            assert ids == reference, (slabs, mode)
            assert experts["slabs"] == slabs
            if slabs < total:
                assert experts["evictions"] > 0, (slabs, mode)
        # the thread loader without prefetch reads exactly what the serial one reads
        thread = results[("thread", "none")][1]
        assert (thread["hits"], thread["misses"], thread["evictions"]) == (serial["hits"], serial["misses"],
                                                                           serial["evictions"])
        look = results[("thread", "lookahead")][1]
        assert look["prefetch_used"] <= look["prefetches"]
        issued += look["prefetches"]
    assert issued > 0


@pytest.mark.parametrize("direct", [True, False])
def test_both_io_paths_read_the_same_bytes(tiny_b4_mote, direct):
    with MoteFile(tiny_b4_mote) as f:
        reader = ExpertReader(f, direct=direct)
        assert reader.io_path == "buffered" if not direct else reader.io_path in ("direct", "buffered")
        (layer, expert), entry = next(iter(f.experts.items()))
        buf = huge_buffer(-(-entry.nbytes // 4096) * 4096)
        reader.read_into(layer, expert, buf)
        assert bytes(buf[:entry.nbytes]) == bytes(f.read_expert_record(layer, expert))
        reader.close()
