"""The runtime against the torch reference on the same exported weights, the expert cache under
every budget, and one-line errors for bad input."""

import json

import numpy as np
import pytest

from conftest import REPO, import_oracle, run_cli

torch = import_oracle("torch")

from faithful_reference import assert_embeddings_match, faithful_reference  # noqa: E402

from mote_edge.chat import encode_prompt  # noqa: E402
from mote_edge.format import MoteFile  # noqa: E402
from mote_edge.runtime.engine import Engine  # noqa: E402

IMAGE = REPO / "examples" / "images" / "shapes.png"
PROMPT = "What color is the circle?"


@pytest.fixture(scope="module", params=[16, 4])
def exported(request, tiny_ckpt, export_once):
    # --bits 16 with an fp16 vision tower: the parity configuration (tests/test_parity_matrix.py vision_bits_for)
    return export_once(tiny_ckpt, bits=request.param, group_size=32, vision_bits=16 if request.param == 16 else 8)


@pytest.mark.parametrize("with_image", [False, True])
def test_logits_and_32_greedy_tokens_match_the_reference(tiny_ckpt, exported, with_image):
    ref = faithful_reference(tiny_ckpt, exported)
    image = IMAGE if with_image else None
    with Engine.load(exported, threads=1) as engine:
        x = engine._prompt_embeddings(PROMPT, image)
        got_logits = engine.decoder.forward(x)
        got_tokens = list(engine.generate_ids(PROMPT, image, max_new_tokens=32))
        ids = encode_prompt(engine.tokenizer, PROMPT, image is not None)
        pixels = None
        if image is not None:
            from mote_edge.image import load_image, preprocess
            pixels = torch.from_numpy(preprocess(load_image(image), engine.image_config))[None]
    with torch.no_grad():
        embeds = ref.embed(torch.tensor(ids), pixels)
        want_logits = ref.forward_embeds(embeds[None])[0, -1].numpy()
    with MoteFile(exported) as f:
        assert_embeddings_match(x, embeds.numpy(), ids, f.config.vision.num_patches, f.recipe.vision_bits)
    # Relative to the logit scale. fp16 weights: only float32 summation order differs -> 1e-4.
    # int-N weights: a summation-order difference can flip one int8 activation rounding (x*s at
    # exactly .5), a discrete step of 1/127 of that group's max |x| -> 2e-2. Tokens must still agree.
    with MoteFile(exported) as f:
        tol = 1e-4 if f.recipe.roles["attn"].kind == "f16" else 2e-2
    assert np.abs(got_logits - want_logits).max() <= tol * np.abs(want_logits).max()
    want_tokens = ref.generate(ids, pixels, max_new_tokens=32, eos_token_id=0)
    assert got_tokens == want_tokens and len(got_tokens) > 0


def _min_budget(path, vision: bool = True) -> int:
    from mote_edge.runtime.plan import minimum_plan_file
    with MoteFile(path) as f:
        return minimum_plan_file(f, 512, vision=vision).total_bytes


def test_same_output_at_every_budget_and_counters_add_up(exported):
    with Engine.load(exported, threads=1) as full:
        want = list(full.generate_ids(PROMPT, IMAGE, max_new_tokens=12))
        fs = full.experts.stats
        distinct_used = len(full.experts.resident)
    assert fs.misses == distinct_used and fs.evictions == 0  # full cache: each used expert read once
    minimum = _min_budget(exported)
    with MoteFile(exported) as f:
        sizes = {e.nbytes for e in f.experts.values()}
    assert len(sizes) == 1  # every record the same size: bytes read = misses x record
    record = sizes.pop()
    slab = -(-record // 4096) * 4096
    for extra_slabs in (0, 1, 3, 100):
        budget = minimum + extra_slabs * slab
        with Engine.load(exported, memory_budget=budget, threads=1) as engine:
            assert engine.plan.total_bytes <= budget
            got = list(engine.generate_ids(PROMPT, IMAGE, max_new_tokens=12))
            st = engine.experts.stats
        assert got == want, f"a budget with {engine.plan.expert_slabs} slabs changed the output"
        assert st.hits + st.misses == fs.hits + fs.misses  # same routing -> same expert uses
        assert st.misses >= distinct_used and st.bytes_read == st.misses * record
        if engine.plan.expert_slabs < distinct_used:
            assert st.evictions > 0 and st.hit_rate < fs.hit_rate


def test_report_has_the_promised_fields(exported, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("run", str(exported), "--prompt", PROMPT, "--image", str(IMAGE), "--max-new-tokens", "4",
                "--report", "--report-json", str(out))
    assert r.returncode == 0, r.stderr
    for needle in ("peak RSS", "hit rate", "time to first token", "decode", "image encode", "baseline RSS"):
        assert needle in r.stderr
    d = json.loads(out.read_text())
    assert d["experts"]["hits"] + d["experts"]["misses"] > 0 and d["timing"]["prefill_tokens"] > 16


@pytest.mark.parametrize("args,message", [
    (["--memory-budget", "100kB"], "is below the minimum"),
    (["--memory-budget", "lots"], "invalid memory budget"),
    (["--image", "missing.png"], "missing.png"),
    (["--max-context", "20", "--image", str(IMAGE)], "exceeds the context of 20"),
])
def test_bad_run_inputs_are_one_line_errors(exported, args, message):
    r = run_cli("run", str(exported), "--prompt", PROMPT, *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_truncated_image_is_a_one_line_error(exported, tmp_path):
    bad = tmp_path / "half.png"
    bad.write_bytes(IMAGE.read_bytes()[:200])
    r = run_cli("run", str(exported), "--prompt", PROMPT, "--image", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image") and "half.png" in last


def test_corrupt_model_is_a_one_line_error(exported, tmp_path):
    bad = tmp_path / "bad.mote"
    bad.write_bytes(exported.read_bytes()[:-7])
    r = run_cli("run", str(bad), "--prompt", PROMPT)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "truncated" in r.stderr


RSS_RUN = r"""
import json, sys
from mote_edge.runtime.engine import Engine
images = [None, sys.argv[3], sys.argv[3]] if sys.argv[4] == "1" else [None, None]
with Engine.load(sys.argv[1], memory_budget=int(sys.argv[2]), threads=2, vision=sys.argv[4] == "1") as engine:
    for image in images:
        list(engine.generate("What color is the circle?", image=image, max_new_tokens=24))
    r = engine.report()
print(json.dumps({"peak_over_baseline": r["memory"]["peak_over_baseline"], "plan": r["plan"]["total_bytes"],
                  "slabs": r["experts"]["slabs"], "misses": r["experts"]["misses"],
                  "kept_while_encoding": engine.plan.kept_while_encoding}))
"""


def _rss_run(exported, budget: int, vision: bool) -> dict:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", RSS_RUN, str(exported), str(budget), str(IMAGE), str(int(vision))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_peak_rss_over_baseline_stays_within_the_budget_text_only(exported):
    budget = _min_budget(exported, vision=False) + 2 * 8192  # two slabs above the minimum: evictions happen
    d = _rss_run(exported, budget, vision=False)
    assert d["plan"] <= budget and d["slabs"] < 8 and d["misses"] > d["slabs"]
    assert 0 < d["peak_over_baseline"] <= budget, d


def test_peak_rss_over_baseline_stays_within_the_budget_with_images(exported):
    budget = _min_budget(exported, vision=True)  # the native encoder: one block at a time
    d = _rss_run(exported, budget, vision=True)
    assert d["plan"] <= budget and d["kept_while_encoding"] <= d["slabs"]
    assert 0 < d["peak_over_baseline"] <= budget, d


def test_expert_loads_leave_no_second_copy_in_the_page_cache(exported, tmp_path):
    from mote_edge.runtime.memory import drop_page_cache, filesystem_type, page_cache_bytes
    if filesystem_type(exported) in ("tmpfs", "ramfs"):
        pytest.skip("tmpfs pages cannot be dropped from the page cache")
    copy = tmp_path / "m.mote"  # a file of our own: page_cache_bytes needs to own it
    copy.write_bytes(exported.read_bytes())
    with open(copy, "rb") as fh:
        os_fd = fh.fileno()
        __import__("os").fsync(os_fd)
        drop_page_cache(os_fd)
    if page_cache_bytes(copy) is None:
        pytest.skip("mincore residency is not available here")
    with Engine.load(copy, memory_budget=_min_budget(copy) + 8192, threads=1) as engine:
        list(engine.generate_ids(PROMPT, IMAGE, max_new_tokens=12))
        assert engine.experts.stats.misses > 2
        assert page_cache_bytes(copy) == 0


def test_ignore_eos_yields_exactly_max_new_tokens(exported):
    """Without ignore_eos an EOS ends the answer and is not yielded; with it, exactly
    max_new_tokens ids come and the ones before the first EOS are the same answer."""
    eos_id = 0
    with Engine.load(exported) as engine:
        eos_id = engine.tokenizer.eos_id
        plain = list(engine.generate_ids(PROMPT, IMAGE, max_new_tokens=40))
        forced = list(engine.generate_ids(PROMPT, IMAGE, max_new_tokens=40, ignore_eos=True))
    assert len(forced) == 40
    assert eos_id not in plain
    assert forced[:len(plain)] == plain
    if len(plain) < 40:  # the model stopped: the forced run shows the EOS where it stopped
        assert forced[len(plain)] == eos_id


def test_streamed_weights_live_in_the_arena_and_fused_groups_are_not_copied_twice(exported):
    """int-N / ternary resident weights are read into one huge-page arena; q/k/v and gate/up are
    fused there at load (no concatenated second copy), and the arena holds exactly what it planned."""
    with Engine.load(exported, threads=1) as eng:
        w, arena = eng.weights, eng.weights.arena
        assert arena.used <= arena.capacity
        streamed = {n for n, e in w.entries.items() if e.scheme.kind in ("intn", "ternary")}
        if not streamed:  # --bits 16: every resident tensor is f16, nothing is streamed as packed
            assert arena.capacity == 0
            return
        attn = eng.decoder.layers[0].attn
        fused = attn.qkv.fused
        assert fused is not None and attn.qkv.parts is None
        assert fused.w.N == sum(w.entries[f"model.layers.0.self_attn.{p}_proj.weight"].shape[0] for p in "qkv")
        for arr in (fused.w.packed, fused.w.scales, fused.w.zeros, attn.o.w.packed):
            assert np.shares_memory(arr, arena.buffer)
        expected = sum(w.entries[n].nbytes for n in streamed)
        assert expected <= arena.capacity <= expected + 64 * 3 * len(streamed)
        # the plan covers the arena as allocated (alignment and huge-page rounding included)
        from mote_edge.runtime.hugepages import huge_rounded
        assert eng.plan.resident_bytes >= w.nbytes - expected + huge_rounded(arena.capacity)


def test_2bit_slab_layout_gives_identical_logits_and_tokens(exported):
    """The 2-bit slab layout is a re-lay of the same trits: every kernel is bit-exact on both layouts,
    so logits match bit for bit, with a full cache and under evictions (conversion on every miss)."""
    from mote_edge.runtime.expert_layout import record_slab_bytes
    from mote_edge.runtime.plan import file_slab_spec, minimum_slabs, plan_file

    runs = {}
    for layout in ("file", "slab2"):
        with Engine.load(exported, threads=1, expert_layout=layout) as eng:
            assert eng.plan.expert_layout == eng.experts.layout == layout
            x = eng._prompt_embeddings(PROMPT, IMAGE)
            runs[layout] = (eng.decoder.forward(x), list(eng.generate_ids(PROMPT, IMAGE, max_new_tokens=12)),
                            list(eng.generate_ids(PROMPT, None, max_new_tokens=12)))
    assert np.array_equal(runs["file"][0], runs["slab2"][0]) and runs["file"][1:] == runs["slab2"][1:]
    with MoteFile(exported) as f:
        file_spec, slab2 = file_slab_spec(f, "file"), file_slab_spec(f, "slab2")
        e = next(iter(f.experts.values()))
        assert any(t.scheme.kind == "ternary" for t in e.tensors)
        assert record_slab_bytes(e, "slab2") > record_slab_bytes(e, "file") == e.nbytes  # 2 bits > 1.6 bits a trit
        assert slab2.slab_bytes >= file_spec.slab_bytes and slab2.staging_bytes >= e.nbytes
        # text only: in this tiny model the vision encoder's phase alone would leave room for every slab
        budget = plan_file(f, 512, minimum_slabs(f.config) + 2, "slab2", vision=False).total_bytes
    with Engine.load(exported, memory_budget=budget, threads=1, expert_layout="slab2", vision=False) as eng:
        assert eng.plan.total_bytes <= budget and eng.plan.expert_slabs < eng.plan.total_experts
        assert list(eng.generate_ids(PROMPT, None, max_new_tokens=12)) == runs["file"][2]
        assert eng.experts.stats.evictions > 0


def test_auto_layout_is_slab2_only_when_every_expert_fits(exported):
    from mote_edge.runtime.plan import fit_file_budget

    with MoteFile(exported) as f:  # text-only plans: the expert cache is what a budget decides there
        assert fit_file_budget(f, 512, None, "auto", vision=False).expert_layout == "slab2"
        file_full = fit_file_budget(f, 512, None, "file", vision=False)
        slab2_full = fit_file_budget(f, 512, None, "slab2", vision=False)
        assert slab2_full.total_bytes > file_full.total_bytes
        between = fit_file_budget(f, 512, file_full.total_bytes, "auto", vision=False)  # all fit as stored
        assert between.expert_layout == "file" and between.expert_slabs == between.total_experts
        assert fit_file_budget(f, 512, slab2_full.total_bytes, "auto", vision=False).expert_layout == "slab2"
        assert fit_file_budget(f, 512, _min_budget(exported, vision=False), "auto", vision=False).expert_layout == "file"
    r = run_cli("run", str(exported), "--prompt", PROMPT, "--expert-layout", "bits")
    assert r.returncode != 0 and "unknown expert layout 'bits'" in r.stderr and "Traceback" not in r.stderr


def test_il16_layout_at_load_keeps_weights_outputs_and_tokens(tiny_ckpt, export_once, monkeypatch):
    """With the AVX-512 kernels the int4 / int8 G = 128 weights are re-laid into the il16 layout in the arena
    (same bytes, same arena: the plan does not change); every Linear / Embedding reads them right on every path
    (the int8 embedding table also serves as the tied lm_head), and greedy tokens are those of the rows layout."""
    from mote_edge.quant import kernels
    from mote_edge.quant.intn import il16_ok
    from mote_edge.runtime import engine as engine_module
    from mote_edge.runtime.weights import ResidentWeights

    path = export_once(tiny_ckpt, bits=4, group_size=128, vision_bits=8)
    rng = np.random.default_rng(0)
    with MoteFile(path) as f:
        rows, il = ResidentWeights(f, 1, "rows"), ResidentWeights(f, 1, "il16")
        assert il.arena.capacity == rows.arena.capacity
        names = [n for n, e in f.tensors.items() if e.scheme.kind == "intn" and len(e.shape) == 2]
        plain = [n for n in names if n in rows._parts]  # not fused at load; the embedding table is the lm_head
        linears = [(n, rows.linear(n), il.linear(n)) for n in plain]
        emb = "model.embed_tokens.weight"
        assert f.tensors[emb].scheme.bits == 8 and il.linear(emb).native_spec()[0] == 4
        linears += [("qkv0", rows.fused_linear([f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]).fused,
                     il.fused_linear([f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]).fused)]
        assert any(b.native_spec()[0] == 4 for _, _, b in linears)
        for name, a, b in linears:
            assert b.native_spec()[0] == (4 if il16_ok(a.w.bits, a.w.group_size, a.N) else 1), name
            for p in kernels.available_paths():
                kernels.set_kernel_path(p)
                for T in (1, 3):
                    x = rng.standard_normal((T, a.K)).astype(np.float32)
                    ya, yb = a(x), b(x)
                    if p == "avx512" and T == 1:  # il16 natively: the scalar group order
                        kernels.set_kernel_path("scalar")
                        ya = a(x)
                        kernels.set_kernel_path(p)
                    assert np.array_equal(ya, yb), (name, p, T)
            kernels.set_kernel_path("auto")
        ids = np.array([0, 5, 17, 3, f.tensors[emb].shape[0] - 1])
        assert np.array_equal(rows.embedding(emb)(ids), il.embedding(emb)(ids))
    tokens = {}
    for layout in ("rows", "il16"):
        monkeypatch.setattr(engine_module, "ResidentWeights", lambda f, threads, lay=layout: ResidentWeights(f, threads, lay))
        with Engine.load(path, threads=1) as eng:
            tokens[layout] = list(eng.generate_ids(PROMPT, IMAGE, max_new_tokens=16))
    assert tokens["rows"] == tokens["il16"]
