"""The paper's memory arithmetic, reproduced by the exporter's own layout planner."""

import pytest

from conftest import load_benchmark

GIB = 1024**3


@pytest.fixture(scope="module")
def table():
    return {(r["decoder"], r["experts"]): r for r in load_benchmark("memory_table").rows()}


def test_paper_example_qwen25_3b_16_experts(table):
    """MoTE paper: a 16-expert MoE on every layer of Qwen2.5-3B grows non-embedding memory 5.2 -> 73.2 GB."""
    r = table[("Qwen2.5-3B", 16)]
    assert round(r["dense_fp16"] / GIB, 1) == 5.2
    assert round(r["moe_llava_fp16"] / GIB, 1) == 73.2


def test_ternary_experts_cost_about_a_tenth_of_fp16(table):
    for r in table.values():
        ratio = r["ternary_experts"] / r["fp_experts_fp16"]
        assert 1.6 / 16 <= ratio <= 1.61 / 16  # 1.6 bits vs 16 bits per weight
        assert r["fp_experts_int2"] > r["ternary_experts"]  # int2 + group scales is still above 1.6 bpw
