"""The .mote container: round trips, every reader error, and a mutation fuzz."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from mote_edge.errors import FormatError
from mote_edge.format import MoteFile, MoteWriter
from mote_edge.format.constants import HEADER_SIZE, SECTION_ALIGN, TENSOR_ALIGN, VERSION_MINOR
from mote_edge.format.encoding import decode, encode
from mote_edge.presets import preset_config
from mote_edge.quant.intn import quantize_intn
from mote_edge.quant.recipe import F16, F32, TERNARY, Recipe, Scheme
from mote_edge.quant.ternary import absmean_ternarize, pack_ternary

RNG = np.random.default_rng(0)
TENSORS = {  # name: (role, scheme, array)
    "a.f32": ("norm", F32, RNG.normal(size=(37,)).astype(np.float32)),
    "b.f16": ("embed", F16, RNG.normal(size=(5, 7)).astype(np.float32)),
    "c.int4": ("attn", Scheme("intn", 4, 32, "rtn"), RNG.normal(size=(9, 70)).astype(np.float32)),
    "d.int3": ("attn", Scheme("intn", 3, 64, "rtn"), RNG.normal(size=(3, 130)).astype(np.float32)),
    "e.int8": ("lm_head", Scheme("intn", 8, 128, "rtn"), RNG.normal(size=(4, 128)).astype(np.float32)),
}
EXPERT = {p: RNG.normal(size=shape).astype(np.float32) for p, shape in
          (("gate_proj", (16, 333)), ("up_proj", (16, 333)), ("down_proj", (333, 16)))}
VISION = bytes(range(256)) * 10


def _metadata():
    return {"format": "mote", "model": preset_config("tiny").to_dict(), "recipe": Recipe.default(4).to_dict()}


def write_sample(path, n_experts=2):
    with MoteWriter(path, _metadata()) as w:
        for name, (role, scheme, arr) in TENSORS.items():
            w.add_tensor(name, role, scheme, arr.shape)
        for e in range(n_experts):
            w.add_expert(0, e, [(p, "ternary_expert", TERNARY, a.shape) for p, a in EXPERT.items()])
        w.add_vision(len(VISION), {"format": "onnx"})
        w.metadata["sizes"] = {}
        w.begin()
        for e in reversed(range(n_experts)):  # any order
            w.write_expert(0, e, {p: encode(a * (e + 1), TERNARY) for p, a in EXPERT.items()})
        w.write_vision(VISION)
        for name, (role, scheme, arr) in TENSORS.items():
            w.write_tensor(name, encode(arr, scheme))
        w.finalize()
    return path


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("fmt") / "m.mote")


def test_round_trip_every_scheme(sample):
    with MoteFile(sample, container_only=True) as f:
        assert f.header.data_offset % SECTION_ALIGN == 0
        for name, (role, scheme, arr) in TENSORS.items():
            t = f.tensors[name]
            assert t.offset % TENSOR_ALIGN == 0 and t.role == role and t.scheme == scheme
            parts = f.read_tensor(name)
            want = encode(arr, scheme)
            for k in want:
                np.testing.assert_array_equal(parts[k], want[k])
            np.testing.assert_array_equal(decode(parts, scheme, arr.shape), decode(want, scheme, arr.shape))
        for e in range(2):
            assert f.experts[(0, e)].offset % SECTION_ALIGN == 0
            got = f.read_expert(0, e)
            for p, a in EXPERT.items():
                trits, gamma = absmean_ternarize(a * (e + 1))
                np.testing.assert_array_equal(got[p]["packed"], pack_ternary(trits))
                assert got[p]["gamma"][0] == gamma
        assert f.read_vision() == VISION
        f.verify_all()


def test_decode_matches_the_quantizers():
    w = TENSORS["c.int4"][2]
    q = quantize_intn(w, 4, 32)
    from mote_edge.quant.intn import dequantize_intn
    np.testing.assert_array_equal(decode(encode(w, Scheme("intn", 4, 32, "rtn")), Scheme("intn", 4, 32, "rtn"),
                                         w.shape), dequantize_intn(q))
    trits, gamma = absmean_ternarize(EXPERT["up_proj"])
    np.testing.assert_array_equal(decode(encode(EXPERT["up_proj"], TERNARY), TERNARY, (16, 333)), trits * gamma)


def test_writer_state_machine(tmp_path):
    w = MoteWriter(tmp_path / "x.mote", _metadata())
    w.add_tensor("t", "norm", F32, (4,))
    with pytest.raises(FormatError, match="call begin"):
        w.write_tensor("t", {"data": np.zeros(4, np.float32)})
    w.begin()
    with pytest.raises(FormatError, match="layout is fixed"):
        w.add_tensor("u", "norm", F32, (4,))
    with pytest.raises(FormatError, match="expected f32 \\[4\\]"):
        w.write_tensor("t", {"data": np.zeros(5, np.float32)})
    with pytest.raises(FormatError, match="never written"):
        w.finalize()
    w.abort()
    assert not (tmp_path / "x.mote").exists() and not (tmp_path / "x.mote.partial").exists()


def _mutate(src, dst, fn):
    data = bytearray(src.read_bytes())
    dst.write_bytes(bytes(fn(data)))
    return dst


def _one_line_error(path, verify=True) -> str:
    with pytest.raises(FormatError) as e:
        with MoteFile(path, container_only=True) as f:
            if verify:
                f.verify_all()
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg
    return msg


def _set(data, offset, raw):
    data[offset:offset + len(raw)] = raw
    return data


def _reheader(data, **fields):
    """Rewrite header fields and fix up the header CRC (to reach the checks behind it)."""
    from mote_edge.format.constants import HEADER
    vals = list(HEADER.unpack(bytes(data[:HEADER_SIZE])))
    names = ["magic", "major", "minor", "flags", "crc", "moff", "mlen", "doff", "fsize", "mcrc"]
    for k, v in fields.items():
        vals[names.index(k)] = v
    vals[4] = 0
    vals[4] = zlib.crc32(HEADER.pack(*vals))
    data[:HEADER_SIZE] = HEADER.pack(*vals)
    return data


def test_reader_errors_name_the_problem(sample, tmp_path):
    size = sample.stat().st_size
    m = lambda fn: _mutate(sample, tmp_path / "bad.mote", fn)  # noqa: E731
    assert "not a .mote file" in _one_line_error(m(lambda d: _set(d, 0, b"GGUF")))
    assert "not a .mote file" in _one_line_error(m(lambda d: d[:2]))
    assert f"truncated: expected {size} bytes, got {size - 1}" in _one_line_error(m(lambda d: d[:-1]))
    assert f"truncated: expected at least 64 bytes, got 40" in _one_line_error(m(lambda d: d[:40]))
    assert f"3 unexpected bytes after the end" in _one_line_error(m(lambda d: d + b"abc"))
    assert f"unsupported .mote version 2.{VERSION_MINOR}" in _one_line_error(m(lambda d: _reheader(d, major=2)))
    assert "header checksum mismatch" in _one_line_error(m(lambda d: _set(d, 20, b"\x01")))
    assert "unknown header flags" in _one_line_error(m(lambda d: _reheader(d, flags=6)))
    assert "trailer is corrupt" in _one_line_error(m(lambda d: _set(d, len(d) - 24, b"X")))
    assert "metadata checksum mismatch" in _one_line_error(m(lambda d: _set(d, HEADER_SIZE + 3, b"#")))
    with MoteFile(sample, container_only=True) as f:
        t = f.tensors["c.int4"]
        e = f.experts[(0, 1)]
        doff = f.header.data_offset
        gap = doff + f.tensors["e.int8"].offset + f.tensors["e.int8"].nbytes + 1
    assert "checksum mismatch in tensor c.int4" in _one_line_error(m(lambda d: _set(d, doff + t.offset + 5, b"\xff")))
    assert "checksum mismatch in expert (0, 1)" in _one_line_error(m(lambda d: _set(d, doff + e.offset + 9, b"\xee")))
    assert "non-zero padding" in _one_line_error(m(lambda d: _set(d, gap, b"\x01")))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FormatError, match="model file not found"):
        MoteFile(tmp_path / "nope.mote")
    with pytest.raises(FormatError, match="is a directory"):
        MoteFile(tmp_path)


FUZZ = r"""
import random, sys, traceback
from pathlib import Path
from mote_edge.errors import FormatError
from mote_edge.format import MoteFile
src = Path(sys.argv[1]).read_bytes()
out = Path(sys.argv[2])
rng = random.Random(int(sys.argv[3]))
ok = bad = 0
for i in range(int(sys.argv[4])):
    d = bytearray(src)
    kind = rng.choice(["flip", "flip", "flip", "truncate", "extend", "zero", "header"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
    elif kind == "header":
        d[rng.randrange(64)] = rng.randrange(256)
    elif kind == "truncate":
        d = d[:rng.randrange(len(d))]
    elif kind == "extend":
        d += bytes(rng.randrange(256) for _ in range(rng.randint(1, 100)))
    else:
        p = rng.randrange(len(d)); d[p:p + 64] = bytes(min(64, len(d) - p))
    out.write_bytes(bytes(d))
    try:
        with MoteFile(out, container_only=True) as f:
            f.verify_all()
        if d != src:
            print("accepted a changed file:", kind, file=sys.stderr)
            sys.exit(3)
        ok += 1
    except FormatError as e:
        assert "\n" not in str(e), repr(str(e))
        bad += 1
print(ok, bad)
"""


def test_fuzz_mutations_only_ever_give_one_line_format_errors(sample, tmp_path):
    """Flip / truncate / extend random bytes many times: a FormatError or an intact file, never a
    traceback or a hang. Every byte is covered by a checksum or the zero-padding check, so a
    mutation that changes a byte must be caught (the script fails on any other outcome)."""
    r = subprocess.run([sys.executable, "-c", FUZZ, str(sample), str(tmp_path / "fz.mote"), "7", "400"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ok, bad = map(int, r.stdout.split())
    assert ok + bad == 400 and bad > 350  # ok = mutations that changed nothing (e.g. zeroing zeros)
