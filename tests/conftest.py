"""Shared fixtures. torch runs single-threaded: the machine has 2 cores.

Oracles: torch (the reference model, the exporter), transformers and onnx are what many tests compare the
runtime with, so `make test` fails, not skips, when one is missing: a run without them would pass while
checking little. Tests import them with `import_oracle(name)`. A runtime-only install (a wheel without the
[export] / [dev] extras) sets MOTE_RUNTIME_ONLY_TESTS=1 to skip the tests that need them instead.
"""

from __future__ import annotations

import importlib
import importlib.util
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
ORACLES = ("torch", "transformers", "onnx")
RUNTIME_ONLY = os.environ.get("MOTE_RUNTIME_ONLY_TESTS") == "1"


def _missing_oracles() -> list[str]:
    missing = []
    for name in ORACLES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ImportError:
            missing.append(name)
    return missing


def pytest_configure(config):
    missing = _missing_oracles()
    if missing and not RUNTIME_ONLY:
        raise pytest.UsageError(f"the test oracles {', '.join(missing)} are not installed: install the [export,dev] "
                                f"extras (make install), or set MOTE_RUNTIME_ONLY_TESTS=1 to skip the tests that need them")


def import_oracle(name: str):
    """Import an oracle package (or one of its modules); missing, it is an error unless MOTE_RUNTIME_ONLY_TESTS=1,
    which skips the calling module (or test)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if RUNTIME_ONLY:
            pytest.skip(f"{name} is not installed (MOTE_RUNTIME_ONLY_TESTS=1)", allow_module_level=True)
        raise ImportError(f"{name}, a test oracle, is not installed (make install; or MOTE_RUNTIME_ONLY_TESTS=1 "
                          f"to skip the tests that need it)") from e


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
def shipped_tiny_mote(export_once) -> Path:
    """The shipped trained tiny MoTE (examples/tiny-mote) at --bits 4, as `make demo` exports it (shared, read only)."""
    return export_once(REPO / "examples" / "tiny-mote", bits=4)


@pytest.fixture(scope="session")
def tiny_b4_mote(tiny_ckpt, export_once) -> Path:
    """The synth `tiny` checkpoint exported at --bits 4 --group-size 32 (shared, read only)."""
    return export_once(tiny_ckpt, bits=4, group_size=32)


@pytest.fixture(scope="session")
def six_moe_layers_mote(tmp_path_factory) -> Path:
    """A tiny model whose 6 decoder layers are all MoE (6 experts each, top-1): deep enough for lookahead3/4
    (the tiny preset has 2 MoE layers of 4 experts, fewer than lookahead4's 4 x top_k loader buffers)."""
    from mote_edge.config import ModelConfig, MoEConfig, ProjectorConfig
    from mote_edge.exporters.export import ExportOptions, export_checkpoint
    from mote_edge.exporters.synth import synthesize
    from mote_edge.presets import TINY_DECODER, TINY_VISION

    decoder = type(TINY_DECODER)(**{**TINY_DECODER.__dict__, "num_hidden_layers": 6})
    moe = MoEConfig(moe_layers_idx=list(range(6)), num_experts=[6] * 6, top_k_experts=1, expert_type="ternary",
                    shared_expert=True)
    cfg = ModelConfig(decoder=decoder, vision=type(TINY_VISION)(**TINY_VISION.__dict__), projector=ProjectorConfig(),
                      moe=moe).validate()
    root = tmp_path_factory.mktemp("six-moe")
    synthesize(cfg, root / "ckpt", seed=3, dtype="fp32", progress=False)
    export_checkpoint(root / "ckpt", root / "model.mote", ExportOptions(bits=4, group_size=32, progress=False))
    (root / "model.mote").chmod(0o444)
    return root / "model.mote"


def run_cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run `mote-edge ARGS` in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "mote_edge.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def load_benchmark(stem: str):
    """benchmarks/<stem>.py under a name no installed package has (benchmarks/ never goes on sys.path)."""
    name = f"mote_bench_{stem}"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{stem}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve their module while the file runs
    spec.loader.exec_module(mod)
    return mod
