"""`mote-edge serve` against live servers on 127.0.0.1: the official openai client (plain, streamed, image as
a data URL, a continued conversation reusing the KV cache), every class of bad request (4xx in OpenAI's
error shape, the server still healthy), a bounded load test and cancellation / time limits."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import zlib
from collections import Counter

import httpx
import pytest
from PIL import Image

from conftest import REPO
from live_server import LiveServer, status_bytes

openai = pytest.importorskip("openai")

IMAGE = REPO / "examples" / "images" / "task-0.png"
KEY = "test-key-123"
STAR, COUNT = "What color is the star?", "How many shapes are there?"


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def image_turn(text: str, url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


# The cancellation and time-limit tests need 450 tokens of the tiny synth model to outlast the server's
# disconnect poll and a 0.2 s time limit: its servers run the numpy decoder layer (~0.35 s for them; the
# native layer decodes them in ~0.2 s).
NUMPY_DECODER = {"MOTE_DECODER": "numpy"}


@pytest.fixture(scope="module")
def synth_mote(tiny_ckpt, tmp_path_factory):
    """Random weights: answers run to max_tokens, for cancellation and time limits."""
    from mote_edge.exporters.export import ExportOptions, export_checkpoint

    path = tmp_path_factory.mktemp("serve") / "synth.mote"
    export_checkpoint(tiny_ckpt, path, ExportOptions(bits=4, group_size=32, progress=False))
    return path


@pytest.fixture(scope="module")
def server(shipped_tiny_mote, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with LiveServer(shipped_tiny_mote, log, "--memory-budget", "40MB", "--max-queue", "2", "--max-body", "1MB",
                    "--max-image-bytes", "256KB", "--max-images", "2", api_key=KEY) as s:
        yield s
        assert s.proc.poll() is None, s.log()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def star_url():
    return data_url(IMAGE.read_bytes())


def mote_report(server) -> dict:
    return httpx.get(server.url + "/v1/mote/report", headers=server.headers, timeout=10).json()["report"]


# ---------------------------------------------------------------------------------------------- openai client
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-mote"]
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"  # no key needed


def test_plain_answer_about_an_image(client, star_url):
    r = client.chat.completions.create(model="tiny-mote", messages=[image_turn(STAR, star_url)], max_tokens=8)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "green" and r.choices[0].finish_reason == "stop"
    mote = r.model_extra["mote"]
    assert r.usage.prompt_tokens == mote["prompt_tokens"] > 36  # the image's 36 patch positions count
    assert r.usage.completion_tokens == 1 and r.usage.total_tokens == r.usage.prompt_tokens + 1
    assert mote["memory"]["peak_rss"] > 0 and mote["plan"]["total_bytes"] <= 40e6 and mote["model"] == "tiny-mote"


def test_streamed_answer_equals_the_plain_one(client, star_url):
    plain = client.chat.completions.create(messages=[image_turn(COUNT, star_url)], model="tiny-mote")
    chunks = list(client.chat.completions.create(messages=[image_turn(COUNT, star_url)], model="tiny-mote",
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text.strip()
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_a_continued_conversation_reuses_the_kv_cache(server, client, star_url):
    first = [{"role": "system", "content": "Answer briefly."}, image_turn(STAR, star_url)]
    r1 = client.chat.completions.create(model="tiny-mote", messages=first, seed=3, temperature=0)
    answer = r1.choices[0].message.content
    second = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": COUNT}]
    r2 = client.chat.completions.create(model="tiny-mote", messages=second, temperature=0)
    m1, m2 = r1.model_extra["mote"], r2.model_extra["mote"]
    assert m2["reused_tokens"] == m1["prompt_tokens"] + m1["completion_tokens"]
    assert m2["prefilled_tokens"] == m2["prompt_tokens"] - m2["reused_tokens"] < 30
    report = mote_report(server)
    assert (report["reused_tokens"], report["prefilled_tokens"]) == (m2["reused_tokens"], m2["prefilled_tokens"])
    # a request that does not continue it prefills everything from where it differs
    r3 = client.chat.completions.create(model="tiny-mote", messages=[{"role": "user", "content": COUNT}])
    assert r3.model_extra["mote"]["reused_tokens"] < 5


def test_stop_and_max_tokens(client, star_url):
    r = client.chat.completions.create(model="tiny-mote", messages=[image_turn(STAR, star_url)], stop=["gr"])
    assert r.choices[0].message.content == "" and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model="tiny-mote", messages=[{"role": "user", "content": "star " * 20}],
                                       max_completion_tokens=1, n=1, frequency_penalty=0.0, presence_penalty=0,
                                       logprobs=False)  # the defaults of unsupported fields are accepted
    assert r.usage.completion_tokens <= 1


def test_bad_api_key_is_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(server.url + "/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="tiny-mote", messages=[{"role": "user", "content": "hi"}])


# ---------------------------------------------------------------------------------------------- bad requests
def _bad_requests(star_url: str) -> list[tuple[str, object, int, str | None]]:
    hi = [{"role": "user", "content": "hi"}]

    def body(**kw):
        return {"messages": hi, **kw}

    bomb = bytearray(png(8, 8))
    bomb[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")  # IHDR says 100000 x 100000
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # with a valid CRC
    modest = bytearray(bomb)
    modest[16:24] = (5000).to_bytes(4, "big") + (5000).to_bytes(4, "big")  # 25 MP: over the 16.7 MP limit
    modest[29:33] = zlib.crc32(bytes(modest[12:29])).to_bytes(4, "big")
    return [
        ("malformed JSON", b"{not json", 400, "invalid_json"),
        ("not UTF-8", b"\xff\xfe{}", 400, "invalid_json"),
        ("body is a list", [], 400, None),
        ("missing messages", {"model": "tiny-mote"}, 400, "missing_required_parameter"),
        ("messages not a list", {"messages": "hi"}, 400, "invalid_type"),
        ("empty messages", {"messages": []}, 400, "invalid_type"),
        ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
        ("content a number", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_type"),
        ("last message not user", {"messages": hi + [{"role": "assistant", "content": "x"}]}, 400, None),
        ("placeholder in text", {"messages": [{"role": "user", "content": "<image> what"}]}, 400, None),
        ("unknown part type", {"messages": [{"role": "user", "content": [{"type": "video"}]}]}, 400, "invalid_value"),
        ("temperature a string", body(temperature="hot"), 400, "invalid_type"),
        ("temperature too high", body(temperature=5), 400, "invalid_value"),
        ("top_p zero", body(top_p=0), 400, "invalid_value"),
        ("stream not a bool", body(stream="yes"), 400, "invalid_type"),
        ("max_tokens negative", body(max_tokens=-1), 400, "invalid_value"),
        ("max_tokens zero", body(max_tokens=0), 400, "invalid_value"),
        ("max_tokens over context", body(max_tokens=10_000), 400, "invalid_value"),
        ("max_tokens a bool", body(max_tokens=True), 400, "invalid_type"),
        ("max_tokens + prompt over context", body(max_tokens=250), 400, "context_length_exceeded"),
        ("prompt over context", {"messages": [{"role": "user", "content": "star " * 400}]}, 400,
         "context_length_exceeded"),
        ("too many stops", body(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value"),
        ("n > 1", body(n=2), 400, "unsupported_parameter"),
        ("tools", body(tools=[{"type": "function"}]), 400, "unsupported_parameter"),
        ("logprobs", body(logprobs=True), 400, "unsupported_parameter"),
        ("unknown model", body(model="gpt-4o"), 404, "model_not_found"),
        ("remote URL", {"messages": [image_turn("x", "https://example.com/cat.png")]}, 400, "unsupported_image_url"),
        ("local path", {"messages": [image_turn("x", str(IMAGE))]}, 400, "invalid_image_url"),
        ("data URL not base64", {"messages": [image_turn("x", "data:image/png,abc")]}, 400, "invalid_image_url"),
        ("bad base64", {"messages": [image_turn("x", "data:image/png;base64,@@@@")]}, 400, "invalid_image_url"),
        ("not an image", {"messages": [image_turn("x", data_url(b"hello world" * 10))]}, 400, "invalid_image"),
        ("truncated image", {"messages": [image_turn("x", data_url(IMAGE.read_bytes()[:300]))]}, 400, "invalid_image"),
        ("pixel bomb header", {"messages": [image_turn("x", data_url(bytes(bomb)))]}, 400, "image_too_large"),
        ("pixels over the limit", {"messages": [image_turn("x", data_url(bytes(modest)))]}, 400, "image_too_large"),
        ("image over byte limit", {"messages": [image_turn("x", data_url(b"\0" * 300_000))]}, 400, "image_too_large"),
        ("too many images", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": star_url}}] * 3 + [{"type": "text", "text": "x"}]}]}, 400,
         "too_many_images"),
        ("images over context", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": star_url}}] * 2 + [{"type": "text", "text": "x " * 150}]}]},
         400, "context_length_exceeded"),
        ("image in assistant turn", {"messages": [{"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": star_url}}]}] + hi}, 400, "invalid_value"),
        ("oversized body", {"messages": [{"role": "user", "content": "x" * 1_100_000}]}, 413, "request_too_large"),
    ]


def test_every_bad_request_is_a_4xx_in_openais_shape(server, star_url):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as http:
        for name, body, status, code in _bad_requests(star_url):
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = http.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], name
            assert code is None or error["code"] == code, (name, error)
            assert "Traceback" not in r.text
        for method, path in (("GET", "/v1/chat/completions"), ("GET", "/nowhere")):
            r = http.request(method, path)
            assert r.status_code in (404, 405) and "error" in r.json()
    assert server.healthy()


# ---------------------------------------------------------------------------------------------- load
def test_load_8_clients_x_5_requests(server, star_url):
    """Every answer is right or a 429 with Retry-After; no 5xx; peak RSS stays within the plan + the server's
    own overhead (measured: Python + starlette/uvicorn are in the baseline; request bodies and images are not)."""
    questions = [(STAR, "green"), (COUNT, None)]
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
        expected = {}
        for q, _ in questions:
            r = http.post("/v1/chat/completions", json={"messages": [image_turn(q, star_url)]})
            expected[q] = r.json()["choices"][0]["message"]["content"]
    assert expected[STAR] == "green"
    statuses: Counter = Counter()
    wrong: list = []
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
            for j in range(5):
                q = questions[(i + j) % 2][0]
                r = http.post("/v1/chat/completions", json={"messages": [image_turn(q, star_url)]})
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200 and r.json()["choices"][0]["message"]["content"] != expected[q]:
                        wrong.append((q, r.text[:200]))
                    if r.status_code == 429 and r.headers.get("retry-after") is None:
                        wrong.append(("429 without Retry-After", r.text[:200]))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert sum(statuses.values()) == 40 and set(statuses) <= {200, 429}, statuses
    assert statuses[200] >= 3 and not wrong, (statuses, wrong)
    report = mote_report(server)
    peak = status_bytes(server.pid, "VmHWM")
    over_baseline = peak - report["memory"]["baseline_rss"]
    print(f"load: {dict(statuses)}; peak RSS {peak / 1e6:.1f} MB, {over_baseline / 1e6:.1f} MB over the baseline "
          f"(plan {report['plan']['total_bytes'] / 1e6:.1f} MB)")
    assert over_baseline <= report["plan"]["total_bytes"] + SERVER_OVERHEAD_BYTES
    assert server.healthy()


# What serving adds per request beyond the plan: bodies (<= --max-body), decoded images, JSON, connections.
# Measured here: ~3 MB over `mote-edge run`'s peak (docs/SERVING.md); the imports (~8 MB) are in the baseline.
SERVER_OVERHEAD_BYTES = 16 * 1024 * 1024


# ---------------------------------------------------------------------------------------------- cancellation
@pytest.fixture(scope="module")
def synth_server(synth_mote, tmp_path_factory):
    with LiveServer(synth_mote, tmp_path_factory.mktemp("serve") / "synth.log", "--allow-local-images",
                    "--max-context", "512", env=NUMPY_DECODER) as s:
        yield s


def test_a_client_that_disconnects_stops_the_decoder(synth_server):
    url = synth_server.url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 450, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", url, json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # one token seen: hang up
    time.sleep(1.5)
    report = mote_report(synth_server)
    assert 1 <= report["completion_tokens"] < 450
    # non-streamed: the client gives up waiting
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url, json={**body, "stream": False}, timeout=0.15)
    time.sleep(1.5)
    assert mote_report(synth_server)["completion_tokens"] < 450
    full = httpx.post(url, json={**body, "stream": False, "max_tokens": 40}, timeout=60).json()
    assert full["usage"]["completion_tokens"] == 40 and full["choices"][0]["finish_reason"] == "length"


def test_local_images_when_allowed(synth_server):
    r = httpx.post(synth_server.url + "/v1/chat/completions", timeout=60,
                   json={"messages": [image_turn("what?", str(IMAGE))], "max_tokens": 2})
    assert r.status_code == 200, r.text
    r = httpx.post(synth_server.url + "/v1/chat/completions", timeout=60,
                   json={"messages": [image_turn("what?", "/nonexistent.png")], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image_url"


def test_request_time_limit(synth_mote, tmp_path):
    with LiveServer(synth_mote, tmp_path / "timeout.log", "--max-context", "512", "--request-timeout", "0.2",
                    env=NUMPY_DECODER) as s:
        body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 450}
        r = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60)
        events = [line for line in r.text.splitlines() if line.startswith("data: ")]
        assert '"request_timeout"' in events[-2] and events[-1] == "data: [DONE]"
        assert mote_report(s)["completion_tokens"] < 450
        assert s.healthy()


def test_serve_cli_errors_are_one_line(shipped_tiny_mote):
    from conftest import run_cli

    for args, message in ((["--max-queue", "0"], "max-queue must be >= 1"),
                          (["--request-timeout", "0"], "request-timeout must be > 0"),
                          (["--port", "70000"], "--port must be 0..65535"),
                          (["--max-body", "lots"], "")):
        out = run_cli("serve", str(shipped_tiny_mote), *args, timeout=60)
        assert out.returncode == 1 and out.stderr.startswith("error: ") and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    out = run_cli("serve", "--help", timeout=60)
    assert all(flag in out.stdout for flag in ("--memory-budget", "--api-key", "--max-queue", "--allow-local-images"))
