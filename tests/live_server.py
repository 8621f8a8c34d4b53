"""A `mote-edge serve` subprocess on 127.0.0.1 and a free port, for the server tests: started with a
timeout on becoming healthy, always stopped (SIGINT, then SIGKILL) on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 90


def default_sigint() -> None:
    """preexec_fn for a child that is sent SIGINT: a job started in the background by a non-interactive
    shell (CI, nohup, `cmd &`) runs with SIGINT ignored (POSIX), its children inherit that, and Python then
    installs no KeyboardInterrupt handler; a terminal's Ctrl-C, which these tests stand for, is never ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_bytes(pid: int, key: str) -> int:
    """A /proc/PID/status memory line (VmHWM, VmRSS, ...) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class LiveServer:
    def __init__(self, model: Path, log: Path, *args: str, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log
        cmd = [sys.executable, "-m", "mote_edge.cli", "serve", str(model), "--port", str(self.port), *args]
        if api_key is not None:
            cmd += ["--api-key", api_key]
        self._log = open(log, "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=default_sigint)
        self._wait_healthy()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _wait_healthy(self) -> None:
        end = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not become healthy in {STARTUP_TIMEOUT_S} s: {self.log()}")

    def healthy(self) -> bool:
        try:
            r = httpx.get(self.url + "/health", timeout=10)
            return r.status_code == 200 and r.json()["status"] == "ok"
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
