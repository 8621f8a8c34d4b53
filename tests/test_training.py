"""The tiny task and the shipped trained checkpoints (DESIGN.md section 7).

Fast: a fixed 200-question held-out set with the torch reference model (about 10-20 s on one core).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import import_oracle

torch = import_oracle("torch")

from mote_edge.training.data import HELDOUT_BASE, QTYPES, TRAIN_BASE, heldout_seeds, make_example, train_seeds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_MOTE = REPO / "examples" / "tiny-mote"
TINY_MOE_FP = REPO / "examples" / "tiny-moe-fp"
ACCURACY_MD = REPO / "docs" / "ACCURACY.md"


def test_generator_is_deterministic():
    for seed in (0, 1, 12345, HELDOUT_BASE + 7):
        a, b = make_example(seed), make_example(seed)
        assert (a.question, a.answer, a.qtype, a.objects) == (b.question, b.answer, b.qtype, b.objects)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert make_example(1).question != make_example(2).question or \
        not np.array_equal(np.asarray(make_example(1).image), np.asarray(make_example(2).image))


def test_splits_are_disjoint_and_answers_are_consistent():
    assert max(train_seeds(10_000_000)) < min(heldout_seeds(1000)) == HELDOUT_BASE > TRAIN_BASE
    seen = set()
    for seed in heldout_seeds(200):
        ex = make_example(seed)
        seen.add(ex.qtype)
        assert ex.answer and " " not in ex.answer
        if ex.qtype == "count" and ex.question == "How many shapes are there?":
            assert ex.answer == str(len(ex.objects))
        if ex.qtype == "color":
            shape = ex.question.removeprefix("What color is the ").removesuffix("?")
            assert [o.color for o in ex.objects if o.shape == shape] == [ex.answer]
    assert seen == set(QTYPES)


def test_task_tokenizer_makes_one_token_answers():
    from mote_edge.tokenizer import Tokenizer

    tok = Tokenizer.from_file(TINY_MOTE / "tokenizer.json")
    assert tok.eos_id == 0
    for seed in heldout_seeds(100):
        assert len(tok.encode(" " + make_example(seed).answer)) == 1


def test_default_tokenizer_asset_is_what_build_tokenizer_makes(capsys):
    from mote_edge.training import build_tokenizer

    assert build_tokenizer.main(["--check"]) == 0, capsys.readouterr().out


def test_shipped_checkpoints_are_small_and_typed():
    from mote_edge.exporters.checkpoint import Checkpoint

    for path, kind, shared in ((TINY_MOTE, "ternary", True), (TINY_MOE_FP, "fp", False)):
        size = sum(f.stat().st_size for f in path.iterdir())
        assert size < 10 * 2 ** 20, f"{path.name} is {size} bytes"
        cfg = Checkpoint.open(path).config
        assert cfg.moe.expert_type == kind and cfg.moe.shared_expert is shared


def _documented_tiny_mote_accuracy() -> float:
    text = ACCURACY_MD.read_text()
    m = re.search(r"tiny-mote.*?200-question.*?([0-9]+(?:\.[0-9]+)?)%", text)
    assert m, "docs/ACCURACY.md does not state the tiny-mote 200-question figure"
    return float(m.group(1))


@pytest.fixture(scope="module")
def tiny_mote_200() -> dict:
    """Exact match of the shipped tiny-mote (torch reference model) on the fixed 200-question set."""
    from mote_edge.training.eval import evaluate

    return evaluate(TINY_MOTE, n=200)


# The bar: >= 80% exact match on the fixed 200-question held-out set (the shipped checkpoint scores 95.5%,
# docs/ACCURACY.md).
def test_shipped_tiny_mote_reaches_80_percent(tiny_mote_200):
    assert 100 * tiny_mote_200["all"] >= 80.0, tiny_mote_200


def test_shipped_tiny_mote_answers_held_out_questions(tiny_mote_200):
    res = tiny_mote_200
    acc = 100 * res["all"]
    assert acc >= 75.0, res  # far above chance (~35%); the 80% bar is the test above
    assert abs(acc - _documented_tiny_mote_accuracy()) <= 2.0, (acc, res)


DEMO_BUDGET = 40 * 10**6  # `make demo`: mote-edge export examples/tiny-mote --bits 4, run --memory-budget 40MB

# The held-out answers through the Engine, in a process of its own: the vision encoder runs gc.collect() after
# every image, which costs ~0.3 s in a process holding torch and pytest's objects (~1 min for 200 images)
# and ~2 ms in a runtime-only one.
HELD_OUT_THROUGH_THE_ENGINE = r"""
import json, sys
from mote_edge.runtime.engine import Engine
from mote_edge.training.data import heldout_seeds, make_example, position_form
assert position_form() == "leftright"  # the form the shipped model was trained on
mote, budget, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
right = 0
with Engine.load(mote, memory_budget=budget, threads=1) as engine:
    for seed in heldout_seeds(n):
        ex = make_example(seed)
        right += "".join(engine.generate(ex.question, ex.image, max_new_tokens=4)).strip() == ex.answer
    report = engine.report()
print(json.dumps({"right": right, "plan": report["plan"]["total_bytes"],
                  "peak_over_baseline": report["memory"]["peak_over_baseline"]}))
"""


def test_shipped_tiny_mote_through_the_runtime_under_the_demo_budget(export_once):
    """`make demo`'s path: the shipped tiny-mote exported at --bits 4 and answered by the Engine under the
    demo's budget, on the fixed 200-question held-out set. Held to the documented 200-question figure minus
    2 standard errors of a 200-question estimate at that accuracy (sqrt(p (1 - p) / 200): 1.5 points at
    95.5%, so the bar is 92.6%); docs/ACCURACY.md's runtime int4 rows are within a point of the reference."""
    import subprocess
    import sys

    mote = export_once(TINY_MOTE, bits=4)
    documented = _documented_tiny_mote_accuracy() / 100
    bar = documented - 2 * (documented * (1 - documented) / 200) ** 0.5
    r = subprocess.run([sys.executable, "-c", HELD_OUT_THROUGH_THE_ENGINE, str(mote), str(DEMO_BUDGET), "200"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert d["plan"] <= DEMO_BUDGET and d["peak_over_baseline"] <= DEMO_BUDGET
    assert d["right"] / 200 >= bar, f"{d['right']}/200 right through the runtime; the bar is {100 * bar:.1f}%"


def test_left_or_right_form_is_deterministic_balanced_and_correct() -> None:
    """The left-or-right position questions: pure functions of the seed, answers balanced, and each
    answer agrees with the object centres (a = the first object named)."""
    from mote_edge.training.data import POS_MARGIN, position_form, set_position_form

    before = position_form()
    set_position_form("leftright")
    try:
        counts = {}
        for seed in range(TRAIN_BASE, TRAIN_BASE + 400):
            ex = make_example(seed, "position")
            assert make_example(seed, "position").question == ex.question
            counts[ex.answer] = counts.get(ex.answer, 0) + 1
            by_name = {f"{o.color} {o.shape}": o for o in ex.objects}
            rel = "left or right of" if " left or right of " in ex.question else "above or below"
            a_name, b_name = ex.question[len("Is the "):-1].split(f" {rel} the ")
            a, b = by_name[a_name], by_name[b_name]
            d = (a.x - b.x) if rel == "left or right of" else (a.y - b.y)
            assert abs(d) >= POS_MARGIN
            assert ex.answer == {"left or right of": ("left", "right"), "above or below": ("above", "below")}[rel][d > 0]
        assert set(counts) == {"left", "right", "above", "below"} and min(counts.values()) > 60
        set_position_form("yesno")  # the earlier form stays available
        assert make_example(TRAIN_BASE, "position").answer in ("yes", "no")
    finally:
        set_position_form(before)
    assert position_form() == before


def test_summary_groups_seeds_and_reports_mean_and_range():
    from mote_edge.training.summary import group_rows, markdown

    def row(model, precision, all_, **kw):
        return dict(model=model, precision=precision, expert_bytes=kw.get("eb"), all=all_,
                    **{q: kw.get(q, all_) for q in QTYPES})

    rows = [row("mote", "runtime --bits 2", 0.80, eb=1000), row("mote@1", "runtime --bits 2", 0.90, eb=1000),
            row("fp", "runtime --bits 2", 0.70), row("mote@1", "runtime --bits 2", 0.84, eb=1000)]  # re-run wins
    groups = group_rows(rows)
    assert [(g.model, g.seeds) for g in groups] == [("mote", ["0", "1"]), ("fp", ["0"])]
    assert groups[0].acc["all"] == [80.0, 84.0]
    table = markdown(groups).splitlines()
    assert table[2].startswith("| mote | runtime --bits 2 | 2 | 1,000 | 82.0 (80.0-84.0) |")
    assert table[3].startswith("| fp | runtime --bits 2 | 1 | - | 70.0 |")


@pytest.fixture(scope="module")
def tiny_rows():
    """40 training images encoded with every row kind (question, caption, "Where is" rows)."""
    from mote_edge.training.common import encode_examples
    from mote_edge.training.tokenizer import build_task_tokenizer

    tok = build_task_tokenizer()
    enc, prefix = encode_examples(tok, train_seeds(40), procs=1, where=True, shuffle_captions=True)
    return tok, enc, prefix


def test_shared_image_forward_equals_one_pass_per_row(tiny_rows):
    """batch_logits runs each distinct image once and gathers its KV cache to the rows; every row's
    logits must equal a plain [prefix | image | suffix] forward of that row alone."""
    from mote_edge.exporters.reference import MoTELlavaForCausalLM
    from mote_edge.training.common import batch_logits, model_config
    from mote_edge.training.train import init_weights

    torch.set_num_threads(1)
    tok, enc, prefix = tiny_rows
    torch.manual_seed(0)
    model = MoTELlavaForCausalLM(model_config(tok.vocab_size, "mote")).eval()
    init_weights(model, std=0.1)
    rows = torch.tensor([0, 1, 2, 5, 9, 3, 4])  # several rows of images 0-2, in mixed order
    batch = enc.subset(rows)
    assert len(torch.unique(batch.img)) < len(rows)
    with torch.no_grad():
        got, aux = batch_logits(model, prefix, batch)  # [B, L, V]
        assert 1.0 <= float(aux) <= 4.0 * len(model.config.moe.moe_layers_idx)  # E * sum(p * f) per layer
        for b in range(len(rows)):
            n = int(batch.qlen[b] + batch.alen[b]) + 1
            embeds = torch.cat([model.model.embed_tokens(torch.tensor(prefix)),
                                model.encode_image(enc.pixels[batch.img[b]][None])[0],
                                model.model.embed_tokens(batch.suffix[b, :n])])[None]
            want = model.forward_embeds(embeds)[0, -n - 1:-1]  # positions that predict the suffix
            torch.testing.assert_close(got[b, :n], want, rtol=1e-4, atol=1e-4)
    assert got.shape[1] == int((batch.qlen + batch.alen).max()) + 1


def test_batch_sampler_takes_types_by_weight_and_aux_rows_from_the_same_images(tiny_rows):
    from mote_edge.training.batches import BatchSampler

    _, enc, _ = tiny_rows
    a = BatchSampler(enc, bs=16, aux_fraction=0.25, qtype_weights=(1, 1, 1, 1), seed=3)
    b = BatchSampler(enc, bs=16, aux_fraction=0.25, qtype_weights=(1, 1, 1, 1), seed=3)
    for _ in range(10):
        rows = a.next()
        assert torch.equal(rows, b.next())
        questions, aux = rows[:12], rows[12:]
        assert (enc.qtype[questions] < len(QTYPES)).all() and (enc.qtype[aux] == len(QTYPES)).all()
        assert set(enc.img[aux].tolist()) <= set(enc.img[questions].tolist())
        assert torch.bincount(enc.qtype[questions], minlength=len(QTYPES)).tolist() == [3, 3, 3, 3]
    heavy = BatchSampler(enc, bs=16, aux_fraction=0.25, qtype_weights=(1, 1, 1, 3), seed=0).next()[:12]
    assert torch.bincount(enc.qtype[heavy], minlength=len(QTYPES) + 1).tolist() == [2, 2, 2, 6, 0]
    with pytest.raises(ValueError, match="cannot fill"):
        BatchSampler(enc, bs=400, aux_fraction=0.0)
    first_image_bare = enc.subset(torch.nonzero((enc.qtype < len(QTYPES)) | (enc.img != enc.img[0])).flatten())
    with pytest.raises(ValueError, match="has no auxiliary row"):
        BatchSampler(first_image_bare, bs=16, aux_fraction=0.25)
    BatchSampler(first_image_bare, bs=16, aux_fraction=0.0)  # no auxiliary rows wanted: fine


def test_batch_sampler_other_images_walks_the_aux_rows_as_a_pool(tiny_rows):
    from mote_edge.training.batches import BatchSampler

    _, enc, _ = tiny_rows
    n_aux_rows = int((enc.qtype == len(QTYPES)).sum())
    sampler = BatchSampler(enc, bs=16, aux_fraction=0.5, seed=1, aux_images="other")
    seen = []
    for _ in range(n_aux_rows // 8):  # one epoch of the auxiliary pool, 8 per batch
        rows = sampler.next()
        assert torch.bincount(enc.qtype[rows[:8]], minlength=len(QTYPES) + 1).tolist() == [2, 2, 2, 2, 0]
        assert (enc.qtype[rows[8:]] == len(QTYPES)).all()
        seen += rows[8:].tolist()
    assert len(set(seen)) == len(seen)  # an epoch draws each auxiliary row once, whatever its image
    with pytest.raises(ValueError, match="auxiliary rows cannot fill"):
        BatchSampler(enc, bs=n_aux_rows + 1, aux_fraction=1.0, aux_images="other")
    with pytest.raises(ValueError, match="aux_images"):
        BatchSampler(enc, bs=16, aux_fraction=0.5, aux_images="mixed")


def test_one_rendering_serves_every_row_kind_and_the_cache(tmp_path, monkeypatch):
    """cached_encode(also=...) renders once and caches each row kind; each equals its own encoding."""
    from mote_edge.training import common
    from mote_edge.training.tokenizer import build_task_tokenizer

    tok = build_task_tokenizer()
    monkeypatch.setattr(common, "OUT", tmp_path)
    seeds = train_seeds(12)
    plain, prefix = common.cached_encode(tok, "t", seeds, also=((True, True),))
    assert len(list(tmp_path.glob("*.pt"))) == 2
    where, prefix2 = common.cached_encode(tok, "t", seeds, where=True, shuffle_captions=True)  # from the cache
    assert prefix == prefix2
    for got, kind in ((plain, (False, False)), (where, (True, True))):
        want, _ = common.encode_examples(tok, seeds, procs=1, where=kind[0], shuffle_captions=kind[1])
        for field in ("pixels", "img", "suffix", "qlen", "alen", "qtype"):
            assert torch.equal(getattr(got, field), getattr(want, field)), (kind, field)
    assert len(where) > len(plain) == 2 * len(seeds)


def test_train_runs_a_recipe_end_to_end_and_keeps_shared_experts_frozen(tmp_path, monkeypatch):
    """train.main with the smoke recipe: dense phases, then MoTE and fp-MoE up-cycling; the MoTE's
    shared experts are still the dense model's FFNs (frozen in every phase), its routers moved."""
    from mote_edge.exporters.reference import load_reference_model
    from mote_edge.training import common, train

    monkeypatch.setattr(common, "OUT", tmp_path / "cache")
    out = tmp_path / "run"
    assert train.main(["--out", str(out), "--recipe", "smoke", "--train-examples", "64", "--bs", "8",
                       "--threads", "1", "--eval-every", "100", "--held-out", "50"]) == 0
    stages = [json.loads(line).get("stage") for line in (out / "log.jsonl").read_text().splitlines()]
    assert "dense-a" in stages and stages.index("dense-a") < stages.index("dense-b") < stages.index("mote-init") \
        < stages.index("mote-a") < stages.index("mote-b") < stages.index("fp-a") < stages.index("fp-b")
    dense, mote, fp = (load_reference_model(out / k).checkpoint_parameters() for k in ("dense", "mote", "fp"))
    for layer in (0, 2):
        for proj in ("gate", "up", "down"):
            dense_w = dense[f"model.layers.{layer}.mlp.{proj}_proj.weight"]
            assert torch.equal(mote[f"model.layers.{layer}.mlp.shared_expert.{proj}_proj.weight"], dense_w)
            assert not torch.equal(fp[f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.0."
                                      f"{proj}_proj.weight"], dense_w)  # fp experts train from the copy
    assert not torch.equal(mote["model.embed_tokens.weight"], dense["model.embed_tokens.weight"])  # phase b trains it
