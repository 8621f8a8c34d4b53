"""The expert-cache simulator: against an independent LRU and LFU written here, exact against the runtime's
own counters, and Belady's MIN bounds."""

import json
import random
from collections import OrderedDict

import numpy as np
import pytest

from conftest import REPO, run_cli
from mote_edge.errors import MoteError
from mote_edge.runtime.cache_policy import RUNTIME_POLICIES
from mote_edge.runtime.decoder import TRACE_LOOKAHEAD
from mote_edge.runtime.simulate import POLICIES, Clock, Wave, best_pairs, read_trace, simulate, sweep

IMAGE = REPO / "examples" / "images" / "shapes.png"


def test_cyclic_trace_defeats_lru_but_not_belady():
    waves = [Wave(0, [e]) for e in [0, 1, 2] * 10]  # 3 experts round robin, 2 slabs
    assert simulate(waves, 2, "lru")["hits"] == 0
    assert simulate(waves, 2, "belady")["hits"] == 14  # MIN keeps one of the pair every other step
    assert simulate(waves, 3, "lru")["misses"] == 3


def lru_oracle(waves, slabs):
    """LRU on an OrderedDict (oldest first). A wave uses its cached experts first, then loads the others one
    by one; a load evicts the oldest expert not in the wave, or the oldest of all if every one is."""
    cache, hits, misses = OrderedDict(), 0, 0
    for w in waves:
        keys = [(w.layer, e) for e in w.experts]
        for k in [k for k in keys if k in cache]:
            hits += 1
            cache.move_to_end(k)
        for k in [k for k in keys if k not in cache]:
            misses += 1
            if len(cache) == slabs:
                del cache[next((v for v in cache if v not in keys), next(iter(cache)))]
            cache[k] = True
    return hits, misses


def lfu_oracle(waves, slabs):
    """LFU with counters: uses since the expert was loaded, ties broken by the older last use; same wave rule."""
    uses, last, hits, misses, clock = {}, {}, 0, 0, 0
    for w in waves:
        keys = [(w.layer, e) for e in w.experts]
        for k in [k for k in keys if k in uses] + [k for k in keys if k not in uses]:
            clock += 1
            if k in uses:
                hits += 1
                uses[k] += 1
            else:
                misses += 1
                if len(uses) == slabs:
                    others = [v for v in uses if v not in keys] or list(uses)
                    victim = min(others, key=lambda v: (uses[v], last[v]))
                    del uses[victim], last[victim]
                uses[k] = 1
            last[k] = clock
    return hits, misses


@pytest.mark.parametrize("seed", range(6))
def test_lru_and_lfu_match_independent_implementations_on_random_traces(seed):
    rng = random.Random(seed)
    experts = rng.choice([4, 8, 16])
    skew = [1.0 / (i + 1) ** rng.choice([0.0, 1.0, 2.0]) for i in range(experts)]  # uniform to very skewed
    waves = []
    for _ in range(rng.randint(50, 300)):
        for layer in (0, 2, 4):
            picked = set(rng.choices(range(experts), weights=skew, k=rng.choice([1, 2, 2, 3])))
            waves.append(Wave(layer, sorted(picked, key=lambda _: rng.random())))
    for slabs in (1, 2, 3, 5, 8, 3 * experts):
        for policy, oracle in (("lru", lru_oracle), ("lfu", lfu_oracle)):
            sim = simulate(waves, slabs, policy)
            assert (sim["hits"], sim["misses"]) == oracle(waves, slabs), (policy, slabs)


def expected_oracle(waves, slabs):
    """The `expected` policy written out on its own: per layer, waves, routings per expert, and the repeat
    rate of the last wave's experts at the next (all equal below 16 waves of the layer); evict the largest
    layer distance + n (1 / p - 1)."""
    cycle = {layer: i for i, layer in enumerate(sorted({w.layer for w in waves}))}
    n = len(cycle)
    visits, routed, prev, carried, repeated = {}, {}, {}, {}, {}
    last, clock, hits, misses = {}, 0, 0, 0
    for w in waves:
        layer, now = w.layer, set(w.experts)
        if layer in prev:
            carried[layer] = carried.get(layer, 0) + len(prev[layer])
            repeated[layer] = repeated.get(layer, 0) + len(prev[layer] & now)
        prev[layer] = now
        visits[layer] = visits.get(layer, 0) + 1
        for e in now:
            routed[(layer, e)] = routed.get((layer, e), 0) + 1

        def distance(k):
            if visits[k[0]] < 16:
                p = 0.5
            elif k[1] in prev[k[0]]:
                p = (repeated.get(k[0], 0) + 0.5) / (carried.get(k[0], 0) + 1)
            else:
                p = (routed.get(k, 0) + 0.5) / (visits[k[0]] + 1)
            return (cycle[k[0]] - cycle[layer] - 1) % n + n * (1.0 / p - 1.0), -last[k]

        wave = {(layer, e) for e in w.experts}
        for e in sorted(w.experts, key=lambda e: (layer, e) not in last):
            clock += 1
            k = (layer, e)
            if k in last:
                hits += 1
            else:
                misses += 1
                if len(last) >= slabs:
                    del last[max([c for c in last if c not in wave] or list(last), key=distance)]
            last[k] = clock
    return hits, misses


def sticky_trace(seed, tokens=600, layers=(0, 2, 4, 6), experts=8, skew=0.8, stickiness=0.4):
    """Decode waves, top-1: expert i with p ~ (i + 1)^-skew, or the layer's last expert again with `stickiness`."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** skew for i in range(experts)]
    last, waves = {}, []
    for _ in range(tokens):
        for layer in layers:
            e = last[layer] if layer in last and rng.random() < stickiness else rng.choices(range(experts), weights)[0]
            last[layer] = e
            waves.append(Wave(layer, [e]))
    return waves


@pytest.mark.parametrize("seed", range(4))
def test_expected_matches_an_independent_implementation(seed):
    rng = random.Random(seed)
    waves = sticky_trace(seed, tokens=150) + [Wave(layer, rng.sample(range(8), rng.choice([1, 2, 3])))
                                             for _ in range(60) for layer in (0, 2, 4, 6)]
    for slabs in (1, 2, 3, 5, 8, 13, 20, 32):
        sim = simulate(waves, slabs, "expected")
        assert (sim["hits"], sim["misses"]) == expected_oracle(waves, slabs), slabs


def test_expected_is_the_layer_rule_for_a_layer_s_first_waves():
    waves = sticky_trace(5, tokens=15)
    for slabs in (3, 8, 17):
        assert simulate(waves, slabs, "expected")["hits"] == simulate(waves, slabs, "layer")["hits"]


def test_expected_beats_layer_on_skewed_sticky_routing():
    """Popular and sticky experts come back sooner than their layer's distance says: with a mild skew and
    stickiness (the tiny MoTE's fit is skew 0.4-0.7, stickiness 0.24-0.36) `expected` keeps them."""
    for seed in range(3):
        waves = sticky_trace(seed)
        for slabs in (8, 12, 16, 20):
            layer, expected = (simulate(waves, slabs, p)["hits"] for p in ("layer", "expected"))
            assert expected > 1.02 * layer, (seed, slabs, layer, expected)


def test_belady_bounds_every_policy_and_full_cache_only_misses_once():
    rng = random.Random(0)
    waves = [Wave(layer, rng.sample(range(8), rng.choice([1, 2]))) for _ in range(60) for layer in (0, 2, 4)]
    distinct = len({(w.layer, e) for w in waves for e in w.experts})
    for slabs in (2, 3, 5, 8, 12, distinct):
        results = {p: simulate(waves, slabs, p) for p in POLICIES}
        for p in POLICIES:
            assert results[p]["hits"] <= results["belady"]["hits"], (slabs, p)
        if slabs == distinct:
            assert all(r["misses"] == distinct for r in results.values())


@pytest.mark.parametrize("policy", RUNTIME_POLICIES)
@pytest.mark.parametrize("extra_slabs", [0, 2])
def test_simulation_equals_the_runtime_counters(tiny_b4_mote, tmp_path, extra_slabs, policy):
    from mote_edge.runtime.engine import Engine

    mote = tiny_b4_mote
    # text only: a run with an image also lends slabs to the vision encoder, which a replay does not model
    with Engine.load(mote, threads=1, vision=False) as probe:
        fixed = probe.plan.total_bytes - probe.plan.expert_cache_bytes
        slab = probe.plan.expert_slab_bytes
    trace = tmp_path / "routes.jsonl"
    r = run_cli("run", str(mote), "--prompt", "What color is the circle? Is it left or right of the star?",
                "--max-new-tokens", "16", "--ignore-eos", "--memory-budget", str(fixed + (2 + extra_slabs) * slab),
                "--trace-out", str(trace), "--report-json", str(tmp_path / "r.json"), "--cache-policy", policy,
                "--prefetch", "none")  # a replay has no clock: prefetches land in it at once, in the runtime later
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())["experts"]
    waves = read_trace(trace)
    assert len(waves) > 10
    assert report["policy"] == policy and report["evictions"] > 0
    sim = simulate(waves, report["slabs"], policy)
    assert (sim["hits"], sim["misses"]) == (report["hits"], report["misses"])
    curve = sweep(waves, [1, report["slabs"], 8], list(POLICIES))
    assert len(curve) == 3 * len(POLICIES)


def test_layer_policy_keeps_the_layers_that_come_next():
    """Decoding cycles through the MoE layers; with fewer slabs than layers LRU always evicts the
    expert needed next, the layer-aware policy keeps it (as Belady would)."""
    waves = [Wave(layer, [0]) for _ in range(20) for layer in (0, 2, 4)]
    assert simulate(waves, 2, "lru")["hits"] == 0
    layer = simulate(waves, 2, "layer")["hits"]
    assert layer == simulate(waves, 2, "belady")["hits"] > 0


def test_unknown_runtime_policy_is_a_one_line_error(tiny_b4_mote):
    r = run_cli("run", str(tiny_b4_mote), "--prompt", "hi", "--cache-policy", "belady")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: unknown cache policy 'belady'")


def test_simulate_cli_and_bad_traces(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"layer": 0, "experts": [e]}) + "\n" for e in [0, 1, 2] * 4))
    r = run_cli("simulate", str(trace), "--slabs", "2,3", "--policies", "lru,belady")
    assert r.returncode == 0 and "belady" in r.stdout and "100.0%" not in r.stdout.splitlines()[2]
    trace.write_text("{not json\n")
    with pytest.raises(MoteError, match="line 1 is not a wave record"):
        read_trace(trace)
    r = run_cli("simulate", str(tmp_path / "none.jsonl"))
    assert r.returncode == 1 and r.stderr.startswith("error: cannot read trace")
    with pytest.raises(MoteError, match="unknown cache policy"):
        simulate([Wave(0, [1])], 1, "fifo")
    trace.write_text("".join(json.dumps({"layer": 0, "experts": [e]}) + "\n" for e in [0, 1, 2] * 4))
    r = run_cli("simulate", str(trace), "--slabs", "2", "--read-ms", "2", "--wave-ms", "1.5", "--overlap-ms", "0.2")
    assert r.returncode == 0 and "replayed decode time" in r.stdout, r.stderr
    r = run_cli("simulate", str(trace), "--read-ms", "2")
    assert r.returncode == 1 and r.stderr.strip() == "error: a replay clock needs both --read-ms and --wave-ms"
    r = run_cli("simulate", str(trace), "--read-ms", "2", "--wave-ms", "1", "--overlap-ms", "3")
    assert r.returncode == 1 and r.stderr.startswith("error: a replay clock needs read >= 0")


def _cyclic(tokens: int, predicted=lambda t, layer: None):
    """3 MoE layers, one expert each, a different expert every token (no reuse within a token)."""
    layers = (0, 2, 4)
    waves = []
    for t in range(tokens):
        for n, layer in enumerate(layers):
            ahead = [((t * 3 + n + d) // 3, layers[(n + d) % 3]) for d in (1, 2)]
            waves.append(Wave(layer, [t % 4], 1, [(la, [predicted(tt, la)]) for tt, la in ahead]))
    return waves


def test_perfect_predictions_prefetch_every_wave_after_the_first():
    waves = _cyclic(10, predicted=lambda t, layer: t % 4)
    none = simulate(waves, 2, "layer")
    assert none["hits"] == 0  # every expert is new to its layer's slab
    for prefetch in ("lookahead-1", "lookahead-2", "oracle"):
        sim = simulate(waves, 2, "layer", prefetch)
        assert (sim["hits"], sim["misses"]) == (29, 1), prefetch
        assert sim["prefetch_used"] == 29 and sim["prefetch_wasted"] == 0
        assert sim["prefetches"] - 29 <= 2  # predictions of waves past the trace's end
    # 3 slabs hold two layers ahead: lookahead-2 equals the oracle, which reads the next two waves
    assert simulate(waves, 3, "layer", "lookahead-2")["hits"] == simulate(waves, 3, "layer", "oracle")["hits"] == 29


def test_wrong_predictions_are_wasted_and_never_hits():
    waves = _cyclic(10, predicted=lambda t, layer: 7)  # expert 7 is never used
    for slabs in (2, 3, 6):
        none = simulate(waves, slabs, "layer")
        sim = simulate(waves, slabs, "layer", "lookahead-2")
        assert sim["prefetch_used"] == 0 and sim["prefetches"] > 0
        assert sim["hits"] <= none["hits"]
        assert sim["prefetch_wasted"] <= sim["prefetches"]


def test_prefill_waves_prefetch_nothing_and_unknown_prefetch_is_an_error():
    waves = [Wave(0, [0, 1], 5, [(2, [3])]), Wave(2, [3], 5, [(0, [0])])]
    assert simulate(waves, 2, "layer", "lookahead-1")["prefetches"] == 0
    with pytest.raises(MoteError, match="unknown prefetch"):
        simulate(waves, 2, "layer", "psychic")
    with pytest.raises(MoteError, match="needs predictions 2 MoE layers ahead; the trace has 1"):
        simulate(waves, 2, "layer", "lookahead-2")


def test_traces_round_trip_their_predictions(tmp_path):
    from mote_edge.runtime.simulate import write_trace

    waves = _cyclic(3, predicted=lambda t, layer: 1)
    write_trace(waves, tmp_path / "t.jsonl")
    assert read_trace(tmp_path / "t.jsonl") == waves
    (tmp_path / "bad.jsonl").write_text(json.dumps({"layer": 0, "experts": [1], "predicted": [{"layer": 2}]}) + "\n")
    with pytest.raises(MoteError, match="line 1 is not a wave record"):
        read_trace(tmp_path / "bad.jsonl")


def test_a_runtime_trace_records_the_lookahead_and_simulate_replays_it(tiny_b4_mote, tmp_path):
    trace = tmp_path / "routes.jsonl"
    r = run_cli("run", str(tiny_b4_mote), "--prompt", "What color is the circle?", "--max-new-tokens", "8",
                "--ignore-eos", "--trace-out", str(trace))
    assert r.returncode == 0, r.stderr
    waves = read_trace(trace)
    decode = [w for w in waves if w.tokens == 1]
    assert decode and all(len(w.predicted) == TRACE_LOOKAHEAD for w in decode)
    # the tiny model has 2 MoE layers: 3 and 4 ahead are the next token's
    assert all([layer for layer, _ in w.predicted] == [b.layer for b in decode[i + 1:i + 5]]
               for i, w in enumerate(decode[:-4]))
    assert all(w.predicted == [] for w in waves if w.tokens > 1)  # prefill waves predict nothing
    r = run_cli("simulate", str(trace), "--slabs", "2,4")
    assert r.returncode == 0 and "layer+la1" in r.stdout and "layer+la4" in r.stdout and "layer+oracle" in r.stdout
    r = run_cli("simulate", str(trace), "--prefetch", "sometimes")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: unknown prefetch")


def _random_waves(seed: int, tokens: int = 60) -> list[Wave]:
    rng = np.random.default_rng(seed)
    layers = [0, 2, 4]
    return [Wave(layer, sorted({int(e) for e in rng.integers(0, 6, 2)}), 1,
                 [(layers[(n + d) % 3], [int(rng.integers(0, 6))]) for d in (1, 2)])
            for _ in range(tokens) for n, layer in enumerate(layers)]


@pytest.mark.parametrize("seed", [0, 1])
def test_an_instant_disk_replays_like_no_clock(seed):
    waves = _random_waves(seed)
    for slabs in (2, 5, 9):
        for policy in ("lru", "layer", "belady"):
            for prefetch in ("none", "lookahead-1", "lookahead-2", "oracle"):
                plain = simulate(waves, slabs, policy, prefetch)
                timed = simulate(waves, slabs, policy, prefetch, Clock(read_ms=0.0, wave_ms=1.0))
                assert {k: timed[k] for k in plain} == plain, (slabs, policy, prefetch)
                assert timed["prefetch_late"] == 0 and timed["stall_ms"] == 0
                assert timed["time_ms"] == pytest.approx(len(waves))


def test_demand_loads_cost_their_read_beyond_the_overlap():
    waves = _cyclic(10, predicted=lambda t, layer: t % 4)  # every wave a new expert: 1 slab misses them all
    clock = Clock(read_ms=3.0, wave_ms=2.0, overlap_ms=0.5)
    sim = simulate(waves, 1, "layer", "none", clock)
    assert sim["misses"] == 30
    assert sim["stall_ms"] == pytest.approx(30 * 2.5)
    assert sim["time_ms"] == pytest.approx(30 * (3.0 + 1.5))


def test_a_prefetch_that_lands_late_is_a_stall_not_a_hit():
    waves = _cyclic(10, predicted=lambda t, layer: t % 4)  # perfect predictions
    on_time = simulate(waves, 2, "layer", "lookahead-1", Clock(read_ms=0.8, wave_ms=1.0))
    assert (on_time["hits"], on_time["prefetch_late"]) == (29, 0)
    late = simulate(waves, 2, "layer", "lookahead-1", Clock(read_ms=1.5, wave_ms=1.0))
    assert late["hits"] < 29 and late["prefetch_late"] > 0 and late["stall_ms"] > 0
    assert late["hits"] + late["misses"] == 30 and late["time_ms"] > on_time["time_ms"]
    # two layers ahead leave two waves for each read: on time again, where the disk keeps up
    ahead = simulate(waves, 3, "layer", "lookahead-2", Clock(read_ms=1.5, wave_ms=2.0))
    assert ahead["prefetch_late"] == 0 and ahead["hits"] == 29
    with pytest.raises(MoteError, match="replay clock"):
        Clock(read_ms=1.0, wave_ms=1.0, overlap_ms=2.0)


def test_mispredicted_prefetches_not_started_are_cancelled_when_their_wave_routes():
    # wave 0 predicts experts 5, 6, 7 of layer 2; one starts reading behind wave 0's own miss, the other two
    # still wait when layer 2 routes to expert 1: cancelled, never read
    waves = [Wave(0, [0], 1, [(2, [5, 6, 7])]), Wave(2, [1], 1), Wave(0, [0], 1)]
    sim = simulate(waves, 5, "layer", "lookahead-1", Clock(read_ms=3.0, wave_ms=1.0))
    assert (sim["prefetches"], sim["prefetch_cancelled"], sim["prefetch_used"]) == (3, 2, 0)
    assert sim["hits"] == 1  # wave 2's expert 0 stayed cached
    # wave 1 waits for the prefetch already reading (3..6), then reads its own expert (6..9)
    assert sim["time_ms"] == pytest.approx(3.0 + 1.0 + (9.0 - 4.0) + 1.0 + 1.0)


def test_best_pairs_name_the_fastest_pair_with_a_clock():
    waves = _random_waves(3)
    results = sweep(waves, [4], ["layer", "belady"], ["none", "lookahead-1", "lookahead-2"], Clock(1.0, 1.0))
    (best,) = best_pairs(results)
    runtime = [r for r in results if r["policy"] != "belady"]
    assert best["fastest"]["time_ms"] == min(r["time_ms"] for r in runtime)


def test_an_oracle_must_look_as_far_ahead_as_a_read_takes():
    from mote_edge.runtime.simulate import Clock

    # 3 MoE layers, each switching to a new expert every 4 tokens; a read takes 2.5 waves of compute
    waves = [Wave(layer, [(t // 4) % 4], 1, []) for t in range(80) for layer in (0, 2, 4)]
    clock = Clock(2.5, 1.0, 0.5)
    runs = {p: simulate(waves, 6, "layer", p, clock) for p in ("none", "oracle", "oracle-2", "oracle-4")}
    assert {**runs["oracle"], "prefetch": "oracle-2"} == runs["oracle-2"]  # "oracle" looks 2 waves ahead
    assert runs["oracle-2"]["hits"] == runs["none"]["hits"] and runs["oracle-2"]["prefetch_late"] >= 50  # too late
    assert runs["oracle-4"]["hits"] >= runs["none"]["hits"] + 30  # 4 waves ahead: in before the wave
    assert runs["oracle-4"]["time_ms"] < runs["oracle-2"]["time_ms"] < runs["none"]["time_ms"]
    with pytest.raises(MoteError, match="unknown prefetch"):
        simulate(waves, 6, "layer", "oracle-0")
