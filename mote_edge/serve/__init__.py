"""`mote-edge serve`: an OpenAI-compatible local HTTP server over one Engine (the [serve] extra: starlette,
uvicorn). docs/SERVING.md lists the endpoints and limits."""
