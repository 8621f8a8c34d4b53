"""The int8 KV cache (`kv_bits=8`): its rounding bound against a float32 cache, its bytes in the plan, and
a run whose logits stay close to the float32 cache's."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from mote_edge.errors import MoteError
from mote_edge.format import MoteFile
from mote_edge.runtime.engine import Engine
from mote_edge.runtime.kv_cache import KVCache, kv_bytes_per_position
from mote_edge.runtime.plan import plan_file

IMAGE = REPO / "examples" / "images" / "task-0.png"


def test_int8_cache_is_within_half_a_step_of_the_float_cache():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((5, 2, 16)).astype(np.float32) * np.array([1, 100], np.float32)[None, :, None]
    v = rng.standard_normal((5, 2, 16)).astype(np.float32)
    exact, q8 = KVCache(3, 2, 8, 16, bits=32), KVCache(3, 2, 8, 16, bits=8)
    for cache in (exact, q8):
        cache.write(1, 2, k, v)
    for (a, b), x in zip(zip(exact.read(1, 7), q8.read(1, 7)), (k, v)):
        step = np.abs(x).max(axis=-1).T[:, :, None] / 127  # [nKV, T, 1]: per head and position
        assert np.all(np.abs(a[:, 2:7] - b[:, 2:7]) <= step / 2 + 1e-6)
        assert np.array_equal(a[:, 2:7], x.transpose(1, 0, 2))
    assert not q8.read(1, 2)[0].any()  # positions never written read as zeros


def test_plan_counts_int8_kv_bytes(tiny_b4_mote):
    with MoteFile(tiny_b4_mote) as f:
        dc = f.config.decoder
        p32, p8 = plan_file(f, 256), plan_file(f, 256, kv_bits=8)
    per_position = kv_bytes_per_position(dc.num_key_value_heads, dc.head_dim, 8)
    assert p8.kv_cache_bytes == dc.num_hidden_layers * 256 * per_position
    assert p8.kv_cache_bytes * 4 * dc.head_dim == p32.kv_cache_bytes * (dc.head_dim + 4)
    assert p32.total_bytes - p8.total_bytes == p32.kv_cache_bytes - p8.kv_cache_bytes


def test_int8_kv_run_stays_close_to_the_float_kv_run(tiny_b4_mote):
    logits = {}
    for bits in (32, 8):
        with Engine.load(tiny_b4_mote, threads=1, kv_bits=bits) as engine:
            engine.decoder.reset()
            engine.decoder.forward(engine._prompt_embeddings("What color is the star?", IMAGE))
            token = engine.decoder.embed(np.array([5]))
            logits[bits] = engine.decoder.forward(token)  # reads the whole cache
            assert engine.plan.kv_bits == bits
    scale = np.abs(logits[32]).max()
    assert 0 < np.abs(logits[8] - logits[32]).max() <= 0.05 * scale


def test_unknown_kv_bits_is_a_one_line_error(tiny_b4_mote):
    with pytest.raises(MoteError, match="kv bits must be one of 32, 8"):
        Engine.load(tiny_b4_mote, kv_bits=4)
