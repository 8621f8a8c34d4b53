"""Train the tiny MoTE end to end (DESIGN.md section 7), CPU only.

    python -m mote_edge.training.train [--out out/train] [--seed 0] [--stages dense,mote,fp]

Stages:
  dense  ViT + projector + Qwen2-style decoder, all trained from scratch (there is no pre-trained
         CLIP / LLM here, so the paper's "align the projector first" stage would only align
         random features; it is folded into this one).
  mote   up-cycle the dense model: each MoE layer gets the dense FFN as a frozen shared expert and
         E ternary routed experts initialised from the same FFN (latent weights = FFN weights),
         router random. (a) routers + routed experts only; (b) everything but the shared experts.
         QAT through BitLinear's straight-through estimator, DeepSpeed load-balancing loss 0.01.
  fp     MoE-LLaVA baseline up-cycled from the same dense model: E fp experts, each a copy of the
         dense FFN, no shared expert; (a) MoE layers only, (b) everything; same aux loss.
Training runs under bf16 autocast (AMX) with fp32 master weights; evaluation is fp32.
Writes out/train/{dense,mote,fp}/ (HF-style checkpoints, fp32) and out/train/log.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

from mote_edge.exporters.checkpoint import write_checkpoint
from mote_edge.exporters.reference import MoTELlavaForCausalLM
from mote_edge.tokenizer import Tokenizer

from .batches import BatchSampler
from .common import OUT, cached_encode, image_config, loss_fn, model_config, teacher_forced_accuracy
from .data import POSITION_FORMS, heldout_seeds, set_position_form, train_seeds
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


def run_stage(model, prefix, train, held, tok, out: Path, name: str, steps: int, lr: float, trainable,
              bs: int, aux_coef: float, seed: int, eval_every: int, warmup: int = 100, cap_frac: float = 0.0,
              qtype_weights: tuple[float, ...] | None = None) -> None:
    params = [p for n, p in model.named_parameters() if trainable(n)]
    for n, p in model.named_parameters():
        p.requires_grad_(trainable(n))
    log(out, stage=name, trainable_params=sum(p.numel() for p in params), steps=steps, lr=lr, bs=bs,
        caption_fraction=cap_frac, qtype_weights=qtype_weights)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    sampler = BatchSampler(train, bs, cap_frac, qtype_weights, seed)
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
        if step % eval_every == 0 or step == steps:
            rec = dict(stage=name, step=step, loss=round(loss_sum / n, 4), aux=round(aux_sum / n, 4),
                       train_acc=round(acc_sum / n, 4), sec=round(time.time() - t0, 1))
            if held is not None:
                rec["held"] = {k: round(v, 4) for k, v in teacher_forced_accuracy(model, prefix, held, tok.eos_id).items()}
            log(out, **rec)
            loss_sum, aux_sum, acc_sum, n = 0.0, 0.0, 0.0, 0
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default="dense,mote,fp")
    ap.add_argument("--train-examples", type=int, default=200_000)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--dense-steps", type=int, default=3000)
    ap.add_argument("--dense-lr", type=float, default=2e-3)
    ap.add_argument("--moe-steps", type=str, default="300,900", help="steps of up-cycling stage (a),(b)")
    ap.add_argument("--moe-lr", type=float, default=1e-3)
    ap.add_argument("--dense-captions", type=float, default=0.5, help="share of caption rows in dense batches")
    ap.add_argument("--moe-captions", type=float, default=0.2, help="share of caption rows in up-cycling batches")
    ap.add_argument("--qtype-weights", default="1,1,1,1",
                    help="sampling weights of the question types (color,shape,count,position) in dense batches")
    ap.add_argument("--pos-init", choices=("random", "sincos"), default="sincos",
                    help="start of the ViT position embeddings (sincos: a 2-D sin-cos table, still trained)")
    ap.add_argument("--decoder-layers", type=int, default=4)
    ap.add_argument("--dense-from", type=Path, help="start the dense stage from this saved dense checkpoint")
    ap.add_argument("--where", action="store_true",
                    help="add training-only 'Where is the <object>?' rows (3x3 location) to the auxiliary pool")
    ap.add_argument("--shuffle-captions", action="store_true",
                    help="caption objects in a seeded random order instead of left to right")
    ap.add_argument("--position-form", choices=POSITION_FORMS, default="leftright",
                    help="position questions: yes/no ('Is A left of B?') or left-or-right ('Is A left or right of B?')")
    ap.add_argument("--dense-phase2-steps", type=int, default=1000,
                    help="a second dense phase from the first: captions in random object order + 'Where is' rows, "
                         "half the lr (the recipe that gets position questions off chance); the MoE stages then "
                         "use the same rows")
    ap.add_argument("--phase2-qtype-weights", default="1,1,1,3",
                    help="question-type weights of the second dense phase")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    t_start = time.time()

    set_position_form(args.position_form)
    tok = build_task_tokenizer()
    train, prefix = cached_encode(tok, "train", train_seeds(args.train_examples), where=args.where,
                                  shuffle_captions=args.shuffle_captions, also=((True, True),))  # phase 2's rows
    held, prefix2 = cached_encode(tok, "held", heldout_seeds(1000))
    assert prefix == prefix2
    log(out, event="data", train=len(train), held=len(held), vocab=tok.vocab_size, prefix_tokens=len(prefix),
        sec=round(time.time() - t_start, 1))

    qtype_weights = tuple(float(w) for w in args.qtype_weights.split(","))
    phase2_weights = tuple(float(w) for w in args.phase2_qtype_weights.split(","))
    if "dense" in stages:
        torch.manual_seed(args.seed)
        if args.dense_from:  # continue training a saved dense model (e.g. a position-heavy second phase)
            from mote_edge.exporters.reference import load_reference_model
            dense = load_reference_model(args.dense_from)
        else:
            dense = MoTELlavaForCausalLM(model_config(tok.vocab_size, "dense", decoder_layers=args.decoder_layers))
            init_weights(dense)
            if args.pos_init == "sincos":
                init_position_table(dense)
        run_stage(dense, prefix, train, held, tok, out, "dense", args.dense_steps, args.dense_lr, lambda n: True,
                  args.bs, 0.0, args.seed, args.eval_every, warmup=200, cap_frac=args.dense_captions,
                  qtype_weights=qtype_weights)
        if args.dense_phase2_steps:
            train, _ = cached_encode(tok, "train", train_seeds(args.train_examples), where=True, shuffle_captions=True)
            run_stage(dense, prefix, train, held, tok, out, "dense-2", args.dense_phase2_steps, args.dense_lr * 0.5,
                      lambda n: True, args.bs, 0.0, args.seed + 3, args.eval_every, warmup=100,
                      cap_frac=args.dense_captions, qtype_weights=phase2_weights)
        save(dense, tok, out / "dense")
    else:
        from mote_edge.exporters.reference import load_reference_model
        dense = load_reference_model(out / "dense")

    sa, sb = (int(x) for x in args.moe_steps.split(","))
    for kind in ("mote", "fp"):
        if kind not in stages:
            continue
        model = upcycle(dense, kind, args.seed, args.experts, args.top_k)
        log(out, stage=f"{kind}-init", held=teacher_forced_accuracy(model, prefix, held, tok.eos_id))
        in_moe = lambda n: ".mlp.deepspeed_moe." in n  # noqa: E731  routers + routed experts
        not_shared = lambda n: ".mlp.shared_expert." not in n  # noqa: E731
        run_stage(model, prefix, train, held, tok, out, f"{kind}-a", sa, args.moe_lr, in_moe, args.bs, 0.01,
                  args.seed + 1, args.eval_every, cap_frac=args.moe_captions)
        run_stage(model, prefix, train, held, tok, out, f"{kind}-b", sb, args.moe_lr * 0.5, not_shared, args.bs,
                  0.01, args.seed + 2, args.eval_every, cap_frac=args.moe_captions)
        save(model, tok, out / kind)
    log(out, event="done", total_sec=round(time.time() - t_start, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
