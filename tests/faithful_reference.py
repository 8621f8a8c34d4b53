"""The torch reference model (mote_edge.exporters.reference) made faithful to one .mote file, so the
runtime can be compared with it to float32 summation order:

- every int-N / fp16 tensor of the file, resident or in an expert record, replaces the checkpoint's
  weight with its dequantized value; ternary experts keep the checkpoint's latent weights, which
  BitLinear ternarizes exactly as the exporter did;
- every int-N linear layer (a tied lm_head included) quantizes its input to int8 per (token, group) as
  the int-N kernel does;
- a native vision section's matrices replace the tower's and projector's weights (dequantized; the
  fused q/k/v rows split back), and its int8 linear layers, the patch conv included (a matmul over
  unfolded patches, as runtime/vit.py runs it), quantize their inputs the same way;
- an ONNX vision section encodes images with onnxruntime, as the runtime does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import numpy as np

from mote_edge.config import IMAGE_TOKEN_INDEX
from mote_edge.exporters.reference import load_reference_model
from mote_edge.format import MoteFile
from mote_edge.format.encoding import decode
from mote_edge.format.vision_blocks import vision_block_specs
from mote_edge.runtime.vision import run_vision_onnx


def emulate_int8_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """What the int-N kernel does to activations: int8 per (token, group), BitLinear style."""
    k = x.shape[-1]
    pad = (-k) % group
    xp = F.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, group)
    s = 127.0 / xp.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    return (torch.clamp(torch.round(xp * s), -128, 127) / s).reshape(*x.shape[:-1], -1)[..., :k]


def _quantize_inputs(module: torch.nn.Linear, group: int) -> None:
    module.forward = lambda x, m=module, g=group: F.linear(emulate_int8_groups(x, g), m.weight, m.bias)


def _patches_as_int8_matmul(conv: torch.nn.Conv2d, group: int) -> None:
    """The patch conv as runtime/vit.py computes it: unfolded patches (channel, row, column order),
    quantized per (patch, group), times the flattened kernel."""
    def forward(x, m=conv, g=group):
        b, c, s, _ = x.shape
        p = m.kernel_size[0]
        n = s // p
        cols = x.reshape(b, c, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c * p * p)
        y = F.linear(emulate_int8_groups(cols, g), m.weight.reshape(m.out_channels, -1))  # [B, P, D]
        return y.transpose(1, 2).reshape(b, m.out_channels, n, n)
    conv.forward = forward


def _load_native_vision(f: MoteFile, params: dict, modules: dict) -> None:
    for block, (_, specs) in zip(f.vision.blocks, vision_block_specs(f.config)):
        parts = f.read_vision_block_into(block, bytearray(block.nbytes))
        for t, spec in zip(block.tensors, specs):
            value = torch.from_numpy(decode(parts[t.name], t.scheme, t.shape))
            sizes = [params[src].shape[0] for src in spec.sources]
            for src, piece in zip(spec.sources, value.split(sizes)):
                params[src].copy_(piece.reshape(params[src].shape))
                module = modules.get(src.rsplit(".", 1)[0])
                if t.scheme.kind == "intn" and isinstance(module, torch.nn.Linear):
                    _quantize_inputs(module, t.scheme.group_size)
                elif t.scheme.kind == "intn" and isinstance(module, torch.nn.Conv2d):
                    _patches_as_int8_matmul(module, t.scheme.group_size)


def _expert_param(layer: int, expert: int, proj: str) -> str:
    return f"model.layers.{layer}.mlp.deepspeed_moe.experts.deepspeed_experts.{expert}.{proj}.weight"


def faithful_reference(ckpt_dir, mote_path):
    model = load_reference_model(ckpt_dir)
    params = model.checkpoint_parameters()
    modules = dict(model.named_modules())

    def load(name, value, scheme):
        params[name].copy_(torch.from_numpy(value))
        module = modules.get(name.rsplit(".", 1)[0])
        if scheme.kind == "intn" and isinstance(module, torch.nn.Linear):
            _quantize_inputs(module, scheme.group_size)

    with MoteFile(mote_path) as f, torch.no_grad():
        for name, t in f.tensors.items():
            load(name, decode(f.read_tensor(name), t.scheme, t.shape), t.scheme)
        for (layer, expert), record in f.experts.items():
            parts = f.read_expert(layer, expert)
            for t in record.tensors:
                if t.scheme.kind != "ternary":
                    load(_expert_param(layer, expert, t.name), decode(parts[t.name], t.scheme, t.shape), t.scheme)
        embed = f.tensors["model.embed_tokens.weight"].scheme
        if model.config.decoder.tie_word_embeddings:
            assert model.lm_head.weight is params["model.embed_tokens.weight"]
            if embed.kind == "intn":  # the runtime's tied head is an int-N matmul over the stored embedding
                _quantize_inputs(model.lm_head, embed.group_size)
        if f.vision.format == "native":
            _load_native_vision(f, params, modules)
            return model
        onnx = f.read_vision()
    model.encode_image = lambda pixels: torch.from_numpy(run_vision_onnx(onnx, pixels.numpy()))
    return model


# An int8 vision section: the tower's int8 activation roundings can flip where the runtime and the
# emulation sum in another order (x * s at exactly .5), a step of 1/127 of a group's max |x| that the
# following layers carry: image positions then agree to this share of their largest |value| (the rule
# of the int-N logits, tests/test_runtime.py).
VISION_INT8_EMBED_TOL = 2e-2


def assert_embeddings_match(got: np.ndarray, want: np.ndarray, ids, patches: int, vision_bits: int) -> None:
    """Prompt embeddings [T', H]: text positions to float32 rounding; image positions too when the vision
    section is fp16 / fp32, else within VISION_INT8_EMBED_TOL of their scale."""
    image = np.concatenate([np.full(patches if t == IMAGE_TOKEN_INDEX else 1, t == IMAGE_TOKEN_INDEX)
                            for t in list(ids)])
    assert image.shape[0] == want.shape[0] == got.shape[0]
    np.testing.assert_allclose(got[~image], want[~image], rtol=1e-5, atol=1e-6)
    if image.any():
        if vision_bits == 8:
            assert np.abs(got[image] - want[image]).max() <= VISION_INT8_EMBED_TOL * np.abs(want[image]).max()
        else:
            np.testing.assert_allclose(got[image], want[image], rtol=1e-5, atol=1e-6)
