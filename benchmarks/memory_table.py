"""The paper's memory table, from the code that writes .mote files (a dry-run layout, no data).

For Qwen2.5-0.5B / 1.5B / 3B decoders with 4, 8 and 16 experts on every layer: non-embedding bytes of
the dense model (fp16), of MoE-LLaVA with fp16 experts, of those experts after 4/3/2-bit PTQ, and of
MoTE (fp16 shared expert + ternary experts). Checks the paper's example: a 16-expert MoE on every
layer of Qwen2.5-3B grows non-embedding memory from 5.2 GB to 73.2 GB (GiB, fp16).

    python benchmarks/memory_table.py      # prints the table, writes benchmarks/out/memory_table.json
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from mote_edge.config import ModelConfig, MoEConfig, ProjectorConfig
from mote_edge.format.stats import size_stats
from mote_edge.presets import CLIP_VIT_B16_224, QWEN25_05B, QWEN25_3B, QWEN25_15B
from mote_edge.quant.recipe import Recipe
from mote_edge.schema import checkpoint_tensors

GIB = 1024**3
EMBEDDING_ROLES = ("embed", "lm_head")
DECODERS = {"Qwen2.5-0.5B": QWEN25_05B, "Qwen2.5-1.5B": QWEN25_15B, "Qwen2.5-3B": QWEN25_3B}


def layout_stats(cfg: ModelConfig, recipe: Recipe) -> dict:
    """Size statistics of the file `mote-edge export` would write, laid out without data."""
    from mote_edge.exporters.export import assign_offsets  # numpy only; the planner the exporter runs
    from mote_edge.format import MoteWriter

    writer = MoteWriter("/dev/null/never-written", {})
    assign_offsets(writer, checkpoint_tensors(cfg), recipe)
    return size_stats(writer.tensors.values(), writer.experts.values(), None)


def non_embedding_bytes(stats: dict) -> int:
    return sum(r["bytes"] for role, r in stats["by_role"].items() if role not in EMBEDDING_ROLES)


def model(decoder, experts: int | None, expert_type: str = "fp") -> ModelConfig:
    moe = None
    if experts:
        layers = list(range(decoder.num_hidden_layers))
        moe = MoEConfig(moe_mode="dense", moe_layers_idx=layers, num_experts=[experts] * len(layers), top_k_experts=2,
                        expert_type=expert_type, shared_expert=expert_type == "ternary")
    return ModelConfig(decoder=copy.copy(decoder), vision=CLIP_VIT_B16_224, projector=ProjectorConfig(), moe=moe)


def rows() -> list[dict]:
    out = []
    fp16 = Recipe.default(16)
    for name, dc in DECODERS.items():
        dense = non_embedding_bytes(layout_stats(model(dc, None), fp16))
        for e in (4, 8, 16):
            fp = layout_stats(model(dc, e, "fp"), fp16)
            row = {"decoder": name, "experts": e, "dense_fp16": dense, "moe_llava_fp16": non_embedding_bytes(fp),
                   "fp_experts_fp16": fp["expert_bytes"]}
            for bits in (4, 3, 2):
                s = layout_stats(model(dc, e, "fp"), Recipe.default(16, overrides=f"fp_expert={bits}"))
                row[f"moe_llava_int{bits}"] = non_embedding_bytes(s)
                row[f"fp_experts_int{bits}"] = s["expert_bytes"]
            mote = layout_stats(model(dc, e, "ternary"), fp16)
            row["mote"] = non_embedding_bytes(mote)
            row["ternary_experts"] = mote["expert_bytes"]
            out.append(row)
    return out


def main() -> None:
    table = rows()
    cols = [("dense_fp16", "dense"), ("moe_llava_fp16", "MoE fp16"), ("moe_llava_int4", "MoE int4"),
            ("moe_llava_int3", "MoE int3"), ("moe_llava_int2", "MoE int2"), ("mote", "MoTE")]
    print("non-embedding memory, GiB (experts on every layer; dense and shared parts fp16)")
    print(f"{'decoder':<14}{'E':>3}" + "".join(f"{label:>11}" for _, label in cols))
    for r in table:
        print(f"{r['decoder']:<14}{r['experts']:>3}" + "".join(f"{r[k] / GIB:>11.2f}" for k, _ in cols))
    ex = next(r for r in table if r["decoder"] == "Qwen2.5-3B" and r["experts"] == 16)
    print(f"\npaper: Qwen2.5-3B dense 5.2 GB -> 16-expert MoE 73.2 GB; ours: {ex['dense_fp16'] / GIB:.1f} -> "
          f"{ex['moe_llava_fp16'] / GIB:.1f} GiB; MoTE {ex['mote'] / GIB:.1f} GiB "
          f"({ex['moe_llava_fp16'] / ex['mote']:.1f}x smaller than the fp16 MoE)")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "memory_table.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
