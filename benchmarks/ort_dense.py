"""onnxruntime on an ONNX export of the dense-equivalent decoder: the alternative runtime.

    python benchmarks/ort_dense.py [--preset qwen2.5-0.5b-e8] [--tokens 32] [--threads N] [--force]

The dense-equivalent model is the preset's Qwen2 decoder with `moe=None` (every layer a plain
SwiGLU FFN), text only, random weights drawn exactly as `mote-edge synth` draws them (seed 0), built
in our torch reference model. One decode step (`input_ids [1, T]`, `past_key/past_value
[L, nKV, P, D]` -> last-position `logits [1, V]`, `present_key/present_value [L, nKV, P+T, D]`;
T and P dynamic, P = 0 for the prefill) is exported with torch's dynamo exporter (opset 21,
external data), then made 4-bit weight-only with onnxruntime's MatMulNBitsQuantizer (block 128,
asymmetric, accuracy_level 4 = int8 activations, like our runtime). Everything is cached under
benchmarks/out/ort-dense/<preset>/ (`--force` rebuilds).

Measured for the fp32 and the 4-bit model, each in a fresh process (so VmHWM is that model's
peak): greedy decoding of the same text prompt as benchmarks/decode_speed.py, prefill tok/s (prompt
tokens / prefill time), decode tok/s over `--tokens` steps with the first one excluded (warm-up),
peak RSS, file bytes, the prefill logits against the torch reference (max |diff|, cosine; again
through the past-KV path: prefill all but the last token, then one step) and the greedy ids
against the torch reference's (fp32 logits must match: asserted). Prints a table and the
4-bit / fp32 ratios; writes benchmarks/out/ort-dense.json (or `--json OUT`). The prompt is 59
tokens with the shipped tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "Describe the picture in detail. What shapes are there, what colors do they have, and where are they?"
OUT = Path(__file__).parent / "out"
OPSET = 21  # int4 tensor types (GatherBlockQuantized's data) need >= 21
SEED = 0
BLOCK = 128
REF_TOKENS = 16  # greedy ids of the torch reference, compared with onnxruntime fp32's
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations (quantized per block at run time)


def _status_bytes(field: str) -> int:
    """VmHWM / VmRSS of this process from /proc/self/status, in bytes."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def prompt_ids(preset: str) -> list[int]:
    """The decode_speed.py prompt through the chat template, with the tokenizer `synth` ships (2048 ids)."""
    from mote_edge.chat import encode_prompt
    from mote_edge.presets import preset_config
    from mote_edge.tokenizer import Tokenizer

    dc = preset_config(preset).decoder
    tok = Tokenizer.from_str(Tokenizer.default().to_str(), bos_token_id=dc.bos_token_id, eos_token_id=dc.eos_token_id)
    return encode_prompt(tok, PROMPT, has_image=False)


# ------------------------------------------------------------------------------ torch side
def build_dense(preset: str, seed: int = SEED) -> Any:
    """The reference model with moe=None, decoder weights as `mote-edge synth` draws them, no vision."""
    import torch
    from torch import nn

    from mote_edge.exporters.reference import MoTELlavaForCausalLM
    from mote_edge.exporters.synth import random_tensor
    from mote_edge.presets import preset_config
    from mote_edge.schema import checkpoint_tensors

    cfg = dataclasses.replace(preset_config(preset), moe=None).validate()
    with torch.device("meta"):
        model = MoTELlavaForCausalLM(cfg)
    model.model.vision_tower, model.model.mm_projector = nn.Identity(), nn.Identity()  # text only
    model = model.to_empty(device="cpu")
    if cfg.decoder.tie_word_embeddings:  # to_empty breaks the tie; restore it
        model.lm_head.weight = model.model.embed_tokens.weight
    params, loaded = model.checkpoint_parameters(), 0
    with torch.no_grad():
        for i, spec in enumerate(checkpoint_tensors(cfg)):  # index i = synth's per-tensor seed
            if spec.role not in ("vision", "projector"):
                params[spec.name].copy_(torch.from_numpy(random_tensor(spec, i, seed)))
                loaded += 1
    assert loaded == len(params), f"{len(params) - loaded} parameters left uninitialised"
    return model.eval()


def _step_module(model: Any) -> Any:
    """One functional decode step over the reference model's own modules (ONNX-exportable)."""
    import torch
    from torch import nn

    from mote_edge.exporters.reference.layers import KVCache, rope_cos_sin

    class PastCache(KVCache):
        """The reference KVCache, seeded from the graph inputs instead of starting empty."""

        def __init__(self, past_key: torch.Tensor, past_value: torch.Tensor):
            super().__init__(past_key.shape[0])
            self.keys = [k[None] for k in past_key.unbind(0)]  # L x [1, nKV, P, D]
            self.values = [v[None] for v in past_value.unbind(0)]

    class DecodeStep(nn.Module):
        def __init__(self, m: Any):
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor):
            # input_ids [1, T] int64; past_key / past_value [L, nKV, P, D]
            m, dc = self.m, self.m.config.decoder
            cache = PastCache(past_key, past_value)
            start = past_key.shape[2]
            positions = torch.arange(start, start + input_ids.shape[1])  # [T]
            cos, sin = rope_cos_sin(positions, dc.head_dim, dc.rope_theta)  # [T, D]
            x = m.model.embed_tokens(input_ids)  # [1, T, H]
            for layer in m.model.layers:
                x = layer(x, cos, sin, cache)
            logits = m.lm_head(m.model.norm(x[:, -1]))  # [1, V]: the last position only
            return logits, torch.cat(cache.keys, 0), torch.cat(cache.values, 0)  # [L, nKV, P+T, D] x 2

    return DecodeStep(model).eval()


def _wrapper_parity(model: Any, step: Any, ids: list[int]) -> float:
    """Max |logit diff| of the step module (prefill 8, then the rest with a past) vs the reference."""
    import torch

    dc = model.config.decoder
    with torch.no_grad():
        ref = model.forward_embeds(model.model.embed_tokens(torch.tensor([ids])))[0, -1]  # [V]
        empty = torch.zeros(dc.num_hidden_layers, dc.num_key_value_heads, 0, dc.head_dim)  # P = 0
        _, k, v = step(torch.tensor([ids[:8]]), empty, empty)
        got = step(torch.tensor([ids[8:]]), k, v)[0][0]  # [V]
    diff = float((got - ref).abs().max())
    assert diff <= 1e-3 * float(ref.abs().max()), f"decode-step wrapper differs from the reference by {diff}"
    return diff


def export(preset: str, folder: Path, force: bool = False) -> dict:
    """fp32 ONNX (cached) + the torch reference's prefill logits for the ORT parity check."""
    meta_path = folder / "export.json"
    if meta_path.exists() and (folder / "fp32.onnx").exists() and not force:
        meta = json.loads(meta_path.read_text())
        if "ref_ids" in meta:  # else: written by an older version of this file
            return {**meta, "cached": True}
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    t0 = time.perf_counter()
    model = build_dense(preset)
    step, ids = _step_module(model), prompt_ids(preset)
    build_s = time.perf_counter() - t0
    wrapper_diff = _wrapper_parity(model, step, ids[:12])
    with torch.no_grad():  # reference logits of the whole prompt, last position: [V]
        ref = model.forward_embeds(model.model.embed_tokens(torch.tensor([ids])))[0, -1].numpy()
    np.save(folder / "ref_logits.npy", ref)
    ref_ids = model.generate(ids, max_new_tokens=REF_TOKENS)  # greedy; checks ORT's past-KV path too
    dc = model.config.decoder
    # T = 3, P = 5 in the example: torch.export specializes sizes 0 and 1, both axes must stay dynamic.
    # Two distinct past tensors: one object passed twice is traced as one input (present_key would read past_value)
    past = torch.zeros(dc.num_hidden_layers, dc.num_key_value_heads, 5, dc.head_dim)
    T, P = torch.export.Dim("T", max=dc.max_position_embeddings), torch.export.Dim("P", max=dc.max_position_embeddings)
    t0 = time.perf_counter()
    quiet = logging.root.manager.disable
    logging.disable(logging.WARNING)  # torchvision-missing notices and friends
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                step, (torch.tensor([ids[:3]]), past, past.clone()), dynamo=True, opset_version=OPSET, optimize=True,
                input_names=["input_ids", "past_key", "past_value"],
                output_names=["logits", "present_key", "present_value"],
                dynamic_shapes={"input_ids": {1: T}, "past_key": {2: P}, "past_value": {2: P}}, verbose=False)
    finally:
        logging.disable(quiet)
    program.save(str(folder / "fp32.onnx"), external_data=True)
    meta = {"preset": preset, "build_s": build_s, "export_s": time.perf_counter() - t0,
            "wrapper_max_abs_diff": wrapper_diff, "ref_logit_scale": float(np.abs(ref).max()),
            "prompt_tokens": len(ids), "ref_ids": ref_ids, "torch": torch.__version__}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "cached": False}


# ------------------------------------------------------------------------------ onnxruntime side
def _lm_head_as_matmul(proto: Any) -> None:
    """Gemm(x, W [V, H], transB=1) -> MatMul(x, W.T [H, V]) on its own initializer, in place: the
    quantizer only takes MatMul with a constant B. A tied W stays for the embedding Gather."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    for i, node in enumerate(proto.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Gemm" and len(node.input) == 2 and node.input[1] in inits and attrs.get("transB") == 1
                and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0):
            w = numpy_helper.to_array(inits[node.input[1]])  # [V, H]
            proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), node.input[1] + ".T"))
            proto.graph.node[i].CopyFrom(helper.make_node("MatMul", [node.input[0], node.input[1] + ".T"],
                                                          list(node.output), name=node.name))
    used = {x for n in proto.graph.node for x in n.input}
    for t in [t for t in proto.graph.initializer if t.name not in used]:  # an untied [V, H] lm_head
        proto.graph.initializer.remove(t)


def quantize(folder: Path, bits: int, force: bool = False) -> dict:
    """MatMulNBits weight-only model from fp32.onnx (cached): every MatMul with a constant weight,
    the lm_head included, becomes MatMulNBits and (4-bit only) the embedding Gather becomes
    GatherBlockQuantized; attention's activation MatMuls stay fp32."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import matmul_nbits_quantizer as mnb

    logging.getLogger(mnb.__name__).setLevel(logging.WARNING)  # it logs every node at INFO
    path, meta_path = folder / f"int{bits}.onnx", folder / f"int{bits}.json"
    if path.exists() and meta_path.exists() and not force:
        return {**json.loads(meta_path.read_text()), "cached": True}
    t0 = time.perf_counter()
    proto = onnx.load(str(folder / "fp32.onnx"))  # weights included (external data read)
    _lm_head_as_matmul(proto)
    # Keyword names as in onnxruntime 1.32 (inspect.signature(MatMulNBitsQuantizer.__init__)); a
    # release that lacks one (accuracy_level arrived in 1.17) fails here with a TypeError naming it.
    q = mnb.MatMulNBitsQuantizer(proto, bits=bits, block_size=BLOCK, is_symmetric=False, accuracy_level=ACCURACY_LEVEL,
                                 op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",))
    q.process()
    for old in (path, folder / f"int{bits}.onnx.data"):
        old.unlink(missing_ok=True)
    q.model.save_model_to_file(str(path), use_external_data_format=True)
    graph = q.model.model.graph
    ops = [n.op_type for n in graph.node]
    weights = {n.input[0 if n.op_type == "Gather" else 1] for n in graph.node
               if n.op_type in ("Gather", "MatMul", "Gemm")}
    fp32 = sorted(t.name for t in graph.initializer if t.name in weights and t.data_type == onnx.TensorProto.FLOAT)
    meta = {"bits": bits, "block_size": BLOCK, "accuracy_level": ACCURACY_LEVEL, "onnxruntime": onnxruntime.__version__,
            "quantize_s": time.perf_counter() - t0, "matmulnbits": ops.count("MatMulNBits"),
            "gather_quantized": ops.count("GatherBlockQuantized"), "matmul_left": ops.count("MatMul"),
            "kept_fp32": fp32, "onnx": onnx.__version__}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return {**meta, "cached": False}


def _ort_run(path: str, ids: list[int], tokens: int, threads: int, ref_path: str) -> dict:
    """Greedy decoding in onnxruntime (run in a fresh process: VmHWM is this model's own peak)."""
    import onnxruntime as ort

    baseline = _status_bytes("VmRSS")
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    shape = sess.get_inputs()[1].shape  # [L, nKV, P, D]
    past = np.zeros((shape[0], shape[1], 0, shape[3]), np.float32)  # P = 0
    t0 = time.perf_counter()
    logits, k, v = sess.run(None, {"input_ids": np.array([ids], np.int64), "past_key": past, "past_value": past})
    prefill_s = time.perf_counter() - t0
    ref = np.load(ref_path)  # [V]
    diff = float(np.abs(logits[0] - ref).max())
    cos = float(logits[0] @ ref / (np.linalg.norm(logits[0]) * np.linalg.norm(ref)))
    out, times = [int(logits[0].argmax())], []
    for _ in range(tokens):  # `tokens` decode steps; the first is the warm-up
        t0 = time.perf_counter()
        logits, k, v = sess.run(None, {"input_ids": np.array([[out[-1]]], np.int64), "past_key": k, "past_value": v})
        times.append(time.perf_counter() - t0)
        out.append(int(logits[0].argmax()))
    # the past-KV path against the same reference: prefill all but the last prompt token, then one step
    _, k, v = sess.run(None, {"input_ids": np.array([ids[:-1]], np.int64), "past_key": past, "past_value": past})
    logits = sess.run(None, {"input_ids": np.array([ids[-1:]], np.int64), "past_key": k, "past_value": v})[0]
    return {"tok_s": (len(times) - 1) / sum(times[1:]), "prefill_tok_s": len(ids) / prefill_s,
            "prefill_s": prefill_s, "load_s": load_s, "peak_rss_bytes": _status_bytes("VmHWM"),
            "baseline_rss_bytes": baseline, "logit_max_abs_diff": diff, "logit_cos": cos,
            "step_max_abs_diff": float(np.abs(logits[0] - ref).max()), "ids": out}


def ort_dense_decode(preset: str = "qwen2.5-0.5b-e8", tokens: int = 32, threads: int | None = None,
                     bits: int | None = 4, force: bool = False) -> dict:
    """Decode speed of onnxruntime on the dense-equivalent model, fp32 (`bits=None`) or MatMulNBits
    `bits`. Exports / quantizes on first use (cached). `logit_max_abs_diff` is the prefill's last
    logits vs the torch reference (the parity check for fp32, the quantization error for 4-bit).
    The run happens in a spawned process: a calling script needs the `if __name__ == "__main__"` guard."""
    threads = threads or os.cpu_count() or 1
    folder = OUT / "ort-dense" / preset
    import torch

    torch.set_num_threads(threads)  # the export side (reference model, parity check)
    exp = export(preset, folder, force)
    q = quantize(folder, bits, force) if bits else None
    path = folder / (f"int{bits}.onnx" if bits else "fp32.onnx")
    with mp.get_context("spawn").Pool(1) as pool:
        r = pool.apply(_ort_run, (str(path), prompt_ids(preset), tokens, threads, str(folder / "ref_logits.npy")))
    if bits is None:  # the export must be exact, by both paths
        worst = max(r["logit_max_abs_diff"], r["step_max_abs_diff"])
        assert worst <= 1e-3 * exp["ref_logit_scale"], f"onnxruntime fp32 differs from the torch reference by {worst}"
    files = sum(p.stat().st_size for p in folder.glob(path.name + "*"))
    return {**r, "preset": preset, "bits": bits or 32, "threads": threads, "tokens": tokens, "file_bytes": files,
            "prompt_tokens": exp["prompt_tokens"], "logit_scale": exp["ref_logit_scale"],
            "wrapper_max_abs_diff": exp["wrapper_max_abs_diff"], "export": exp, "quantize": q}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen2.5-0.5b-e8")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--force", action="store_true", help="re-export and re-quantize")
    ap.add_argument("--json", type=Path, default=OUT / "ort-dense.json")
    args = ap.parse_args()
    if args.force:  # rebuild once here; the two runs below then find everything cached
        import torch

        torch.set_num_threads(args.threads)
        folder = OUT / "ort-dense" / args.preset
        export(args.preset, folder, force=True)
        quantize(folder, 4, force=True)
    fp32 = ort_dense_decode(args.preset, args.tokens, args.threads, None)
    int4 = ort_dense_decode(args.preset, args.tokens, args.threads, 4)
    e, q = fp32["export"], int4["quantize"]
    same = sum(a == b for a, b in zip(fp32["ids"], int4["ids"]))
    ref_same = sum(a == b for a, b in zip(fp32["ids"], e["ref_ids"]))
    print(f"onnxruntime, dense {args.preset} (moe=None, text only), {args.threads} threads, prompt "
          f"{fp32['prompt_tokens']} tokens, {args.tokens} decode steps (first excluded)")
    cached = " (cached)" if e["cached"] and not args.force else ""
    took = f"build {e['build_s']:.0f} s + export {e['export_s']:.0f} s{cached}"
    qtook = f"quantized in {q['quantize_s']:.0f} s{' (cached)' if q['cached'] and not args.force else ''}"
    print(f"  export: {took}; torch decode-step wrapper vs reference max |diff| {e['wrapper_max_abs_diff']:.2e} "
          f"(logit scale {e['ref_logit_scale']:.1f})")
    print(f"  4-bit: {q['matmulnbits']} MatMulNBits incl. lm_head (block {q['block_size']}, asym, accuracy_level "
          f"{q['accuracy_level']}), {q['gather_quantized']} GatherBlockQuantized (embedding), {q['matmul_left']} "
          f"activation MatMul left, 2-D fp32 weights kept: {', '.join(q['kept_fp32']) or 'none'}; "
          f"{qtook} (onnxruntime {q['onnxruntime']})")
    print(f"  {'model':<10}{'decode tok/s':>13}{'prefill tok/s':>15}{'file MB':>9}{'peak RSS MB':>13}"
          f"{'load s':>8}{'max|dlogit|':>13}{'cos':>9}{'via past':>13}")
    for name, r in (("fp32", fp32), ("int4", int4)):
        print(f"  {name:<10}{r['tok_s']:13.2f}{r['prefill_tok_s']:15.1f}{r['file_bytes'] / 1e6:9.0f}"
              f"{r['peak_rss_bytes'] / 1e6:13.0f}{r['load_s']:8.1f}{r['logit_max_abs_diff']:13.2e}"
              f"{r['logit_cos']:9.4f}{r['step_max_abs_diff']:13.2e}")
    ratio = int4["tok_s"] / fp32["tok_s"]
    print(f"  ratio int4/fp32: decode {ratio:.2f}x, prefill {int4['prefill_tok_s'] / fp32['prefill_tok_s']:.2f}x, "
          f"file {int4['file_bytes'] / fp32['file_bytes']:.2f}x")
    n_ref = min(len(e["ref_ids"]), len(fp32["ids"]))
    print(f"  greedy ids: fp32 vs torch reference {ref_same}/{n_ref}, int4 vs "
          f"fp32 {same}/{len(fp32['ids'])} (random weights give near-flat logits, so 4-bit ids soon diverge); "
          f"max|dlogit| and cos: prefill logits vs the torch reference; via past: the same logits from a "
          f"{fp32['prompt_tokens'] - 1}-token prefill + 1 step")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"fp32": fp32, "int4": int4, "int4_vs_fp32_decode": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
