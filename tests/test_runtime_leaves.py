"""The runtime's leaf modules: budgets, memory readings, the vision encoder and the sampler.

No torch here (the runtime never has it), and no onnx package either: the tiny ONNX test models
are written as protobuf bytes directly, so everything runs on a numpy + onnxruntime install.
"""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path

import numpy as np
import pytest

from mote_edge.errors import MoteError
from mote_edge.runtime import memory
from mote_edge.runtime.budget import BudgetError, format_bytes, parse_bytes
from mote_edge.runtime.sampler import Sampler, SamplingParams

REPO = Path(__file__).resolve().parents[1]
MB = 10**6


# ------------------------------------------------------------------------------------ budget
@pytest.mark.parametrize("text, expected", [
    (123456, 123456), ("123456", 123456), (" 123456 ", 123456), ("300B", 300),
    ("300MB", 300 * 10**6), ("300 MB", 300 * 10**6), ("300mb", 300 * 10**6), ("300M", 300 * 10**6),
    ("2G", 2 * 10**9), ("2gb", 2 * 10**9), ("800k", 800_000), ("800kB", 800_000), ("800KB", 800_000),
    ("1TB", 10**12), ("1.5GiB", 3 * 2**29), ("512MiB", 512 * 2**20), ("512mib", 512 * 2**20),
    ("4KiB", 4096), ("1Ti", 2**40), ("2Gi", 2**31), ("0.5k", 500), (".5MB", 500_000),
    ("1.000000001GB", 1_000_000_001), ("1.5", 2), ("+300MB", 300 * 10**6),
])
def test_parse_bytes(text, expected) -> None:
    got = parse_bytes(text)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("text", [
    "3 apples", "", "   ", "MB", "1.2.3MB", "12 MBs", "300 MB B", "1e9", "1,000MB", "nan", "inf", "NaN MB",
    "-300MB", "-1", "0", "0MB", "0.0GiB", "0.4", -5, 0, float("nan"), float("inf"), True, None, [300],
])
def test_parse_bytes_rejects(text) -> None:
    with pytest.raises(BudgetError) as e:
        parse_bytes(text)
    assert isinstance(e.value, MoteError)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"invalid memory budget {text!r}")
    assert msg.endswith("(examples: 300MB, 1.5GiB, 123456789)")


def test_parse_bytes_message_exact() -> None:
    with pytest.raises(BudgetError, match=r"^invalid memory budget '3 apples' \(examples: 300MB, 1\.5GiB, 123456789\)$"):
        parse_bytes("3 apples")
    with pytest.raises(BudgetError, match="more than 0 bytes"):
        parse_bytes("-300MB")


@pytest.mark.parametrize("n, text", [
    (1_130_300_000, "1,130.3 MB"), (300 * 10**6, "300.0 MB"), (0, "0.0 MB"), (4096, "0.004 MB"),
    (1, "0.000 MB"), (60_000, "0.1 MB"), (12_345_678_901, "12,345.7 MB"), (-2_500_000, "-2.5 MB"),
])
def test_format_bytes(n, text) -> None:
    assert format_bytes(n) == text


def test_format_then_parse_round_trips_to_a_tenth_of_a_megabyte() -> None:
    for n in (1, 999_999, 123_456_789, 3 * 2**30):
        back = parse_bytes(format_bytes(max(n, 100_000)).replace(",", "").replace(" ", ""))
        assert abs(back - max(n, 100_000)) <= 50_000


# ------------------------------------------------------------------------------------ memory
linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")


@linux_only
def test_read_status_fields() -> None:
    s = memory.read_status()
    assert set(s) >= {"VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"}
    assert all(type(v) is int for v in s.values())
    assert s["VmHWM"] >= s["VmRSS"] > 0
    assert s["RssAnon"] > 0 and s["RssFile"] > 0  # python's heap; its mapped binary and libraries
    # RssAnon + RssFile + RssShmem == VmRSS at one instant; two reads a moment apart agree to a few MB
    assert abs(s["RssAnon"] + s["RssFile"] + s["RssShmem"] - s["VmRSS"]) < 4 * MB


@linux_only
def test_touching_200_mb_raises_rss_anon_and_reset_peak_lowers_vmhwm() -> None:
    before = memory.read_status()
    a = np.full(200 * MB, 7, dtype=np.uint8)  # every page written
    during = memory.read_status()
    assert during["RssAnon"] - before["RssAnon"] >= 190 * MB
    assert during["VmHWM"] >= during["VmRSS"] >= before["VmRSS"] + 190 * MB
    del a
    gc.collect()
    after = memory.read_status()
    assert after["RssAnon"] < during["RssAnon"] - 190 * MB  # a big numpy buffer goes back to the OS
    # ... but the peak remembers it (the kernel's RSS counters are per-CPU and approximate: the
    # peak recorded at unmap time can sit a few hundred kB under an RSS read just before)
    assert after["VmHWM"] >= during["VmRSS"] - 4 * MB
    if not memory.reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here: VmHWM cannot be reset")
    reset = memory.read_status()
    assert reset["VmHWM"] < during["VmRSS"] - 150 * MB
    assert reset["VmHWM"] >= reset["VmRSS"] - 4 * MB


def test_read_status_without_proc_reads_zeros(monkeypatch) -> None:
    import builtins

    real_open = builtins.open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert memory.read_status() == dict.fromkeys(memory.STATUS_KEYS, 0)
    assert memory.reset_peak() is False
    assert memory.filesystem_type("/") is None


def _disk_dir(tmp_path: Path) -> "tuple[Path, str | None]":
    """A directory on a real (non-tmpfs) filesystem if there is one: tmp_path, else the repo's out/."""
    for d in (tmp_path, REPO / "out"):
        fs = memory.filesystem_type(d)
        if fs not in ("tmpfs", "ramfs"):
            d.mkdir(parents=True, exist_ok=True)
            return d, fs
    return tmp_path, memory.filesystem_type(tmp_path)


@linux_only
def test_page_cache_bytes_follows_pread_and_drop(tmp_path, monkeypatch) -> None:
    directory, fs = _disk_dir(tmp_path)
    size = 64 * 2**20 + 1000  # not a whole number of pages
    path = directory / f"page-cache-test-{os.getpid()}.bin"
    try:
        with open(path, "wb") as f:
            f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
            f.flush()
            os.fsync(f.fileno())  # DONTNEED only drops clean pages
        fd = os.open(path, os.O_RDONLY)
        try:
            first = memory.page_cache_bytes(path)
            if first is None:
                pytest.skip("mincore is not usable here (page_cache_bytes returned None)")
            assert 0 <= first <= size
            droppable = fs not in ("tmpfs", "ramfs")
            assert memory.drop_page_cache(fd, 0, 0) is True
            if droppable:
                assert memory.page_cache_bytes(path) < size // 10

            # part of the file: residency is per page, not all or nothing
            part = 16 * 2**20
            assert len(os.pread(fd, part, 0)) == part
            got = memory.page_cache_bytes(path)
            assert got >= part
            with monkeypatch.context() as m:  # many small mapping windows: the same answer
                m.setattr(memory, "MINCORE_WINDOW", 5 * memory.PAGE_SIZE)
                windowed = memory.page_cache_bytes(path)
            # asynchronous readahead may still be landing pages: the windowed reading lies between two
            # whole-file readings taken before and after it
            assert got <= windowed <= memory.page_cache_bytes(path)
            if droppable:
                assert got <= part + 8 * 2**20  # readahead reads a little further, not the whole file

            done = 0
            while done < size:
                done += len(os.pread(fd, 8 * 2**20, done))
            full = memory.page_cache_bytes(path)
            assert size // 2 <= full <= size
            with monkeypatch.context() as m:
                m.setattr(memory, "MINCORE_WINDOW", 7 * memory.PAGE_SIZE)
                assert memory.page_cache_bytes(path) == full
            assert full == size or full % memory.PAGE_SIZE == 0  # partial last page counted exactly

            # drop a range: only that range goes
            memory.drop_page_cache(fd, 0, 32 * 2**20)
            if not droppable:
                pytest.skip(f"{directory} is on {fs}: posix_fadvise(DONTNEED) cannot drop tmpfs pages")
            half = memory.page_cache_bytes(path)
            assert size - 32 * 2**20 - 2**20 <= half <= size - 32 * 2**20 + 2**20

            memory.drop_page_cache(fd, 0, 0)
            assert memory.page_cache_bytes(path) < size // 10
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)


@linux_only
def test_page_cache_bytes_edge_cases(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert memory.page_cache_bytes(empty) == 0
    with pytest.raises(FileNotFoundError):
        memory.page_cache_bytes(tmp_path / "missing")
    assert memory.drop_page_cache(-1, 0, 0) is False  # a bad fd is not an exception


@linux_only
def test_filesystem_type() -> None:
    assert memory.filesystem_type("/proc/self/status") == "proc"
    assert memory.filesystem_type("/") not in (None, "proc")
    if os.path.isdir("/dev/shm"):
        assert memory.filesystem_type("/dev/shm") == "tmpfs"
    assert memory._unescape(r"/mnt/my\040disk") == "/mnt/my disk"


# ------------------------------------------------------------------------------------ vision
# A minimal protobuf writer for the few ONNX messages a test model needs, so these tests run where
# only numpy + onnxruntime are installed (no onnx package), like the runtime itself.
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else bytes(value)
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dims) -> bytes:  # float32 tensor, dims int or symbolic (str)
    shape = b"".join(_field(1, _field(2 if isinstance(d, str) else 1, d)) for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))


def _initializer(name: str, array: np.ndarray) -> bytes:
    dtype = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[array.dtype]
    return (b"".join(_field(1, d) for d in array.shape) + _field(2, dtype) + _field(8, name)
            + _field(9, np.ascontiguousarray(array).tobytes()))


def _node(op: str, inputs, outputs) -> bytes:
    return b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs) + _field(4, op)


def _tiny_vision_onnx(s: int = 8, p: int = 4, h: int = 16, wide: int = 0, seed: int = 0):
    """pixel_values [B,3,S,S] -> reshape [B,P,3S^2/P] @ W [.., H] (-> @ A [H, wide] @ C [wide, H])."""
    rng = np.random.default_rng(seed)
    k = 3 * s * s // p
    weights = {"W": rng.standard_normal((k, h)).astype(np.float32)}
    nodes = [_node("Reshape", ["pixel_values", "shape"], ["x"]),
             _node("MatMul", ["x", "W"], ["y" if wide else "image_features"])]
    if wide:
        weights["A"] = rng.standard_normal((h, wide)).astype(np.float32)
        weights["C"] = (rng.standard_normal((wide, h)) / wide).astype(np.float32)
        nodes += [_node("MatMul", ["y", "A"], ["z"]), _node("MatMul", ["z", "C"], ["image_features"])]
    inits = [_initializer("shape", np.array([-1, p, k], np.int64))]
    inits += [_initializer(name, w) for name, w in weights.items()]
    graph = (b"".join(_field(1, n) for n in nodes) + _field(2, "tiny-vision")
             + b"".join(_field(5, t) for t in inits)
             + _field(11, _value_info("pixel_values", ["batch", 3, s, s]))
             + _field(12, _value_info("image_features", ["batch", p, h])))
    model = _field(1, 9) + _field(7, graph) + _field(8, _field(1, "") + _field(2, 18))  # IR 9, opset 18

    def reference(pixels: np.ndarray) -> np.ndarray:
        out = pixels.reshape(pixels.shape[0], p, k).astype(np.float64) @ weights["W"]
        if wide:
            out = out @ weights["A"] @ weights["C"]
        return out

    return model, reference


def test_run_vision_onnx_runs_a_vision_section() -> None:
    pytest.importorskip("onnxruntime")
    from mote_edge.runtime import vision

    blob, reference = _tiny_vision_onnx()
    pixels = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = vision.run_vision_onnx(blob, pixels, threads=2)
    assert got.shape == (3, 4, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(pixels), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"pixels must have shape \['batch', 3, 8, 8\]"):
        vision.run_vision_onnx(blob, np.zeros((1, 3, 9, 9), np.float32))


def test_vision_encoder_encodes_one_image_per_call() -> None:
    pytest.importorskip("onnxruntime")
    from mote_edge.runtime.vision import VisionEncoder

    blob, reference = _tiny_vision_onnx()
    calls = []

    def loader() -> bytes:
        calls.append(1)
        return blob

    enc = VisionEncoder(loader, threads=1)
    assert enc.last_encode_ms is None and calls == []  # nothing loaded up front
    pixels = np.random.default_rng(2).standard_normal((1, 3, 8, 8))  # float64: converted
    for n in (1, 2):
        got = enc.encode(pixels)
        assert got.shape == (4, 16) and got.dtype == np.float32 and got.flags.owndata
        np.testing.assert_allclose(got, reference(pixels)[0], rtol=1e-4, atol=1e-4)
        assert len(calls) == n and enc.encodes == n
        assert enc.last_encode_ms is not None and enc.last_encode_ms > 0
    # no onnxruntime object survives a call
    assert not any(type(v).__module__.startswith("onnxruntime") for v in vars(enc).values())
    for bad in ((2, 3, 8, 8), (3, 8, 8)):
        with pytest.raises(ValueError, match="one image"):
            enc.encode(np.zeros(bad, np.float32))
    assert len(calls) == 2  # a bad input is rejected before the model is loaded


def test_vision_encoder_session_settings(monkeypatch) -> None:
    """Per-call session: no CPU arena, no memory patterns, the requested threads, quiet logs; the
    wrapper's copy of the model bytes is dropped before the run."""
    ort = pytest.importorskip("onnxruntime")
    from mote_edge.runtime.vision import VisionEncoder

    seen = []

    class Spy(ort.InferenceSession):
        def __init__(self, model, options, **kw):
            super().__init__(model, options, **kw)
            seen.append({"arena": options.enable_cpu_mem_arena, "pattern": options.enable_mem_pattern,
                         "intra": options.intra_op_num_threads, "inter": options.inter_op_num_threads,
                         "log": options.log_severity_level, "providers": self.get_providers()})

        def run(self, *args, **kw):
            seen.append({"bytes_held_during_run": getattr(self, "_model_bytes", None) is not None})
            return super().run(*args, **kw)

    monkeypatch.setattr(ort, "InferenceSession", Spy)
    blob, _ = _tiny_vision_onnx()
    VisionEncoder(lambda: blob, threads=2).encode(np.zeros((1, 3, 8, 8), np.float32))
    assert seen == [{"arena": False, "pattern": False, "intra": 2, "inter": 1, "log": 3,
                     "providers": ["CPUExecutionProvider"]}, {"bytes_held_during_run": False}]


@linux_only
def test_vision_encoder_returns_its_memory() -> None:
    """A 134 MB model: after encode, RssAnon is back where it was (session, arena and the loaded
    bytes all freed); while encoding it was well above (so the measurement can see a leak)."""
    pytest.importorskip("onnxruntime")
    from mote_edge.runtime.vision import VisionEncoder

    blob, reference = _tiny_vision_onnx(s=16, p=16, h=256, wide=2**16)
    model_bytes = len(blob)
    assert model_bytes > 130 * MB
    encoder = VisionEncoder(lambda: bytes(blob), threads=1)  # a fresh copy per call, as a pread would
    pixels = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    encoder.encode(pixels)  # first call: onnxruntime's one-time globals (thread pools, kernels)
    gc.collect()
    memory.trim_heap()
    before = memory.read_status()
    peak_known = memory.reset_peak()
    got = encoder.encode(pixels)
    after = memory.read_status()
    np.testing.assert_allclose(got, reference(pixels)[0], rtol=1e-3, atol=1e-3)
    assert after["RssAnon"] - before["RssAnon"] < 16 * MB, (after, before)
    if peak_known:
        assert after["VmHWM"] - before["VmRSS"] > model_bytes  # the model really was in memory


# ----------------------------------------------------------------------------------- sampler
def test_greedy_is_argmax_first_on_ties() -> None:
    s = Sampler(SamplingParams())
    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.standard_normal(1000).astype(np.float32)
        assert s.sample(logits) == int(np.argmax(logits))
    assert s.sample(np.array([1.0, 3.0, 3.0, 2.0], np.float32)) == 1
    assert s.sample(np.array([-np.inf, -5.0, -np.inf], np.float32)) == 1
    assert Sampler().params == SamplingParams(temperature=0.0, top_k=0, top_p=1.0, seed=None)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_1_is_greedy_at_any_temperature(temperature) -> None:
    s = Sampler(SamplingParams(temperature=temperature, top_k=1, seed=5))
    rng = np.random.default_rng(1)
    for _ in range(50):
        logits = rng.standard_normal(500).astype(np.float32)
        assert s.sample(logits) == int(np.argmax(logits))
    assert s.sample(np.array([0.0, 2.0, 1.0, 2.0], np.float32)) == 1  # lower id wins a tie


def test_seed_gives_a_reproducible_sequence() -> None:
    logits = np.random.default_rng(2).standard_normal(2000).astype(np.float32)

    def run(seed, **kw):
        s = Sampler(SamplingParams(temperature=1.0, seed=seed, **kw))
        return [s.sample(logits) for _ in range(100)]

    for kw in ({}, {"top_k": 50}, {"top_p": 0.9}, {"top_k": 100, "top_p": 0.5}):
        a, b = run(42, **kw), run(42, **kw)
        assert a == b
        assert len(set(a)) > 10  # really sampling
        assert run(43, **kw) != a
    s = Sampler(SamplingParams(temperature=1.0, seed=7))  # one rng per Sampler: draws differ
    assert len({s.sample(logits) for _ in range(20)}) > 1


def test_tiny_top_p_is_argmax() -> None:
    rng = np.random.default_rng(3)
    s = Sampler(SamplingParams(temperature=2.0, top_p=1e-9, seed=0))
    for _ in range(200):
        logits = rng.standard_normal(300).astype(np.float32)
        assert s.sample(logits) == int(np.argmax(logits))


Q = np.array([0.5, 0.25, 0.15, 0.10])


@pytest.mark.parametrize("params, expected", [
    (dict(temperature=1.0), Q),
    (dict(temperature=2.0), np.sqrt(Q) / np.sqrt(Q).sum()),  # softmax(log q / 2) ~ q^(1/2)
    (dict(temperature=0.5), Q**2 / (Q**2).sum()),
    (dict(temperature=1.0, top_k=2), [2 / 3, 1 / 3, 0, 0]),
    (dict(temperature=1.0, top_k=3), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),
    (dict(temperature=1.0, top_p=0.7), [2 / 3, 1 / 3, 0, 0]),  # cum 0.5, 0.75 >= 0.7
    (dict(temperature=1.0, top_p=0.8), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),  # cum 0.9 >= 0.8
    (dict(temperature=1.0, top_p=0.4), [1, 0, 0, 0]),
    # top-p sees the top-k-renormalized distribution: 0.556, 0.833 >= 0.8 -> two tokens
    (dict(temperature=1.0, top_k=3, top_p=0.8), [2 / 3, 1 / 3, 0, 0]),
    (dict(temperature=1.0, top_k=4, top_p=1.0), Q),
])
def test_empirical_frequencies_match(params, expected) -> None:
    """20k draws per case; Pearson chi-square over the tokens that can be drawn (df <= 3) must stay
    under 25 (p ~ 1e-5 for df 3, so a correct sampler essentially never fails and a wrong
    distribution, e.g. off by 0.02 on one token, gives ~40+), and filtered tokens never appear."""
    expected = np.asarray(expected, np.float64)
    perm = np.array([2, 0, 3, 1])  # tokens not in probability order: ids must be tracked, not ranks
    logits = np.empty(4, np.float32)
    logits[perm] = np.log(Q).astype(np.float32)
    s = Sampler(SamplingParams(seed=123, **params))
    n = 20_000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=4)[perm]
    allowed = expected > 0
    assert (counts[~allowed] == 0).all(), counts
    chi2 = (((counts - n * expected)[allowed]) ** 2 / (n * expected[allowed])).sum()
    assert chi2 < 25, (counts / n, expected, chi2)
    tokens, probs = s.distribution(logits)
    assert math.isclose(probs.sum(), 1.0, rel_tol=1e-12)
    dense = np.zeros(4)
    dense[tokens] = probs
    np.testing.assert_allclose(dense[perm], expected, atol=1e-6)


def _nucleus_reference(logits, temperature, top_p):
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order])
    n = int(np.argmax(cum >= top_p)) + 1 if cum[-1] >= top_p else len(p)
    keep = order[:n]
    return keep, p[keep] / p[keep].sum()


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_top_p_on_a_large_vocabulary_matches_a_full_sort(top_p) -> None:
    """Random logits over 50k tokens put thousands of tokens in the nucleus, more than the first
    candidate batch: the candidate set must grow until it holds the whole nucleus."""
    logits = np.random.default_rng(4).standard_normal(50_000).astype(np.float32)
    tokens, probs = Sampler(SamplingParams(temperature=1.0, top_p=top_p)).distribution(logits)
    ref_tokens, ref_probs = _nucleus_reference(logits, 1.0, top_p)
    assert len(tokens) > 256 or top_p == 0.3
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-9)
    k_tokens, _ = Sampler(SamplingParams(temperature=1.0, top_k=1000)).distribution(logits)
    np.testing.assert_array_equal(k_tokens, np.argsort(-logits.astype(np.float64), kind="stable")[:1000])


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(temperature="hot"), "temperature"),
    (dict(top_k=-1), "top-k"), (dict(top_k=1.5), "top-k"), (dict(top_k=True), "top-k"),
    (dict(top_p=0.0), "top-p"), (dict(top_p=1.5), "top-p"), (dict(top_p=float("nan")), "top-p"),
    (dict(top_p=-0.5), "top-p"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed="x"), "seed"),
])
def test_invalid_params_raise_one_line_errors(kw, match) -> None:
    with pytest.raises(MoteError, match=match) as e:
        SamplingParams(**kw)
    assert "\n" not in str(e.value)


def test_valid_edge_params_and_bad_logits() -> None:
    p = SamplingParams(temperature=np.float32(0.7), top_k=np.int64(5), top_p=1, seed=np.int64(3))
    assert (type(p.temperature), type(p.top_k), type(p.top_p), type(p.seed)) == (float, int, float, int)
    s = Sampler(SamplingParams(temperature=1.0, seed=0))
    with pytest.raises(ValueError, match="finite"):
        s.sample(np.full(4, -np.inf, np.float32))
    with pytest.raises(ValueError, match="finite"):
        s.sample(np.array([0.0, np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="vector"):
        s.sample(np.zeros((1, 4), np.float32))
    # masked (-inf) tokens are never drawn
    logits = np.array([0.0, -np.inf, 0.0, -np.inf], np.float32)
    assert {s.sample(logits) for _ in range(200)} == {0, 2}
