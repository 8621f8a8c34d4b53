"""Chat messages as apps send them, checked and split into what the chat template renders.

    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "image", "image": "shapes.png"},
                                     {"type": "text", "text": "What color is the star?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "How many shapes are there?"},
    ]
    conversation = Conversation.from_messages(messages)
    conversation.system    -> "Answer in one word."  (None: the template's own)
    conversation.turns     -> [Turn("user", "What color is the star?", images=1), Turn("assistant", "red"), ...]
    conversation.images    -> ["shapes.png"]           (in prompt order)

A user turn's images lead its text ("<image>\\n" each, as LLaVA trains); its text parts are joined with
"\\n". Image values are whatever mote_edge.image.load_image takes (a path, encoded bytes, a PIL image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mote_edge.chat import Turn
from mote_edge.config import IMAGE_PLACEHOLDER
from mote_edge.errors import MoteError

ROLES = ("system", "user", "assistant")


class MessageError(MoteError):
    """The chat messages are malformed (wrong role, type, order or content)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Conversation:
    system: str | None
    turns: list[Turn]
    images: list[Any] = field(default_factory=list)

    @classmethod
    def from_messages(cls, messages: Any) -> "Conversation":
        if not isinstance(messages, list) or not messages:
            raise MessageError("messages must be a non-empty list", "messages")
        system: str | None = None
        turns: list[Turn] = []
        images: list[Any] = []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict):
                raise MessageError(f"{where} must be an object with role and content", where)
            role = message.get("role")
            if role not in ROLES:
                raise MessageError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
            text, found = _content(message.get("content"), f"{where}.content", images_allowed=role == "user")
            if role == "system":
                if turns or system is not None:
                    raise MessageError(f"{where}: a system message must be the first message, and only one",
                                       f"{where}.role")
                system = text
                continue
            turns.append(Turn(role, text, len(found)))
            images.extend(found)
        if not turns or turns[-1].role != "user":
            raise MessageError("the last message must be a user message (it is what gets answered)", "messages")
        return cls(system, turns, images)


def _content(content: Any, where: str, images_allowed: bool) -> tuple[str, list[Any]]:
    """(text, images) of one message's content: a string or a list of text / image parts."""
    if isinstance(content, str):
        return _text(content, where), []
    if not isinstance(content, list):
        raise MessageError(f"{where} must be a string or a list of parts", where)
    texts: list[str] = []
    images: list[Any] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise MessageError(f"{at}.text must be a string", f"{at}.text")
            texts.append(_text(part["text"], f"{at}.text"))
        elif kind == "image":
            if not images_allowed:
                raise MessageError(f"{at}: only user messages can hold images", at)
            if part.get("image") is None:
                raise MessageError(f"{at}.image is missing", f"{at}.image")
            images.append(part["image"])
        else:
            raise MessageError(f"{at} must be an object with type text or image", f"{at}.type")
    return "\n".join(texts), images


def _text(text: str, where: str) -> str:
    if IMAGE_PLACEHOLDER in text:
        raise MessageError(f"{where} contains {IMAGE_PLACEHOLDER!r}; send images as image parts", where)
    return text
