"""`mote-edge export` end to end on the synth tiny models: exact quantizer output, fp16 parity,
ONNX vision parity, MoE-LLaVA export, info / verify, and one-line errors for bad inputs."""

import json

import numpy as np
import pytest

from conftest import import_oracle, run_cli

torch = import_oracle("torch")

from mote_edge.exporters.checkpoint import Checkpoint  # noqa: E402
from mote_edge.exporters.export import ExportOptions, export_checkpoint  # noqa: E402
from mote_edge.format import MoteFile  # noqa: E402
from mote_edge.format.encoding import decode  # noqa: E402
from mote_edge.format.verify import verify_file  # noqa: E402


def _export(ckpt, path, **kw):
    return export_checkpoint(ckpt, path, ExportOptions(progress=False, **kw))


@pytest.fixture(scope="module")
def tiny_mote(tiny_b4_mote):
    return tiny_b4_mote


def _stored(f: MoteFile, name: str, layer=None, expert=None):
    if expert is None:
        return f.read_tensor(name), f.tensors[name]
    proj = name.rsplit(".", 2)[-2]
    entry = next(t for t in f.experts[(layer, expert)].tensors if t.name == proj)
    return f.read_expert(layer, expert)[proj], entry


def spec_ternary_trits(packed: np.ndarray, K: int) -> np.ndarray:
    """docs/FORMAT.md 6.2 by hand: packed u8 [N, ceil(K/5)] -> trits int8 [N, K]."""
    q = packed.astype(np.int32)
    digits = []
    for _ in range(5):  # d = (3q) >> 8; q = (3q) & 255 yields d0 .. d4
        digits.append((3 * q) >> 8)
        q = (3 * q) & 255
    trits = np.stack(digits, axis=-1).astype(np.int8) - 1  # [N, bytes, 5]: byte j's trits t0 .. t4
    N, full = packed.shape[0], K // 320
    out = np.zeros((N, K), np.int8)
    for b in range(full):  # byte j of a 64-byte block holds columns j, j+64, .., j+256
        out[:, 320 * b:320 * (b + 1)] = trits[:, 64 * b:64 * (b + 1)].transpose(0, 2, 1).reshape(N, 320)
    r = K - 320 * full
    if r:  # byte j of the B-byte tail holds columns j, j+B, .., j+4B; columns >= K hold the trit 0
        B = -(-r // 5)
        tail = trits[:, 64 * full:64 * full + B].transpose(0, 2, 1).reshape(N, 5 * B)
        assert not tail[:, r:].any()
        out[:, 320 * full:] = tail[:, :r]
    return out


def spec_intn_q(packed: np.ndarray, K: int, bits: int, G: int) -> np.ndarray:
    """docs/FORMAT.md 6.1 by hand: packed u8 [N, ceil(K/G) * G * bits / 8] -> q [N, ceil(K/G) * G]."""
    N, groups = packed.shape[0], -(-K // G)
    rows = packed.reshape(N, groups, G * bits // 8).astype(np.int32)
    q = np.zeros((N, groups, G), np.int32)
    offset = 0
    for shift, p in ([(0, 2), (2, 1)] if bits == 3 else [(0, bits)]):  # bits 3: the 2-bit plane, then the 1-bit
        m = G * p // 8
        plane = rows[:, :, offset:offset + m]
        for i in range(8 // p):  # byte j holds value j + i*m at bits [i*p, (i+1)*p)
            q[:, :, i * m:(i + 1) * m] |= ((plane >> (i * p)) & ((1 << p) - 1)) << shift
        offset += m
    return q.reshape(N, groups * G)


def assert_stored_as_the_spec_says(w: np.ndarray, parts: dict, scheme) -> None:
    """`w` [N, K] (float32) stored under `scheme`, checked from the bytes with the rules of docs/FORMAT.md
    and DESIGN.md: f16/f32 exact; ternary: gamma = mean|W|, trits = clip(round(W / (gamma + 1e-5)), -1, 1);
    int-N RTN: the group's scale is fp16((max(W, 0) - min(W, 0)) / (2^bits - 1)), the zero-point an integer,
    q = clip(round(W / scale) + zero, 0, 2^bits - 1), so every weight is within one step of scale * (q - zero)
    (half a step inside the range; the rounded zero-point can push an extreme half a step out)."""
    if scheme.kind in ("f16", "f32"):
        np.testing.assert_array_equal(parts["data"], w.astype(parts["data"].dtype))
    elif scheme.kind == "ternary":
        gamma = float(parts["gamma"][0])
        assert gamma == pytest.approx(float(np.abs(w.astype(np.float64)).mean()), rel=1e-5)
        want = np.clip(np.round(w / (np.float32(gamma) + np.float32(1e-5))), -1, 1)
        np.testing.assert_array_equal(spec_ternary_trits(parts["packed"], w.shape[1]), want)
    else:
        N, K = w.shape
        G, bits, qmax = scheme.group_size, scheme.bits, 2 ** scheme.bits - 1
        padded = np.zeros((N, -(-K // G) * G), np.float32)
        padded[:, :K] = w
        groups = padded.reshape(N, -1, G)
        span = np.maximum(groups.max(-1), 0) - np.minimum(groups.min(-1), 0)
        np.testing.assert_array_equal(parts["scales"], (span / np.float32(qmax)).astype(np.float16))
        assert np.array_equal(parts["zeros"], np.round(parts["zeros"]))
        q = spec_intn_q(parts["packed"], K, bits, G)[:, :K]
        scales = np.repeat(parts["scales"].astype(np.float32), G, axis=1)[:, :K]
        zeros = np.repeat(parts["zeros"].astype(np.float32), G, axis=1)[:, :K]
        np.testing.assert_array_equal(q, np.clip(np.rint(w / scales) + zeros, 0, qmax))
        assert (np.abs(w - scales * (q - zeros)) <= scales).all()


def test_ternary_byte_by_hand():
    # trits (1, 0, -1, 1, 1): digits (2, 1, 0, 2, 2), v = 162 + 27 + 0 + 6 + 2 = 197, byte = ceil(197 * 256 / 243) = 208
    np.testing.assert_array_equal(spec_ternary_trits(np.array([[208]], np.uint8), 5), [[1, 0, -1, 1, 1]])


def test_encoders_write_what_the_spec_reads():
    """Rows longer than one 320-column ternary block (tiny's rows are not), every int-N width, K not a
    multiple of the group."""
    from mote_edge.format.encoding import encode
    from mote_edge.quant.recipe import Scheme

    w = np.random.default_rng(0).normal(0, 0.02, size=(3, 700)).astype(np.float32)
    assert_stored_as_the_spec_says(w, encode(w, Scheme("ternary")), Scheme("ternary"))
    for bits in (2, 3, 4, 8):
        scheme = Scheme("intn", bits, 32, "rtn")
        assert_stored_as_the_spec_says(w[:, :680], encode(w[:, :680], scheme), scheme)


def test_every_tensor_is_stored_as_the_spec_says(tiny_ckpt, tiny_mote):
    ckpt = Checkpoint.open(tiny_ckpt)
    with MoteFile(tiny_mote) as f:
        verify_file(f)
        assert f.recipe.roles["attn"].bits == 4 and f.recipe.roles["embed"].bits == 8
        for spec in ckpt.specs:
            if spec.role in ("vision", "projector"):
                continue
            parts, entry = _stored(f, spec.name, spec.layer, spec.expert)
            w = ckpt.tensor(spec.name)
            assert_stored_as_the_spec_says(w.reshape(w.shape[0], -1) if entry.scheme.kind != "f32" else w, parts,
                                           entry.scheme)
        roles = {t.role for t in f.tensors.values()}
        assert roles == {"embed", "lm_head", "attn", "attn_bias", "norm", "ffn", "router", "shared_expert"}
        assert {t.scheme.kind for e in f.experts.values() for t in e.tensors} == {"ternary"}


def test_bits16_dequantizes_to_the_checkpoint_within_fp16_rounding(tiny_ckpt, export_once):
    path = export_once(tiny_ckpt, bits=16, group_size=32)  # the group size of --bits 16 is unused: fp16 everywhere
    ckpt = Checkpoint.open(tiny_ckpt)
    with MoteFile(path) as f:
        for spec in ckpt.specs:
            if spec.role in ("vision", "projector") or spec.role == "ternary_expert":
                continue
            parts, entry = _stored(f, spec.name, spec.layer, spec.expert)
            assert entry.scheme.kind in ("f16", "f32"), spec.name
            w = ckpt.tensor(spec.name)
            np.testing.assert_array_equal(decode(parts, entry.scheme, spec.shape),
                                          w.astype(np.float16).astype(np.float32) if entry.scheme.kind == "f16" else w)


@pytest.mark.parametrize("bits,tol", [(8, 0.1), (16, 2e-3)])
def test_embedded_onnx_vision_matches_the_torch_reference(tiny_ckpt, tmp_path, bits, tol):
    from mote_edge.exporters.reference import load_reference_model
    from mote_edge.runtime.vision import run_vision_onnx

    path = tmp_path / f"v{bits}.mote"
    _export(tiny_ckpt, path, bits=4, vision_bits=bits)
    model = load_reference_model(tiny_ckpt)
    s = model.config.vision.image_size
    pixels = np.random.default_rng(0).normal(size=(1, 3, s, s)).astype(np.float32)
    with MoteFile(path) as f:
        assert f.vision.info["weight_bits"] == bits
        got = run_vision_onnx(f.read_vision(), pixels)
    with torch.no_grad():
        want = model.encode_image(torch.from_numpy(pixels)).numpy()
    assert got.shape == want.shape == (1, model.config.vision.num_patches, model.config.decoder.hidden_size)
    assert np.abs(got - want).max() / np.abs(want).max() < tol


def test_moe_llava_fp_experts_export_with_intn(tiny_fp_ckpt, tmp_path):
    path = tmp_path / "fp.mote"
    _export(tiny_fp_ckpt, path, bits=3, group_size=64, recipe="fp_expert=2g32,embed=4")
    with MoteFile(path) as f:
        verify_file(f)
        kinds = {(t.scheme.kind, t.scheme.bits, t.scheme.group_size) for e in f.experts.values() for t in e.tensors}
        assert kinds == {("intn", 2, 32)}
        assert f.tensors["model.embed_tokens.weight"].scheme.bits == 4
        assert f.tensors["model.layers.1.mlp.gate_proj.weight"].scheme.bits == 3
        assert not any(t.role == "shared_expert" for t in f.tensors.values())


def test_gptq_export_records_the_method_and_changes_weights(tiny_ckpt, tmp_path):
    rtn, gptq = tmp_path / "rtn.mote", tmp_path / "gptq.mote"
    _export(tiny_ckpt, rtn, bits=3, group_size=32)
    _export(tiny_ckpt, gptq, bits=3, group_size=32, method="gptq", calib_samples=4)
    name = "model.layers.1.mlp.down_proj.weight"
    with MoteFile(rtn) as a, MoteFile(gptq) as b:
        verify_file(b)
        assert b.tensors[name].scheme.method == "gptq"
        assert not np.array_equal(a.read_tensor(name)["packed"], b.read_tensor(name)["packed"])
        # the embedding has no Hessian: GPTQ falls back to RTN there, bit for bit
        e = "model.embed_tokens.weight"
        np.testing.assert_array_equal(a.read_tensor(e)["packed"], b.read_tensor(e)["packed"])


def test_info_reports_ternary_bits_per_weight_and_memory(tiny_mote):
    r = run_cli("info", str(tiny_mote), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    tern = d["roles"]["ternary_expert"]
    assert tern["params"] == 2 * 4 * 3 * 64 * 160
    # tiny rows are short (K = 64 or 160): ceil(K/5) bytes + gamma + 64-byte part alignment
    gate_or_up = 2112 + 4  # [160, 64]: 160 rows x ceil(64/5) = 2080 bytes, gamma at the next 64 (2112)
    down = 64 * 32 + 4  # [64, 160]: 64 rows x 32 bytes, gamma right after (2048 is 64-aligned)
    assert tern["bytes"] == 2 * 4 * (2 * gate_or_up + down)
    assert 1.6 < tern["bits_per_weight"] < 1.65
    assert d["memory"]["minimum_budget_bytes"] < d["memory"]["full_cache_bytes"]
    text = run_cli("info", str(tiny_mote))
    assert text.returncode == 0 and "ternary_expert" in text.stdout and "minimum feasible budget" in text.stdout


def test_verify_cli_exit_codes(tiny_mote, tmp_path):
    r = run_cli("verify", str(tiny_mote))
    assert r.returncode == 0 and "OK" in r.stdout
    bad = tmp_path / "bad.mote"
    data = bytearray(tiny_mote.read_bytes())
    data[-5000] ^= 0x40
    bad.write_bytes(bytes(data))
    r = run_cli("verify", str(bad))
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: bad.mote:")


@pytest.mark.parametrize("args,message", [
    (["--bits", "5"], "unsupported bits 5"),
    (["--group-size", "100"], "unsupported group size 100"),
    (["--method", "awq"], "unsupported method 'awq'"),
    (["--recipe", "experts=4"], "unknown role 'experts' in --recipe"),
    (["--recipe", "router=4"], "role router is stored as fp32 or fp16 only"),
    (["--vision-bits", "4"], "unsupported vision bits 4"),
])
def test_bad_export_options_are_one_line_errors(tiny_ckpt, tmp_path, args, message):
    r = run_cli("export", str(tiny_ckpt), "-o", str(tmp_path / "m.mote"), *args)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and message in r.stderr
    assert not (tmp_path / "m.mote").exists()


def test_bad_checkpoints_are_one_line_errors(tiny_ckpt, tmp_path):
    r = run_cli("export", str(tmp_path / "missing"), "-o", str(tmp_path / "m.mote"))
    assert r.returncode == 1 and "checkpoint directory not found" in r.stderr
    out = tmp_path / "exists.mote"
    out.write_bytes(b"x")
    r = run_cli("export", str(tiny_ckpt), "-o", str(out))
    assert r.returncode == 1 and "exists (use --force to overwrite)" in r.stderr


@pytest.mark.parametrize("preset", ["qwen2.5-0.5b-e8", "qwen2.5-1.5b-e8"])
def test_real_preset_expert_records_are_at_most_1_61_bits_per_weight(preset, tmp_path):
    """Lay out (no data) the expert section of the real presets through the same writer plan."""
    from mote_edge.exporters.export import assign_offsets
    from mote_edge.format import MoteWriter
    from mote_edge.format.stats import bits_per_weight, size_stats
    from mote_edge.presets import preset_config
    from mote_edge.quant.recipe import Recipe
    from mote_edge.schema import checkpoint_tensors

    cfg = preset_config(preset)
    w = MoteWriter(tmp_path / "never-written.mote", {})
    assign_offsets(w, checkpoint_tensors(cfg), Recipe.default(4))
    stats = size_stats(w.tensors.values(), w.experts.values(), None)
    tern = stats["by_role"]["ternary_expert"]
    assert tern["params"] == len(cfg.moe_layers) * 8 * 3 * cfg.decoder.hidden_size * cfg.decoder.intermediate_size
    assert bits_per_weight(tern) <= 1.61
    assert stats["expert_record_max_bytes"] * 8 / (3 * cfg.decoder.hidden_size * cfg.decoder.intermediate_size) <= 1.61
