"""Shared fixtures. torch (when installed) runs single-threaded: the machine has 2 cores."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime-only install has no torch
    torch = None

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The synth `tiny` preset (ternary experts + shared expert), stored in fp32."""
    from mote_edge.exporters.synth import synthesize_preset

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    synthesize_preset("tiny", out, expert_type="ternary", seed=1, dtype="fp32", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_fp_ckpt(tmp_path_factory) -> Path:
    """The synth `tiny` preset as a MoE-LLaVA model (fp experts, no shared expert), bf16."""
    from mote_edge.exporters.synth import synthesize_preset

    out = tmp_path_factory.mktemp("ckpt") / "tiny-fp"
    synthesize_preset("tiny", out, expert_type="fp", seed=2, dtype="bf16", progress=False)
    return out


@pytest.fixture(scope="session")
def export_once(tmp_path_factory):
    """`export_once(ckpt_dir, **ExportOptions)` exports each (checkpoint, options) once per session and returns
    the path; tests share the file and only read it (a test that needs a damaged copy writes its own)."""
    from mote_edge.exporters.export import ExportOptions, export_checkpoint

    done: dict = {}

    def export(ckpt_dir, **options) -> Path:
        key = (str(ckpt_dir), tuple(sorted(options.items())))
        if key not in done:
            path = tmp_path_factory.mktemp("export") / f"{Path(ckpt_dir).name}.mote"
            export_checkpoint(ckpt_dir, path, ExportOptions(progress=False, **options))
            path.chmod(0o444)
            done[key] = path
        return done[key]

    return export


@pytest.fixture(scope="session")
def tiny_b4_mote(tiny_ckpt, export_once) -> Path:
    """The synth `tiny` checkpoint exported at --bits 4 --group-size 32 (shared, read only)."""
    return export_once(tiny_ckpt, bits=4, group_size=32)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run `mote-edge ARGS` in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "mote_edge.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
