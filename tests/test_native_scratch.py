"""The kernels' persistent per-thread buffers (native/scratch.c): results never depend on what an earlier
call left in them, what a thread keeps between calls is bounded (a prefill chunk's large buffers are
freed, or held until the prefill ends), the large ones never come from malloc's heap, and concurrent
callers (a second Engine's thread, loader threads) each get their own."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from mote_edge import _native
from mote_edge.quant import kernels
from mote_edge.quant.intn import quantize_intn
from mote_edge.quant.ternary import pack_ternary
from mote_edge.quant.ternary_slab import pack_ternary_slab2

KEEP = 256 << 10  # MOTE_SCRATCH_KEEP
SLOTS = 8  # MOTE_SCR_COUNT


@pytest.fixture(params=kernels.available_paths())
def path(request):
    kernels.set_kernel_path(request.param)
    yield request.param
    kernels.set_kernel_path("auto")


def _intn(rng, N, K, bits=4, G=128):
    return quantize_intn(rng.standard_normal((N, K)).astype(np.float32), bits, G)


def _tern(rng, N, K):
    return pack_ternary(rng.integers(-1, 2, size=(N, K)).astype(np.int8)), 0.7


def _dirty(rng):
    """Fill every kernel buffer of this thread with non-zero bytes: larger shapes, random activations."""
    x = (rng.standard_normal((20, 4864)) * 50).astype(np.float32)
    kernels.intn_matmul(x, _intn(rng, 64, 4864))
    packed, gamma = _tern(rng, 64, 4864)
    kernels.ternary_matmul(x, packed, gamma, 64, 4864)


@pytest.mark.parametrize("T", [1, 3, 9, 17])
def test_results_do_not_depend_on_what_the_buffers_held(path, T):
    rng = np.random.default_rng(T)
    K = 1000  # not a multiple of the group (128) nor of a ternary block (320): padded columns
    x = rng.standard_normal((T, K)).astype(np.float32)
    wq = _intn(rng, 40, K)
    packed, gamma = _tern(rng, 40, K)
    packed2 = pack_ternary_slab2(rng.integers(-1, 2, size=(40, K)).astype(np.int8))

    def run():
        return [kernels.intn_matmul(x, wq), kernels.ternary_matmul(x, packed, gamma, 40, K),
                kernels.ternary_matmul(x, packed2, gamma, 40, K, layout="slab2")]

    first = run()
    _dirty(rng)
    again = run()
    for a, b in zip(first, again):
        assert np.array_equal(a, b)


def in_new_thread(fn):
    """fn() on a thread of its own (fresh buffers); its result, or its exception raised here."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_what_a_thread_keeps_is_bounded():
    rng = np.random.default_rng(0)

    def sizes():
        assert _native.scratch_held() == 0  # a new thread holds nothing
        kernels.intn_matmul(rng.standard_normal((1, 896)).astype(np.float32), _intn(rng, 64, 896))
        small = _native.scratch_held()
        # a prefill chunk: 256 positions of a 4864-wide input (1.2 MB of int8 copies, more interleaved): freed
        kernels.intn_matmul(rng.standard_normal((256, 4864)).astype(np.float32), _intn(rng, 16, 4864))
        return small, _native.scratch_held()

    small, after_chunk = in_new_thread(sizes)
    assert 0 < small <= 32 << 10  # a decode GEMV's activation and row scratch: a few KiB each
    assert after_chunk <= SLOTS * KEEP and after_chunk < 1 << 20


def test_concurrent_callers_get_their_own_buffers():
    rng = np.random.default_rng(1)
    cases = []
    for T, K in ((1, 896), (3, 4864), (9, 1000), (1, 1000)):
        x = rng.standard_normal((T, K)).astype(np.float32)
        wq = _intn(rng, 80, K)
        packed, gamma = _tern(rng, 80, K)
        cases.append((x, wq, packed, gamma, K, kernels.intn_matmul(x, wq, threads=2),
                      kernels.ternary_matmul(x, packed, gamma, 80, K, threads=2)))
    errors = []

    def worker(i):
        for r in range(40):
            x, wq, packed, gamma, K, yi, yt = cases[(i + r) % len(cases)]
            if not (np.array_equal(kernels.intn_matmul(x, wq, threads=2), yi)
                    and np.array_equal(kernels.ternary_matmul(x, packed, gamma, 80, K, threads=2), yt)):
                errors.append((i, r))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_held_scratch_keeps_a_prefills_buffers_until_it_ends():
    from mote_edge.runtime.native_layer import held_scratch

    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 4864)).astype(np.float32)
    w = _intn(rng, 16, 4864)
    want = kernels.intn_matmul(x, w)

    def sizes():
        with held_scratch():
            first = kernels.intn_matmul(x, w)
            held = _native.scratch_held()
            again = kernels.intn_matmul(x, w)  # the same buffer, not a second one
            held_again = _native.scratch_held()
        return first, again, held, held_again, _native.scratch_held()

    first, again, held, held_again, after = in_new_thread(sizes)
    assert np.array_equal(first, want) and np.array_equal(again, want)
    assert held >= 256 * 4864 and held_again == held  # the chunk's int8 copy at least, kept from call to call
    assert after <= SLOTS * KEEP  # the large blocks go when the hold ends


# A prefill's kernel calls in a fresh process: how much they extend malloc's main heap (glibc mallinfo2
# arena) and leave mapped by malloc (hblkhd). From malloc, the first multi-MB block was mapped and, freed,
# raised glibc's dynamic mmap threshold to its size; the next came from the heap, whose top stayed above the
# trim threshold raised with it: the arena grew by the block (1.2 MB here) and a prefill's resident memory
# went over its plan (docs/KERNELS.md section 6). The blocks are the scratch's own mappings now.
PREFILL_HEAP = r"""
import ctypes, json
import numpy as np
from mote_edge.quant import kernels
from mote_edge.quant.intn import quantize_intn
from mote_edge.runtime.native_layer import held_scratch

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 4864)).astype(np.float32)
w = quantize_intn(rng.standard_normal((16, 4864)).astype(np.float32), 4, 128)
kernels.intn_matmul(x[:1], w)
libc.malloc_trim(0)
before = libc.mallinfo2()
for _ in range(3):  # per-call release, then a held prefill
    kernels.intn_matmul(x, w)
with held_scratch():
    for _ in range(3):
        kernels.intn_matmul(x, w)
after = libc.mallinfo2()
print(json.dumps({"arena_growth": after.arena - before.arena, "mapped_growth": after.hblkhd - before.hblkhd}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_a_prefills_kernel_buffers_leave_mallocs_heap_alone():
    r = subprocess.run([sys.executable, "-c", PREFILL_HEAP], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads(r.stdout.strip().splitlines()[-1])
    assert run["arena_growth"] < 256 << 10 and run["mapped_growth"] == 0, run
