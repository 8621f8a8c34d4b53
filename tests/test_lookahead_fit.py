"""`mote-edge fit-lookahead` (mote_edge/lookahead_fit.py): lookahead predictors fitted on calibration prompts,
stored in a copy of the .mote file (role lookahead, metadata block `lookahead`, docs/FORMAT.md section 11) and
used by the runtime's lookahead.

The file round-trips (predictors bit-exact, everything else byte for byte), the ridge fit is the least-squares
solution, the fitted predictors beat the routers on the trained tiny MoTE held out and at run time, tokens never
change, crafted `lookahead` blocks are one-line FormatErrors, and the CLI prints / refuses what it should.

On the tiny MoTE (2 MoE layers x 4 experts, top-2) `--prefetch adaptive` needs 3 x 2 loader buffers beside 2
cache slabs: every expert, so Engine.load runs no prefetch there (plan.py gives the buffers to the cache). Its
runtime recall is read with the adaptive lookahead enabled on the loaded decoder (as
benchmarks/lookahead_predictor.py does) and the effect at a budget with `--prefetch lookahead`; the adaptive
prefetch at half the experts runs on the six-MoE-layer synth model (36 experts, top-1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from mote_edge.calibration import builtin_samples, file_samples
from mote_edge.errors import FormatError, MoteError
from mote_edge.format import MoteFile
from mote_edge.format.rewrite import NewTensor, rewrite
from mote_edge.format.verify import verify_file
from mote_edge.lookahead_fit import FitOptions, fit_lookahead, hits, ridge_fit
from mote_edge.quant.recipe import F16, F32
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.expert_cache import PREFETCH_BUFFERED
from mote_edge.runtime.plan import loader_slabs, minimum_plan_file, plan_file
from mote_edge.schema import LOOKAHEAD_ROLE, lookahead_name, lookahead_tensors
from mote_edge.training.calibration import write_calibration
from mote_edge.training.data import heldout_seeds, make_example
from mote_mutants import metadata_of, replan, restat, with_metadata

CTX = 256
CALIB = 200  # training questions the module's fit decodes (holdout 0.25: 50 score it)
TOKENS = 16
SIX_PROMPT = "What color is the circle? Is it left or right of the star?"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    return write_calibration(tmp_path_factory.mktemp("calib") / "calib.jsonl", CALIB)


@pytest.fixture(scope="module")
def fitted(shipped_tiny_mote, calib, tmp_path_factory):
    """(path, FitResult): the trained tiny MoTE with predictors 1..3 ahead fitted on CALIB training questions."""
    out = tmp_path_factory.mktemp("fitted") / "tiny-la.mote"
    result = fit_lookahead(shipped_tiny_mote, out, file_samples(calib, CALIB),
                           FitOptions(depth=3, tokens=TOKENS, ignore_eos=True))
    return out, result


@pytest.fixture(scope="module")
def six_fitted(six_moe_layers_mote, tmp_path_factory) -> Path:
    """The six-MoE-layer synth model with predictors 1..3 ahead fitted on the built-in shape prompts."""
    out = tmp_path_factory.mktemp("six-fitted") / "six-la.mote"
    fit_lookahead(six_moe_layers_mote, out, builtin_samples(24), FitOptions(depth=3, tokens=8, ignore_eos=True))
    return out


def _heldout(n: int):
    return [make_example(seed) for seed in heldout_seeds(n)]


def _raw_tensor(f: MoteFile, name: str) -> bytes:
    """A resident tensor's stored bytes (checksum verified)."""
    buf = bytearray(f.tensors[name].nbytes)
    f.read_tensor_into(name, buf)
    return bytes(buf)


def _is_lookahead(name: str) -> bool:
    return ".mlp.lookahead." in name


# ---------------------------------------------------------------------- 1. round trip
def test_fit_writes_a_file_with_the_predictors_and_the_source_unchanged(shipped_tiny_mote, fitted, tmp_path):
    out, result = fitted
    with MoteFile(shipped_tiny_mote) as src, MoteFile(out) as f:
        verify_file(f)
        cfg = f.config
        n_moe = len(cfg.moe_layers)
        assert f.lookahead_depth == 3 and result.depth == 3
        assert result.samples == CALIB and result.waves == CALIB * (TOKENS - 1) * n_moe  # ignore_eos: every wave
        want = {spec.name: spec for spec in lookahead_tensors(cfg, 3)}
        got = {name for name, t in f.tensors.items() if t.role == LOOKAHEAD_ROLE}
        assert got == set(want) and len(got) == 2 * 3 * n_moe
        assert set(result.predictors) == {(i, d) for i in cfg.moe_layers for d in (1, 2, 3)}
        for (layer, depth), (w, b) in result.predictors.items():
            for part, a in (("weight", w), ("bias", b)):
                name = lookahead_name(layer, depth, part)
                t = f.tensors[name]
                assert t.scheme.kind == "f32" and t.shape == want[name].shape == a.shape
                stored = f.read_tensor(name)["data"]
                assert stored.dtype == np.float32 and stored.tobytes() == a.astype(np.float32).tobytes()
        # everything else: the source's, byte for byte
        assert set(f.tensors) - got == set(src.tensors)
        for name, t in src.tensors.items():
            assert (f.tensors[name].role, f.tensors[name].scheme, f.tensors[name].shape) == (t.role, t.scheme, t.shape)
            assert f.tensors[name].crc32 == t.crc32 and _raw_tensor(f, name) == _raw_tensor(src, name), name
        assert set(f.experts) == set(src.experts)
        for layer, expert in src.experts:
            assert f.read_expert_record(layer, expert) == src.read_expert_record(layer, expert)
        assert src.vision is not None and f.read_vision() == src.read_vision()
        assert f.metadata["lookahead"] == result.metadata()
        assert json.loads(json.dumps(result.metadata())) == result.metadata()
        # the other metadata blocks are the source's; the recipe gains the lookahead role (f32)
        for key, value in src.metadata.items():
            if key not in ("sizes", "sections", "tensors", "experts", "vision", "recipe"):
                assert f.metadata[key] == value, key
        roles = dict(f.metadata["recipe"]["roles"])
        assert roles.pop(LOOKAHEAD_ROLE) == F32.to_dict() and f.recipe.roles[LOOKAHEAD_ROLE] == F32
        assert {**f.metadata["recipe"], "roles": roles} == src.metadata["recipe"]
        assert LOOKAHEAD_ROLE not in src.recipe.roles and src.lookahead_depth == 0
        source_tensors = set(src.tensors)

    # refitting the output in place (MODEL == OUTPUT) at depth 2 replaces the predictors
    again = tmp_path / "again.mote"
    shutil.copyfile(out, again)
    r2 = fit_lookahead(again, again, builtin_samples(8), FitOptions(depth=2, tokens=4, ignore_eos=True))
    assert not again.with_name(again.name + ".partial").exists()
    with MoteFile(again) as g, MoteFile(shipped_tiny_mote) as src:
        verify_file(g)
        assert g.lookahead_depth == 2 and g.metadata["lookahead"] == r2.metadata()
        la = sorted(name for name, t in g.tensors.items() if t.role == LOOKAHEAD_ROLE)
        assert la == sorted(spec.name for spec in lookahead_tensors(g.config, 2))
        assert len(la) == 2 * 2 * len(g.config.moe_layers) and not any(".lookahead.3." in n for n in la)
        assert set(g.tensors) - set(la) == source_tensors
        for name in source_tensors:
            assert _raw_tensor(g, name) == _raw_tensor(src, name), name
        for (layer, depth), (w, b) in r2.predictors.items():
            assert g.read_tensor(lookahead_name(layer, depth, "weight"))["data"].tobytes() == w.tobytes()
            assert g.read_tensor(lookahead_name(layer, depth, "bias"))["data"].tobytes() == b.tobytes()


def test_pairs_without_calibration_waves_get_the_router_as_their_predictor(shipped_tiny_mote, tmp_path):
    """tokens=2: one decode step per prompt, so only 0 -> 2 (1 ahead) has pairs; the other predictors are the
    target router times its norm with a zero bias (ranked as the router lookahead ranks), scored as None."""
    r = fit_lookahead(shipped_tiny_mote, tmp_path / "short.mote", builtin_samples(6),
                      FitOptions(depth=3, tokens=2, ignore_eos=True))
    assert r.waves == 6 * 2 and r.recall[1:] == [None, None] and r.router_recall[1:] == [None, None]
    with Engine.load(shipped_tiny_mote, threads=1, max_context=CTX) as engine:
        layers = engine.decoder.layers
        for (source, depth), (w, b) in r.predictors.items():
            if (source, depth) == (0, 1):
                assert np.any(b != 0)
                continue
            target = [0, 2][([0, 2].index(source) + depth) % 2]
            assert np.array_equal(w, (layers[target].mlp.router * layers[target].ln_post).astype(np.float32))
            assert not np.any(b)


def test_fit_options_out_of_range_are_refused(shipped_tiny_mote, tmp_path):
    out = tmp_path / "x.mote"
    for opts, message in ((FitOptions(depth=0), "depth must be 1 to 4, got 0"),
                          (FitOptions(depth=5), "depth must be 1 to 4, got 5"),
                          (FitOptions(holdout=1.0), "holdout must be at least 0 and below 1"),
                          (FitOptions(holdout=-0.1), "holdout must be at least 0 and below 1"),
                          (FitOptions(tokens=1), "tokens must be at least 2")):
        with pytest.raises(MoteError, match=message):
            fit_lookahead(shipped_tiny_mote, out, builtin_samples(2), opts)
        assert not out.exists()


@pytest.mark.parametrize("ridge", [float("nan"), -1.0, 0.0])
def test_a_ridge_that_is_not_a_positive_number_is_refused(shipped_tiny_mote, tmp_path, ridge):
    with pytest.raises(MoteError, match="ridge"):
        fit_lookahead(shipped_tiny_mote, tmp_path / "r.mote", builtin_samples(4),
                      FitOptions(depth=1, tokens=3, ridge=ridge))


def test_f16_predictors_are_accepted_and_used(fitted, tmp_path):
    """The format allows lookahead predictors stored as f16 (recipe role lookahead f16): the runtime widens them."""
    out, result = fitted
    half = tmp_path / "f16.mote"
    add = [NewTensor(lookahead_name(layer, depth, part), LOOKAHEAD_ROLE, F16, a.shape, {"data": a.astype(np.float16)})
           for (layer, depth), pair in sorted(result.predictors.items()) for part, a in zip(("weight", "bias"), pair)]
    with MoteFile(out) as src:
        recipe = src.metadata["recipe"]
        rewrite(src, half, add, keep=lambda name: not _is_lookahead(name),
                metadata={"recipe": {**recipe, "roles": {**recipe["roles"], LOOKAHEAD_ROLE: F16.to_dict()}}})
    with MoteFile(half) as f:
        verify_file(f)
        assert f.lookahead_depth == 3 and f.tensors[lookahead_name(0, 1, "weight")].scheme.kind == "f16"
    with Engine.load(half, threads=1, max_context=CTX) as engine:
        assert engine.lookahead_predictor == "fitted"
        for key, (w, b) in result.predictors.items():
            sw, sb = engine.decoder.stored_predictors[key]
            assert np.array_equal(sw, w.astype(np.float16).astype(np.float32))
            assert np.array_equal(sb, b.astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------------- 2. ridge regression
@pytest.mark.parametrize("n, h, e, ridge", [(60, 7, 4, 0.7), (5, 9, 3, 2.5), (200, 16, 6, 1e-3)])
def test_ridge_fit_is_the_augmented_least_squares_solution(n, h, e, ridge):
    """|[x 1] [W b]^T - y|^2 + ridge |[W b]|^2 is least squares on [[x, 1]; sqrt(ridge) I] w = [[y]; 0]."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, h))
    y = x @ rng.normal(size=(h, e)) + rng.normal(size=e) + 0.3 * rng.normal(size=(n, e))
    a = np.vstack([np.hstack([x, np.ones((n, 1))]), np.sqrt(ridge) * np.eye(h + 1)])
    rhs = np.vstack([y, np.zeros((h + 1, e))])
    wb = np.linalg.lstsq(a, rhs, rcond=None)[0]  # [H + 1, E]
    w, b = ridge_fit(x, y, ridge)
    assert w.shape == (e, h) and b.shape == (e,) and w.dtype == b.dtype == np.float32
    np.testing.assert_allclose(w, wb[:-1].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, wb[-1], rtol=1e-4, atol=1e-5)


def test_hits_counts_the_routed_experts_in_the_top_k():
    scores = np.array([[0.9, 0.1, 0.5, 0.0], [0.0, 0.2, 0.1, 0.3]])
    assert hits(scores, [frozenset({0, 2}), frozenset({0, 1})], 2) == 2 + 1
    assert hits(scores, [frozenset({1}), frozenset({2})], 1) == 0


# ---------------------------------------------------------------------- 3. recall
def test_fitted_predictors_beat_the_routers_held_out(fitted):
    """On the trained tiny MoTE (measured: 80 / 77 / 73% against the routers' 62 / 59 / 53%)."""
    _, r = fitted
    assert len(r.recall) == len(r.router_recall) == 3 and None not in r.recall + r.router_recall
    assert r.recall[0] >= r.router_recall[0] + 0.08, (r.recall, r.router_recall)
    assert all(f > rr + 0.05 for f, rr in zip(r.recall, r.router_recall)), (r.recall, r.router_recall)
    assert r.recall[0] > 0.72


def test_the_runtime_predicts_with_the_stored_predictors(fitted):
    """The decoder installs the file's predictors (Decoder.stored_predictors, bit-exact) unless told not to, and
    the running recall on held-out questions it measures (what --prefetch adaptive decides on) is the fitted one."""
    out, result = fitted
    questions = _heldout(40)
    runs = {}
    for stored in (True, False):
        with Engine.load(out, threads=1, max_context=CTX, lookahead_predictor=stored) as engine:
            for key, (w, b) in result.predictors.items():
                sw, sb = engine.decoder.stored_predictors[key]
                assert np.array_equal(sw, w) and np.array_equal(sb, b)
            layer0 = engine.decoder.layers[0].mlp  # Engine.load installed them (or not) in the traced lookaheads
            assert [a.predictor is not None for a in layer0.lookaheads] == [stored] * 3 + [False]
            # adaptive prefetch needs 3 x top_k buffers: on 8 experts the whole cache, so Engine.load turns it off;
            # the lookahead is enabled on the decoder instead (benchmarks/lookahead_predictor.py runtime_recall)
            engine.decoder.enable_lookahead(3, adaptive=True, stored=stored)
            assert [a.predictor is not None for a in layer0.lookaheads] == [stored] * 3 + [False]
            for ex in questions:
                list(engine.generate_ids(ex.question, ex.image, max_new_tokens=TOKENS, ignore_eos=True))
            report = engine.report()["experts"]
            runs[stored] = report
    assert runs[True]["lookahead_predictor"] == "fitted" and runs[False]["lookahead_predictor"] == "router"
    fitted_recall, router_recall = runs[True]["lookahead_recall"], runs[False]["lookahead_recall"]
    assert fitted_recall[0] >= router_recall[0] + 0.08, (fitted_recall, router_recall)
    assert fitted_recall[0] == pytest.approx(result.recall[0], abs=0.06)
    assert router_recall[0] == pytest.approx(result.router_recall[0], abs=0.06)


def test_fitted_predictors_make_more_prefetches_pay_at_a_budget(fitted):
    """--prefetch lookahead at its minimum budget (2 cache slabs + 2 buffers of 8 experts): the share of the
    prefetched experts that were then used (measured 85% fitted, 64% router)."""
    out, _ = fitted
    with MoteFile(out) as f:
        budget = minimum_plan_file(f, CTX, loader_slabs=loader_slabs(f.config, 1)).total_bytes
    questions = _heldout(30)
    share, ids = {}, {}
    for stored in (True, False):
        with Engine.load(out, memory_budget=budget, threads=1, max_context=CTX, prefetch="lookahead",
                         lookahead_predictor=stored) as engine:
            assert engine.prefetch == "lookahead" and engine.plan.loader_slabs == 2
            ids[stored] = [list(engine.generate_ids(ex.question, ex.image, max_new_tokens=TOKENS, ignore_eos=True))
                           for ex in questions]
            e = engine.report()["experts"]
            assert e["lookahead_predictor"] == ("fitted" if stored else "router") and e["prefetches"] > 100
            share[stored] = e["prefetch_used"] / e["prefetches"]
    assert ids[True] == ids[False]
    assert share[True] >= share[False] + 0.1, share


def test_adaptive_prefetch_at_half_the_experts_runs_on_the_fitted_predictors(six_fitted):
    """Where the adaptive prefetch runs (36 experts, half cached, 3 buffers): fitted on the shape prompts, the
    predictors earn 3 ahead (recall >= 80%) where the synth routers earn nothing."""
    prompts = builtin_samples(6, seed=7)
    with MoteFile(six_fitted) as f:
        budget = plan_file(f, CTX, len(f.experts) // 2, loader_slabs=loader_slabs(f.config, 3)).total_bytes
    runs = {}
    for stored in (True, False):
        with Engine.load(six_fitted, memory_budget=budget, threads=1, max_context=CTX, prefetch="adaptive",
                         lookahead_predictor=stored) as engine:
            assert engine.prefetch == "adaptive" and engine.plan.expert_slabs == len(engine.file.experts) // 2
            ids = [list(engine.generate_ids(p, im, max_new_tokens=12, ignore_eos=True)) for p, im in prompts]
            runs[stored] = ids, engine.report()["experts"]
    assert runs[True][0] == runs[False][0]
    fitted, router = runs[True][1], runs[False][1]
    assert fitted["lookahead_predictor"] == "fitted" and router["lookahead_predictor"] == "router"
    assert fitted["lookahead_recall"][0] > router["lookahead_recall"][0] + 0.2
    assert fitted["prefetch_depth"] == 3 and fitted["prefetches"] > 0
    assert router["prefetch_depth"] == 0 and router["prefetches"] == 0


# ---------------------------------------------------------------------- 4. results never change
def _ids(path, budget, prefetch, prompts, tokens) -> tuple[list, dict]:
    with Engine.load(path, memory_budget=budget, threads=1, max_context=CTX, prefetch=prefetch) as engine:
        assert engine.prefetch == prefetch
        ids = [list(engine.generate_ids(p, im, max_new_tokens=tokens, ignore_eos=True)) for p, im in prompts]
        e = engine.report()["experts"]
        if prefetch == "lookahead4":  # the file stores 1..3 ahead: 4 ahead falls back to the router
            for layer in engine.config.moe_layers:
                a = engine.decoder.layers[layer].mlp.lookaheads
                stored = engine.decoder.stored_predictors
                assert all(a[d - 1].predictor is stored.get((layer, d)) for d in (1, 2, 3, 4))
                assert a[3].predictor is None and (a[2].predictor is not None) == bool(stored)
        return ids, e


def _budgets(path, prefetch, middle_slabs) -> dict:
    with MoteFile(path) as f:
        ls = loader_slabs(f.config, PREFETCH_BUFFERED[prefetch])
        return {"minimum": minimum_plan_file(f, CTX, loader_slabs=ls).total_bytes,
                "middle": plan_file(f, CTX, middle_slabs, loader_slabs=ls).total_bytes}


def test_tokens_are_the_same_with_and_without_fitted_predictors_on_the_tiny_mote(shipped_tiny_mote, fitted):
    out, _ = fitted
    questions = [(ex.question, ex.image) for ex in _heldout(8)]
    with Engine.load(shipped_tiny_mote, threads=1, max_context=CTX, prefetch="none") as engine:
        want = [list(engine.generate_ids(p, im, max_new_tokens=TOKENS, ignore_eos=True)) for p, im in questions]
    for prefetch in ("none", "lookahead", "lookahead2"):
        for path in (Path(shipped_tiny_mote), Path(out)):
            for name, budget in _budgets(path, prefetch, 3).items():
                ids, e = _ids(path, budget, prefetch, questions, TOKENS)
                assert ids == want, (path.name, prefetch, name)
                assert e["evictions"] > 0, (path.name, prefetch, name)
                assert e["lookahead_predictor"] == ("fitted" if path == out else "router")


@pytest.mark.parametrize("prefetch", ["adaptive", "none", "lookahead4"])
def test_tokens_are_the_same_with_and_without_fitted_predictors_when_prefetching(six_moe_layers_mote, six_fitted,
                                                                                 prefetch):
    prompts = builtin_samples(4, seed=7) + [(SIX_PROMPT, None)]
    with Engine.load(six_moe_layers_mote, threads=1, max_context=CTX, prefetch="none") as engine:
        want = [list(engine.generate_ids(p, im, max_new_tokens=12, ignore_eos=True)) for p, im in prompts]
    for path in (Path(six_moe_layers_mote), Path(six_fitted)):
        for name, budget in _budgets(path, prefetch, 18).items():
            ids, e = _ids(path, budget, prefetch, prompts, 12)
            assert ids == want, (path.name, prefetch, name)
            assert e["evictions"] > 0
            if prefetch == "lookahead4" or (prefetch == "adaptive" and path == six_fitted):
                assert e["prefetches"] > 0, (path.name, prefetch, name)


# ---------------------------------------------------------------------- 5. crafted files
@pytest.fixture(scope="module")
def fitted_bytes(fitted) -> bytes:
    return fitted[0].read_bytes()


def _refused(tmp_path, src: bytes, meta) -> str:
    path = tmp_path / "crafted.mote"
    path.write_bytes(with_metadata(src, meta))
    with pytest.raises(FormatError) as e:
        MoteFile(path)
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg, msg
    return msg


def _mutant(src: bytes, edit) -> dict:
    meta = metadata_of(src)
    edit(meta)
    return meta


def test_the_untouched_fitted_file_opens_and_its_metadata_rewrites_to_the_same_bytes(fitted_bytes, tmp_path):
    assert with_metadata(fitted_bytes, metadata_of(fitted_bytes)) == fitted_bytes
    path = tmp_path / "same.mote"
    path.write_bytes(with_metadata(fitted_bytes, metadata_of(fitted_bytes)))
    with MoteFile(path) as f:
        verify_file(f)
        assert f.lookahead_depth == 3


def _la(**changes):
    def edit(meta):
        for key, value in changes.items():
            if value is KeyError:
                del meta["lookahead"][key]
            else:
                meta["lookahead"][key] = value
    return edit


def _set(path: tuple, value):
    def edit(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        if value is KeyError:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return edit


def _entry(meta, name):
    return next(t for t in meta["tensors"] if t["name"] == name)


def _swap_names(a: str, b: str):
    def edit(meta):
        ea, eb = _entry(meta, a), _entry(meta, b)
        ea["name"], eb["name"] = b, a
    return edit


def _reshape(name: str, shape: list):
    def edit(meta):
        replan(_entry(meta, name), shape)
        restat(meta)
    return edit


def _retag(name: str, role: str):
    def edit(meta):
        _entry(meta, name)["role"] = role
    return edit


def _rename(old: str, new: str):
    def edit(meta):
        _entry(meta, old)["name"] = new
    return edit


W01, B01 = lookahead_name(0, 1, "weight"), lookahead_name(0, 1, "bias")
INTN = {"kind": "intn", "bits": 4, "group_size": 32, "method": "rtn"}
RESIDENT = 52  # the tiny MoTE's resident tensors; the predictors add 2 x depth x 2 MoE layers

CRAFTED = [
    ("depth 0", _la(depth=0), "metadata lookahead depth 0 is out of range 1..4"),
    ("depth 5", _la(depth=5), "metadata lookahead depth 5 is out of range 1..4"),
    ("depth true", _la(depth=True), "metadata lookahead depth must be an integer, got True"),
    ("depth '3'", _la(depth="3"), "metadata lookahead depth must be an integer"),
    ("depth 3.0", _la(depth=3.0), "metadata lookahead depth must be an integer"),
    ("no depth", _la(depth=KeyError), "metadata lookahead has no 'depth'"),
    ("block a list", _set(("lookahead",), [3]), "metadata lookahead must be an object"),
    ("block removed", _set(("lookahead",), KeyError),
     f"tensor directory has {RESIDENT + 12} tensors, the model config implies {RESIDENT}"),
    ("block null", _set(("lookahead",), None),
     f"tensor directory has {RESIDENT + 12} tensors, the model config implies {RESIDENT}"),
    ("depth 2 over depth-3 tensors", _la(depth=2, recall=[0.5, 0.5], router_recall=[0.5, 0.5]),
     f"tensor directory has {RESIDENT + 12} tensors, the model config implies {RESIDENT + 8}"),
    ("depth 4 over depth-3 tensors", _la(depth=4, recall=[0.5] * 4, router_recall=[0.5] * 4),
     f"tensor directory has {RESIDENT + 12} tensors, the model config implies {RESIDENT + 16}"),
    ("a predictor renamed to depth 4", _rename(lookahead_name(2, 3, "bias"), lookahead_name(2, 4, "bias")),
     f"tensor directory does not match the model config (missing {lookahead_name(2, 3, 'bias')})"),
    ("weight and bias names swapped", _swap_names(W01, B01),
     f"tensor {W01} has shape [4] / role lookahead, expected [4, 128] / lookahead"),
    ("a predictor reshaped", _reshape(W01, [4, 64]),
     f"tensor {W01} has shape [4, 64] / role lookahead, expected [4, 128] / lookahead"),
    ("a predictor's role changed", _retag(W01, "router"),
     f"tensor {W01} has shape [4, 128] / role router, expected [4, 128] / lookahead"),
    ("recipe lookahead intn", _set(("recipe", "roles", LOOKAHEAD_ROLE), INTN),
     "recipe role lookahead cannot be stored as intn (allowed: f32, f16)"),
    ("recipe lookahead f16 over f32 tensors", _set(("recipe", "roles", LOOKAHEAD_ROLE), {"kind": "f16"}),
     "is stored as fp32, but the recipe says fp16"),
    ("recipe lookahead role removed", _set(("recipe", "roles", LOOKAHEAD_ROLE), KeyError),
     "the recipe has no scheme for role lookahead"),
    ("recall too short", _la(recall=[0.5, 0.5]), "metadata lookahead recall has 2 entries, its depth is 3"),
    ("router_recall too long", _la(router_recall=[0.5] * 4),
     "metadata lookahead router_recall has 4 entries, its depth is 3"),
    ("recall 1.5", _la(recall=[1.5, 0.5, 0.5]), "metadata lookahead recall entries must be numbers from 0 to 1"),
    ("recall -0.1", _la(recall=[0.5, -0.1, 0.5]), "metadata lookahead recall entries must be numbers from 0 to 1"),
    ("recall a string", _la(router_recall=[0.5, "0.5", 0.5]),
     "metadata lookahead router_recall entries must be numbers from 0 to 1 or null"),
    ("recall true", _la(recall=[True, 0.5, 0.5]), "metadata lookahead recall entries must be numbers"),
    ("recall not a list", _la(recall=0.8), "metadata lookahead recall must be a list"),
    ("samples a string", _la(samples="200"), "metadata lookahead samples must be an integer"),
    ("waves negative", _la(waves=-1), "metadata lookahead waves -1 is out of range"),
    ("a dense model", _set(("model", "moe", "moe_enable"), False),
     "metadata lookahead is set, but the model has no MoE layers"),
]


@pytest.mark.parametrize("edit, message", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_a_crafted_lookahead_block_is_a_one_line_format_error(fitted_bytes, tmp_path, edit, message):
    assert message in _refused(tmp_path, fitted_bytes, _mutant(fitted_bytes, edit))


def test_a_lookahead_block_on_a_file_without_predictors_is_refused(shipped_tiny_mote, tmp_path):
    src = Path(shipped_tiny_mote).read_bytes()
    meta = metadata_of(src)
    meta["lookahead"] = {"depth": 1}
    assert f"tensor directory has {RESIDENT} tensors, the model config implies {RESIDENT + 4}" \
        in _refused(tmp_path, src, meta)


def test_optional_lookahead_fields_may_be_absent_or_null(fitted_bytes, tmp_path):
    for edit in (_la(samples=KeyError, waves=KeyError, recall=KeyError, router_recall=KeyError),
                 _la(recall=[None, None, None], router_recall=[0.0, 1, None])):
        path = tmp_path / "ok.mote"
        path.write_bytes(with_metadata(fitted_bytes, _mutant(fitted_bytes, edit)))
        with MoteFile(path) as f:
            assert f.lookahead_depth == 3
        r = run_cli("info", str(path))
        assert r.returncode == 0 and "fitted predictors 1..3" in r.stdout, r.stderr


# ---------------------------------------------------------------------- 6. CLI
def _one_line_error(r) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_cli_fit_lookahead_info_and_force(shipped_tiny_mote, tmp_path):
    calib = write_calibration(tmp_path / "calib" / "calib.jsonl", 40)
    out = tmp_path / "out.mote"
    r = run_cli("fit-lookahead", str(shipped_tiny_mote), "-o", str(out), "--calib", str(calib), "--samples", "40",
                "--tokens", "8", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert f"fitted lookahead predictors 1 .. 3 MoE layers ahead on {40 * 7 * 2} decode waves of 40 prompts" in r.stdout
    for d in (1, 2, 3):
        assert f"  {d} ahead: held-out recall " in r.stdout and "(the routers: " in r.stdout
    with MoteFile(out) as f:
        assert f.lookahead_depth == 3 and f.metadata["lookahead"]["samples"] == 40
    info = run_cli("info", str(out))
    assert info.returncode == 0 and "fitted predictors 1..3 MoE layers ahead (on 560 decode waves of 40 prompts)" \
        in info.stdout and "lookahead=fp32" in info.stdout, info.stdout
    plain = run_cli("info", str(shipped_tiny_mote))
    assert "the routers predict prefetches (no fitted predictors" in plain.stdout

    # an existing output: refused without --force (and left alone), replaced with it
    before = out.read_bytes()
    again = run_cli("fit-lookahead", str(shipped_tiny_mote), "-o", str(out), "--samples", "4", "--depth", "1")
    assert "exists (use --force to overwrite it)" in _one_line_error(again)
    assert out.read_bytes() == before
    forced = run_cli("fit-lookahead", str(shipped_tiny_mote), "-o", str(out), "--samples", "4", "--depth", "1",
                     "--tokens", "4", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "fitted predictors 1..1 MoE layers ahead" in run_cli("info", str(out)).stdout
    # the model itself as the output needs no --force: its predictors are replaced
    in_place = run_cli("fit-lookahead", str(out), "-o", str(out), "--samples", "4", "--depth", "2", "--tokens", "4")
    assert in_place.returncode == 0, in_place.stderr
    with MoteFile(out) as f:
        assert f.lookahead_depth == 2 and sum(t.role == LOOKAHEAD_ROLE for t in f.tensors.values()) == 2 * 2 * 2


def test_cli_fit_lookahead_errors(shipped_tiny_mote, tmp_path):
    out = tmp_path / "out.mote"
    base = ("fit-lookahead", str(shipped_tiny_mote), "-o", str(out))
    missing = _one_line_error(run_cli(*base, "--calib", str(tmp_path / "nope.jsonl")))
    assert "cannot read calibration file" in missing and "nope.jsonl" in missing
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Is there a red circle?"}) + "\n" + json.dumps({"image": "x.png"}) + "\n")
    assert 'every line needs a "prompt" string' in _one_line_error(run_cli(*base, "--calib", str(bad)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "hi"\n')
    assert "cannot read calibration file" in _one_line_error(run_cli(*base, "--calib", str(broken)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "has no samples" in _one_line_error(run_cli(*base, "--calib", str(empty)))
    assert "lookahead depth must be 1 to 4, got 5" in _one_line_error(run_cli(*base, "--samples", "2", "--depth", "5"))
    assert "samples must be at least 1, got 0" in _one_line_error(run_cli(*base, "--samples", "0"))
    assert "tokens must be at least 2" in _one_line_error(run_cli(*base, "--samples", "2", "--tokens", "1"))
    assert not out.exists() and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("image", [5, True, ["a.png"]])
def test_cli_a_calib_image_that_is_not_a_path_string_is_a_one_line_error(shipped_tiny_mote, tmp_path, image):
    calib = tmp_path / "calib.jsonl"
    calib.write_text(json.dumps({"prompt": "Is there a red circle?", "image": image}) + "\n")
    r = run_cli("fit-lookahead", str(shipped_tiny_mote), "-o", str(tmp_path / "out.mote"), "--calib", str(calib))
    assert "calibration file" in _one_line_error(r)


def test_cli_an_output_that_is_a_directory_is_a_one_line_error(shipped_tiny_mote, tmp_path):
    (tmp_path / "adir").mkdir()
    r = run_cli("fit-lookahead", str(shipped_tiny_mote), "-o", str(tmp_path / "adir"), "--samples", "2", "--tokens",
                "3", "--force")
    assert "is a directory" in _one_line_error(r)


def test_cli_run_report_names_the_predictor(six_fitted):
    """`run --report` with the adaptive prefetch at half the experts: the lookahead recall line says which
    predictor it measured: (fitted) by default on a file that stores them, (router) with --router-lookahead."""
    with MoteFile(six_fitted) as f:
        budget = plan_file(f, CTX, len(f.experts) // 2, vision=False,
                           loader_slabs=loader_slabs(f.config, 3)).total_bytes
    base = ("run", str(six_fitted), "--prompt", SIX_PROMPT, "--max-new-tokens", "24", "--ignore-eos", "--threads", "1",
            "--max-context", str(CTX), "--prefetch", "adaptive", "--memory-budget", str(budget), "--report")
    outs = {}
    for flag, label in ((None, "(fitted)"), ("--router-lookahead", "(router)"), ("--lookahead-predictor", "(fitted)")):
        r = run_cli(*base, *([flag] if flag else []))
        assert r.returncode == 0, r.stderr
        line = next((x for x in r.stderr.splitlines() if x.startswith("lookahead recall")), None)
        assert line is not None and line.startswith(f"lookahead recall     {label} 1 ahead "), r.stderr
        outs[flag] = r.stdout
    assert len(set(outs.values())) == 1  # the same answer whichever predicts


def test_an_fp_expert_model_with_an_onnx_vision_section_round_trips(tiny_fp_ckpt, tmp_path):
    """The MoE-LLaVA layout (int-N fp experts, no shared expert) with the ONNX vision section written in one
    piece: fit-lookahead copies its records and the ONNX bytes unchanged, and the copy runs the same tokens."""
    from mote_edge.exporters.export import ExportOptions, export_checkpoint

    src = tmp_path / "fp-onnx.mote"
    export_checkpoint(tiny_fp_ckpt, src, ExportOptions(bits=4, vision_format="onnx", progress=False))
    out = tmp_path / "fp-onnx-la.mote"
    result = fit_lookahead(src, out, builtin_samples(6), FitOptions(depth=2, tokens=6, ignore_eos=True))
    with MoteFile(src) as a, MoteFile(out) as b:
        verify_file(b)
        assert b.vision.format == "onnx" and a.read_vision() == b.read_vision()
        assert b.lookahead_depth == 2 and set(result.predictors) == {(i, d) for i in a.config.moe_layers for d in (1, 2)}
        for key in a.experts:
            assert a.read_expert_record(*key) == b.read_expert_record(*key)
    image = make_example(heldout_seeds(1)[0])
    answers = []
    for path in (src, out):
        with Engine.load(path, threads=1, max_context=CTX) as engine:
            answers.append(list(engine.generate_ids(image.question, image.image, max_new_tokens=6, ignore_eos=True)))
    assert answers[0] == answers[1]
