"""Errors as OpenAI's API returns them: an HTTP status and {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from dataclasses import dataclass

from mote_edge.errors import MoteError


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_mote_error(e: MoteError) -> ApiError:
    """A user error the Engine raised (bad image, prompt over the context, malformed messages) -> 400."""
    from mote_edge.errors import ImageError
    from mote_edge.messages import MessageError
    from mote_edge.runtime.engine import ContextError

    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ContextError):
        return bad_request(message, "messages", "context_length_exceeded")
    if isinstance(e, ImageError):
        return bad_request(message, "messages", "invalid_image")
    if isinstance(e, MessageError):
        return bad_request(message, e.param)
    return bad_request(message)
