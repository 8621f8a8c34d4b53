"""`mote-edge chat` driven through piped stdin: the shipped tiny MoTE answers follow-up questions about one
image, the second turn prefilling only its own tokens; commands; Ctrl-C stops an answer, not the program."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from live_server import default_sigint
from mote_edge.errors import MoteError
from mote_edge.terminal_chat import TerminalChat

IMAGE = REPO / "examples" / "images" / "task-0.png"
STAR, COUNT = "What color is the star?", "How many shapes are there?"
REPORT_LINE = re.compile(r"prompt\s+(\d+) positions: (\d+) reused from the KV cache, (\d+) prefilled")


def chat_cli(model, stdin: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mote_edge.cli", "chat", str(model), *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_follow_up_questions_about_one_image_prefill_only_their_new_tokens(shipped_tiny_mote):
    from mote_edge.runtime.engine import Engine

    with Engine.load(shipped_tiny_mote, memory_budget="40MB") as engine:  # what the answers and counts must be
        first = [{"role": "user", "content": [{"type": "image", "image": str(IMAGE)}, {"type": "text", "text": STAR}]}]
        star = "".join(engine.chat(first))
        turn1 = engine.report()
        second = first + [{"role": "assistant", "content": star}, {"role": "user", "content": COUNT}]
        count = "".join(engine.chat(second))
        t = engine.template
        new_tokens = len(engine.tokenizer.encode(f"{t.sep2}{t.user}: {COUNT}{t.sep}{t.assistant}:"))
    assert star == "green" and count.strip()

    out = chat_cli(shipped_tiny_mote, f"{STAR}\n/report\n{COUNT}\n/report\n/quit\n", "--image", str(IMAGE),
                   "--memory-budget", "40MB")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "[image task-0.png attached to the next question]"
    assert lines[1] == star and count in lines
    reports = [tuple(map(int, m.groups())) for m in REPORT_LINE.finditer(out.stdout)]
    assert reports[0] == (turn1["prompt_tokens"], 0, turn1["prompt_tokens"])
    prompt2, reused2, prefilled2 = reports[1]
    assert reused2 == turn1["prompt_tokens"] + turn1["completion_tokens"]  # the image and first answer stay cached
    assert prefilled2 == new_tokens == prompt2 - reused2


def test_commands_and_errors_keep_the_chat_going(shipped_tiny_mote):
    stdin = "\n".join(["/help", "/image /nonexistent.png", "/bogus", "/report", f"/image {IMAGE}", STAR, "/reset",
                       "/report", STAR, "/quit", "never read"]) + "\n"
    out = chat_cli(shipped_tiny_mote, stdin)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "commands: /image PATH" in text and "error: cannot read image /nonexistent.png" in text
    assert "unknown command /bogus" in text and "[no answer yet]" in text and "[conversation cleared]" in text
    answers = [line for line in text.splitlines() if not line.startswith(("[", "error", "commands", "unknown", " "))
               and "  " not in line]
    assert answers[0] == "green"  # with the image; after /reset the question has no image
    assert REPORT_LINE.search(text).group(2) == "0"  # after /reset nothing is reused


class _FakeEngine:
    """Streams words; raises KeyboardInterrupt after `interrupt_after` pieces of the first answer."""

    class plan:
        context = 10_000

    def __init__(self, interrupt_after: int):
        self.interrupt_after, self.calls, self.closed = interrupt_after, [], 0

    def prompt_positions(self, messages):
        return 10

    def chat(self, messages, max_new_tokens):
        self.calls.append(messages)
        return self._stream(len(self.calls))

    def _stream(self, call):
        try:
            for i, word in enumerate(["one", " two", " three", " four"]):
                if call == 1 and i == self.interrupt_after:
                    raise KeyboardInterrupt
                yield word
        finally:
            self.closed += 1


def test_ctrl_c_stops_the_answer_not_the_program():
    engine, out = _FakeEngine(interrupt_after=2), io.StringIO()
    lines = iter(["first question", "second question"])
    TerminalChat(engine, out).run(lambda: next(lines, None) or (_ for _ in ()).throw(EOFError()))
    assert out.getvalue() == "one two [stopped]\none two three four\n"
    assert engine.calls[1][1] == {"role": "assistant", "content": "one two"}  # what was shown stays
    assert engine.closed == 2


def test_a_full_context_is_one_error_line():
    engine, out = _FakeEngine(interrupt_after=99), io.StringIO()
    engine.plan = type("plan", (), {"context": 10})
    session = TerminalChat(engine, out)
    with pytest.raises(MoteError, match="fills the context"):
        session.ask("hello")


def test_sigint_during_an_answer(tiny_b4_mote):
    """A real Ctrl-C (SIGINT) while a long answer streams: the answer stops, the next line is still read."""
    model = tiny_b4_mote
    proc = subprocess.Popen([sys.executable, "-m", "mote_edge.cli", "chat", str(model), "--max-new-tokens", "400"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=default_sigint)
    try:
        proc.stdin.write(b"tell me everything\n")
        proc.stdin.flush()
        proc.stdout.read(1)  # the answer has started streaming
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.stdin.write(b"/quit\n")
        proc.stdin.close()
        rest, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=60) == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    assert b"[stopped]" in rest
