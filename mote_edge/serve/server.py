"""Load the model, start the engine thread and run uvicorn until SIGINT / SIGTERM."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .limits import ServeLimits


def run_server(model: Path, memory_budget: str | None, host: str, port: int, api_key: str | None,
               limits: ServeLimits, threads: int | None = None, max_context: int | None = None) -> None:
    import uvicorn  # the [serve] extra; imported first so its memory is in the Engine's baseline

    from mote_edge.runtime.budget import format_bytes
    from mote_edge.runtime.engine import Engine

    from .app import ServerState, create_app
    from .worker import EngineWorker

    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"mote-edge serve: warning: listening on {host} without --api-key: anyone who can reach this "
              f"port can use the model", file=sys.stderr, flush=True)
    engine = Engine.load(model, memory_budget=memory_budget, threads=threads, max_context=max_context)
    worker = EngineWorker(engine, limits.max_queue, limits.default_max_tokens, limits.request_timeout_s)
    try:
        state = ServerState(worker=worker, limits=limits, model_id=Path(model).stem, created=int(time.time()),
                            context=engine.plan.context, api_key=api_key)
        app = create_app(state)
        print(f"mote-edge serve: {state.model_id} (plan {format_bytes(engine.plan.total_bytes)}, context "
              f"{engine.plan.context}) on http://{host}:{port}/v1", file=sys.stderr, flush=True)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5, lifespan="off")
        uvicorn.Server(config).run()
    finally:
        worker.stop()
        engine.close()
