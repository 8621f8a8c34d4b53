"""One Engine, one thread: requests are answered one at a time, first come first served, from a bounded queue.

The HTTP side submits a Job and reads its events from an asyncio queue:
    ("piece", text)   a piece of the answer, as decoded
    ("done", result)  finish_reason, usage and the Engine's report
    ("error", ApiError)
A job is cancelled (client gone, time limit) through `job.cancel()`: the Engine checks it before every
decode step, so it stops within one token; a job cancelled while it waits is skipped.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from mote_edge.errors import MoteError

from .errors import ApiError, from_mote_error
from .request import ChatRequest


def timeout_error(seconds: float) -> ApiError:
    return ApiError(408, f"the request took longer than the server's limit of {seconds:g} s", "timeout_error",
                    None, "request_timeout")


@dataclass
class Job:
    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() by which the last token must be out
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    checked_at: float = 0.0  # when the HTTP side last checked that the client is still there
    started: bool = False  # taken from the queue by the engine thread (which then enforces the deadline)

    def cancel(self) -> None:
        self.cancelled.set()

    def stop_now(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class EngineWorker:
    def __init__(self, engine, max_queue: int, default_max_tokens: int, timeout_s: float):
        self.engine, self.default_max_tokens, self.timeout_s = engine, default_max_tokens, timeout_s
        self._waiting: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)  # FIFO; the running job is not in it
        self.busy = False
        self.last_report: dict | None = None
        self.served = 0
        self._thread = threading.Thread(target=self._run, name="mote-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def submit(self, job: Job) -> bool:
        """Queue the job; False when the queue is full (the caller answers 429)."""
        try:
            self._waiting.put_nowait(job)
            return True
        except queue.Full:
            return False

    def stop(self) -> None:
        """Cancel what waits, end the thread after the running answer's next token."""
        while True:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
        self._waiting.put(None)
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        while (job := self._waiting.get()) is not None:
            self.busy = job.started = True
            try:
                if job.cancelled.is_set():
                    continue
                if time.monotonic() > job.deadline:
                    job.emit("error", timeout_error(self.timeout_s))
                    continue
                self._answer(job)
            finally:
                self.busy = False
    def _answer(self, job: Job) -> None:
        engine, req = self.engine, job.request
        try:
            max_tokens = req.max_tokens
            if max_tokens is None:  # the default, capped by what the context has left
                left = engine.plan.context - engine.prompt_positions(req.messages)
                max_tokens = max(1, min(self.default_max_tokens, left))
            for piece in engine.chat(req.messages, max_new_tokens=max_tokens, temperature=req.temperature,
                                     top_k=req.top_k, top_p=req.top_p, seed=req.seed, stop=req.stop,
                                     cancel=job.stop_now):
                job.emit("piece", piece)
                if job.stop_now():
                    break
            report = engine.report()
            self.last_report = report
            self.served += 1
            if job.cancelled.is_set():
                return  # nobody is listening
            if time.monotonic() > job.deadline:
                job.emit("error", timeout_error(self.timeout_s))
                return
            finish = "length" if engine.finish_reason == "length" else "stop"
            usage = {"prompt_tokens": report["prompt_tokens"], "completion_tokens": report["completion_tokens"],
                     "total_tokens": report["prompt_tokens"] + report["completion_tokens"]}
            job.emit("done", {"finish_reason": finish, "usage": usage, "report": report})
        except ApiError as e:
            job.emit("error", e)
        except MoteError as e:
            job.emit("error", from_mote_error(e))
        except Exception:  # a bug: logged here, a 500 without details to the client, and the server goes on
            traceback.print_exc(file=sys.stderr)
            job.emit("error", ApiError(500, "internal error while answering (see the server log)", "server_error"))
