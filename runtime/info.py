"""`mote-edge info`: what is in a .mote file and what running it costs, as a dict or as text."""

from __future__ import annotations

from mote_edge.chat import ChatTemplate
from mote_edge.format.reader import MoteFile
from mote_edge.format.stats import bits_per_weight

from .budget import format_bytes
from .plan import default_context, minimum_plan_file, plan_file

ROLE_ORDER = ("embed", "lm_head", "attn", "attn_bias", "norm", "ffn", "router", "shared_expert", "ternary_expert",
              "fp_expert", "residual_mlp", "residual_coef", "lookahead", "vision", "projector")


def info_dict(f: MoteFile, context: int | None = None) -> dict:
    cfg = f.config
    sizes = f.metadata["sizes"]
    context = context or default_context(cfg)
    full = plan_file(f, context)
    minimum = minimum_plan_file(f, context)
    text_only = minimum_plan_file(f, context, vision=False)
    dc, v = cfg.decoder, cfg.vision
    return {
        "file": str(f.path), "file_bytes": f.size,
        "version": f"{f.header.major}.{f.header.minor}", "created_by": f.metadata.get("created_by"),
        "model": {
            "decoder": f"{dc.num_hidden_layers} layers, hidden {dc.hidden_size}, ffn {dc.intermediate_size}, "
                       f"heads {dc.num_attention_heads}/{dc.num_key_value_heads} kv, vocab {dc.vocab_size}",
            "vision": f"ViT {v.num_hidden_layers} blocks, hidden {v.hidden_size}, {v.image_size}px / patch "
                      f"{v.patch_size} ({v.num_patches} patches)",
            "moe": (f"{cfg.moe.expert_type} experts: {cfg.moe.num_experts[0]} per layer on {len(cfg.moe_layers)} "
                    f"layers, top-{cfg.moe.top_k_experts}, shared expert: {'yes' if cfg.moe.shared_expert else 'no'}")
                   if cfg.moe_layers else "dense",
            "prompt": _prompt_line(f.metadata),
        } | ({"lookahead": _lookahead_line(f)} if cfg.moe_layers else {}),
        "lookahead": f.metadata.get("lookahead") if f.lookahead_depth else None,
        "recipe": {role: s.label for role, s in f.recipe.roles.items()} | {"vision": f"int{f.recipe.vision_bits}"
                                                                            if f.recipe.vision_bits == 8 else
                                                                            f"fp{f.recipe.vision_bits}"},
        "roles": {role: {**sizes["by_role"][role], "bits_per_weight": round(bits_per_weight(sizes["by_role"][role]), 3)}
                  for role in ROLE_ORDER if role in sizes["by_role"]},
        "resident_bytes": sizes["resident_bytes"], "expert_bytes": sizes["expert_bytes"],
        "expert_record_bytes": sizes["expert_record_max_bytes"], "expert_records": sizes["num_expert_records"],
        "vision_bytes": sizes["vision_bytes"], "vision_section": _vision_line(f),
        "memory": {"context": context, "full_cache_bytes": full.total_bytes, "full_cache_phases": full.phases(),
                   "minimum_budget_bytes": minimum.total_bytes, "minimum_phases": minimum.phases(),
                   "minimum_binding_phase": minimum.binding_phase,
                   "minimum_text_only_bytes": text_only.total_bytes},
    }


def _vision_line(f: MoteFile) -> str:
    """How the vision section is stored and run."""
    v = f.vision
    if v is None:
        return "none"
    if v.format == "onnx":
        return "ONNX model (onnxruntime)"
    largest = max(v.blocks, key=lambda b: b.nbytes)
    return (f"native, {len(v.blocks)} blocks streamed one at a time (largest: {largest.name}, "
            f"{format_bytes(largest.nbytes)})")


def _lookahead_line(f: MoteFile) -> str:
    """What predicts the experts to prefetch: the routers, or the stored fitted predictors and their held-out recall."""
    if not f.lookahead_depth:
        return "the routers predict prefetches (no fitted predictors: `mote-edge fit-lookahead` adds them)"
    la = f.metadata["lookahead"]
    pct = lambda rs: "/".join("-" if r is None else f"{100 * r:.0f}" for r in rs)  # noqa: E731
    line = f"fitted predictors 1..{f.lookahead_depth} MoE layers ahead"
    if "waves" in la and "samples" in la:
        line += f" (on {la['waves']} decode waves of {la['samples']} prompts)"
    if "recall" in la and "router_recall" in la:
        line += f"; held-out recall {pct(la['recall'])}% (routers {pct(la['router_recall'])}%)"
    return line


def _prompt_line(meta: dict) -> str:
    """Chat template, BOS and stop conditions, as the runtime will use them."""
    template = ChatTemplate.from_dict(meta.get("chat_template", {"name": "v1"}))
    tok = meta.get("tokenizer", {})
    bos = tok.get("bos_token_id")
    stops = list(template.stop) + [f"id {i}" for i in tok.get("stop_token_ids", [tok.get("eos_token_id")])
                                   if i is not None]
    return (f"chat template {template.name}, BOS {'id ' + str(bos) if bos is not None else 'none'}, "
            f"stops at {', '.join(repr(s) if isinstance(s, str) and not s.startswith('id ') else s for s in stops)}")


def info_text(d: dict) -> str:
    lines = [f"{d['file']}  ({format_bytes(d['file_bytes'])}, .mote v{d['version']}, {d['created_by']})", ""]
    lines += [f"  {k:<9} {v}" for k, v in d["model"].items()]
    lines += ["", "  recipe:   " + ", ".join(f"{r}={s}" for r, s in d["recipe"].items()), "",
              f"  {'role':<16}{'params':>16}{'bytes':>16}{'bits/weight':>13}"]
    for role, r in d["roles"].items():
        lines.append(f"  {role:<16}{r['params']:>16,}{r['bytes']:>16,}{r['bits_per_weight']:>13.3f}")
    lines += ["",
              f"  resident (non-expert) {format_bytes(d['resident_bytes']):>14}",
              f"  routed experts        {format_bytes(d['expert_bytes']):>14}   ({d['expert_records']} records of "
              f"<= {d['expert_record_bytes']:,} bytes)",
              f"  vision                {format_bytes(d['vision_bytes']):>14}   ({d['vision_section']})", ""]
    m = d["memory"]
    for title, total, phases in (("full expert cache", m["full_cache_bytes"], m["full_cache_phases"]),
                                 ("minimum feasible budget", m["minimum_budget_bytes"], m["minimum_phases"])):
        lines.append(f"  {title} at context {m['context']}: {format_bytes(total)} (the largest phase)")
        for phase, parts in phases.items():
            lines.append(f"    {phase + ':':<18}{format_bytes(sum(parts.values())):>11}  "
                         + ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items()))
    lines.append(f"  the minimum is set by the {m['minimum_binding_phase']} phase; text only (run without --image): "
                 f"{format_bytes(m['minimum_text_only_bytes'])}")
    return "\n".join(lines)
