"""Embedding mote-edge in an app: a hard memory budget, streamed tokens, numbers you can trust.

    python examples/embed.py out/tiny.mote examples/images/shapes.png "What color is the circle?"
"""

import sys

from mote_edge.errors import MoteError
from mote_edge.runtime.engine import Engine


def main(model: str, image: str, question: str) -> int:
    try:
        # The budget covers everything the model needs: weights, KV cache, scratch, the vision
        # encoder's peak and the expert cache. An infeasible budget fails here, before allocating.
        with Engine.load(model, memory_budget="64MB", threads=2) as engine:
            for piece in engine.generate(question, image=image, max_new_tokens=32):
                print(piece, end="", flush=True)  # tokens stream as they are decoded
            print()
            report = engine.report()
    except MoteError as e:  # bad file, image, prompt or budget: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    experts, timing = report["experts"], report["timing"]
    print(f"peak RSS over baseline: {report['memory']['peak_over_baseline'] / 1e6:.1f} MB, "
          f"expert hit rate {100 * experts['hit_rate']:.0f}%, decode {timing['decode_tok_s']:.1f} tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
