"""The expert loader and router-lookahead prefetch change when records are read, never what is computed:
identical greedy tokens with the serial loader, the thread loader, and the thread loader with
lookahead prefetch one to four MoE layers ahead and the "gap" prefetch (one ahead, into the slabs waves
free), at budgets from the minimum to every expert cached (with evictions below full). Every mode at a slab
count gets the budget of that many slabs: with lookahead prefetch, top_k of them per layer ahead are the
plan's loader buffers; the gap prefetch has none."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from mote_edge.format import MoteFile
from mote_edge.runtime.budget import BudgetError
from mote_edge.runtime.engine import GAP_PAYS_CHUNKS, Engine, gap_prefetch_pays, lookahead_pays
from mote_edge.runtime.expert_cache import PREFETCH_BUFFERED
from mote_edge.errors import FormatError
from mote_edge.runtime.expert_io import ExpertReader, crc32_combine
from mote_edge.runtime.expert_loader import GAP_CHUNK, PREFETCH_CHUNK, ExpertLoader, LoadAborted, LoadJob
from mote_edge.runtime.hugepages import huge_buffer
from mote_edge.runtime.plan import loader_slabs, plan_file

PROMPT = "What color is the circle? Is it left or right of the star?"
MODES = [("serial", "none"), ("thread", "none"), ("thread", "lookahead"), ("thread", "lookahead2"), ("thread", "gap")]


def _budgets(mote):
    """[(slabs, {mode: budget})] from the minimum to every expert; a mode is left out where its loader
    buffers leave fewer than top_k cache slabs."""
    with MoteFile(mote) as f:
        top_k, total = f.config.moe.top_k_experts, len(f.experts)
        out = []
        for n in sorted({top_k, top_k + 1, 2 * top_k, 3 * top_k, total // 2, total}):
            budgets = {}
            for mode in MODES:
                buffers = loader_slabs(f.config, PREFETCH_BUFFERED[mode[1]]) if n < total else 0
                if n - buffers >= top_k:
                    budgets[mode] = plan_file(f, 256, n - buffers, vision=False, loader_slabs=buffers).total_bytes
            out.append((n, budgets))
        return out, total, top_k


def _run(mote, budget, loader, prefetch):
    with Engine.load(mote, memory_budget=budget, threads=1, max_context=256, vision=False, expert_layout="file",
                     prefetch=prefetch, expert_loader=loader) as engine:
        ids = list(engine.generate_ids(PROMPT, max_new_tokens=24, ignore_eos=True))
        return ids, engine.report()["experts"]


def test_same_tokens_with_and_without_prefetch_at_every_budget(tiny_b4_mote):
    budgets, total, top_k = _budgets(tiny_b4_mote)
    issued = {"lookahead": 0, "lookahead2": 0, "gap": 0}
    gap_at_minimum = None
    for slabs, mode_budgets in budgets:
        results = {mode: _run(tiny_b4_mote, budget, *mode) for mode, budget in mode_budgets.items()}
        reference, serial = results[("serial", "none")]
        for mode, (ids, experts) in results.items():
            assert ids == reference, (slabs, mode)
            assert experts["slabs"] == slabs
            assert experts["loader_slabs"] == (0 if slabs == total else top_k * PREFETCH_BUFFERED[mode[1]])
            if slabs < total:
                assert experts["evictions"] > 0, (slabs, mode)
        # the thread loader without prefetch reads exactly what the serial one reads
        thread = results[("thread", "none")][1]
        assert (thread["hits"], thread["misses"], thread["evictions"]) == (serial["hits"], serial["misses"],
                                                                           serial["evictions"])
        for (_, prefetch), (_, experts) in results.items():
            if prefetch != "none":
                assert experts["prefetch_used"] <= experts["prefetches"]
                issued[prefetch] += experts["prefetches"]
        if slabs == top_k:
            gap_at_minimum = results[("thread", "gap")][1]
    assert all(n > 0 for n in issued.values()), issued
    # at the minimum every slab holds the running wave's experts: each gap prefetch takes a slab freed at a
    # wave's end, from an expert needed later
    assert gap_at_minimum["prefetches"] > 0
    assert gap_at_minimum["prefetch_evicting"] == gap_at_minimum["prefetches"]


@pytest.mark.parametrize("cache_slabs", [1, 4, 18])
def test_deep_lookahead_changes_no_token_and_prefetches_into_its_buffers(six_moe_layers_mote, cache_slabs):
    """lookahead3 / lookahead4 (the routers of the next 3 / 4 MoE layers) beside none and lookahead2, at the
    same budget (cache slabs + 4 loader buffers): the same greedy tokens, with evictions."""
    with MoteFile(six_moe_layers_mote) as f:
        budget = plan_file(f, 256, cache_slabs, vision=False, loader_slabs=4).total_bytes
    results = {prefetch: _run(six_moe_layers_mote, budget, "thread", prefetch)
               for prefetch in ("none", "lookahead2", "lookahead3", "lookahead4")}
    reference = results["none"][0]
    for prefetch, (ids, experts) in results.items():
        assert ids == reference, prefetch
        assert experts["loader_slabs"] == PREFETCH_BUFFERED[prefetch]
        assert experts["slabs"] == cache_slabs + 4  # the loader buffers among them
        assert experts["evictions"] > 0
        if prefetch != "none":
            assert 0 < experts["prefetch_used"] <= experts["prefetches"], prefetch


def test_lookahead4_asks_the_cache_for_the_next_four_layers_in_decode_order(six_moe_layers_mote):
    with MoteFile(six_moe_layers_mote) as f:
        budget = plan_file(f, 256, 8, vision=False, loader_slabs=4).total_bytes
    with Engine.load(six_moe_layers_mote, memory_budget=budget, threads=1, max_context=256, vision=False,
                     prefetch="lookahead4") as engine:
        asked, prefetch, cache = [], engine.experts.prefetch, engine.experts

        def recorded(predicted):
            asked.append((cache.layer, [layer for layer, _ in predicted]))
            prefetch(predicted)
        engine.experts.prefetch = recorded
        list(engine.generate_ids(PROMPT, max_new_tokens=4, ignore_eos=True))
    # the prefill's waves predict nothing; each decode step (3 after the first token) asks once per MoE layer
    # for the next four, wrapping to the next token's layers
    assert asked[:6] == [(n, []) for n in range(6)]
    assert asked[6:] == [(n, [(n + d) % 6 for d in (1, 2, 3, 4)]) for _ in range(3) for n in range(6)]


def test_prefetch_below_its_minimum_names_the_loader_buffers(tiny_b4_mote):
    with MoteFile(tiny_b4_mote) as f:
        budget = plan_file(f, 256, f.config.moe.top_k_experts, vision=False).total_bytes
    with pytest.raises(BudgetError, match="expert loader buffers"):
        Engine.load(tiny_b4_mote, memory_budget=budget, threads=1, max_context=256, vision=False, prefetch="lookahead")


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


@pytest.mark.parametrize("chunks", [[4096], [4096, 8192, None], [GAP_CHUNK], [1 << 30]])
def test_a_chunked_read_lands_the_record_whole_and_checked(tiny_b4_mote, chunks):
    """An abortable read asks `check()` for each chunk's length (None: the rest): the same bytes as one read,
    `early()` once with the leading tensors in, `landed()` once before the checksum."""
    with MoteFile(tiny_b4_mote) as f:
        reader = ExpertReader(f, direct=True)
        if reader.io_path != "direct":
            pytest.skip("the filesystem refuses O_DIRECT: no chunked reads")
        (layer, expert), entry = next(iter(f.experts.items()))
        buf = huge_buffer(-(-entry.nbytes // 4096) * 4096)
        asked, calls = [], []

        def check():
            asked.append(chunks[min(len(asked), len(chunks) - 1)])
            return asked[-1]

        def early():
            calls.append(("early", bytes(buf[:entry.tensors[-1].offset]) ==
                          bytes(f.read_expert_record(layer, expert))[:entry.tensors[-1].offset]))

        reader.read_into(layer, expert, buf, check=check, early=early, landed=lambda: calls.append(("landed", True)))
        assert bytes(buf[:entry.nbytes]) == bytes(f.read_expert_record(layer, expert))
        assert calls == [("early", True), ("landed", True)]
        full = -(-entry.nbytes // 4096) * 4096
        assert len(asked) == (1 if chunks[0] in (None, 1 << 30) else min(len(asked), -(-full // chunks[0])))
        reader.close()


def test_a_prefetch_reads_in_chunks_until_its_wave_confirms_it():
    job = LoadJob((0, 1), 0, prefetch=True, chunk=GAP_CHUNK)
    assert job.check() == GAP_CHUNK
    job.confirmed = True
    assert job.check() is None  # the rest in one read
    job.aborted = True
    with pytest.raises(LoadAborted):
        job.check()


@pytest.mark.parametrize("lengths", [(0, 5), (1, 1), (4096, 12345), (8191, 4096), (70000, 0)])
def test_crc32_combine_is_the_crc_of_the_concatenation(lengths):
    rng = np.random.default_rng(sum(lengths))
    a, b = (rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths)
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def _corrupt_copy(mote, tmp_path, where: float):
    """A copy of `mote` with one byte flipped at `where` (0..1) of its first expert record."""
    with MoteFile(mote) as f:
        (layer, expert), entry = next(iter(f.experts.items()))
        at = f.header.data_offset + entry.offset + int(where * (entry.nbytes - 1))
    data = bytearray(mote.read_bytes())
    data[at] ^= 0x40
    bad = tmp_path / "bad.mote"
    bad.write_bytes(bytes(data))
    return bad, (layer, expert)


@pytest.mark.parametrize("where", [None, 0.1, 0.9])
def test_a_record_read_in_halves_by_two_readers_is_checked_whole(tiny_b4_mote, tmp_path, where):
    mote, key = (tiny_b4_mote, None) if where is None else _corrupt_copy(tiny_b4_mote, tmp_path, where)
    loader = ExpertLoader(lambda job: (None, 0), readers=2)
    try:
        with MoteFile(mote) as f:
            reader = ExpertReader(f, direct=True)
            if reader.io_path != "direct":
                pytest.skip("the filesystem refuses O_DIRECT: no split reads")
            key = key or next(iter(f.experts))
            entry = f.expert_entry(*key)
            buf = huge_buffer(-(-entry.nbytes // 4096) * 4096)
            if where is None:
                reader.read_into(*key, buf, assist=loader.assist)
                assert bytes(buf[:entry.nbytes]) == bytes(f.read_expert_record(*key))
                assert loader.stats.assists == 1
            else:
                with pytest.raises(FormatError, match="checksum mismatch"):
                    reader.read_into(*key, buf, assist=loader.assist)
            reader.close()
    finally:
        loader.close()


def test_split_reads_and_the_timeline_change_no_token(tiny_b4_mote):
    with MoteFile(tiny_b4_mote) as f:
        budget = plan_file(f, 256, f.config.moe.top_k_experts + 1, vision=False).total_bytes
    runs = {}
    for split in (False, True):
        with Engine.load(tiny_b4_mote, memory_budget=budget, threads=1, max_context=256, vision=False,
                         expert_layout="file", prefetch="none") as engine:
            engine.experts.split_reads = split
            engine.experts.timeline = timeline = []
            runs[split] = list(engine.generate_ids(PROMPT, max_new_tokens=16, ignore_eos=True))
            misses = engine.report()["experts"]["misses"]
        kinds = [e["event"] for e in timeline]
        assert kinds.count("wave") == kinds.count("end") > 0
        assert kinds.count("load") == misses == kinds.count("wait")  # every demand read waited for
        loads = [e for e in timeline if e["event"] == "load"]
        assert all(e["queued"] <= e["t"] <= e["end"] for e in loads)
    assert runs[True] == runs[False]


def test_auto_prefetch_runs_adaptive_where_the_budget_holds_its_buffers(six_moe_layers_mote, tiny_b4_mote):
    for mote in (six_moe_layers_mote, tiny_b4_mote):
        with MoteFile(mote) as f:
            top_k, total = f.config.moe.top_k_experts, len(f.experts)
            buffers = PREFETCH_BUFFERED["adaptive"] * top_k

            def budget(slabs):
                return plan_file(f, 256, slabs, vision=False).total_bytes
            cases = [(budget(top_k), "thread", "none", 0),
                     (budget(total // 2 - 1), "thread", "none", 0),  # with its buffers, below half the experts
                     (budget(total - 1), "serial", "none", 0),
                     (budget(total), "thread", "none", 0),  # every expert fits: no buffers
                     (None, "thread", "none", 0)]
            if total // 2 >= top_k + buffers:  # the 6-layer model (36 experts); not the tiny one (8, top-2)
                cases += [(budget(total // 2), "thread", "adaptive", buffers),
                          (budget(total - 1), "thread", "adaptive", buffers)]
        assert any(want == "adaptive" for _, _, want, _ in cases) or mote == tiny_b4_mote
        for b, loader, want, n_buffers in cases:
            with Engine.load(mote, memory_budget=b, threads=1, max_context=256, vision=False,
                             expert_loader=loader) as engine:
                assert engine.prefetch == want, (mote, b, loader)
                assert engine.plan.loader_slabs == n_buffers
                assert len(engine.experts.slabs) == (total if b is None else engine.plan.expert_slabs + n_buffers)
                assert (engine.decoder.lookahead_recall is not None) == (want == "adaptive")


@pytest.mark.parametrize("cache, buffers, total, runs", [
    (12, 4, 32, True),    # exactly half: adaptive
    (11, 4, 32, False),   # one slab below half: the clocked replay finds prefetch slower than none
    (2, 4, 32, False),    # the minimum cache beside the buffers
    (2, 4, 8, True),      # a small model: the buffers alone hold half
    (32, 0, 32, False),   # every expert cached: no buffers, nothing to prefetch
])
def test_auto_prefetch_runs_lookahead_only_from_half_the_experts(cache, buffers, total, runs):
    assert lookahead_pays(cache, buffers, total) is runs


MiB = 1 << 20


@pytest.mark.parametrize("cache, minimum, record, runs", [
    (1, 1, 7.9 * MiB, True),                      # the 1.5B at its minimum: 16 chunks a record
    (1, 1, 2.5 * MiB, False),                     # the 0.5B: 5 chunks, as fast as none
    (1, 1, GAP_PAYS_CHUNKS * GAP_CHUNK, True),    # the threshold
    (1, 1, GAP_PAYS_CHUNKS * GAP_CHUNK - 4096, False),
    (2, 1, 7.9 * MiB, False),                     # above the minimum: not measured, none
    (2, 2, 7.9 * MiB, True),                      # top-2 at its minimum
])
def test_auto_runs_the_gap_prefetch_at_the_minimum_with_large_records(cache, minimum, record, runs):
    assert gap_prefetch_pays(cache, minimum, int(record)) is runs


def test_auto_picks_the_gap_prefetch_by_the_rule_and_its_plan_has_no_buffers(tiny_b4_mote, monkeypatch):
    import mote_edge.runtime.engine as engine_module

    with MoteFile(tiny_b4_mote) as f:
        top_k = f.config.moe.top_k_experts
        budget = plan_file(f, 256, top_k, vision=False).total_bytes
    for chunks, want in ((GAP_PAYS_CHUNKS, "none"), (0, "gap")):  # the tiny model's records are small
        monkeypatch.setattr(engine_module, "GAP_PAYS_CHUNKS", chunks)
        with Engine.load(tiny_b4_mote, memory_budget=budget, threads=1, max_context=256, vision=False) as engine:
            assert engine.prefetch == want
            assert engine.plan.loader_slabs == 0 and len(engine.experts.slabs) == top_k
            assert engine.experts.prefetch_chunk == (GAP_CHUNK if want == "gap" else PREFETCH_CHUNK)
