"""Reliability: every hostile input gives a clean one-line error or a correct answer, never a crash,
a hang or a budget overrun (the fast part; it runs in CI)."""

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from mote_edge.errors import MoteError
from mote_edge.runtime.engine import Engine

IMAGE = REPO / "examples" / "images" / "shapes.png"
PROMPT = "What color is the circle?"


@pytest.fixture(scope="module")
def mote(tiny_b4_mote):
    return tiny_b4_mote


def _answer(path, image=None, prompt=PROMPT, **kw):
    with Engine.load(path, threads=1, **kw) as engine:
        return list(engine.generate_ids(prompt, image, max_new_tokens=6))


def _images(tmp_path):
    """Odd but valid images: each must give an answer (any answer), not an error."""
    out = {}
    Image.new("RGB", (1, 1), "red").save(tmp_path / "1x1.png")
    Image.open(IMAGE).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)).save(tmp_path / "16bit.png")
    frames = [Image.new("P", (30, 20), c) for c in (1, 2, 3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.open(IMAGE).convert("LA").save(tmp_path / "la.png")
    Image.new("RGB", (3000, 20), "blue").save(tmp_path / "wide.png")
    for name in ("1x1.png", "cmyk.jpg", "16bit.png", "anim.gif", "la.png", "wide.png"):
        out[name] = tmp_path / name
    return out


def test_odd_images_give_answers(mote, tmp_path):
    for name, path in _images(tmp_path).items():
        tokens = _answer(mote, path)
        assert isinstance(tokens, list), name


def test_bad_images_give_one_line_errors(mote, tmp_path):
    truncated = tmp_path / "trunc.jpg"
    Image.open(IMAGE).convert("RGB").save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:300])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("trunc.jpg", "text.png", "empty.jpg", "missing.png"):
        with pytest.raises(MoteError) as e:
            _answer(mote, tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)


def test_huge_image_is_refused_before_decoding(mote, tmp_path):
    """20000 x 20000 (400 megapixels): refused from the header, memory never touched."""
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # 1-bit: ~50 MB to build, a few hundred KB on disk
    code = ("import json,sys; from mote_edge.runtime.engine import Engine; from mote_edge.errors import MoteError\n"
            "e = Engine.load(sys.argv[1], threads=1)\n"
            "try:\n    list(e.generate_ids('hi', sys.argv[2], max_new_tokens=2)); print('answered')\n"
            "except MoteError as x:\n    print(json.dumps({'error': str(x), 'over': e.report()['memory']['peak_over_baseline']}))\n")
    r = subprocess.run([sys.executable, "-c", code, str(mote), str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["error"].endswith("huge.png: image is too large (more than 64 megapixels)")
    assert d["over"] < 60e6  # nowhere near the 1.2 GB an RGB decode would need


def test_empty_and_oversized_prompts(mote):
    assert isinstance(_answer(mote, None, prompt=""), list)
    with pytest.raises(MoteError, match="exceeds the context"):
        _answer(mote, None, prompt="word " * 2000)


def test_concurrent_engines_in_threads_agree_with_sequential(mote):
    want = _answer(mote, IMAGE)
    results, errors = [None] * 3, []

    def work(i):
        try:
            results[i] = _answer(mote, IMAGE)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == [want] * 3


FUZZ_RUNTIME = r"""
import random, sys
from pathlib import Path
from mote_edge.errors import MoteError
from mote_edge.runtime.engine import Engine
src = Path(sys.argv[1]).read_bytes(); out = Path(sys.argv[2]); image = sys.argv[3]
want = [int(t) for t in sys.argv[5].split(",")]
rng = random.Random(11)
clean = errors = 0
for i in range(int(sys.argv[4])):
    d = bytearray(src)
    kind = rng.choice(["flip", "flip", "truncate", "extend"])
    if kind == "flip":
        for _ in range(rng.randint(1, 3)):
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        d = d[:rng.randrange(len(d))]
    else:
        d += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    out.write_bytes(bytes(d))
    try:
        with Engine.load(out, threads=1) as e:
            got = list(e.generate_ids("What color is the circle?", image, max_new_tokens=6))
        if got != want:
            print("WRONG ANSWER from a mutated file", kind, file=sys.stderr); sys.exit(3)
        clean += 1
    except MoteError as x:
        assert "\n" not in str(x)
        errors += 1
print(clean, errors)
"""


def test_mutated_files_give_errors_or_the_right_answer(mote, tmp_path):
    want = _answer(mote, IMAGE)
    r = subprocess.run([sys.executable, "-c", FUZZ_RUNTIME, str(mote), str(tmp_path / "m.mote"), str(IMAGE), "60",
                        ",".join(map(str, want))], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    clean, errors = map(int, r.stdout.split())
    assert clean + errors == 60 and errors > 30


MID_WRITE = r"""
import sys, time, numpy as np
from mote_edge.format import MoteWriter
from mote_edge.presets import preset_config
from mote_edge.quant.recipe import F32, Recipe
w = MoteWriter(sys.argv[1], {"model": preset_config("tiny").to_dict(), "recipe": Recipe.default(4).to_dict()})
w.add_tensor("a", "norm", F32, (1024,)); w.add_tensor("b", "norm", F32, (1024,))
w.begin(); w.write_tensor("a", {"data": np.ones(1024, np.float32)})
print("writing", flush=True); time.sleep(60)
"""


def _first_line(p: subprocess.Popen, timeout: float = 60) -> str:
    """The child's first line of output, or a failure (not a hang) if none comes in time."""
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        p.kill()
        p.wait(timeout=10)
        pytest.fail(f"no output from the child in {timeout} s")
    return p.stdout.readline().strip()


ANSWER_IN_A_NEW_PROCESS = ("import sys; from mote_edge.runtime.engine import Engine\n"
                           "with Engine.load(sys.argv[1], threads=1) as e:\n"
                           "    print(','.join(map(str, e.generate_ids(sys.argv[3], sys.argv[2], max_new_tokens=6))))")


def test_killed_writer_leaves_no_file_and_killed_load_restarts(mote, tmp_path):
    want = _answer(mote, IMAGE)  # before anything is killed
    model_bytes = mote.read_bytes()
    out = tmp_path / "k.mote"
    p = subprocess.Popen([sys.executable, "-c", MID_WRITE, str(out)], stdout=subprocess.PIPE, text=True)
    assert _first_line(p) == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert not out.exists() and (tmp_path / "k.mote.partial").exists()  # never a valid-looking file
    code = "import sys; from mote_edge.runtime.engine import Engine; Engine.load(sys.argv[1]); print('loaded', flush=True); import time; time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code, str(mote)], stdout=subprocess.PIPE, text=True)
    assert _first_line(p) == "loaded"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    # the runtime never writes the file: it is unchanged, and a restarted process gives the answer from before
    assert mote.read_bytes() == model_bytes
    r = subprocess.run([sys.executable, "-c", ANSWER_IN_A_NEW_PROCESS, str(mote), str(IMAGE), PROMPT],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [int(t) for t in r.stdout.split(",")] == want and len(want) > 0
