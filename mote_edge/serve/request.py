"""An OpenAI chat completions request body -> a checked ChatRequest (or an ApiError naming the bad field).

Messages become the Engine's chat messages: text parts stay text, `image_url` parts become
{"type": "image", "image": <encoded bytes>} after the checks in images.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError, bad_request
from .images import image_bytes
from .limits import ServeLimits

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields of OpenAI's API this server does not implement: a request that sets them gets a 400, not a silent change.
UNSUPPORTED = {
    "tools": None, "tool_choice": None, "functions": None, "function_call": None, "parallel_tool_calls": None,
    "logprobs": False, "top_logprobs": None, "audio": None, "modalities": None, "prediction": None,
    "logit_bias": None, "n": 1, "frequency_penalty": 0, "presence_penalty": 0,
}


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int | None = None  # None: the server's default, capped by the context left
    temperature: float = 0.0  # greedy unless the request asks (OpenAI defaults to 1)
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    model: str | None = None


def parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad_request(f"the request body is not valid JSON ({type(e).__name__})", None, "invalid_json") from None


def parse_chat_request(body: Any, limits: ServeLimits, context: int) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, allowed in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and not (allowed is not None and value == allowed
                                      and isinstance(value, bool) == isinstance(allowed, bool)):
            raise bad_request(f"{name} is not supported by this server", name, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad_request("response_format other than text is not supported", "response_format", "unsupported_parameter")
    req = ChatRequest(messages=_messages(body.get("messages"), limits))
    req.model = _optional(body, "model", str)
    req.stream = bool(_optional(body, "stream", bool) or False)
    options = _optional(body, "stream_options", dict)
    if options is not None:
        if not req.stream:
            raise bad_request("stream_options needs stream: true", "stream_options")
        include = options.get("include_usage", False)
        if not isinstance(include, bool):
            raise bad_request("stream_options.include_usage must be a boolean", "stream_options.include_usage")
        req.include_usage = include
    for name in ("max_completion_tokens", "max_tokens"):
        value = _optional(body, name, int)
        if value is not None:
            if not 1 <= value <= context:
                raise bad_request(f"{name} must be between 1 and the model's context of {context}, got {value}", name,
                                  "invalid_value")
            req.max_tokens = value
            break
    temperature = _optional(body, "temperature", float)
    if temperature is not None:
        if not 0 <= temperature <= 2:
            raise bad_request(f"temperature must be between 0 and 2, got {temperature}", "temperature", "invalid_value")
        req.temperature = temperature
    top_p = _optional(body, "top_p", float)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p", "invalid_value")
        req.top_p = top_p
    top_k = _optional(body, "top_k", int)
    if top_k is not None:
        if top_k < 0:
            raise bad_request(f"top_k must be >= 0, got {top_k}", "top_k", "invalid_value")
        req.top_k = top_k
    seed = _optional(body, "seed", int)
    if seed is not None and not -2**63 <= seed < 2**64:
        raise bad_request("seed must fit in 64 bits", "seed", "invalid_value")
    req.seed = None if seed is None else seed % 2**64  # the sampler takes seeds >= 0
    req.stop = _stop(body.get("stop"), limits)
    return req


def _optional(body: dict, name: str, kind: type) -> Any:
    """body[name] if present and not null, checked to be of `kind` (bools are not numbers; ints are floats)."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise bad_request(f"{name} must be {_KIND_NAMES[kind]}, got {type(value).__name__}", name, "invalid_type")
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", dict: "an object"}


def _stop(value: Any, limits: ServeLimits) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > limits.max_stop:
        raise bad_request(f"stop takes at most {limits.max_stop} strings", "stop", "invalid_value")
    return [s for s in stops if s]


def _messages(messages: Any, limits: ServeLimits) -> list[dict]:
    if messages is None:
        raise bad_request("messages is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty array", "messages", "invalid_type")
    if len(messages) > limits.max_messages:
        raise bad_request(f"at most {limits.max_messages} messages are accepted", "messages", "invalid_value")
    out, images = [], 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object", where, "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of system, developer, user, assistant; got {_show(role)}",
                              f"{where}.role", "invalid_value")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": ROLES[role], "content": content})
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or an array of parts", f"{where}.content", "invalid_type")
        parts = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{at}.text must be a string", f"{at}.text", "invalid_type")
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                if ROLES[role] != "user":
                    raise bad_request(f"{at}: only user messages can hold images", at, "invalid_value")
                images += 1
                if images > limits.max_images:
                    raise bad_request(f"at most {limits.max_images} images per request", at, "too_many_images")
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise bad_request(f"{at}.image_url.url must be a string", f"{at}.image_url", "invalid_type")
                parts.append({"type": "image", "image": image_bytes(url, limits, f"{at}.image_url")})
            else:
                raise bad_request(f"{at}.type must be text or image_url, got {_show(kind)}", f"{at}.type",
                                  "invalid_value")
        out.append({"role": ROLES[role], "content": parts})
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["ApiError", "ChatRequest", "parse_body", "parse_chat_request"]
