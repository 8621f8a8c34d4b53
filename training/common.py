"""Shared pieces of training and evaluation: configs, encoded datasets, batched forward.

Batching trick (no change to the reference model's maths): every prompt starts with the same
tokens (system prompt + " USER: "), then the image, then "\\n{question} ASSISTANT:". So a batch
runs the common prefix once (batch 1) into a KVCache, expands the cache to the batch, and runs
[image patches | question ids | answer id] right-padded. Causal attention makes right padding
harmless; the loss is on the answer token and the EOS after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mote_edge.chat import encode_prompt
from mote_edge.config import (IMAGE_TOKEN_INDEX, DecoderConfig, ModelConfig, MoEConfig, ProjectorConfig,
                              VisionConfig, default_moe_layers)
from mote_edge.exporters.reference.layers import KVCache
from mote_edge.image import clip_defaults, preprocess
from mote_edge.tokenizer import Tokenizer

from .data import make_example

IMAGE_SIZE = 48
OUT = Path("out/train")


def model_config(vocab_size: int, kind: str = "dense", experts: int = 4, top_k: int = 2) -> ModelConfig:
    """kind: dense | mote (ternary routed + frozen shared expert) | fp (MoE-LLaVA: fp experts, no shared)."""
    vision = VisionConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                          image_size=IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu")
    decoder = DecoderConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                            rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                            bos_token_id=None, eos_token_id=0)
    moe = None
    if kind != "dense":
        layers = default_moe_layers(decoder.num_hidden_layers, "sparse")
        moe = MoEConfig(moe_layers_idx=layers, num_experts=[experts] * len(layers), top_k_experts=top_k,
                        expert_type="ternary" if kind == "mote" else "fp", shared_expert=kind == "mote",
                        router_aux_loss_coef=0.01)
    return ModelConfig(decoder=decoder, vision=vision, projector=ProjectorConfig(select_layer=-1),
                       moe=moe).validate()


def image_config():
    return clip_defaults(IMAGE_SIZE)


@dataclass
class Encoded:
    """A set of examples as tensors: pixels [N,3,S,S], suffix ids [N,L] (0-padded), lengths [N],
    answer id [N], question type index [N]."""

    pixels: torch.Tensor
    suffix: torch.Tensor
    qlen: torch.Tensor
    answer: torch.Tensor
    qtype: torch.Tensor

    def __len__(self) -> int:
        return len(self.answer)

    def subset(self, idx) -> "Encoded":
        return Encoded(self.pixels[idx], self.suffix[idx], self.qlen[idx], self.answer[idx], self.qtype[idx])


def prompt_parts(tok: Tokenizer, question: str) -> tuple[list[int], list[int]]:
    """(prefix ids before the image, ids after it) of the chat-template prompt."""
    ids = encode_prompt(tok, question, has_image=True)
    i = ids.index(IMAGE_TOKEN_INDEX)
    return ids[:i], ids[i + 1:]


_TOK: Tokenizer | None = None


def _init(tok_json: str) -> None:
    global _TOK
    _TOK = Tokenizer.from_str(tok_json)


def _encode_one(seed: int):
    from .data import QTYPES
    ex = make_example(seed)
    pix = preprocess(ex.image, image_config())
    prefix, suffix = prompt_parts(_TOK, ex.question)
    ans = _TOK.encode(" " + ex.answer)
    assert len(ans) == 1, ex.answer
    return pix, prefix, suffix, ans[0], QTYPES.index(ex.qtype)


def encode_examples(tok: Tokenizer, seeds, procs: int = 2) -> tuple[Encoded, list[int]]:
    seeds = list(seeds)
    if procs > 1:
        with Pool(procs, initializer=_init, initargs=(tok.to_str(),)) as pool:
            rows = pool.map(_encode_one, seeds, chunksize=256)
    else:
        _init(tok.to_str())
        rows = [_encode_one(s) for s in seeds]
    prefix = rows[0][1]
    assert all(r[1] == prefix for r in rows), "prompt prefixes differ"
    L = max(len(r[2]) for r in rows) + 1
    suffix = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        suffix[i, :len(r[2])] = torch.tensor(r[2])
        suffix[i, len(r[2])] = r[3]  # the answer token is the last input
    enc = Encoded(pixels=torch.from_numpy(np.stack([r[0] for r in rows])),
                  suffix=suffix, qlen=torch.tensor([len(r[2]) for r in rows]),
                  answer=torch.tensor([r[3] for r in rows]), qtype=torch.tensor([r[4] for r in rows]))
    return enc, prefix


def cached_encode(tok: Tokenizer, name: str, seeds) -> tuple[Encoded, list[int]]:
    """encode_examples, cached under out/train/ (keyed by name and the seed range)."""
    seeds = list(seeds)
    path = OUT / f"data-{name}-{seeds[0]}-{len(seeds)}-v{tok.vocab_size}.pt"
    if path.exists():
        d = torch.load(path)
        return Encoded(**d["enc"]), d["prefix"]
    enc, prefix = encode_examples(tok, seeds)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"enc": enc.__dict__, "prefix": prefix}, path)
    return enc, prefix


def batch_logits(model, prefix: list[int], batch: Encoded, full: bool = False):
    """-> (logits at the answer position [B, V], logits at the EOS position [B, V])
    (+ all logits [B, P + L, V] and P when `full`)."""
    b = len(batch)
    dc = model.config.decoder
    cache = KVCache(dc.num_hidden_layers)
    model.forward_embeds(model.model.embed_tokens(torch.tensor([prefix])), cache)
    cache.keys = [k.expand(b, -1, -1, -1) for k in cache.keys]
    cache.values = [v.expand(b, -1, -1, -1) for v in cache.values]
    image = model.encode_image(batch.pixels)  # [B, P, H]
    x = torch.cat([image, model.model.embed_tokens(batch.suffix)], dim=1)
    logits = model.forward_embeds(x, cache)  # [B, P + L, V]
    p = image.shape[1]
    rows = torch.arange(b)
    at_answer = logits[rows, p + batch.qlen - 1]
    at_eos = logits[rows, p + batch.qlen]
    if full:
        return at_answer, at_eos, logits, p
    return at_answer, at_eos


def loss_fn(model, prefix, batch: Encoded, eos_id: int, aux_coef: float = 0.0, lm_weight: float = 0.0):
    """Answer-token CE + 0.2 x EOS CE (+ lm_weight x causal-LM CE on the question tokens after the
    image, a dense grounding signal: the question names objects that are in the image)."""
    la, le, logits, p = batch_logits(model, prefix, batch, full=True)
    loss = F.cross_entropy(la, batch.answer) + 0.2 * F.cross_entropy(le, torch.full_like(batch.answer, eos_id))
    if lm_weight:
        L = batch.suffix.shape[1]
        pred = logits[:, p - 1:p - 1 + L]  # position p-1+j predicts suffix[j]
        mask = torch.arange(L)[None] < batch.qlen[:, None]
        loss = loss + lm_weight * F.cross_entropy(pred[mask], batch.suffix[mask])
    aux = model.aux_loss() if model.config.moe is not None else torch.zeros(())
    acc = ((la.argmax(-1) == batch.answer) & (le.argmax(-1) == eos_id)).float().mean()
    return loss + aux_coef * aux, loss.detach(), aux.detach(), acc.detach()


@torch.no_grad()
def teacher_forced_accuracy(model, prefix, data: Encoded, eos_id: int, bs: int = 250) -> dict[str, float]:
    """Exact match with teacher forcing (answer token argmax and EOS argmax), per question type.
    For one-token answers this equals greedy decoding's exact match."""
    from .data import QTYPES
    model.eval()
    ok = []
    for i in range(0, len(data), bs):
        batch = data.subset(slice(i, i + bs))
        la, le = batch_logits(model, prefix, batch)
        ok.append((la.argmax(-1) == batch.answer) & (le.argmax(-1) == eos_id))
    ok = torch.cat(ok).float()
    out = {"all": float(ok.mean())}
    for t, name in enumerate(QTYPES):
        m = data.qtype == t
        out[name] = float(ok[m].mean()) if m.any() else float("nan")
    return out
