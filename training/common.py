"""Shared pieces of training and evaluation: configs, encoded datasets, batched forward.

Batching trick (no change to the reference model's maths): every prompt starts with the same
tokens (system prompt + " USER: "), then the image, then "\\n{question} ASSISTANT:". So a batch
runs the common prefix once (batch 1) into a KVCache, expands the cache to the batch's distinct
images, runs their patches, gathers the cache to the rows and runs [question ids | answer ids |
EOS] right-padded. Causal attention makes right padding harmless; the loss is on the answer
tokens and the EOS after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import torch
import torch.nn.functional as F

from mote_edge.chat import encode_prompt
from mote_edge.config import (IMAGE_TOKEN_INDEX, DecoderConfig, ModelConfig, MoEConfig, ProjectorConfig,
                              VisionConfig, default_moe_layers)
from mote_edge.exporters.reference.layers import KVCache
from mote_edge.image import clip_defaults, preprocess
from mote_edge.tokenizer import Tokenizer

from .data import make_example, position_form, set_position_form

IMAGE_SIZE = 48
OUT = Path("out/train")


def model_config(vocab_size: int, kind: str = "dense", experts: int = 4, top_k: int = 2,
                 decoder_layers: int = 4) -> ModelConfig:
    """kind: dense | mote (ternary routed + frozen shared expert) | fp (MoE-LLaVA: fp experts, no shared)."""
    vision = VisionConfig(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                          image_size=IMAGE_SIZE, patch_size=8, hidden_act="quick_gelu")
    decoder = DecoderConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=decoder_layers,
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
    """Rows of (image index, ids after the image) as tensors.

    pixels [N_img, 3, S, S]; img [R] (row -> image); suffix [R, L] = question ids + answer ids + EOS,
    0-padded; qlen / alen [R] = question / answer lengths; qtype [R] = index into QTYPES, or
    len(QTYPES) for a caption row."""

    pixels: torch.Tensor
    img: torch.Tensor
    suffix: torch.Tensor
    qlen: torch.Tensor
    alen: torch.Tensor
    qtype: torch.Tensor

    def __len__(self) -> int:
        return len(self.img)

    def subset(self, idx) -> "Encoded":
        return Encoded(self.pixels, self.img[idx], self.suffix[idx], self.qlen[idx], self.alen[idx], self.qtype[idx])


def prompt_parts(tok: Tokenizer, question: str) -> tuple[list[int], list[int]]:
    """(prefix ids before the image, ids after it) of the chat-template prompt."""
    ids = encode_prompt(tok, question, has_image=True)
    i = ids.index(IMAGE_TOKEN_INDEX)
    return ids[:i], ids[i + 1:]


RowKind = tuple[bool, bool]  # (where: "Where is" rows, shuffle_captions: captions in a seeded random order)

_TOK: Tokenizer | None = None
_KINDS: list[RowKind] = []


def _init(tok_json: str, kinds: list[RowKind], form: str = "leftright") -> None:
    global _TOK, _KINDS
    _TOK, _KINDS = Tokenizer.from_str(tok_json), kinds
    set_position_form(form)


def _encode_one(seed: int):
    """One rendering -> (pixels, prompt prefix, [rows of each kind in _KINDS])."""
    from .data import CAPTION_QUESTION, QTYPES, caption, where_rows
    ex = make_example(seed)
    pix = preprocess(ex.image, image_config())
    prefix, q = prompt_parts(_TOK, ex.question)
    ans = _TOK.encode(" " + ex.answer)
    assert len(ans) == 1, ex.answer
    prefix2, cq = prompt_parts(_TOK, CAPTION_QUESTION)
    assert prefix2 == prefix
    per_kind = []
    for where, shuffle_captions in _KINDS:
        cap = _TOK.encode(" " + caption(ex.objects, shuffle_seed=seed if shuffle_captions else None))
        rows = [(q, ans, QTYPES.index(ex.qtype)), (cq, cap, len(QTYPES))]
        if where:
            for wq, wa in where_rows(ex.objects):
                rows.append((prompt_parts(_TOK, wq)[1], _TOK.encode(" " + wa), len(QTYPES)))
        per_kind.append(rows)
    return pix, prefix, per_kind


def _rows_to_encoded(pixels: torch.Tensor, rows: list, eos_id: int) -> Encoded:
    """rows [(image index, question ids, answer ids, qtype)] -> Encoded (suffix = ids + EOS, 0-padded)."""
    L = max(len(q) + len(a) + 1 for _, q, a, _ in rows)
    suffix = torch.zeros(len(rows), L, dtype=torch.long)
    for k, (_, q, a, _) in enumerate(rows):
        suffix[k, :len(q) + len(a)] = torch.tensor(q + a)
        suffix[k, len(q) + len(a)] = eos_id
    return Encoded(pixels=pixels, img=torch.tensor([r[0] for r in rows]), suffix=suffix,
                   qlen=torch.tensor([len(r[1]) for r in rows]), alen=torch.tensor([len(r[2]) for r in rows]),
                   qtype=torch.tensor([r[3] for r in rows]))


def encode_row_sets(tok: Tokenizer, seeds, kinds: list[RowKind], procs: int = 2) -> tuple[list[Encoded], list[int]]:
    """Render each seed's image once and encode it in every row kind (the Encoded share one pixels
    tensor). Each seed gives one image, its question row and auxiliary rows (qtype len(QTYPES)):
    a caption, and with `where` one "Where is the ..." lookup per uniquely named object."""
    seeds = list(seeds)
    if procs > 1:
        with Pool(procs, initializer=_init, initargs=(tok.to_str(), kinds, position_form())) as pool:
            out = pool.map(_encode_one, seeds, chunksize=256)
    else:
        _init(tok.to_str(), kinds, position_form())
        out = [_encode_one(s) for s in seeds]
    prefix = out[0][1]
    assert all(r[1] == prefix for r in out), "prompt prefixes differ"
    pixels = torch.empty(len(out), *out[0][0].shape)  # [N_img, 3, S, S]
    for i, r in enumerate(out):
        pixels[i] = torch.from_numpy(r[0])
    encs = [_rows_to_encoded(pixels, [(i, *row) for i, r in enumerate(out) for row in r[2][k]], tok.eos_id)
            for k in range(len(kinds))]
    return encs, prefix


def encode_examples(tok: Tokenizer, seeds, procs: int = 2, where: bool = False,
                    shuffle_captions: bool = False) -> tuple[Encoded, list[int]]:
    """encode_row_sets for one row kind."""
    encs, prefix = encode_row_sets(tok, seeds, [(where, shuffle_captions)], procs)
    return encs[0], prefix


def _cache_path(tok: Tokenizer, name: str, seeds: list[int], kind: RowKind) -> Path:
    where, shuffle_captions = kind
    form = "" if position_form() == "leftright" else f"-{position_form()}"
    return OUT / (f"data2{form}-{name}-{seeds[0]}-{len(seeds)}-v{tok.vocab_size}"
                  f"{'-where' if where else ''}{'-shufcap' if shuffle_captions else ''}.pt")


def cached_encode(tok: Tokenizer, name: str, seeds, where: bool = False, shuffle_captions: bool = False,
                  also: tuple[RowKind, ...] = ()) -> tuple[Encoded, list[int]]:
    """encode_examples, cached under out/train/ (keyed by name, the seed range and the row kind).
    On a miss, the row kinds in `also` that are not cached yet are encoded from the same rendering
    and cached too (rendering is ~85% of the cost)."""
    seeds = list(seeds)
    kind = (where, shuffle_captions)
    path = _cache_path(tok, name, seeds, kind)
    if path.exists():
        d = torch.load(path)
        return Encoded(**d["enc"]), d["prefix"]
    kinds = [kind] + [k for k in dict.fromkeys(also) if k != kind and not _cache_path(tok, name, seeds, k).exists()]
    encs, prefix = encode_row_sets(tok, seeds, kinds)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, enc in zip(kinds, encs):
        torch.save({"enc": enc.__dict__, "prefix": prefix}, _cache_path(tok, name, seeds, k))
    return encs[0], prefix


def batch_logits(model, prefix: list[int], batch: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (logits [B, L, V] where logits[:, j] predicts suffix[:, j], L = the batch's longest row;
    the MoE load-balancing loss, 0 for a dense model).

    Rows that share an image share its work: the vision tower and the decoder's image positions
    run once per distinct image (U <= B) into a KV cache that is then gathered to the rows, so
    only the suffix positions run per row. Same logits as one [prefix | image | suffix] pass per
    row (causal attention: image positions never see the suffix). The aux loss is the two passes'
    losses weighted by their token counts (U*P image and B*L suffix tokens)."""
    dc = model.config.decoder
    images, row_image = torch.unique(batch.img, return_inverse=True)  # [U], [B] -> index into U
    cache = KVCache(dc.num_hidden_layers)
    model.forward_hidden(model.model.embed_tokens(torch.tensor([prefix])), cache)
    u = len(images)
    cache.keys = [k.expand(u, -1, -1, -1) for k in cache.keys]
    cache.values = [v.expand(u, -1, -1, -1) for v in cache.values]
    image_hidden = model.forward_hidden(model.encode_image(batch.pixels[images]), cache)  # [U, P, H]
    image_aux = model.aux_loss() if model.config.moe is not None else torch.zeros(())
    cache.keys = [k[row_image] for k in cache.keys]  # [B, nKV, prefix + P, D]
    cache.values = [v[row_image] for v in cache.values]
    length = int((batch.qlen + batch.alen).max()) + 1  # ids + EOS of the longest row
    suffix_hidden = model.forward_hidden(model.model.embed_tokens(batch.suffix[:, :length]), cache)  # [B, L, H]
    hidden = torch.cat([image_hidden[row_image, -1:], suffix_hidden[:, :-1]], dim=1)  # [B, L, H]
    aux = torch.zeros(())
    if model.config.moe is not None:
        n_image, n_suffix = image_hidden.shape[0] * image_hidden.shape[1], suffix_hidden.shape[0] * length
        aux = (n_image * image_aux + n_suffix * model.aux_loss()) / (n_image + n_suffix)
    return model.lm_head(hidden), aux


def _targets(batch: Encoded, length: int):
    """-> (suffix ids [B, length], question mask, answer mask (answer ids + EOS)) for logits of that length."""
    j = torch.arange(length)[None]
    q = j < batch.qlen[:, None]
    a = (j >= batch.qlen[:, None]) & (j <= (batch.qlen + batch.alen)[:, None])
    return batch.suffix[:, :length], q, a


def loss_fn(model, prefix, batch: Encoded, eos_id: int, aux_coef: float = 0.0, lm_weight: float = 0.0):
    """CE on the answer tokens and EOS (+ lm_weight x causal-LM CE on the question tokens after the
    image, a dense grounding signal: questions name objects that are in the image)."""
    pred, aux = batch_logits(model, prefix, batch)  # [B, L, V]
    target, qmask, amask = _targets(batch, pred.shape[1])
    loss = F.cross_entropy(pred[amask], target[amask])
    if lm_weight:
        loss = loss + lm_weight * F.cross_entropy(pred[qmask], target[qmask])
    hit = (pred.argmax(-1) == target) | ~amask
    acc = hit.all(dim=1).float().mean()
    return loss + aux_coef * aux, loss.detach(), aux.detach(), acc.detach()


@torch.no_grad()
def teacher_forced_accuracy(model, prefix, data: Encoded, eos_id: int, bs: int = 250) -> dict[str, float]:
    """Exact match with teacher forcing (every answer token and the EOS are the argmax), per question
    type, on the question rows. For one-token answers this equals greedy decoding's exact match."""
    from .data import QTYPES
    model.eval()
    data = data.subset(data.qtype < len(QTYPES))
    ok = []
    for i in range(0, len(data), bs):
        batch = data.subset(slice(i, i + bs))
        pred, _ = batch_logits(model, prefix, batch)  # [B, L, V]
        target, _, amask = _targets(batch, pred.shape[1])
        ok.append(((pred.argmax(-1) == target) | ~amask).all(dim=1))
    ok = torch.cat(ok).float()
    out = {"all": float(ok.mean())}
    for t, name in enumerate(QTYPES):
        m = data.qtype == t
        out[name] = float(ok[m].mean()) if m.any() else float("nan")
    return out
