"""numpy's BLAS threads: set through the OpenBLAS C API (runtime/blas.py); Engine.load sets BLAS_THREADS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mote_edge.runtime.blas import BLAS_THREADS, blas_threads, set_blas_threads

pytestmark = pytest.mark.skipif(blas_threads() is None, reason="numpy's BLAS is not an OpenBLAS found here")

# OPENBLAS_NUM_THREADS unset: numpy's default is one BLAS thread per core
PROBE = r"""
import json, sys
from mote_edge.runtime.blas import blas_threads
before = blas_threads()
from mote_edge.runtime.engine import Engine
with Engine.load(sys.argv[1], threads=int(sys.argv[2])) as engine:
    during = blas_threads()
print(json.dumps({"before": before, "during": during}))
"""


def _engine_blas_threads(mote, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", PROBE, str(mote), str(threads)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_set_blas_threads_changes_what_openblas_reports():
    before = blas_threads()
    try:
        assert set_blas_threads(1) and blas_threads() == 1
        assert set_blas_threads(0) and blas_threads() == 1  # at least one
    finally:
        set_blas_threads(before)
    assert blas_threads() == before


@pytest.mark.parametrize("threads", [1, 2])
def test_engine_load_sets_numpys_blas_threads(tiny_b4_mote, threads):
    got = _engine_blas_threads(tiny_b4_mote, threads)
    assert got["during"] == BLAS_THREADS, got
    if got["before"] != BLAS_THREADS:  # numpy's default (a thread per core) was changed, not just read
        assert got["before"] > got["during"]
