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
from typing import Iterator

import numpy as np
import onnxruntime  # noqa: F401  (imported before the baseline reading: library code is not model memory)

from mote_edge.chat import ChatTemplate, encode_prompt, encode_text
from mote_edge.config import IMAGE_TOKEN_INDEX
from mote_edge.errors import FormatError, MoteError
from mote_edge.format.reader import MoteFile
from mote_edge.format.validate import one_line
from mote_edge.image import ImagePreprocessConfig, load_image, preprocess
from mote_edge.tokenizer import Tokenizer

from .budget import parse_bytes
from .cache_policy import DEFAULT_POLICY, RUNTIME_POLICIES
from .decoder import Decoder
from .expert_cache import ExpertCache
from .expert_layout import EXPERT_LAYOUTS
from .memory import PeakTracker, drop_page_cache, read_status, trim_heap
from .plan import MemoryPlan, default_context, fit_file_budget
from .report import RunStats, build_report
from .sampler import Sampler, SamplingParams
from .stop_strings import StopStrings
from .vision import VisionEncoder
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


class Engine:
    def __init__(self, file: MoteFile, plan: MemoryPlan, budget: int | None, threads: int, baseline_rss: int,
                 cache_policy: str = DEFAULT_POLICY, vision: bool = True):
        self.file, self.plan, self.budget, self.threads = file, plan, budget, threads
        self.baseline_rss = baseline_rss
        cfg = self.config = file.config
        meta = file.metadata
        tok_meta = meta["tokenizer"]
        self.tokenizer = Tokenizer.from_str(tok_meta["json"], bos_token_id=tok_meta["bos_token_id"],
                                            eos_token_id=tok_meta["eos_token_id"])
        eos = self.tokenizer.eos_id
        stop_ids = tok_meta.get("stop_token_ids", [] if eos is None else [eos])
        if not isinstance(stop_ids, list) or not all(type(i) is int and 0 <= i < self.tokenizer.vocab_size
                                                     for i in stop_ids):
            raise ValueError(f"stop_token_ids must be a list of token ids, got {stop_ids!r:.60}")
        self.stop_ids = frozenset(stop_ids)
        pre = dict(meta["image_preprocess"])
        self.image_config = ImagePreprocessConfig.from_preprocessor_config(
            pre, aspect_ratio=pre.pop("image_aspect_ratio", cfg.projector.image_aspect_ratio))
        self.template = ChatTemplate.from_dict(meta.get("chat_template", {"name": "v1"}))
        self.weights = ResidentWeights(file, threads)
        self.experts = (ExpertCache(file, plan.expert_slabs, threads, policy=cache_policy, layout=plan.expert_layout)
                        if cfg.moe_layers else None)
        self.decoder = Decoder(cfg, self.weights, self.experts, plan.context)
        self.vision_enabled = vision
        self.vision = (VisionEncoder(file.read_vision, threads, cfg.decoder.hidden_size)
                       if file.vision is not None and vision else None)
        self.stats = RunStats()
        self.peaks = PeakTracker()  # measured peak RSS per phase, next to the plan's (runtime/plan.py)
        self.load_ms = 0.0
        drop_page_cache(file.fileno())  # the resident section is in anonymous memory now

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, memory_budget: str | int | None = None, threads: int | None = None,
             max_context: int | None = None, cache_policy: str = DEFAULT_POLICY,
             expert_layout: str = "auto", vision: bool = True) -> "Engine":
        """Plan, check the budget, read the resident weights, allocate the expert slabs. vision=False
        plans no image phase (its memory goes to the expert cache): the Engine then refuses images."""
        t0 = time.perf_counter()
        baseline = read_status()["VmRSS"]
        threads = int(threads if threads is not None else _usable_cpus())
        if threads < 1:
            raise MoteError(f"threads must be >= 1, got {threads}")
        budget = parse_bytes(memory_budget) if memory_budget is not None else None
        if cache_policy not in RUNTIME_POLICIES:
            raise MoteError(f"unknown cache policy {cache_policy!r} (choose from {', '.join(RUNTIME_POLICIES)})")
        if expert_layout not in EXPERT_LAYOUTS:
            raise MoteError(f"unknown expert layout {expert_layout!r} (choose from {', '.join(EXPERT_LAYOUTS)})")
        f = MoteFile(path)
        try:
            cfg = f.config
            context = max_context or default_context(cfg)
            if not 1 <= context <= cfg.decoder.max_position_embeddings:
                raise ContextError(f"max context {context} is outside 1..{cfg.decoder.max_position_embeddings} "
                                   f"(the model's max_position_embeddings)")
            plan = fit_file_budget(f, context, budget, expert_layout, vision)
            try:
                engine = cls(f, plan, budget, threads, baseline, cache_policy, vision)
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
        ids = np.array(self.encode(prompt, image is not None, system, raw))
        if image is None:
            return self.decoder.embed(ids)
        if self.vision is None:
            if self.file.vision is not None and not self.vision_enabled:
                raise MoteError("this Engine was loaded with vision=False (no memory planned for images)")
            raise MoteError("this model has no vision section; drop --image")
        pixels = preprocess(load_image(image), self.image_config)[None]  # [1, 3, S, S]
        t0 = time.perf_counter()
        if self.experts is not None and self.plan.kept_while_encoding < self.plan.expert_slabs:
            self.experts.lend(self.plan.kept_while_encoding)  # the image phase's room (runtime/plan.py)
        trim_heap()  # freed prefill scratch of an earlier request goes back to the OS first
        self.peaks.start()
        features = self.vision.encode(pixels)  # [P, H]
        self.peaks.end("image encode")
        drop_page_cache(self.file.fileno())  # the vision section's pages
        self.stats.image_encode_ms = 1e3 * (time.perf_counter() - t0)
        at = int(np.nonzero(ids == IMAGE_TOKEN_INDEX)[0][0])
        return np.concatenate([self.decoder.embed(ids[:at]), features.astype(np.float32),
                               self.decoder.embed(ids[at + 1:])])

    def generate_ids(self, prompt: str, image=None, max_new_tokens: int = 128, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                     ignore_eos: bool = False, system: str | None = None, raw: bool = False) -> Iterator[int]:
        """Token ids of the answer, one at a time (an EOS id ends it and is not yielded; with ignore_eos,
        EOS is yielded like any token and exactly max_new_tokens come, as for benchmarks). `system`
        and `raw` as in `encode`."""
        if max_new_tokens < 1:
            raise MoteError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        sampler = _VocabMaskedSampler(Sampler(params), self.tokenizer.vocab_size)
        self.stats = RunStats()
        t0 = time.perf_counter()
        x = self._prompt_embeddings(prompt, image, system, raw)
        if x.shape[0] + max_new_tokens > self.plan.context:
            raise ContextError(f"prompt of {x.shape[0]} positions + {max_new_tokens} new tokens exceeds the context "
                               f"of {self.plan.context} (shorten the prompt, lower --max-new-tokens or raise --max-context)")
        self.decoder.reset()
        self.peaks.start()
        try:
            yield from self._decode(x, sampler, max_new_tokens, ignore_eos, t0)
        finally:
            self.peaks.end("prefill / decode")

    def _decode(self, x: np.ndarray, sampler, max_new_tokens: int, ignore_eos: bool, t0: float) -> Iterator[int]:
        """Prefill x [T, H], then sample up to max_new_tokens ids."""
        t1 = time.perf_counter()
        logits = self.decoder.forward(x)
        token = sampler.sample(logits)
        now = time.perf_counter()
        self.stats.prefill_tokens, self.stats.prefill_ms = x.shape[0], 1e3 * (now - t1)
        self.stats.ttft_ms = 1e3 * (now - t0)
        stop = frozenset() if ignore_eos else self.stop_ids
        for step in range(max_new_tokens):
            if token in stop:
                return
            yield token
            if step == max_new_tokens - 1:
                return
            t2 = time.perf_counter()
            logits = self.decoder.forward(self.decoder.embed(np.array([token])))
            token = sampler.sample(logits)
            self.stats.decode_tokens += 1
            self.stats.decode_ms += 1e3 * (time.perf_counter() - t2)

    def generate(self, prompt: str, image=None, **kwargs) -> Iterator[str]:
        """The answer as text pieces, streamed as tokens come (same arguments as generate_ids). The
        answer ends before the chat template's first stop string (e.g. "</s>" typed out as text);
        with ignore_eos it runs on to max_new_tokens."""
        decoder = self.tokenizer.incremental_decoder()
        stops = StopStrings(() if kwargs.get("ignore_eos") or kwargs.get("raw") else self.template.stop)
        for token in self.generate_ids(prompt, image, **kwargs):
            piece = stops.feed(decoder.feed(token))
            if piece:
                yield piece
            if stops.stopped:
                return
        tail = stops.feed(decoder.flush()) + stops.flush()
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
