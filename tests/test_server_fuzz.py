"""Property-based fuzzing of `mote-edge serve` with hypothesis: request JSON of every shape and image bytes
(random, truncated, header-mutated real images) never get a 5xx or a traceback, errors are in OpenAI's
shape, and the server stays healthy. Bounded: 200 examples, small answers."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter

import httpx
import pytest
from PIL import Image

from conftest import REPO
from live_server import LiveServer

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

IMAGE_BYTES = (REPO / "examples" / "images" / "task-0.png").read_bytes()


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 90)).save(buf, fmt)
    return buf.getvalue()


SAMPLES = [IMAGE_BYTES, _encoded("JPEG", (7, 300)), _encoded("GIF", (64, 9)), _encoded("BMP", (3, 3))]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def image_data(draw) -> bytes:
    base = draw(st.sampled_from(SAMPLES))
    how = draw(st.sampled_from(["as is", "truncated", "mutated", "random"]))
    if how == "truncated":
        return base[:draw(st.integers(0, len(base)))]
    if how == "mutated":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, min(len(data) - 1, 64)))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "random":
        return draw(st.binary(max_size=300))
    return base


@st.composite
def image_urls(draw) -> str:
    kind = draw(st.sampled_from(["data", "data", "data", "remote", "path", "junk"]))
    if kind == "data":
        mime = draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", ""]))
        b64 = base64.b64encode(draw(image_data())).decode()
        if draw(st.booleans()):
            b64 = b64[:draw(st.integers(0, len(b64)))]
        return f"data:{mime};base64,{b64}"
    if kind == "remote":
        return draw(st.sampled_from(["http://127.0.0.1:1/x.png", "https://example.com/a.jpg", "ftp://h/x"]))
    if kind == "path":
        return draw(st.sampled_from([str(REPO / "examples/images/task-0.png"), "/etc/passwd", "file:///dev/zero"]))
    return draw(st.text(max_size=30))


@st.composite
def parts(draw):
    kind = draw(st.sampled_from(["text", "image", "other"]))
    if kind == "text":
        return {"type": "text", "text": draw(st.text(max_size=40) | json_values)}
    if kind == "image":
        url = draw(image_urls())
        return {"type": "image_url", "image_url": draw(st.sampled_from([{"url": url}, url, {"url": None}]))}
    return draw(json_values)


@st.composite
def messages(draw):
    role = draw(st.sampled_from(["user", "user", "assistant", "system", "developer", "tool", None, 3]))
    content = draw(st.text(max_size=60) | st.lists(parts(), max_size=3) | json_values)
    message = {"role": role, "content": content}
    if draw(st.booleans()):
        message[draw(st.text(max_size=6))] = draw(json_values)
    return message


FIELDS = {
    "max_tokens": st.integers(-5, 400) | json_values, "max_completion_tokens": st.integers(-5, 20),
    "temperature": st.floats(-1, 3) | json_values, "top_p": st.floats(-0.5, 1.5), "seed": st.integers(-2**65, 2**65),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=6) | json_values,
    "stream": st.booleans() | json_values, "stream_options": json_values, "n": st.integers(0, 3),
    "model": st.sampled_from(["tiny-mote", "gpt-4o", ""]) | json_values, "top_k": st.integers(-2, 50),
    "logprobs": st.booleans(), "response_format": json_values,
}


@st.composite
def plausible_messages(draw):
    """Well-formed conversations with fuzzed text, images and turn order: these reach the model."""
    turns = []
    for i in range(draw(st.integers(1, 3))):
        text = draw(st.text(max_size=40))
        if draw(st.booleans()):
            url = "data:image/png;base64," + base64.b64encode(draw(image_data())).decode()
            turns.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": text}]})
        else:
            turns.append({"role": "user", "content": text})
        if draw(st.booleans()):
            turns.append({"role": "assistant", "content": draw(st.text(max_size=10))})
    if draw(st.booleans()):
        turns.insert(0, {"role": "system", "content": draw(st.text(max_size=30))})
    return turns


@st.composite
def bodies(draw):
    body = {"messages": draw(plausible_messages() | st.lists(messages(), max_size=4) | json_values)}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=5, unique=True)):
        body[name] = draw(FIELDS[name])
    if draw(st.integers(0, 9)) == 0:
        body = draw(json_values)
    # keep answers short: this is about input handling, not generation
    if isinstance(body, dict) and not isinstance(body.get("max_tokens"), int):
        body.setdefault("max_completion_tokens", 4)
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory, shipped_tiny_mote):
    d = tmp_path_factory.mktemp("fuzz")
    with LiveServer(shipped_tiny_mote, d / "server.log", "--max-image-bytes", "64KB") as s:
        yield s
    assert "Traceback" not in (d / "server.log").read_text(), (d / "server.log").read_text()[-4000:]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


STATUSES: Counter = Counter()  # what the fuzzing reached, checked at the end


def check(response: httpx.Response) -> None:
    STATUSES[response.status_code] += 1
    assert response.status_code < 500, response.text[:500]
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
    else:
        assert response.json()["object"] == "chat.completion"


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=bodies())
def test_fuzzed_requests_never_5xx(http, body):
    check(http.post("/v1/chat/completions", content=json.dumps(body).encode()))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_raw_bodies_never_5xx(http, raw):
    check(http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}))


def test_the_server_still_answers_after_the_fuzzing(server, http):
    print(f"fuzz statuses: {dict(STATUSES)}")
    assert STATUSES[200] >= 5 and STATUSES[400] >= 50  # both the model and the checks were reached
    assert server.healthy()
    url = "data:image/png;base64," + base64.b64encode(IMAGE_BYTES).decode()
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What color is the star?"}]}]})
    assert r.json()["choices"][0]["message"]["content"] == "green"
