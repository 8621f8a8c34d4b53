"""Engine: the embeddable runtime API.

    with Engine.load("model.mote", memory_budget="300MB") as engine:
        for piece in engine.generate("What color is the circle?", image="shapes.png"):
            print(piece, end="", flush=True)
        print(engine.report())

Load order keeps the budget honest: the plan is computed from the file's directory first and an
infeasible budget fails before anything big is allocated; resident weights are read into
anonymous memory (no mmap); expert slabs are allocated once; the vision model is loaded only
while an image is encoded.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnxruntime  # noqa: F401  (imported before the baseline reading: library code is not model memory)

from mote_edge.chat import ChatTemplate, encode_prompt, encode_text, encode_with_images
from mote_edge.config import IMAGE_TOKEN_INDEX
from mote_edge.errors import FormatError, MoteError
from mote_edge.format.reader import MoteFile
from mote_edge.format.validate import one_line
from mote_edge.image import ImagePreprocessConfig, load_image, preprocess
from mote_edge.messages import Conversation
from mote_edge.tokenizer import Tokenizer

from .blas import BLAS_THREADS, set_blas_threads
from .budget import BudgetError, parse_bytes
from .cache_policy import DEFAULT_POLICY, RUNTIME_POLICIES
from .decoder import Decoder
from .expert_cache import (DEFAULT_PREFETCH, EXPERT_LOADERS, PREFETCH_BUFFERED, PREFETCH_DEPTH, PREFETCH_MODES,
                           ExpertCache)
from .expert_loader import GAP_CHUNK
from .expert_layout import EXPERT_LAYOUTS
from .kv_cache import KV_BITS
from .memory import PeakTracker, drop_page_cache, read_status, trim_heap
from .plan import PREFILL_CHUNK, MemoryPlan, default_context, fit_file_budget, loader_slabs, minimum_slabs
from .prefix_cache import CachedPositions, image_digest, position_keys
from .report import RunStats, TokenCounts, build_report
from .sampler import Sampler, SamplingParams
from .stop_strings import StopStrings
from .vision import vision_encoder
from .weights import ResidentWeights


class ContextError(MoteError):
    """The prompt (with its image) and the requested new tokens do not fit the context."""


def _usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _VocabMaskedSampler:
    """Embedding tables are often padded past the tokenizer (Qwen2.5: 151,936 rows, 151,665 tokens):
    ids the tokenizer cannot decode are never sampled."""

    def __init__(self, sampler: Sampler, vocab: int):
        self.sampler, self.vocab = sampler, vocab

    def sample(self, logits: np.ndarray) -> int:
        if logits.shape[0] > self.vocab:
            logits = logits[: self.vocab]  # the kept ids are unchanged: slicing is a mask
        return self.sampler.sample(logits)


def lookahead_pays(cache_slabs: int, loader_slabs: int, total_experts: int) -> bool:
    """Whether "auto" runs lookahead prefetch: the plan has loader buffers (none when every expert is cached:
    nothing to prefetch) and the slabs, cache and buffers, hold at least half the experts (below that the
    demand misses keep the disk busy and prefetches land late: see _fit_with_prefetch)."""
    return loader_slabs > 0 and 2 * (cache_slabs + loader_slabs) >= total_experts


# the gap prefetch pays with records of at least this many of its chunks: a misprediction delays the demand
# read by up to one chunk, a right guess starts the read a layer's attention earlier. At the minimum budget,
# per decode step on the 2-core EPYC box (benchmarks/expert_timeline.py --ab gap_prefetch): 0.5B records of
# 5 chunks 0.99-1.04x of none, 1.5B records of 16 chunks 0.99-1.04x (synth router), 1.03-1.05x (fitted routing)
GAP_PAYS_CHUNKS = 8


def gap_prefetch_pays(cache_slabs: int, minimum_slabs: int, record_bytes: int) -> bool:
    """Whether "auto" runs the gap prefetch: at the minimum budget (every slab holds the running wave's
    experts, no loader buffers fit) with records of at least GAP_PAYS_CHUNKS chunks."""
    return cache_slabs == minimum_slabs and record_bytes >= GAP_PAYS_CHUNKS * GAP_CHUNK


def _fit_with_prefetch(f: MoteFile, context: int, budget: int | None, layout: str, vision: bool, kv_bits: int,
                       prefetch: str, loader: str) -> tuple[MemoryPlan, str]:
    """The plan and the prefetch it runs. "auto": adaptive (lookahead as deep as its measured recall earns,
    at most 3 MoE layers) when the budget holds its loader buffers and its slabs (cache and buffers) hold at
    least half the experts, but not every expert; else none. Measured (benchmarks/expert_streaming.py,
    docs/BENCHMARKS.md): at half the experts cached a lookahead pays with a router that predicts well
    (recall 0.9: 1.06-1.15x none) and, at the trained tiny MoTE's (recall 0.53-0.62), stays within the runs'
    noise of none (0.90-1.08x) while reading GBs of mispredicted records; one slab above the minimum,
    lookahead's mispredicted reads made decoding slower than none; the replay with the disk's clock
    (benchmarks/prefetch_replay.py) finds prefetch 2-28% slower than none below half the experts (the demand
    misses keep the disk busy, the prefetches land late). Below that: "gap" where gap_prefetch_pays."""
    if prefetch != "auto":
        return fit_file_budget(f, context, budget, layout, vision, kv_bits,
                               loader_slabs(f.config, PREFETCH_BUFFERED[prefetch])), prefetch
    plan = fit_file_budget(f, context, budget, layout, vision, kv_bits)
    if plan.expert_slabs >= plan.total_experts:  # every expert cached: nothing to prefetch, no buffers
        return plan, "none"
    if loader == "thread" and budget is not None:
        try:
            buffered = fit_file_budget(f, context, budget, layout, vision, kv_bits,
                                       loader_slabs(f.config, PREFETCH_BUFFERED["adaptive"]))
            if lookahead_pays(buffered.expert_slabs, buffered.loader_slabs, buffered.total_experts):
                return buffered, "adaptive"
        except BudgetError:  # its buffers do not fit beside the minimum cache
            pass
    if loader == "thread" and budget is not None and gap_prefetch_pays(
            plan.expert_slabs, minimum_slabs(f.config), max(e.nbytes for e in f.experts.values())):
        return plan, "gap"
    return plan, "none"


class Engine:
    def __init__(self, file: MoteFile, plan: MemoryPlan, budget: int | None, threads: int, baseline_rss: int,
                 cache_policy: str = DEFAULT_POLICY, vision: bool = True, prefetch: str = "none",
                 expert_loader: str = "thread", lookahead_predictor: bool = True):
        self.file, self.plan, self.budget, self.threads = file, plan, budget, threads
        self.baseline_rss = baseline_rss
        cfg = self.config = file.config
        meta = file.metadata
        tok_meta = meta["tokenizer"]
        self.tokenizer = Tokenizer.from_str(tok_meta["json"], bos_token_id=tok_meta["bos_token_id"],
                                            eos_token_id=tok_meta["eos_token_id"])
        eos = self.tokenizer.eos_id
        stop_ids = tok_meta.get("stop_token_ids", [] if eos is None else [eos])  # ints: checked on open
        if any(i >= self.tokenizer.vocab_size for i in stop_ids):
            raise ValueError(f"stop_token_ids {stop_ids!r:.60} reach past the tokenizer's {self.tokenizer.vocab_size} ids")
        self.stop_ids = frozenset(stop_ids)
        pre = dict(meta["image_preprocess"])
        self.image_config = ImagePreprocessConfig.from_preprocessor_config(
            pre, aspect_ratio=pre.pop("image_aspect_ratio", cfg.projector.image_aspect_ratio))
        self.template = ChatTemplate.from_dict(meta.get("chat_template", {"name": "v1"}))
        self.weights = ResidentWeights(file, threads)
        self.experts = (ExpertCache(file, plan.expert_slabs + plan.loader_slabs, threads, policy=cache_policy,
                                    layout=plan.expert_layout, loader=expert_loader) if cfg.moe_layers else None)
        self.decoder = Decoder(cfg, self.weights, self.experts, plan.context, plan.kv_bits)
        # nothing to prefetch when every expert stays cached (each is read once, on first use)
        self.prefetch = prefetch if self.experts is not None and plan.expert_slabs < plan.total_experts else "none"
        # the gap prefetch predicts no expert across the lm_head: with the synth 0.5B's random router it was
        # right 1 time in 61 and its reads slowed the lm_head; at a trained router's recall it was level
        # (docs/BENCHMARKS.md, "The gap prefetch at the minimum budget")
        self.decoder.enable_lookahead(PREFETCH_DEPTH[self.prefetch], wrap=self.prefetch != "gap",
                                      adaptive=self.prefetch == "adaptive", stored=lookahead_predictor)
        # what predicts the experts to prefetch: the file's fitted predictors (`mote-edge fit-lookahead`) or the routers
        self.lookahead_predictor = "fitted" if lookahead_predictor and self.decoder.stored_predictors else "router"
        if self.prefetch == "gap":  # its prefetch holds the slab the next demand miss needs: small chunks
            self.experts.prefetch_chunk = GAP_CHUNK
        self.vision_enabled = vision
        self.vision = vision_encoder(file, threads) if file.vision is not None and vision else None
        self.stats = RunStats()
        self.peaks = PeakTracker()  # measured peak RSS per phase, next to the plan's (runtime/plan.py)
        self.tokens = TokenCounts()
        self.finish_reason: str | None = None  # of the last answer: "stop", "length" or "cancelled"
        self.cached = CachedPositions()  # what the decoder's KV cache holds, for chat's prefix reuse
        self.load_ms = 0.0
        drop_page_cache(file.fileno())  # the resident section is in anonymous memory now

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, memory_budget: str | int | None = None, threads: int | None = None,
             max_context: int | None = None, cache_policy: str = DEFAULT_POLICY,
             expert_layout: str = "auto", vision: bool = True, prefetch: str = DEFAULT_PREFETCH,
             expert_loader: str = "thread", kv_bits: int = 32, lookahead_predictor: bool = True) -> "Engine":
        """Plan, check the budget, read the resident weights, allocate the expert slabs. vision=False
        plans no image phase (its memory goes to the expert cache): the Engine then refuses images.
        prefetch "lookahead" ("lookahead2" .. "lookahead4"): while a MoE layer runs, the next (2 .. 4) MoE
        layers' routers predict their experts and the loader reads them ahead (decode steps) into loader
        buffers the plan adds (top_k slabs per layer ahead); "gap": the next MoE layer's predicted experts into
        the cache's own slabs as each wave frees them (no loader buffers; small chunks, a mispredicted read
        aborted and its slab handed to the demand read); "adaptive": up to 3 layers ahead into loader buffers,
        as deep as the leading depths whose recall, scored while decoding, is at least RECALL_TO_PREFETCH
        (runtime/lookahead_recall.py; none below it); "none": experts load when a wave needs them; "auto"
        (default): adaptive when its buffers fit beside top_k cache slabs and the slabs hold at least
        half the experts; gap at the minimum budget where records are large (gap_prefetch_pays); none
        otherwise, when every expert is cached or when they do not fit.
        expert_loader "thread": records are read by a loader thread, overlapped with compute (O_DIRECT
        where the filesystem allows it); "serial": read on the decoding thread when needed.
        kv_bits 8 keeps the KV cache as int8 with a scale per head and position (~4x smaller than 32).
        lookahead_predictor: the lookahead predicts with the lookahead predictors the file stores (fitted by
        `mote-edge fit-lookahead`; docs/FORMAT.md section 11) where it has them; False: with the routers."""
        t0 = time.perf_counter()
        baseline = read_status()["VmRSS"]
        threads = int(threads if threads is not None else _usable_cpus())
        if threads < 1:
            raise MoteError(f"threads must be >= 1, got {threads}")
        set_blas_threads(BLAS_THREADS)  # numpy's small BLAS products run faster on one thread (runtime/blas.py)
        budget = parse_bytes(memory_budget) if memory_budget is not None else None
        if cache_policy not in RUNTIME_POLICIES:
            raise MoteError(f"unknown cache policy {cache_policy!r} (choose from {', '.join(RUNTIME_POLICIES)})")
        if prefetch not in PREFETCH_MODES:
            raise MoteError(f"unknown prefetch {prefetch!r} (choose from {', '.join(PREFETCH_MODES)})")
        if expert_loader not in EXPERT_LOADERS:
            raise MoteError(f"unknown expert loader {expert_loader!r} (choose from {', '.join(EXPERT_LOADERS)})")
        if prefetch not in ("none", "auto") and expert_loader != "thread":
            raise MoteError("prefetch needs the thread expert loader")
        if expert_layout not in EXPERT_LAYOUTS:
            raise MoteError(f"unknown expert layout {expert_layout!r} (choose from {', '.join(EXPERT_LAYOUTS)})")
        if kv_bits not in KV_BITS:
            raise MoteError(f"kv bits must be one of {', '.join(map(str, KV_BITS))}, got {kv_bits!r}")
        f = MoteFile(path)
        try:
            cfg = f.config
            context = max_context or default_context(cfg)
            if not 1 <= context <= cfg.decoder.max_position_embeddings:
                raise ContextError(f"max context {context} is outside 1..{cfg.decoder.max_position_embeddings} "
                                   f"(the model's max_position_embeddings)")
            plan, prefetch = _fit_with_prefetch(f, context, budget, expert_layout, vision, kv_bits, prefetch,
                                                expert_loader)
            try:
                engine = cls(f, plan, budget, threads, baseline, cache_policy, vision, prefetch, expert_loader,
                             lookahead_predictor)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
                # the tokenizer and chat template blocks are read here, not validated on open
                raise FormatError(f"{f.name}: tokenizer or chat template metadata is unusable "
                                  f"({type(e).__name__}: {one_line(e)})") from None
        except BaseException:
            f.close()
            raise
        engine.load_ms = 1e3 * (time.perf_counter() - t0)
        return engine

    # ------------------------------------------------------------------ generation
    def encode(self, prompt: str, has_image: bool, system: str | None = None, raw: bool = False) -> list[int]:
        """Prompt ids: `prompt` rendered by the model's chat template (with `system` instead of the
        template's own, if given), or taken as it is when `raw` (an `<image>` placeholder marks the
        image); the tokenizer's BOS leads either way. IMAGE_TOKEN_INDEX marks the image."""
        if raw:
            if system is not None:
                raise MoteError("a raw prompt has no chat template, so a system prompt cannot be applied")
            return encode_text(self.tokenizer, prompt, has_image)
        return encode_prompt(self.tokenizer, prompt, has_image, system=system, template=self.template)

    def _prompt_embeddings(self, prompt: str, image, system: str | None = None, raw: bool = False) -> np.ndarray:
        """[T', H]: the chat-templated prompt with the image's patch embeddings at the placeholder."""
        ids = list(self.encode(prompt, image is not None, system, raw))
        if image is None:
            return self._position_embeddings(ids, [], 0, start=0)
        self._check_vision("drop --image")
        return self._position_embeddings(ids, [image], self._patches_per_image(), start=0)

    def _embed_pieces(self, pieces: list[np.ndarray]) -> np.ndarray:
        """[sum of lengths, H]: token-id runs [n] embedded and image features [P, H] copied, in order,
        into one array; ids are looked up PREFILL_CHUNK rows at a time, so the prompt's embeddings are
        the only prompt-long buffer (the plan's scratch counts it at the context's length)."""
        rows = sum(len(piece) for piece in pieces)
        out = np.empty((rows, self.config.decoder.hidden_size), np.float32)
        at = 0
        for piece in pieces:
            if piece.ndim == 2:  # image features
                out[at:at + len(piece)] = piece
            else:
                for c in range(0, len(piece), PREFILL_CHUNK):
                    chunk = piece[c:c + PREFILL_CHUNK]
                    out[at + c:at + c + len(chunk)] = self.decoder.embed(chunk)
            at += len(piece)
        return out

    def generate_ids(self, prompt: str, image=None, max_new_tokens: int = 128, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     ignore_eos: bool = False, system: str | None = None, raw: bool = False) -> Iterator[int]:
        """Token ids of the answer, one at a time (an EOS id ends it and is not yielded; with ignore_eos,
        EOS is yielded like any token and exactly max_new_tokens come, as for benchmarks). `system`
        and `raw` as in `encode`. Every call prefills its whole prompt (`chat` reuses the KV cache)."""
        sampler = self._sampler(max_new_tokens, temperature, top_k, top_p, seed)
        self._new_run()
        t0 = time.perf_counter()
        x = self._prompt_embeddings(prompt, image, system, raw)
        self._check_context(x.shape[0], max_new_tokens)
        self.decoder.reset()
        self.cached.clear()
        self.tokens.prompt_tokens = self.tokens.prefilled_tokens = x.shape[0]
        yield from self._answer_ids(x, t0, sampler, max_new_tokens, frozenset() if ignore_eos else self.stop_ids)

    def chat_ids(self, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, cancel: Callable[[], bool] | None = None
                 ) -> Iterator[int]:
        """Token ids of the answer to a conversation (see `chat`). The KV cache keeps the positions this
        conversation shares with what it holds (token ids and image content); only the rest is prefilled."""
        sampler = self._sampler(max_new_tokens, temperature, top_k, top_p, seed)
        conversation = Conversation.from_messages(messages)
        self._new_run()
        t0 = time.perf_counter()
        ids = self._conversation_ids(conversation)
        if conversation.images:
            self._check_vision("send no images")
        # one decoded image at a time: hashed now, decoded again only if its positions are prefilled
        digests = [image_digest(load_image(source)) for source in conversation.images]
        patches = self._patches_per_image()
        keys = position_keys(ids, digests, patches)
        self._check_context(len(keys), max_new_tokens)
        reuse = min(self.cached.shared_prefix(keys), len(keys) - 1, self.decoder.length)  # >= 1 to prefill
        self.decoder.truncate(reuse)
        self.cached.truncate(reuse)
        x = self._position_embeddings(ids, conversation.images, patches, start=reuse)  # [T - reuse, H]
        self.tokens.prompt_tokens, self.tokens.reused_tokens, self.tokens.prefilled_tokens = len(keys), reuse, x.shape[0]
        yield from self._answer_ids(x, t0, sampler, max_new_tokens, self.stop_ids, cancel=cancel, prompt_keys=keys)

    def prompt_positions(self, messages: list[dict]) -> int:
        """Decoder positions the conversation's prompt takes (image patches included), without running it."""
        conversation = Conversation.from_messages(messages)
        ids = self._conversation_ids(conversation)
        return len(ids) + len(conversation.images) * (self._patches_per_image() - 1)

    def chat(self, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, stop: str | list[str] | None = None,
             cancel: Callable[[], bool] | None = None) -> Iterator[str]:
        """The answer to a conversation as text pieces, streamed as tokens come.

        messages: [{"role": "system" | "user" | "assistant", "content": str | [parts]}], parts
        {"type": "text", "text": str} or {"type": "image", "image": path | bytes | PIL image} (user turns
        only; any number, each spliced at its placeholder if the context holds them), ending with a user
        message; rendered by the model's chat template (a system message replaces its system prompt).
        A conversation that continues the previous one prefills only its new positions
        (report()["reused_tokens"] / ["prefilled_tokens"]). The answer has no leading whitespace and ends
        before the template's stop strings or any of `stop`; `cancel()` is asked before every decode
        step and ends the answer when true. Afterwards `finish_reason` is "stop", "length" or "cancelled"."""
        extra = [stop] if isinstance(stop, str) else list(stop or [])
        tokens = self.chat_ids(messages, max_new_tokens, temperature, top_k, top_p, seed, cancel)
        yield from self._text(tokens, StopStrings((*self.template.stop, *extra)), strip_leading=True)

    # ------------------------------------------------------------------ generation internals
    def _sampler(self, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                 seed: int | None) -> _VocabMaskedSampler:
        if max_new_tokens < 1:
            raise MoteError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return _VocabMaskedSampler(Sampler(params), self.tokenizer.vocab_size)

    def _new_run(self) -> None:
        self.stats, self.tokens, self.finish_reason = RunStats(), TokenCounts(), None

    def _check_context(self, positions: int, max_new_tokens: int) -> None:
        if positions + max_new_tokens > self.plan.context:
            raise ContextError(f"prompt of {positions} positions + {max_new_tokens} new tokens exceeds the context "
                               f"of {self.plan.context} (shorten the prompt, lower --max-new-tokens or raise --max-context)")

    def _check_vision(self, advice: str) -> None:
        """A one-line error when this Engine cannot encode images."""
        if self.vision is not None:
            return
        if self.file.vision is not None and not self.vision_enabled:
            raise MoteError("this Engine was loaded with vision=False (no memory planned for images)")
        raise MoteError(f"this model has no vision section; {advice}")

    def _conversation_ids(self, conversation: Conversation) -> list[int]:
        """Prompt ids of the conversation in the model's chat template; IMAGE_TOKEN_INDEX per image."""
        text = self.template.with_system(conversation.system).format_conversation(conversation.turns)
        return encode_with_images(self.tokenizer, text, len(conversation.images))

    def _patches_per_image(self) -> int:
        """Decoder positions one image takes: its projected patches (+ the class token for cls_patch)."""
        return self.config.vision.num_patches + (self.config.projector.select_feature == "cls_patch")

    def _encode_image(self, source, patches: int) -> np.ndarray:
        """One image (anything load_image takes) -> its projected features [P, H]."""
        pixels = preprocess(load_image(source), self.image_config)[None]  # [1, 3, S, S]
        t0 = time.perf_counter()
        if self.experts is not None and self.plan.kept_while_encoding < self.plan.expert_slabs:
            self.experts.lend(self.plan.kept_while_encoding)  # the image phase's room (runtime/plan.py)
        trim_heap()  # freed prefill scratch of an earlier request goes back to the OS first
        self.peaks.start()
        features = self.vision.encode(pixels)  # [P, H]
        self.peaks.end("image encode")
        drop_page_cache(self.file.fileno())  # the vision section's pages
        self.stats.image_encode_ms += 1e3 * (time.perf_counter() - t0)
        if features.shape[0] != patches:
            raise MoteError(f"the vision model gave {features.shape[0]} positions per image, the config {patches}")
        return features.astype(np.float32, copy=False)  # the encoders return float32: no third copy

    def _position_embeddings(self, ids: list[int], images: list, patches: int, start: int) -> np.ndarray:
        """[T - start, H]: the embeddings of positions start .. T - 1 of the prompt `ids`, each image's
        projected patches at its placeholder. Images wholly before `start` are not encoded."""
        pieces: list[np.ndarray] = []
        text: list[int] = []  # the current run of token ids at positions >= start
        position = 0
        sources = iter(images)
        for token in ids:
            if token != IMAGE_TOKEN_INDEX:
                if position >= start:
                    text.append(token)
                position += 1
                continue
            source = next(sources)
            if position + patches > start:
                if text:
                    pieces.append(np.array(text, dtype=np.int64))
                    text = []
                pieces.append(self._encode_image(source, patches)[max(0, start - position):])
            position += patches
        if text:
            pieces.append(np.array(text, dtype=np.int64))
        return self._embed_pieces(pieces)

    def _answer_ids(self, x: np.ndarray, t0: float, sampler: _VocabMaskedSampler, max_new_tokens: int,
                    stop_ids: frozenset[int], cancel: Callable[[], bool] | None = None,
                    prompt_keys: list | None = None) -> Iterator[int]:
        """Prefill `x` [T, H] at the decoder's current length, then sample and decode. With `prompt_keys`
        (the keys of every prompt position), the cached positions are tracked for chat's reuse."""
        self.peaks.start()
        try:
            yield from self._prefill_and_decode(x, t0, sampler, max_new_tokens, stop_ids, cancel, prompt_keys)
        finally:
            self.peaks.end("prefill / decode")

    def _prefill_and_decode(self, x: np.ndarray, t0: float, sampler: _VocabMaskedSampler, max_new_tokens: int,
                            stop_ids: frozenset[int], cancel: Callable[[], bool] | None,
                            prompt_keys: list | None) -> Iterator[int]:
        t1 = time.perf_counter()
        logits = self.decoder.forward(x)
        if prompt_keys is not None:
            self.cached.set(prompt_keys)
        token = sampler.sample(logits)
        now = time.perf_counter()
        self.stats.prefill_tokens, self.stats.prefill_ms = x.shape[0], 1e3 * (now - t1)
        self.stats.ttft_ms = 1e3 * (now - t0)
        self.finish_reason = "length"
        for step in range(max_new_tokens):
            if token in stop_ids:
                self.finish_reason = "stop"
                return
            self.tokens.completion_tokens += 1
            yield token
            if step == max_new_tokens - 1:
                return
            if cancel is not None and cancel():
                self.finish_reason = "cancelled"
                return
            t2 = time.perf_counter()
            logits = self.decoder.forward(self.decoder.embed(np.array([token])))
            if prompt_keys is not None:
                self.cached.append(token)
            token = sampler.sample(logits)
            self.stats.decode_tokens += 1
            self.stats.decode_ms += 1e3 * (time.perf_counter() - t2)

    def generate(self, prompt: str, image=None, **kwargs) -> Iterator[str]:
        """The answer as text pieces, streamed as tokens come (same arguments as generate_ids). The
        answer ends before the chat template's first stop string (e.g. "</s>" typed out as text);
        with ignore_eos it runs on to max_new_tokens."""
        stops = StopStrings(() if kwargs.get("ignore_eos") or kwargs.get("raw") else self.template.stop)
        yield from self._text(self.generate_ids(prompt, image, **kwargs), stops, strip_leading=False)

    def _text(self, tokens: Iterator[int], stops: StopStrings, strip_leading: bool) -> Iterator[str]:
        """Streamed token ids -> text pieces (UTF-8 safe), ending before the first stop string (then
        finish_reason is "stop"); `strip_leading` drops the answer's leading whitespace."""
        decoder = self.tokenizer.incremental_decoder()
        started = not strip_leading
        for token in tokens:
            piece = stops.feed(decoder.feed(token))
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece
            if stops.stopped:
                self.finish_reason = "stop"
                return
        tail = stops.feed(decoder.flush()) + stops.flush()
        tail = tail if started else tail.lstrip()
        if tail:
            yield tail

    # ------------------------------------------------------------------ reporting / lifecycle
    def report(self) -> dict:
        return build_report(self)

    def close(self) -> None:
        if self.experts is not None:
            self.experts.release()
        self.weights.release()
        self.decoder = None
        self.file.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
