"""The memory and speed report of a run (`mote-edge run --report`, `Engine.report()`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .budget import format_bytes
from .lookahead_recall import RECALL_TO_PREFETCH
from .memory import page_cache_bytes, read_status


@dataclass
class RunStats:
    image_encode_ms: float = 0.0
    ttft_ms: float = 0.0
    prefill_tokens: int = 0
    prefill_ms: float = 0.0
    decode_tokens: int = 0
    decode_ms: float = 0.0


@dataclass
class TokenCounts:
    """Positions of the last prompt (image patches included): reused from the KV cache + prefilled = prompt."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    completion_tokens: int = 0


def _rate(tokens: int, ms: float) -> float:
    return 1e3 * tokens / ms if ms > 0 else 0.0


def build_report(engine) -> dict:
    status = read_status()
    peak = engine.peaks.overall()
    cache = engine.experts
    s = engine.stats
    experts = None
    if cache is not None:
        st = cache.stats
        recall = engine.decoder.lookahead_recall
        experts = {"policy": cache.policy, "layout": cache.layout, "slabs": len(cache.slabs), "total": len(engine.file.experts), "hits": st.hits, "misses": st.misses,
                   "hit_rate": st.hit_rate, "evictions": st.evictions, "bytes_read": st.bytes_read,
                   "stall_ms": st.stall_ms, "io_path": cache.io_path, "crc_path": cache.reader.crc_path,
                   "loader": "serial" if cache.loader is None else "thread",
                   "loader_readers": cache.loader.readers if cache.loader else 0,
                   "loader_slabs": engine.plan.loader_slabs, "prefetch": engine.prefetch,
                   "prefetches": st.prefetches, "prefetch_used": st.prefetch_used, "prefetch_late": st.prefetch_late,
                   "prefetch_wasted_bytes": st.prefetch_wasted_bytes, "prefetch_cancelled": st.prefetch_cancelled,
                   "prefetch_aborted": st.prefetch_aborted, "prefetch_evicting": st.prefetch_evicting,
                   "prefetch_handovers": st.prefetch_handovers, "prefetch_chunk": cache.prefetch_chunk,
                   "lookahead_recall": None if recall is None else recall.as_list(),
                   "prefetch_depth": None if recall is None else recall.depth(),
                   "lookahead_predictor": engine.lookahead_predictor,
                   "load_read_ms": st.load_read_ms,
                   "load_crc_ms": st.load_crc_ms, "load_place_ms": st.load_place_ms,
                   "first_parts": st.first_parts, "checked_later": st.checked_later,
                   "loader_busy_ms": cache.loader.stats.busy_ms if cache.loader else st.stall_ms,
                   "loader_span_ms": cache.loader.stats.span_ms if cache.loader else st.stall_ms,
                   "loader_most_in_flight": cache.loader.stats.most_in_flight if cache.loader else int(st.misses > 0),
                   "loader_bytes_per_s": cache.loader.stats.throughput if cache.loader else
                   (1e3 * st.bytes_read / st.stall_ms if st.stall_ms > 0 else 0.0)}
    return {
        "model": str(engine.file.path),
        "budget_bytes": engine.budget,
        "plan": {"context": engine.plan.context, "total_bytes": engine.plan.total_bytes,
                 "breakdown": engine.plan.breakdown(), "phases": engine.plan.phase_bytes(),
                 "binding_phase": engine.plan.binding_phase},
        "memory": {"baseline_rss": engine.baseline_rss, "peak_rss": peak, "rss": status["VmRSS"],
                   "rss_anon": status["RssAnon"], "rss_file": status["RssFile"],
                   "peak_over_baseline": peak - engine.baseline_rss,
                   "phase_peaks_over_baseline": {k: v - engine.baseline_rss for k, v in engine.peaks.phases.items()},
                   "model_page_cache": page_cache_bytes(engine.file.path)},
        "experts": experts,
        "timing": {**asdict(s), "load_ms": engine.load_ms, "prefill_tok_s": _rate(s.prefill_tokens, s.prefill_ms),
                   "decode_tok_s": _rate(s.decode_tokens, s.decode_ms)},
        "threads": engine.threads,
        **asdict(engine.tokens),
    }


def report_text(r: dict) -> str:
    m, t, e = r["memory"], r["timing"], r["experts"]
    budget = format_bytes(r["budget_bytes"]) if r["budget_bytes"] is not None else "none (all experts cached)"
    lines = [f"memory budget        {budget}",
             f"plan                 {format_bytes(r['plan']['total_bytes'])} at context {r['plan']['context']}"]
    lines += [f"  {k:<25}{format_bytes(v):>12}" for k, v in r["plan"]["breakdown"].items()]
    measured = m.get("phase_peaks_over_baseline", {})
    for phase, planned in r["plan"]["phases"].items():
        got = f"measured peak {format_bytes(measured[phase])} over baseline" if phase in measured else "not run"
        lines.append(f"phase {phase:<17}plan {format_bytes(planned)}, {got}")
    cache = m["model_page_cache"]
    lines += [f"baseline RSS         {format_bytes(m['baseline_rss'])} (before loading)",
              f"peak RSS (VmHWM)     {format_bytes(m['peak_rss'])} ({format_bytes(m['peak_over_baseline'])} over baseline)",
              f"RSS anon / file      {format_bytes(m['rss_anon'])} / {format_bytes(m['rss_file'])}",
              f"model in page cache  {format_bytes(cache) if cache is not None else 'unknown'}"]
    if e is not None:
        lines += [f"experts              {e['slabs']} of {e['total']} cached; {e['hits']} hits, {e['misses']} misses "
                  f"({100 * e['hit_rate']:.1f}% hit rate), {e['evictions']} evictions ({e['policy']}, {e['layout']} layout)",
                  f"expert loads         {format_bytes(e['bytes_read'])} read ({e['io_path']} I/O, {e['crc_path']} CRC, "
                  f"{e['loader']} loader, {e['loader_readers']} readers, at most {e['loader_most_in_flight']} in flight, "
                  f"{format_bytes(e['loader_bytes_per_s'])}/s while loading), {e['stall_ms']:.1f} ms stalled",
                  f"load time            read {e['load_read_ms']:.1f} ms, CRC {e['load_crc_ms']:.1f} ms, "
                  f"place {e['load_place_ms']:.1f} ms (summed over loads; readers overlap); {e['first_parts']} misses "
                  f"computed gate/up while down_proj read, {e['checked_later']} computed while their CRC ran "
                  f"(checked before the token)",
                  f"prefetch             {e['prefetch']} into {e['loader_slabs']} loader buffers: {e['prefetches']} "
                  f"issued ({e['prefetch_evicting']} into the slab of an expert needed later), {e['prefetch_used']} "
                  f"used ({e['prefetch_late']} late), {e['prefetch_cancelled']} cancelled, {e['prefetch_aborted']} "
                  f"aborted (chunks of {format_bytes(e['prefetch_chunk'])}; {e['prefetch_handovers']} demand reads "
                  f"took their slab), {format_bytes(e['prefetch_wasted_bytes'])} wasted"]
        if e["lookahead_recall"] is not None:
            lines.append(f"lookahead recall     ({e['lookahead_predictor']}) " + ", ".join(
                f"{d} ahead {'-' if r is None else f'{100 * r:.0f}%'}" for d, r in enumerate(e["lookahead_recall"], 1))
                + f"; prefetching {e['prefetch_depth']} ahead now (adaptive: recall >= {100 * RECALL_TO_PREFETCH:.0f}%)")
    lines += [f"image encode         {t['image_encode_ms']:.1f} ms",
              f"time to first token  {t['ttft_ms']:.1f} ms",
              f"prompt               {r['prompt_tokens']} positions: {r['reused_tokens']} reused from the KV cache, "
              f"{r['prefilled_tokens']} prefilled",
              f"prefill              {t['prefill_tokens']} tokens, {t['prefill_tok_s']:.1f} tok/s",
              f"decode               {t['decode_tokens']} tokens, {t['decode_tok_s']:.1f} tok/s",
              f"load                 {t['load_ms']:.1f} ms, {r['threads']} threads"]
    return "\n".join(lines)
