"""The Qwen2 decoder with MoTE / MoE-LLaVA MoE layers, in numpy + mote_edge._native kernels.

Same maths as the torch reference (mote_edge.exporters.reference), float32 throughout:
    x += o_proj(attn(rope(q), rope(k), v))          GQA, causal, KV cache
    x += ffn(rmsnorm(x))                            dense SwiGLU, or the MoE layer:
         p = softmax(h Wg^T); top-1 raw p / top-2 renormalised; y = shared(h) + sum_k p_k E_k(h)
MoE layers run a "wave": route every token of the step first, then load each needed expert once
(cached ones first, so loads do not evict experts this wave still needs) and run it on its tokens.

A decode step (one position) and a prefill chunk (up to PREFILL_CHUNK positions) run each layer as
native calls (runtime/native_layer.py, native/layer.c): the attention half in one, each FFN (dense,
shared expert, every routed expert on its rows of the chunk) in one; the MoE orchestration (routing, the
expert cache's wave, prefetch) stays here. `MOTE_DECODER=numpy` (or Decoder.native = False) runs the
numpy layer instead: the reference the native one is tested against.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mote_edge.config import ModelConfig
from mote_edge.schema import MAX_LOOKAHEAD_DEPTH, lookahead_name, lookahead_target

from .expert_cache import ExpertCache, FirstPart
from .kv_cache import KVCache
from .lookahead_recall import LookaheadRecall
from .native_layer import AttentionStep, default_decoder_path, ffn_chunk, ffn_step, held_scratch, matmul_f32, route_top_k
from .plan import ATTN_QUERY_CHUNK, PREFILL_CHUNK
from .weights import Linear, ResidentWeights

TRACE_LOOKAHEAD = MAX_LOOKAHEAD_DEPTH  # MoE layers ahead whose predictions a trace records (`mote-edge simulate`)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:  # [T, H]
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def route_top_k_numpy(h: np.ndarray, router: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The routing formula in numpy, the reference native/route.c is tested against (tests/test_route.py):
    top k of softmax(h router^T) [T, E]; the raw probability at k = 1 (argmax: ties to the lower expert),
    renormalised over the k chosen (stable argsort of -p) at k > 1."""
    probs = softmax(matmul_f32(h, router))  # [T, E] float32
    if k == 1:
        idx = probs.argmax(axis=-1)[:, None]
        return idx, probs[np.arange(probs.shape[0])[:, None], idx]
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(probs, idx, axis=-1)
    return idx, top / np.maximum(top.sum(axis=-1, keepdims=True), np.finfo(np.float32).eps)


class Rope:
    """cos/sin tables [context, head_dim] (HF's rotate_half layout), built once."""

    def __init__(self, head_dim: int, theta: float, context: int):
        inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
        angles = np.arange(context, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
        emb = np.concatenate([angles, angles], axis=-1)
        self.cos, self.sin = np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)

    def apply(self, x: np.ndarray, start: int) -> np.ndarray:  # x [T, heads, D]
        t, half = x.shape[0], x.shape[-1] // 2
        cos, sin = self.cos[start:start + t, None, :], self.sin[start:start + t, None, :]
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin


def expert_specs(expert) -> tuple:
    """A routed expert's weights as the native FFN takes them: ((gate, up), down) specs."""
    return (expert.gate.native_spec(), expert.up.native_spec()), expert.down.native_spec()


def add_expert_rows(expert, h: np.ndarray, out: np.ndarray, rows: np.ndarray, coef: np.ndarray,
                    threads: int | None) -> None:
    """out[rows] += coef[:, None] * expert(h[rows]): native (ffn_chunk) on `threads`, or numpy if None."""
    if threads is None:
        out[rows] += expert(h[rows]) * coef[:, None]
        return
    y = out[rows]  # [R, H], a copy
    ffn_chunk(np.ascontiguousarray(h[rows]), y, np.ascontiguousarray(coef, dtype=np.float32), *expert_specs(expert),
              threads)
    out[rows] = y


class SwiGLU:
    def __init__(self, w: ResidentWeights, prefix: str):
        self.gate_up = w.fused_linear([f"{prefix}.gate_proj.weight", f"{prefix}.up_proj.weight"])
        self.down = w.linear(f"{prefix}.down_proj.weight")
        self._specs: tuple | None = None

    def __call__(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """x [T, H] -> [T, H]; native (ffn_chunk) on `threads`, or numpy if None."""
        if threads is not None:
            y = np.zeros_like(x)
            self.chunk(np.ascontiguousarray(x), y, threads)
            return y
        gate, up = self.gate_up(x)  # [T, I] each
        return self.down(silu(gate) * up)

    def specs(self) -> tuple:
        if self._specs is None:
            self._specs = (self.gate_up.native_specs(), self.down.native_spec())
        return self._specs

    def step(self, h: np.ndarray, y: np.ndarray, coef: float, threads: int) -> None:
        """One position, native: y [H] += coef * self(h [H])."""
        ffn_step(h, y, coef, *self.specs(), threads)

    def chunk(self, h: np.ndarray, y: np.ndarray, threads: int) -> None:
        """T positions, native: y [T, H] += self(h [T, H])."""
        ffn_chunk(h, y, np.ones(h.shape[0], np.float32), *self.specs(), threads)


class Attention:
    def __init__(self, cfg: ModelConfig, w: ResidentWeights, i: int):
        dc = cfg.decoder
        p = f"model.layers.{i}.self_attn"
        self.qkv = w.fused_linear([f"{p}.{n}_proj.weight" for n in "qkv"])
        self.o = w.linear(f"{p}.o_proj.weight")
        self.bq, self.bk, self.bv = (w.vector(f"{p}.{n}_proj.bias") for n in "qkv")
        self.n_heads, self.n_kv, self.head_dim = dc.num_attention_heads, dc.num_key_value_heads, dc.head_dim

    def __call__(self, h: np.ndarray, start: int, rope: Rope, kv: KVCache, layer: int) -> np.ndarray:
        t, d = h.shape[0], self.head_dim
        q, k, v = self.qkv(h)  # [T, nH*D], [T, nKV*D], [T, nKV*D]
        q = rope.apply((q + self.bq).reshape(t, self.n_heads, d), start)  # [T, nH, D]
        k = rope.apply((k + self.bk).reshape(t, self.n_kv, d), start)  # [T, nKV, D]
        v = (v + self.bv).reshape(t, self.n_kv, d)
        end = start + t
        kv.write(layer, start, k, v)
        keys, values = kv.read(layer, end)  # [nKV, S, D] float32
        group = self.n_heads // self.n_kv
        qg = q.reshape(t, self.n_kv, group, d).transpose(1, 2, 0, 3)  # [nKV, G, T, D]
        out = np.empty_like(qg)
        keys_t = keys.transpose(0, 2, 1)[:, None]  # [nKV, 1, D, S]
        scale = np.float32(1.0 / np.sqrt(d))
        for c0 in range(0, t, ATTN_QUERY_CHUNK):  # query chunks bound the score matrix
            c1 = min(t, c0 + ATTN_QUERY_CHUNK)
            scores = np.matmul(qg[:, :, c0:c1], keys_t) * scale  # [nKV, G, C, S] (BLAS per head group)
            pos = start + np.arange(c0, c1)
            scores[..., np.arange(end)[None, :] > pos[:, None]] = -np.inf
            out[:, :, c0:c1] = np.matmul(softmax(scores), values[:, None])
        return self.o(np.ascontiguousarray(out.transpose(2, 0, 1, 3).reshape(t, self.n_heads * d)))


class MoE:
    def __init__(self, cfg: ModelConfig, w: ResidentWeights, i: int, cache: ExpertCache):
        self.layer, self.cache, self.top_k = i, cache, cfg.moe.top_k_experts
        p = f"model.layers.{i}.mlp"
        self.router = w.matrix(f"{p}.deepspeed_moe.gate.wg.weight")  # [E, H] float32
        self.shared = SwiGLU(w, f"{p}.shared_expert") if cfg.moe.shared_expert else None
        self.residual = None
        if cfg.moe.use_residual:
            self.residual = (SwiGLU(w, f"{p}.mlp"), w.matrix(f"{p}.coefficient.weight"), w.vector(f"{p}.coefficient.bias"))
        self.last_routes: np.ndarray | None = None
        self.lookaheads: list[Lookahead] = []  # the next MoE layers' routers (Decoder.enable_lookahead)
        self.prefetch_depth = 0  # how many of them prefetch (decode steps)
        self.recall: LookaheadRecall | None = None  # set: the depth is the one its measured recall earns
        # routes in place of the router, same signature as route() (benchmarks/route_model.py replays
        # fitted routing statistics through it); the lookahead keeps predicting with the router
        self.routing: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
        # called with (this layer, h [1, H], the residual [1, H], the experts it routed to) at each decode wave
        # (Decoder.observe_decode_waves)
        self.observer: Callable[["MoE", np.ndarray, np.ndarray, list[int]], None] | None = None

    def route(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """h [T, H] -> (expert ids [T, k], weights [T, k]): `routing` if one is set, else the router."""
        return self.routing(h) if self.routing is not None else self.router_top_k(h)

    def router_top_k(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The router's choice: top_k of softmax(h Wg^T) in one native call (route_top_k_numpy's formula)."""
        return route_top_k(h, self.router, self.top_k)

    def _begin_wave(self, h: np.ndarray, residual: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Route h [T, H], start the cache's wave (and, in decode steps, the lookahead prefetch from the
        residual stream): (expert ids [T, k], weights [T, k], the needed experts, cached ones first)."""
        idx, weight = self.route(h)
        self.last_routes = idx
        needed = sorted(set(idx.reshape(-1).tolist()), key=lambda e: not self.cache.is_cached(self.layer, e))
        self.cache.begin_wave(self.layer, needed)
        tracing, decoding = self.cache.trace is not None, residual is not None and h.shape[0] == 1
        if decoding and self.observer is not None:
            self.observer(self, h, residual, needed)
        recall = self.recall
        if recall is not None:  # the predictions earlier waves made for this one, scored (decode steps)
            recall.routed(needed, decoding)
        # the trace and the recall score every lookahead's prediction; otherwise only the prefetched ones are made
        ahead = self.lookaheads if tracing else self.lookaheads[:recall.max_depth if recall else self.prefetch_depth]
        predicted = [(a.layer, a.predict(residual)) for a in ahead] if decoding else []
        if recall is not None:
            for a, (_, experts) in zip(ahead, predicted):
                recall.predicted(a.depth, experts)
        depth = recall.depth() if recall is not None else self.prefetch_depth
        if depth:
            self.cache.prefetch(predicted[:depth])
        if tracing:
            wave = {"layer": self.layer, "experts": needed, "tokens": int(h.shape[0])}
            self.cache.trace.append({**wave, "predicted": [{"layer": la, "experts": ex} for la, ex in predicted]}
                                    if predicted else wave)
        return idx, weight, needed

    def __call__(self, h: np.ndarray, residual: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        """h: the normed input [T, H]; residual: the residual stream it came from (for the lookahead);
        threads: run the FFNs natively (native/layer.c) on that many threads, None: the numpy layer."""
        idx, weight, needed = self._begin_wave(h, residual)
        # the dense parts first: they compute while the loader reads the wave's misses
        mlp_out = self.residual[0](h, threads) if self.residual is not None else None
        shared_out = self.shared(h, threads) if self.shared is not None else None
        out = np.zeros_like(h)
        for e in needed:  # wave: each needed expert loaded once, cached ones first
            rows, slot = np.nonzero(idx == e)
            add_expert_rows(self.cache.get(self.layer, e), h, out, rows, weight[rows, slot], threads)
        self.cache.end_wave()
        return self._mix(h, out, mlp_out, shared_out)

    def _mix(self, h: np.ndarray, out: np.ndarray, mlp_out: np.ndarray | None,
             shared_out: np.ndarray | None) -> np.ndarray:
        """The routed experts' sum `out` [T, H] mixed with the residual MLP's output and plus the shared
        expert's (each [T, H], computed before the wave's loads)."""
        if self.residual is not None:
            _, cw, cb = self.residual
            coef = softmax(matmul_f32(h, cw) + cb)
            out = out * coef[:, :1] + mlp_out * coef[:, 1:]
        if shared_out is not None:
            out += shared_out
        return out

    def step(self, h: np.ndarray, x: np.ndarray, threads: int) -> None:
        """One position, native FFNs: x [H] += the layer's output for the normed input h [H]. The same
        wave as __call__ (route, begin_wave, prefetch from the residual x, the dense parts while misses
        load, each expert, end_wave)."""
        h2 = h[None]  # [1, H]
        idx, weight, needed = self._begin_wave(h2, x[None])
        mlp_out = self.residual[0](h2) if self.residual is not None else None  # [1, H]
        shared_out = None
        if self.shared is not None:
            shared_out = np.zeros_like(h)  # [H]
            self.shared.step(h, shared_out, 1.0, threads)
        out = np.zeros_like(h)  # [H]
        routed = idx[0].tolist()
        for e in needed:  # the wave's order, as in __call__
            coef = float(weight[0, routed.index(e)])
            expert = self.cache.get(self.layer, e, early=True)  # checked by Decoder.forward's verify()
            if isinstance(expert, FirstPart):  # gate and up while down_proj reads; used once the record checks
                act = expert.gate_up_step(h, threads)  # [I]
                expert.rest().down_step(act, out, coef, threads)
            else:
                ffn_step(h, out, coef, *expert_specs(expert), threads)
        self.cache.end_wave()
        x += self._mix(h2, out[None], mlp_out, None if shared_out is None else shared_out[None])[0]


class Lookahead:
    """Router lookahead: a later MoE layer's norm and router applied to the residual stream at this
    layer's MoE input predict the experts that layer will route to (mixtral-offloading, FATE), or a linear
    `predictor` (weight [E, H], bias [E]) scoring that layer's experts from the rms-normalised residual,
    fitted for the pair (`mote-edge fit-lookahead` stores them in the file: mote_edge/lookahead_fit.py).
    `depth`: how many MoE layers ahead in decode order (wrapping to the next token's)."""

    def __init__(self, layer: int, norm: np.ndarray, moe: MoE, eps: float, depth: int = 1):
        self.layer, self.norm, self.moe, self.eps, self.depth = layer, norm, moe, eps, depth
        self.predictor: tuple[np.ndarray, np.ndarray] | None = None

    def predict(self, residual: np.ndarray) -> list[int]:
        """The predicted experts, the most tokens' choices first. A `routing` that predicts its own
        routes (benchmarks/route_model.py, at a measured accuracy) answers for the router."""
        if self.moe.routing is not None and hasattr(self.moe.routing, "predict"):
            return self.moe.routing.predict(self.depth)
        if self.predictor is not None:
            weight, bias = self.predictor
            scores = rms_norm(residual, np.float32(1.0), self.eps) @ weight.T + bias  # [T, E]
            idx = np.argsort(-scores, axis=-1, kind="stable")[:, :self.moe.top_k]
        else:
            # the norm's 1 / rms scales every router logit of a row alike: the top k are those of norm * residual
            idx, _ = self.moe.router_top_k(residual * self.norm)  # [T, k]
        if idx.shape[0] == 1:  # a decode step: the top k, most likely first
            return idx[0].tolist()
        experts, counts = np.unique(idx, return_counts=True)
        return experts[np.argsort(-counts, kind="stable")].tolist()


class DecoderLayer:
    def __init__(self, cfg: ModelConfig, w: ResidentWeights, i: int, cache: ExpertCache | None):
        p = f"model.layers.{i}"
        self.eps = cfg.decoder.rms_norm_eps
        self.ln_in, self.ln_post = w.vector(f"{p}.input_layernorm.weight"), w.vector(f"{p}.post_attention_layernorm.weight")
        self.attn = Attention(cfg, w, i)
        self.mlp = MoE(cfg, w, i, cache) if cfg.is_moe_layer(i) else SwiGLU(w, f"{p}.mlp")

    def step(self, x: np.ndarray, pos: int, h: np.ndarray, threads: int) -> None:
        """One position, native: x [H] += the layer's attention and FFN; h [H] is scratch."""
        self.attn_step(x, pos, h)
        if isinstance(self.mlp, MoE):
            self.mlp.step(h, x, threads)
        else:
            self.mlp.step(h, x, 1.0, threads)

    def chunk(self, x: np.ndarray, start: int, h: np.ndarray, threads: int) -> None:
        """Positions start .. start + T - 1, native: x [T, H] += the layer's attention and FFN; h [T, H] is scratch."""
        self.attn_step.chunk(x, start, h)
        if isinstance(self.mlp, MoE):
            x += self.mlp(h, x, threads)
        else:
            self.mlp.chunk(h, x, threads)

    def __call__(self, x, start, rope, kv: KVCache, layer: int):
        x = x + self.attn(rms_norm(x, self.ln_in, self.eps), start, rope, kv, layer)
        if isinstance(self.mlp, MoE):
            return x + self.mlp(rms_norm(x, self.ln_post, self.eps), x)
        return x + self.mlp(rms_norm(x, self.ln_post, self.eps))


class Decoder:
    """Embeddings -> layers -> norm -> lm_head, with a preallocated KV cache for `context` positions."""

    def __init__(self, cfg: ModelConfig, w: ResidentWeights, cache: ExpertCache | None, context: int, kv_bits: int = 32):
        dc = cfg.decoder
        self.cfg, self.context, self.experts = cfg, context, cache
        self.embed = w.embedding("model.embed_tokens.weight")
        self.layers = [DecoderLayer(cfg, w, i, cache) for i in range(dc.num_hidden_layers)]
        self.norm = w.vector("model.norm.weight")
        head = "model.embed_tokens.weight" if dc.tie_word_embeddings else "lm_head.weight"
        self.lm_head: Linear = w.linear(head)
        self.rope = Rope(dc.head_dim, dc.rope_theta, context)
        self.kv = KVCache(dc.num_hidden_layers, dc.num_key_value_heads, context, dc.head_dim, kv_bits)
        self.length = 0
        self.threads = w.threads
        self.native = default_decoder_path() == "native"
        self.lookahead_recall: LookaheadRecall | None = None  # enable_lookahead(adaptive=True)
        # the file's fitted lookahead predictors, (MoE layer, depth) -> (weight [E, H], bias [E]) (FORMAT.md section 11)
        self.stored_predictors = {(i, d): (w.matrix(lookahead_name(i, d, "weight")), w.vector(lookahead_name(i, d, "bias")))
                                  for i in cfg.moe_layers for d in range(1, MAX_LOOKAHEAD_DEPTH + 1)
                                  if lookahead_name(i, d, "weight") in w.entries}
        for i, layer in enumerate(self.layers):
            layer.attn_step = AttentionStep(layer.attn, layer.ln_in, layer.ln_post, layer.eps, self.rope, self.kv, i,
                                            w.threads)

    def enable_lookahead(self, depth: int, wrap: bool = True, adaptive: bool = False, stored: bool = True) -> None:
        """Each MoE layer prefetches the experts the routers of the next `depth` MoE layers predict
        (decode steps; 0: none; the order wraps to the next token's layers, unless `wrap` is False: then
        the last MoE layers prefetch only this token's). `adaptive`: at most `depth` ahead, as deep as the
        lookahead's recall measured so far earns (runtime/lookahead_recall.py). The predictions of the next
        TRACE_LOOKAHEAD (or `depth`, if deeper) go into a trace either way. `stored`: predict with the file's
        fitted predictors where it has them (else every lookahead applies the later layer's router)."""
        moe = [layer for layer in self.layers if isinstance(layer.mlp, MoE)]
        self.lookahead_recall = LookaheadRecall(depth) if adaptive and depth and moe else None
        for n, layer in enumerate(moe):
            # the MoE layer d ahead in decode order, as the file's predictors are keyed (schema.lookahead_target)
            ahead = [(d, self.layers[lookahead_target(self.cfg, layer.mlp.layer, d)])
                     for d in range(1, max(depth, TRACE_LOOKAHEAD) + 1)]
            layer.mlp.lookaheads = [Lookahead(a.mlp.layer, a.ln_post, a.mlp, a.eps, d) for d, a in ahead]
            for a in layer.mlp.lookaheads:
                a.predictor = self.stored_predictors.get((layer.mlp.layer, a.depth)) if stored else None
            layer.mlp.prefetch_depth = depth if wrap else min(depth, len(moe) - 1 - n)
            layer.mlp.recall = self.lookahead_recall

    def set_lookahead_predictor(self, layer: int, depth: int, weight: np.ndarray, bias: np.ndarray) -> None:
        """MoE layer `layer`'s lookahead `depth` layers ahead predicts with weight [E, H] and bias [E] (scores
        of the later layer's experts from the rms-normalised residual) instead of that layer's router. Call
        after enable_lookahead; predictions only pick what to prefetch: results never change."""
        moe = self.layers[layer].mlp if 0 <= layer < len(self.layers) else None
        if not isinstance(moe, MoE) or not 1 <= depth <= len(moe.lookaheads):
            raise ValueError(f"no lookahead {depth} MoE layers ahead of layer {layer}")
        target = moe.lookaheads[depth - 1].moe
        e, h = target.router.shape
        weight, bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        if weight.shape != (e, h) or bias.shape != (e,):
            raise ValueError(f"a lookahead predictor for layer {target.layer} is [{e}, {h}] + [{e}], got "
                             f"{list(weight.shape)} + {list(bias.shape)}")
        moe.lookaheads[depth - 1].predictor = (np.ascontiguousarray(weight), bias)

    def observe_decode_waves(self, observer: Callable[[MoE, np.ndarray, np.ndarray, list[int]], None] | None) -> None:
        """Call observer(MoE layer, h [1, H] its normed input, the residual [1, H] it came from, the experts it
        routed to) at every decode wave, once it has routed (mote_edge/lookahead_fit.py records what it fits
        on); None: stop."""
        for layer in self.layers:
            if isinstance(layer.mlp, MoE):
                layer.mlp.observer = observer

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        """Keep the K/V of positions 0 .. length - 1; the next forward continues at `length`. Entries
        past it are overwritten as positions are computed again (attention reads only 0 .. length + T)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} positions to {length}")
        self.length = length

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x [T, H] embeddings at positions length .. length + T -> logits of the last position [V].
        A long prompt runs in chunks of PREFILL_CHUNK positions (each a wave per MoE layer), so the
        activations stay within the plan's scratch whatever the prompt's length."""
        t = x.shape[0]
        if self.length + t > self.context:
            raise ValueError(f"context of {self.context} positions exceeded")
        if t == 1 and self.native:
            h = np.array(x[0], dtype=np.float32)  # [H], the residual stream, updated in place
            scratch = np.empty_like(h)
            for layer in self.layers:
                layer.step(h, self.length, scratch, self.threads)
            if self.experts is not None:
                self.experts.verify()  # the records the step used before their checksums: checked before its token
            self.length += 1
            return self.lm_head(rms_norm(h[None], self.norm, self.cfg.decoder.rms_norm_eps))[0]
        with held_scratch():  # the kernels' chunk buffers, faulted in once for the whole prompt
            for c0 in range(0, t, PREFILL_CHUNK):
                h = x[c0:c0 + PREFILL_CHUNK]
                if self.native:
                    h = np.array(h, dtype=np.float32)  # [T, H], the residual stream, updated in place
                    scratch = np.empty_like(h)
                    for layer in self.layers:
                        layer.chunk(h, self.length, scratch, self.threads)
                else:
                    for i, layer in enumerate(self.layers):
                        h = layer(h, self.length, self.rope, self.kv, i)
                self.length += h.shape[0]
        last = rms_norm(h[-1:], self.norm, self.cfg.decoder.rms_norm_eps)
        return self.lm_head(last)[0]
