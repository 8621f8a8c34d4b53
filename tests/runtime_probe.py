"""What the runtime computes for one prompt, for comparison with a reference (no torch here: it also runs
as a script in a subprocess, e.g. under a forced MOTE_KERNEL_PATH):

    python tests/runtime_probe.py MODEL.mote PROMPT IMAGE|- TOKENS(comma separated) OUT.npz
"""

from __future__ import annotations

import sys

import numpy as np

from mote_edge.quant import kernels
from mote_edge.runtime.engine import Engine


def runtime_outputs(mote, prompt: str, image, forced_tokens: list[int]) -> dict:
    """The prompt ids and embeddings, the logits after the prompt and after each of `forced_tokens` but the
    last (teacher forcing), the free-running greedy tokens (as many, EOS ignored), the kernel path and the
    decoder layer that ran the decode steps (native or numpy)."""
    with Engine.load(mote, threads=1) as engine:
        ids = engine.encode(prompt, has_image=image is not None)
        x = engine._prompt_embeddings(prompt, image)
        engine.decoder.reset()
        logits = [engine.decoder.forward(x)]
        for t in forced_tokens[:-1]:
            logits.append(engine.decoder.forward(engine.decoder.embed(np.array([t]))))
        free = list(engine.generate_ids(prompt, image, max_new_tokens=len(forced_tokens), ignore_eos=True))
        layer = "native" if engine.decoder.native else "numpy"
    return {"ids": np.array(ids), "embeds": x, "logits": np.stack(logits), "free": np.array(free),
            "kernel_path": np.array(kernels.kernel_path()), "decoder": np.array(layer)}


if __name__ == "__main__":
    mote, prompt, image, tokens, out = sys.argv[1:6]
    outputs = runtime_outputs(mote, prompt, None if image == "-" else image, [int(t) for t in tokens.split(",")])
    np.savez(out, **outputs)
