"""Computing with an expert's record while it still loads: native/layer.c's two FFN halves give ffn_step's
result bit for bit on every kernel path; a demand miss hands the decode step its gate and up projections
before down_proj is in, and the whole record before its checksum; a record that fails its checksum fails
in verify(), before anything computed from it is kept; tokens are the same with and without either."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mote_edge import _native
from mote_edge.errors import FormatError
from mote_edge.format import MoteFile
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.expert_cache import ExpertCache, FirstPart
from mote_edge.runtime.plan import plan_file

PROMPT = "What color is the circle? Is it left or right of the star?"
WAIT = 5.0


@pytest.fixture(scope="module")
def int8_mote(tiny_fp_ckpt, export_once):
    """fp experts at int8: records large enough that down_proj starts past the first 4096 bytes."""
    return export_once(tiny_fp_ckpt, bits=8, group_size=32)


def _ffn_cases(mote, layout):
    with Engine.load(mote, threads=1, expert_layout=layout, vision=False, max_context=64) as engine:
        moe = [layer.mlp for layer in engine.decoder.layers if hasattr(layer.mlp, "cache")]
        for mlp in moe:
            if mlp.shared is not None:  # fused int-N gate_up
                yield mlp.shared.gate_up.native_specs(), mlp.shared.down.native_spec()
            for e in range(2):
                expert = engine.experts.get(mlp.layer, e)
                yield expert.gate_up_specs(), expert.down.native_spec()


@pytest.mark.parametrize("path", _native.available_paths())
@pytest.mark.parametrize("model,layout", [("ternary", "file"), ("ternary", "slab2"), ("int8", "file")])
def test_ffn_halves_are_ffn_step_bit_for_bit(tiny_b4_mote, int8_mote, path, model, layout):
    mote = tiny_b4_mote if model == "ternary" else int8_mote
    rng = np.random.default_rng(7)
    before = _native.kernel_path()
    _native.set_kernel_path(path)
    try:
        checked = 0
        for gate_up, down in _ffn_cases(mote, layout):
            H, I = down[1], down[2]
            h = rng.standard_normal(H).astype(np.float32)
            y0 = rng.standard_normal(H).astype(np.float32)
            whole, halves, act = y0.copy(), y0.copy(), np.empty(I, np.float32)
            _native.ffn_step(h, whole, 0.625, gate_up, down, 1)
            _native.ffn_gate_up(h, act, 1.0, gate_up, None, 1)
            _native.ffn_down(act, halves, 0.625, gate_up, down, 1)
            assert np.array_equal(whole, halves)
            assert not np.array_equal(whole, y0)
            checked += 1
        assert checked >= 4
    finally:
        _native.set_kernel_path(before)


def test_ffn_gate_up_checks_its_arguments(tiny_b4_mote):
    gate_up, down = next(_ffn_cases(tiny_b4_mote, "file"))
    H, I = down[1], down[2]
    h = np.zeros(H, np.float32)
    with pytest.raises(ValueError, match="None for ffn_gate_up"):
        _native.ffn_gate_up(h, np.empty(I, np.float32), 1.0, gate_up, down, 1)
    with pytest.raises(ValueError, match="act"):
        _native.ffn_gate_up(h, np.empty(I - 1, np.float32), 1.0, gate_up, None, 1)
    with pytest.raises(ValueError, match="act"):
        _native.ffn_down(np.empty(I + 1, np.float32), h.copy(), 1.0, gate_up, down, 1)


class HeldRest:
    """Wraps an ExpertReader's span reads: the part after the first waits until `release` is set."""

    def __init__(self, reader):
        self.release, self.reads = threading.Event(), 0
        self._span = reader._read_span
        reader._read_span = self

    def __call__(self, view, entry, start, end, what, crc=True):
        if start > 0:
            self.reads += 1
            assert self.release.wait(WAIT)
        return self._span(view, entry, start, end, what, crc)


def slow_rest(reader, seconds: float = 0.005) -> None:
    """The rest of each record and each checksum take `seconds` longer (so the decode step sees both states)."""
    span, crc32 = reader._read_span, reader._crc

    def later(view, entry, start, end, what, crc=True):
        if start > 0:
            time.sleep(seconds)
        return span(view, entry, start, end, what, crc)

    def slow_crc(data, value=0):
        time.sleep(seconds)
        return crc32(data, value)
    reader._read_span, reader._crc = later, slow_crc


def _cache(f, early=True):
    cache = ExpertCache(f, slabs=2, threads=1)
    cache.early_compute = early
    if cache.io_path != "direct":
        cache.release()
        pytest.skip("the filesystem refuses O_DIRECT: no early parts")
    return cache


def test_a_miss_computes_gate_and_up_while_down_reads(int8_mote):
    with MoteFile(int8_mote) as f:
        (layer, e), entry = next(iter(f.experts.items()))
        assert entry.tensors[-1].offset >= 4096  # the record splits
        cache = _cache(f)
        held = HeldRest(cache.reader)
        try:
            cache.begin_wave(layer, [e])
            part = cache.get(layer, e, early=True)
            assert isinstance(part, FirstPart)  # down_proj is held back: the first part came alone
            h = np.random.default_rng(1).standard_normal(entry.tensors[0].shape[1]).astype(np.float32)
            act = part.gate_up_step(h, 1)  # while down_proj is held back
            held.release.set()
            expert = part.rest()
            cache.verify()
            assert held.reads == 1 and cache.is_cached(layer, e)
            got, want = np.zeros_like(h), np.zeros_like(h)
            expert.down_step(act, got, 0.5, 1)
            _native.ffn_step(h, want, 0.5, expert.gate_up_specs(), expert.down.native_spec(), 1)
            assert np.array_equal(got, want)
            cache.end_wave()
            assert (cache.stats.misses, cache.stats.hits) == (1, 0)
            cache.begin_wave(layer, [e])
            assert not isinstance(cache.get(layer, e, early=True), FirstPart)  # a hit: the whole expert
            assert cache.stats.hits == 1
        finally:
            held.release.set()
            cache.release()


@pytest.mark.parametrize("where", ["gate_proj", "down_proj"])
def test_a_corrupt_record_fails_before_anything_computed_from_it_is_kept(int8_mote, tmp_path, where):
    with MoteFile(int8_mote) as f:
        (layer, e), entry = next(iter(f.experts.items()))
        t = next(t for t in entry.tensors if t.name == where)
        at = f.header.data_offset + entry.offset + t.offset + t.nbytes // 2
    data = bytearray(int8_mote.read_bytes())
    data[at] ^= 0x10
    bad = tmp_path / "bad.mote"
    bad.write_bytes(bytes(data))
    with MoteFile(bad) as f:
        cache = _cache(f)
        held = HeldRest(cache.reader)
        try:
            cache.begin_wave(layer, [e])
            part = cache.get(layer, e, early=True)
            assert isinstance(part, FirstPart)
            held.release.set()
            with pytest.raises(FormatError, match="checksum mismatch"):
                part.rest()  # the whole record (or the mismatch, if its checksum ran first)
                cache.verify()  # before anything computed from it is kept
            assert not cache.is_cached(layer, e)
        finally:
            held.release.set()
            cache.release()


@pytest.mark.parametrize("extra", [0, 1])
def test_early_compute_changes_no_token(int8_mote, extra):
    with MoteFile(int8_mote) as f:
        budget = plan_file(f, 256, f.config.moe.top_k_experts + extra, vision=False).total_bytes
    runs = {}
    for loader, early in (("serial", False), ("thread", False), ("thread", True)):
        with Engine.load(int8_mote, memory_budget=budget, threads=1, max_context=256, vision=False,
                         expert_layout="file", prefetch="none", expert_loader=loader) as engine:
            engine.experts.early_compute = engine.experts.check_later = early
            engine.experts.timeline = timeline = []
            if early and engine.experts.io_path == "direct":  # the rest of each record arrives 5 ms later
                slow_rest(engine.experts.reader)
            runs[loader, early] = list(engine.generate_ids(PROMPT, max_new_tokens=16, ignore_eos=True))
            assert engine.report()["experts"]["evictions"] > 0
            firsts = sum(ev["event"] == "first" for ev in timeline)
            report = engine.report()["experts"]
            assert report["first_parts"] == firsts
            if early and engine.experts.io_path == "direct":
                assert firsts > 0 and report["checked_later"] > 0
            else:
                assert firsts == 0 == report["checked_later"]
    assert runs["thread", True] == runs["thread", False] == runs["serial", False]
