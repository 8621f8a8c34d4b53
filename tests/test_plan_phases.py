"""The memory plan by phases: the largest phase, not the sum; slabs lent to the vision encoder come back
as misses with identical answers; released pages leave RSS; per-phase peaks are measured."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from mote_edge.exporters.export import ExportOptions, export_checkpoint
from mote_edge.format import MoteFile
from mote_edge.runtime.budget import BudgetError
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.hugepages import huge_buffer
from mote_edge.runtime.memory import PeakTracker, read_status, release_pages
from mote_edge.runtime.plan import fit_file_budget, image_input_bytes, minimum_plan_file, plan_file

IMAGE = REPO / "examples" / "images" / "task-0.png"
PROMPT = "What color is the star?"
MB = 10**6


@pytest.fixture(scope="module")
def mote(tiny_ckpt, tmp_path_factory):
    """With an ONNX vision section: its onnxruntime session's peak makes the image phase the larger one
    (the native encoder's does not, on the tiny model), so slabs are lent while an image is encoded."""
    path = tmp_path_factory.mktemp("phases") / "tiny.mote"
    export_checkpoint(tiny_ckpt, path, ExportOptions(bits=4, group_size=32, vision_format="onnx", progress=False))
    return path


@pytest.fixture(scope="module")
def native_mote(tiny_ckpt, export_once):
    return export_once(tiny_ckpt, bits=4, group_size=32)


def test_native_vision_plans_its_block_and_activations_and_no_onnxruntime_code(native_mote, mote):
    with MoteFile(native_mote) as f, MoteFile(mote) as g:
        native, onnx = minimum_plan_file(f, 512), minimum_plan_file(g, 512)
        assert native.vision_peak_bytes < onnx.vision_peak_bytes
        assert native.overhead_bytes < onnx.overhead_bytes  # no onnxruntime code
        assert native.overhead_bytes == minimum_plan_file(f, 512, vision=False).overhead_bytes
        # the image phase no longer sets the tiny model's minimum: the text-only minimum plus the image's
        # inputs to the prefill (pixels, features) is
        assert native.binding_phase == "prefill / decode"
        text_only = minimum_plan_file(f, 512, vision=False).total_bytes
        assert native.total_bytes == text_only + image_input_bytes(f.config)


def test_plan_is_the_largest_phase_not_the_sum(mote):
    with MoteFile(mote) as f:
        p = plan_file(f, 512)
        phases = p.phase_bytes()
        assert set(phases) == {"image encode", "prefill / decode"}
        assert p.total_bytes == max(phases.values()) == phases[p.binding_phase]
        every_part = p.fixed_bytes + p.vision_peak_bytes + p.scratch_bytes + p.expert_cache_bytes
        assert p.total_bytes < every_part  # the sum of every part is what a phase-blind plan would reserve
        text = plan_file(f, 512, vision=False)
        assert set(text.phase_bytes()) == {"prefill / decode"} and text.vision_peak_bytes == 0
        minimum = minimum_plan_file(f, 512)
        assert minimum.kept_while_encoding == 0 and minimum.expert_slabs == f.config.moe.top_k_experts
        assert minimum_plan_file(f, 512, vision=False).total_bytes < minimum.total_bytes


def test_the_minimum_a_budget_error_prints_is_a_budget_that_fits(mote):
    """The minimum is rounded up to the 0.1 MB it prints: a budget 1 byte short never reads as
    "13.0 MB is below the minimum 13.0 MB", and the printed number, passed back, fits."""
    from mote_edge.runtime.budget import parse_bytes

    with MoteFile(mote) as f:
        minimum = minimum_plan_file(f, 512).total_bytes
        with pytest.raises(BudgetError) as e:
            fit_file_budget(f, 512, minimum - 1)
        printed = str(e.value).split("below the minimum ")[1].split(" for ")[0]  # "13.1 MB"
        assert printed != str(e.value).split("memory budget ")[1].split(" is below")[0]
        assert fit_file_budget(f, 512, parse_bytes(printed.replace(" ", ""))).total_bytes <= parse_bytes(printed.replace(" ", ""))


def test_budget_between_the_text_and_image_minimums(mote):
    with MoteFile(mote) as f:
        text_min = minimum_plan_file(f, 512, vision=False).total_bytes
        image_min = minimum_plan_file(f, 512).total_bytes
        between = (text_min + image_min) // 2
        assert fit_file_budget(f, 512, between, vision=False).total_bytes <= between
        with pytest.raises(BudgetError) as e:
            fit_file_budget(f, 512, between)
        assert "image encode phase" in str(e.value) and "\n" not in str(e.value)
        fitted = fit_file_budget(f, 512, image_min)
        assert fitted.total_bytes <= image_min and fitted.kept_while_encoding <= fitted.expert_slabs


def test_lent_slabs_refill_and_answers_do_not_change(mote):
    with Engine.load(mote, threads=1) as full:
        want = list(full.generate_ids(PROMPT, IMAGE, max_new_tokens=10))
        want_text = list(full.generate_ids(PROMPT, None, max_new_tokens=10))
    with MoteFile(mote) as f:
        budget = minimum_plan_file(f, 512).total_bytes
    with Engine.load(mote, memory_budget=budget, threads=1, max_context=512) as eng:
        assert eng.plan.kept_while_encoding < eng.plan.expert_slabs
        assert list(eng.generate_ids(PROMPT, None, max_new_tokens=10)) == want_text
        cached_before = len(eng.experts.resident)
        assert cached_before > eng.plan.kept_while_encoding
        misses = eng.experts.stats.misses
        assert list(eng.generate_ids(PROMPT, IMAGE, max_new_tokens=10)) == want
        assert eng.experts.stats.misses > misses  # the lent slabs were refilled by misses
        assert set(eng.peaks.phases) >= {"image encode", "prefill / decode"} or not eng.peaks.phases


def test_vision_false_engine_refuses_images_in_one_line(mote):
    with Engine.load(mote, threads=1, vision=False) as eng:
        with pytest.raises(Exception) as e:
            list(eng.generate_ids(PROMPT, IMAGE, max_new_tokens=2))
    assert "vision=False" in str(e.value) and "\n" not in str(e.value)


def test_released_pages_leave_rss():
    buf = huge_buffer(64 * MB)
    buf[:] = 1  # touch every page
    before = read_status()["RssAnon"]
    released = release_pages(buf)
    after = read_status()["RssAnon"]
    if released == 0:
        pytest.skip("madvise is not available here")
    assert released >= 63 * MB and before - after >= 60 * MB
    assert not buf[::4096].any()  # released pages read as zeros


def test_peak_tracker_keeps_the_overall_peak_across_resets():
    tracker = PeakTracker()
    tracker.start()
    big = np.ones(80 * MB // 8)  # a phase that peaks
    tracker.end("big")
    del big
    tracker.start()
    tracker.end("small")
    if not tracker.phases:
        pytest.skip("VmHWM cannot be reset here")
    assert tracker.phases["big"] >= tracker.phases["small"] + 60 * MB
    assert tracker.overall() >= tracker.phases["big"]


# One image + prompt through an ONNX-section Engine at its minimum budget, in a fresh process (its own
# VmHWM): the peak over the baseline and each phase's peak stay within their plan lines. (The bound only:
# on the tiny model the allowances dominate, measured peak 20.1 of 33.4 MB. What took the 3B over its plan
# is tested where it happens, test_vision_native.py test_an_onnx_encode_leaves_no_heap_behind.)
ONNX_RUN = r"""
import json, sys
from mote_edge.runtime.engine import Engine
with Engine.load(sys.argv[1], memory_budget=int(sys.argv[2]), threads=1, max_context=128) as engine:
    list(engine.generate_ids(sys.argv[3], image=sys.argv[4], max_new_tokens=8, ignore_eos=True))
    r = engine.report()
print(json.dumps({"peak": r["memory"]["peak_over_baseline"], "plan": r["plan"]["total_bytes"],
                  "phases": r["plan"]["phases"], "phase_peaks": r["memory"].get("phase_peaks_over_baseline", {})}))
"""


def test_an_onnx_section_image_run_stays_within_its_plan_in_a_fresh_process(mote):
    import json
    import subprocess
    import sys

    with MoteFile(mote) as f:
        budget = minimum_plan_file(f, 128).total_bytes
    r = subprocess.run([sys.executable, "-c", ONNX_RUN, str(mote), str(budget), PROMPT, str(IMAGE)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads(r.stdout.strip().splitlines()[-1])
    assert run["plan"] <= budget and run["peak"] <= run["plan"], run
    assert set(run["phase_peaks"]) == set(run["phases"]), run  # both phases ran and were measured
    for phase, planned in run["phases"].items():
        assert run["phase_peaks"][phase] <= planned, (phase, run)
