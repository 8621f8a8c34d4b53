"""Engine.chat: conversations rendered by the model's chat template, and KV cache reuse for the prefix a
continued conversation shares with the previous prompt (the greedy answer equals a fresh chat's)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from conftest import REPO
from mote_edge.chat import TEMPLATES, ChatTemplate, Turn
from mote_edge.errors import ConfigError, MoteError
from mote_edge.messages import Conversation, MessageError

IMAGE = REPO / "examples" / "images" / "task-0.png"
OTHER_IMAGE = REPO / "examples" / "images" / "task-1.png"
COUNTS = ("prompt_tokens", "reused_tokens", "prefilled_tokens", "completion_tokens")


@pytest.fixture(scope="module")
def engine(shipped_tiny_mote):
    from mote_edge.runtime.engine import Engine

    with Engine.load(shipped_tiny_mote, memory_budget="40MB") as e:
        yield e


@pytest.fixture(scope="module")
def synth_engine(tiny_b4_mote):
    """Random weights: long answers that never stop early, so every decoded position is compared."""
    from mote_edge.runtime.engine import Engine

    with Engine.load(tiny_b4_mote) as e:
        yield e


def user(text, *images):
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*({"type": "image", "image": i} for i in images), {"type": "text", "text": text}]}


def counts(engine) -> dict:
    r = engine.report()
    return {k: r[k] for k in COUNTS}


def fresh(engine, messages, **kw) -> str:
    engine.cached.clear()
    engine.decoder.reset()
    return "".join(engine.chat(messages, **kw))


# ---------------------------------------------------------------------------------------------- templates
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_one_user_turn_renders_as_format_prompt(name):
    t = TEMPLATES[name]
    for images in (0, 1):
        assert t.format_conversation([Turn("user", "What?", images)]) == t.format_prompt("What?", bool(images))


def test_conversation_follows_llava_separator_style_two():
    t = ChatTemplate("t", system="SYS", sep=" ", sep2="</s>")
    turns = [Turn("user", "q1", 1), Turn("assistant", "a1"), Turn("user", "q2", 2)]
    assert t.format_conversation(turns) == "SYS USER: <image>\nq1 ASSISTANT: a1</s>USER: <image>\n<image>\nq2 ASSISTANT:"
    assert TEMPLATES["plain"].format_conversation(turns) == "<image>q1\na1\n<image><image>q2"
    with pytest.raises(ConfigError):
        t.format_conversation([Turn("user", "q"), Turn("assistant", "a")])
    with pytest.raises(ConfigError):
        Turn("assistant", "a", images=1)


def test_messages_are_checked():
    c = Conversation.from_messages([{"role": "system", "content": "S"}, user("q", "a.png", "b.png"),
                                    {"role": "assistant", "content": [{"type": "text", "text": "x"}]}, user("y")])
    assert c.system == "S" and c.images == ["a.png", "b.png"]
    assert c.turns == [Turn("user", "q", 2), Turn("assistant", "x"), Turn("user", "y")]
    bad = [None, [], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}],
           [{"role": "user", "content": [{"type": "video"}]}], [user("x"), {"role": "system", "content": "s"}],
           [user("x"), {"role": "assistant", "content": "y"}], [user("look: <image>")],
           [{"role": "assistant", "content": [{"type": "image", "image": "a.png"}]}, user("x")],
           [{"role": "user", "content": [{"type": "text", "text": 5}]}], ["hello"]]
    for messages in bad:
        with pytest.raises(MessageError):
            Conversation.from_messages(messages)


# ---------------------------------------------------------------------------------------------- chat
def test_one_turn_chat_answers_as_generate(engine):
    question = "What color is the star?"
    assert "".join(engine.chat([user(question, IMAGE)])) == "".join(engine.generate(question, image=IMAGE)).strip()
    assert "".join(engine.chat([user(question)])) == "".join(engine.generate(question)).strip()
    assert engine.finish_reason == "stop"


@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text"])
def test_continued_chat_prefills_only_new_positions_and_equals_a_fresh_chat(engine, with_image):
    images = (IMAGE,) if with_image else ()
    first = [user("What color is the star?", *images)]
    answer1 = fresh(engine, first)
    c1 = counts(engine)
    assert c1["reused_tokens"] == 0 and c1["prefilled_tokens"] == c1["prompt_tokens"]
    second = first + [{"role": "assistant", "content": answer1}, user("How many shapes are there?")]
    answer2 = "".join(engine.chat(second))
    c2 = counts(engine)
    # the whole first prompt and the answer's tokens stay cached; only the second turn's tokens are new
    assert c2["reused_tokens"] == c1["prompt_tokens"] + c1["completion_tokens"]
    assert c2["prefilled_tokens"] == c2["prompt_tokens"] - c2["reused_tokens"]
    new_text = f"{engine.template.sep2}{engine.template.user}: How many shapes are there?{engine.template.sep}" \
               f"{engine.template.assistant}:"
    assert c2["prefilled_tokens"] == len(engine.tokenizer.encode(new_text))
    assert answer2 == fresh(engine, second)
    assert counts(engine)["reused_tokens"] == 0


def test_an_edited_conversation_reuses_only_the_shared_prefix(engine):
    base = [user("What color is the star?", IMAGE)]
    fresh(engine, base)
    p1 = counts(engine)["prompt_tokens"]
    patches = engine.config.vision.num_patches
    # the same question about another image: shared up to the first patch of the image
    answer = "".join(engine.chat([user("What color is the star?", OTHER_IMAGE)]))
    c = counts(engine)
    image_at = engine.encode("What color is the star?", has_image=True).index(-200)
    assert c["reused_tokens"] == image_at and c["prefilled_tokens"] == p1 - image_at
    assert answer == fresh(engine, [user("What color is the star?", OTHER_IMAGE)])
    # the same image sent as bytes and as a PIL image is the same content: reused
    data = IMAGE.read_bytes()
    fresh(engine, base)
    "".join(engine.chat([user("What color is the star?", data)]))
    assert counts(engine)["reused_tokens"] == p1 - 1  # identical prompt: all but the last position
    "".join(engine.chat([user("What color is the star?", Image.open(io.BytesIO(data)))]))
    assert counts(engine)["reused_tokens"] == p1 - 1
    # a different question after the image: reuse ends where the text differs
    "".join(engine.chat([user("How many shapes are there?", IMAGE)]))
    assert image_at + patches <= counts(engine)["reused_tokens"] < p1


def test_two_images_in_one_conversation(engine):
    messages = [user("What color is the star?", IMAGE), {"role": "assistant", "content": "green"},
                user("What color is the star?", OTHER_IMAGE)]
    fresh(engine, messages[:1], max_new_tokens=16)
    answer = "".join(engine.chat(messages, max_new_tokens=16))
    c = counts(engine)
    assert c["prompt_tokens"] > 2 * engine.config.vision.num_patches
    assert c["reused_tokens"] >= engine.config.vision.num_patches and c["prefilled_tokens"] > engine.config.vision.num_patches
    assert answer == fresh(engine, messages, max_new_tokens=16)


def test_system_message_replaces_the_templates(engine):
    "".join(engine.chat([{"role": "system", "content": "Be brief."}, user("What color is the star?", IMAGE)]))
    with_system = counts(engine)["prompt_tokens"]
    "".join(engine.chat([user("What color is the star?", IMAGE)]))
    assert with_system < counts(engine)["prompt_tokens"]  # "Be brief." is shorter than the default system


def test_long_greedy_continuation_equals_a_fresh_chat(synth_engine):
    e = synth_engine
    first = [user("tell me a story")]
    answer1 = fresh(e, first, max_new_tokens=24)
    assert e.finish_reason == "length" and counts(e)["completion_tokens"] == 24
    second = first + [{"role": "assistant", "content": answer1}, user("and then?")]
    continued = list(e.chat_ids(second, max_new_tokens=24))
    assert counts(e)["reused_tokens"] > counts(e)["prompt_tokens"] // 2
    e.cached.clear()
    assert continued == list(e.chat_ids(second, max_new_tokens=24))


def test_cancel_stop_and_limits(synth_engine, engine):
    e = synth_engine
    calls = []
    out = list(e.chat_ids([user("hello")], max_new_tokens=50, cancel=lambda: calls.append(1) or len(calls) >= 3))
    assert len(out) == 3 and e.finish_reason == "cancelled"
    full = fresh(e, [user("hello")], max_new_tokens=30)
    cut = full[len(full) // 2:][:2]
    assert cut and fresh(e, [user("hello")], max_new_tokens=30, stop=[cut]) == full[:full.index(cut)].lstrip()
    assert e.finish_reason == "stop"
    with pytest.raises(MoteError, match="exceeds the context"):
        "".join(engine.chat([user("star " * 300)]))
    with pytest.raises(MoteError, match="max_new_tokens"):
        "".join(engine.chat([user("hi")], max_new_tokens=0))
    # after errors the cache still serves a continued chat correctly
    assert "".join(engine.chat([user("What color is the star?", IMAGE)])) == fresh(engine, [user("What color is the star?", IMAGE)])
