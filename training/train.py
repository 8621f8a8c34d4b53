"""Train the tiny MoTE end to end (DESIGN.md section 7), CPU only.

    python -m mote_edge.training.train [--out out/train] [--seed 0] [--stages dense,mote,fp] [--recipe NAME]

The phases of each stage (steps, lr, row mix) are a recipe in training/recipes.py. Stages:
  dense  ViT + projector + Qwen2-style decoder, all trained from scratch (there is no pre-trained
         CLIP / LLM here, so the paper's "align the projector first" stage would only align
         random features; it is folded into this one).
  mote   up-cycle the dense model: each MoE layer gets the dense FFN as a frozen shared expert and
         E ternary routed experts initialised from the same FFN (latent weights = FFN weights),
         router random. The recipe's MoE phases: routers + routed experts, then everything but the shared experts.
         QAT through BitLinear's straight-through estimator, DeepSpeed load-balancing loss 0.01.
  fp     MoE-LLaVA baseline up-cycled from the same dense model: E fp experts, each a copy of the
         dense FFN, no shared expert; the same phases (no shared experts to freeze), same aux loss.
Training runs under bf16 autocast with fp32 master weights (faster than fp32 here: 0.25 vs 0.36 s per
dense step on 2 Zen 4 cores); evaluation is fp32.
Writes out/train/{dense,mote,fp}/ (HF-style checkpoints, fp32) and out/train/log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mote_edge.exporters.checkpoint import write_checkpoint
from mote_edge.exporters.reference import MoTELlavaForCausalLM, load_reference_model
from mote_edge.tokenizer import Tokenizer

from .batches import BatchSampler
from .common import OUT, Encoded, cached_encode, image_config, loss_fn, model_config, teacher_forced_accuracy
from .data import POSITION_FORMS, heldout_seeds, set_position_form, train_seeds
from .recipes import DEFAULT_RECIPE, RECIPES, ROW_SETS, Phase
from .tokenizer import build_task_tokenizer

LM_WEIGHT = 0.3  # causal-LM loss on the question tokens (see common.loss_fn)
EXPERT_KEY = re.compile(r"^(model\.layers\.\d+\.mlp\.)(?:shared_expert\.|deepspeed_moe\.experts\.deepspeed_experts\.\d+\.)"
                        r"((?:gate|up|down)_proj\.weight)$")


def log(out: Path, **rec) -> None:
    rec["time"] = round(time.time(), 1)
    print(json.dumps(rec), flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def save(model: MoTELlavaForCausalLM, tok: Tokenizer, path: Path, dtype: str = "fp32") -> None:
    tensors = dict(model.named_tensors())
    write_checkpoint(path, model.config, lambda spec: tensors[spec.name], dtype=dtype,
                     tokenizer_json=tok.to_str(), image_config=image_config(), progress=False, force=True)


def init_weights(model: torch.nn.Module, std: float = 0.02) -> None:
    """Qwen2 / CLIP-style init: N(0, std) weights and embeddings, zero biases (norms stay 1 / 0)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """[grid*grid, dim] fixed 2-D sin-cos table (MAE / ViT style): the first half of the channels
    encodes the column, the second half the row, so a patch's x and y are linearly readable."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))  # [dim/4]
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    def enc(v):  # [grid*grid] -> [grid*grid, dim/2]
        a = v.flatten()[:, None] * freq[None]
        return torch.cat([a.sin(), a.cos()], dim=1)
    table = torch.cat([enc(xs), enc(ys)], dim=1)  # [grid*grid, 4*quarter]
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


def init_position_table(model) -> None:
    """Start the ViT's learned position embeddings from a 2-D sin-cos table (class token: zeros).
    They stay trainable; only the starting point changes."""
    emb = model.model.vision_tower.vision_model.embeddings.position_embedding.weight  # [1 + P, D]
    grid = int(round((emb.shape[0] - 1) ** 0.5))
    with torch.no_grad():
        emb[0].zero_()
        emb[1:] = sincos_2d(grid, emb.shape[1])


def upcycle(dense: MoTELlavaForCausalLM, kind: str, seed: int, experts: int = 4, top_k: int = 2):
    """A MoE model (kind mote | fp) whose every tensor but the routers comes from `dense`."""
    torch.manual_seed(seed + 1000)
    model = MoTELlavaForCausalLM(model_config(dense.config.decoder.vocab_size, kind, experts, top_k,
                                              dense.config.decoder.num_hidden_layers))
    init_weights(model)
    src = dense.checkpoint_parameters()
    with torch.no_grad():
        for name, p in model.checkpoint_parameters().items():
            m = EXPERT_KEY.match(name)
            key = m.group(1) + m.group(2) if m else name
            if key in src:
                p.copy_(src[key])
            elif not name.endswith("gate.wg.weight"):
                raise KeyError(f"no dense tensor for {name}")
    return model


def trainable_filter(kind: str):
    """Phase.trainable -> predicate on parameter names."""
    if kind == "moe":
        return lambda n: ".mlp.deepspeed_moe." in n  # routers + routed experts
    if kind == "not_shared":
        return lambda n: ".mlp.shared_expert." not in n
    return lambda n: True


def run_phase(model, prefix, train, held, tok, out: Path, label: str, phase: Phase, bs: int, aux_coef: float,
              seed: int, eval_every: int) -> None:
    """One cosine schedule of `phase` on `model` (train = the phase's row set)."""
    trainable = trainable_filter(phase.trainable)
    params = [p for n, p in model.named_parameters() if trainable(n)]
    for n, p in model.named_parameters():
        p.requires_grad_(trainable(n))
    log(out, stage=label, trainable_params=sum(p.numel() for p in params), bs=bs, **asdict(phase))
    steps, warmup = phase.steps, phase.warmup
    opt = torch.optim.AdamW(params, lr=phase.lr, betas=(0.9, 0.98), weight_decay=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    sampler = BatchSampler(train, bs, phase.aux_fraction, phase.qtype_weights, seed + phase.seed, phase.aux_images)
    t0, acc_sum, loss_sum, aux_sum, n = time.time(), 0.0, 0.0, 0.0, 0
    for step in range(1, steps + 1):
        model.train()
        batch = train.subset(sampler.next())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, plain, aux, acc = loss_fn(model, prefix, batch, tok.eos_id, aux_coef, LM_WEIGHT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_sum, aux_sum, acc_sum, n = loss_sum + float(plain), aux_sum + float(aux), acc_sum + float(acc), n + 1
        if (eval_every and step % eval_every == 0) or step == steps:
            rec = dict(stage=label, step=step, loss=round(loss_sum / n, 4), aux=round(aux_sum / n, 4),
                       train_acc=round(acc_sum / n, 4), sec=round(time.time() - t0, 1))
            if held is not None:
                rec["held"] = {k: round(v, 4) for k, v in teacher_forced_accuracy(model, prefix, held, tok.eos_id).items()}
            log(out, **rec)
            loss_sum, aux_sum, acc_sum, n = 0.0, 0.0, 0.0, 0
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


class RowSets:
    """The training row sets by name, encoded (or read from the cache) on first use; one in memory at a time
    (~5.7 GB each at 200k images). The first miss renders the images once for every set the recipe uses."""

    def __init__(self, tok: Tokenizer, seeds: list[int], names: list[str]):
        self.tok, self.seeds, self.names = tok, seeds, names
        self.current: tuple[str, Encoded] | None = None
        self.prefix: list[int] | None = None

    def get(self, name: str) -> Encoded:
        if self.current is None or self.current[0] != name:
            self.current = None  # free the previous set before loading the next
            where, shuffle = ROW_SETS[name]
            enc, self.prefix = cached_encode(self.tok, "train", self.seeds, where=where, shuffle_captions=shuffle,
                                             also=tuple(ROW_SETS[n] for n in self.names))
            self.current = (name, enc)
        return self.current[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default="dense,mote,fp", help="which of dense, mote, fp to run (mote / fp read "
                    "OUT/dense when dense is not among them)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE, help="phases (training/recipes.py)")
    ap.add_argument("--dense-phases", help="run only these dense phases of the recipe (comma-separated names)")
    ap.add_argument("--dense-from", type=Path, help="start the dense phases from this saved dense checkpoint")
    ap.add_argument("--train-examples", type=int, help="training images (default: the recipe's)")
    ap.add_argument("--held-out", type=int, default=1000, help="held-out questions scored in the log")
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--pos-init", choices=("random", "sincos"), default="sincos",
                    help="start of the ViT position embeddings (sincos: a 2-D sin-cos table, still trained)")
    ap.add_argument("--decoder-layers", type=int, default=4)
    ap.add_argument("--position-form", choices=POSITION_FORMS, default="leftright",
                    help="position questions: yes/no ('Is A left of B?') or left-or-right ('Is A left or right of B?')")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="score the held-out questions every N steps too (0: at the end of each phase only)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    recipe = RECIPES[args.recipe]
    dense_phases = recipe.dense
    if args.dense_phases:
        wanted = args.dense_phases.split(",")
        unknown = sorted(set(wanted) - {p.name for p in recipe.dense})
        if unknown:
            ap.error(f"recipe {args.recipe} has no dense phase {', '.join(unknown)}")
        dense_phases = tuple(p for p in recipe.dense if p.name in wanted)
    # row sets this call trains on; the MoE ones are included even for a dense-only call so that its
    # rendering also fills the cache for the up-cycling processes that follow
    used = [p.rows for p in (dense_phases if "dense" in stages else ()) + recipe.moe]
    t_start = time.time()

    set_position_form(args.position_form)
    tok = build_task_tokenizer()
    rows = RowSets(tok, train_seeds(args.train_examples or recipe.train_examples), list(dict.fromkeys(used)))
    first = rows.get(used[0])
    held, prefix = cached_encode(tok, "held", heldout_seeds(args.held_out))
    assert rows.prefix == prefix
    log(out, event="data", recipe=args.recipe, train=len(first), held=len(held), vocab=tok.vocab_size,
        prefix_tokens=len(prefix), sec=round(time.time() - t_start, 1))

    if "dense" in stages:
        torch.manual_seed(args.seed)
        if args.dense_from:  # continue training a saved dense model
            dense = load_reference_model(args.dense_from)
        else:
            dense = MoTELlavaForCausalLM(model_config(tok.vocab_size, "dense", decoder_layers=args.decoder_layers))
            init_weights(dense)
            if args.pos_init == "sincos":
                init_position_table(dense)
        for phase in dense_phases:
            run_phase(dense, prefix, rows.get(phase.rows), held, tok, out, f"dense-{phase.name}", phase, args.bs,
                      0.0, args.seed, args.eval_every)
        save(dense, tok, out / "dense")
    else:
        dense = load_reference_model(out / "dense")

    for kind in ("mote", "fp"):
        if kind not in stages:
            continue
        model = upcycle(dense, kind, args.seed, args.experts, args.top_k)
        log(out, stage=f"{kind}-init", held=teacher_forced_accuracy(model, prefix, held, tok.eos_id))
        for phase in recipe.moe:
            run_phase(model, prefix, rows.get(phase.rows), held, tok, out, f"{kind}-{phase.name}", phase, args.bs,
                      recipe.aux_coef, args.seed, args.eval_every)
        save(model, tok, out / kind)
    log(out, event="done", total_sec=round(time.time() - t_start, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
