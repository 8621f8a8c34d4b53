"""The llama.cpp peer benchmark's GGUF writer (benchmarks/peer_gguf.py): llama.cpp loads both layouts and
decodes with them, and the bytes-per-token count follows the file's tensors. Needs the [bench] extra
(gguf, llama-cpp-python), which `make test` does not install: skipped without it."""

from dataclasses import replace

import numpy as np
import pytest

from conftest import load_benchmark

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")
peer = load_benchmark("peer_gguf")

# tiny dims: rows of 64 and 256, so the down experts (rows of 256) are ternary and gate / up fall back to Q4_0
TINY = peer.GgufSpec(layout="dense", vocab=512, hidden=64, intermediate=256, layers=2, heads=4, kv_heads=2,
                     rope_theta=10000.0, rms_eps=1e-6, max_positions=256, seed=3)
TINY_MOE = replace(TINY, layout="qwen2moe", experts=4, top_k=1)


def _greedy(path, prompt, steps):
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)
    out = []
    llm.eval(prompt)
    for _ in range(steps):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        assert np.all(np.isfinite(logits))
        out.append(int(np.argmax(logits)))
        llm.eval(out[-1:])
    return llm.n_vocab(), out


@pytest.mark.parametrize("spec", [TINY, TINY_MOE], ids=["dense", "qwen2moe"])
def test_llama_cpp_loads_and_decodes(spec, tmp_path):
    path = peer.write_gguf(spec, tmp_path / "m.gguf")
    assert peer.read_spec(path) == spec
    n_vocab, tokens = _greedy(path, [1, 2, 3, 4, 5], 4)
    assert n_vocab == spec.vocab and len(tokens) == 4
    # the same seed writes the same bytes
    assert peer.write_gguf(spec, tmp_path / "again.gguf").read_bytes() == path.read_bytes()


def test_expert_types_and_bytes_per_token(tmp_path):
    path = peer.write_gguf(TINY_MOE, tmp_path / "moe.gguf")
    b = peer.bytes_per_token(path)
    assert b.types["ffn_down_exps"] == "TQ2_0"  # rows of 256
    assert b.types["ffn_gate_exps"] == b.types["ffn_up_exps"] == "Q4_0"  # rows of 64
    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    experts = sum(n for name, n in tensors.items() if "_exps" in name)
    embd = tensors["token_embd.weight"]
    # one of 4 experts per token, one embedding row; output.weight is the lm_head
    assert b.total == sum(tensors.values())
    assert b.per_token == round(b.total - experts * 3 / 4 - embd + embd / TINY.vocab)
    dense = peer.bytes_per_token(peer.write_gguf(TINY, tmp_path / "dense.gguf"))
    assert dense.per_token == dense.total  # the tied token_embd is the lm_head, read whole
    assert "output" not in dense.types


def test_ternary_fallback_and_tq1(tmp_path):
    narrow = replace(TINY_MOE, intermediate=96, ternary="TQ1_0")  # rows of 96: no 256-block fits
    assert {t.name.split(".")[-2]: t.qtype for t in peer.tensor_plan(narrow) if "_exps" in t.name} == {
        "ffn_gate_exps": "Q4_0", "ffn_up_exps": "Q4_0", "ffn_down_exps": "Q4_0"}
    assert peer.expert_qtype(replace(TINY_MOE, ternary="TQ1_0"), 256) == "TQ1_0"
