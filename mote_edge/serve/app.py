"""The OpenAI-compatible HTTP API (Starlette) over one EngineWorker.

    POST /v1/chat/completions   OpenAI chat completions, plain or streamed (server-sent events)
    GET  /v1/models             the one model served
    GET  /v1/mote/report        the memory and speed report of the last answered request
    GET  /health                {"status": "ok", ...} (no API key needed)

Every error is {"error": {"message", "type", "param", "code"}} with a 4xx status for what the client
sent; the handler never lets an exception reach the client as a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import ApiError
from .limits import ServeLimits
from .request import ChatRequest, parse_body, parse_chat_request
from .worker import EngineWorker, Job, timeout_error

POLL_S = 0.2  # how often a waiting handler checks that its client is still connected


@dataclass
class ServerState:
    worker: EngineWorker
    limits: ServeLimits
    model_id: str
    created: int
    context: int
    api_key: str | None = None


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def create_app(state: ServerState) -> Starlette:
    async def health(request: Request) -> Response:
        w = state.worker
        return JSONResponse({"status": "ok", "model": state.model_id, "busy": w.busy, "waiting": w.waiting,
                             "served": w.served})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(state)]})

    async def report(request: Request) -> Response:
        last = state.worker.last_report
        return JSONResponse({"object": "mote.report", "model": state.model_id,
                             "report": None if last is None else _public(last, state)})

    async def chat_completions(request: Request) -> Response:
        arrived = time.monotonic()
        raw = await _read_body(request, state.limits.max_body_bytes)
        req = parse_chat_request(parse_body(raw), state.limits, state.context)
        if req.model is not None and req.model != state.model_id:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {state.model_id!r}",
                           "invalid_request_error", "model", "model_not_found")
        job = Job(req, asyncio.get_running_loop(), arrived + state.limits.request_timeout_s)
        if not state.worker.submit(job):
            raise ApiError(429, f"the server is busy ({state.limits.max_queue} requests waiting); retry shortly",
                           "requests", None, "rate_limit_exceeded", headers={"Retry-After": "1"})
        try:
            first = await _next_event(job, request, state)
        except BaseException:
            job.cancel()
            raise
        if first[0] == "error":
            raise first[1]
        if req.stream:
            return StreamingResponse(_sse(job, first, request, state), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        pieces = []
        event = first
        try:
            while event[0] == "piece":
                pieces.append(event[1])
                event = await _next_event(job, request, state)
        finally:
            job.cancel()  # a no-op once done; stops the engine if this handler ends early
        if event[0] == "error":
            raise event[1]
        result = event[1]
        body = _completion(state, req, "".join(pieces), result)
        return JSONResponse(body)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)  # type: ignore[arg-type]

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status)
        return error_response(ApiError(status, str(getattr(exc, "detail", "")) or "error", "invalid_request_error",
                                       None, kind))

    async def on_bug(request: Request, exc: Exception) -> Response:
        traceback.print_exception(exc, file=sys.stderr)
        return error_response(ApiError(500, "internal error (see the server log)", "server_error"))

    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/mote/report", report, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_bug})
    if state.api_key is not None:
        app.add_middleware(_BearerKey, key=state.api_key)
    return app


class _BearerKey:
    """ASGI middleware: /v1/* needs `Authorization: Bearer <key>` (401 in OpenAI's shape otherwise)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                e = ApiError(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                             "invalid_request_error", None, "invalid_api_key")
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, more than the {limit} allowed",
                       "invalid_request_error", None, "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is more than the {limit} bytes allowed", "invalid_request_error",
                           None, "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _next_event(job: Job, request: Request, state: ServerState) -> tuple[str, object]:
    """The job's next event; cancels it when the client disconnects or the time limit passes while it waits
    (checked every POLL_S, also while events keep coming)."""
    while True:
        now = time.monotonic()
        if now - job.checked_at >= POLL_S:
            job.checked_at = now
            if await request.is_disconnected():
                job.cancel()
                return ("error", ApiError(499, "the client disconnected"))  # nobody reads it
            if not job.started and now > job.deadline:  # still queued at its deadline
                job.cancel()
                return ("error", timeout_error(state.limits.request_timeout_s))
        try:
            return await asyncio.wait_for(job.events.get(), POLL_S)
        except asyncio.TimeoutError:
            pass


async def _sse(job: Job, first: tuple[str, object], request: Request, state: ServerState) -> AsyncIterator[str]:
    req = job.request
    cid, created = _completion_id(), int(time.time())

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": state.model_id,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
        if usage is not None or req.include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        event = first
        while event[0] == "piece":
            yield chunk({"content": event[1]})
            event = await _next_event(job, request, state)
        if event[0] == "error":
            yield f"data: {json.dumps(event[1].body())}\n\n"  # type: ignore[union-attr]
        else:
            result = event[1]
            yield chunk({}, result["finish_reason"])  # type: ignore[index]
            if req.include_usage:
                yield chunk({}, usage=result["usage"], choices=False)  # type: ignore[index]
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # client gone or stream over: the engine stops within one token


def _completion(state: ServerState, req: ChatRequest, text: str, result: dict) -> dict:
    return {
        "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": state.model_id,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": result["finish_reason"]}],
        "usage": result["usage"],
        "mote": _public(result["report"], state),
    }


def _public(report: dict, state: ServerState) -> dict:
    """The Engine's report as clients see it: the model by its id, not the server's file path."""
    return {**report, "model": state.model_id}


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "mote-edge",
            "context_length": state.context}
