"""The router lookahead's recall, measured while decoding, and the prefetch depth it earns.

Each decode wave's lookahead predicts the experts of the next MoE waves (runtime/decoder.py Lookahead).
When one of those waves routes, the predictions made for it 1, 2, ... MoE waves earlier are scored:
recall at depth d = the share of the experts it routed that were predicted d layers ahead, a running
estimate over about the last WINDOW scored experts. `--prefetch adaptive` (what `auto` runs from half
the experts cached) prefetches as deep as the leading depths whose recall is at least
RECALL_TO_PREFETCH, so a router that predicts badly costs a few router calls a wave and no disk time,
and one that predicts well reads further ahead.

Measured (benchmarks/expert_streaming.py at half the experts cached, synth 0.5B / 1.5B, 2-core EPYC,
2026-12-06; docs/BENCHMARKS.md "Deeper lookahead and the adaptive prefetch"): with a predictor of recall 0.9
reading ahead pays (lookahead-2 / -3 1.06-1.15x no prefetch, hit rate 62 -> 74-86%); at the trained tiny MoTE's
recall (53-62%) and at 0.75 it is within the runs' noise of no prefetch (0.90-1.08x) while reading 0.6-1.9 GB
of mispredicted records per 64 tokens. Below the threshold nothing is read ahead.
"""

from __future__ import annotations

RECALL_TO_PREFETCH = 0.8  # between the recalls measured not to pay (0.53-0.62, 0.75) and to pay (0.9)
WINDOW = 256  # scored experts (about) in the running estimate
MIN_SCORED = 24  # experts scored at a depth before its recall counts


class LookaheadRecall:
    """The lookahead's recall by depth (1 .. max_depth), scored as the predicted waves route. A prediction
    is for the decode wave `depth` MoE waves later (with fewer MoE layers than depths, a later token's wave
    of the same layer: keyed by wave, not by layer)."""

    def __init__(self, max_depth: int):
        if max_depth < 1:
            raise ValueError(f"a lookahead recall needs a depth >= 1, got {max_depth}")
        self.max_depth = max_depth
        self.hits = [0.0] * max_depth  # decayed: experts predicted right
        self.scored = [0.0] * max_depth  # decayed: experts scored
        self.count = [0] * max_depth  # experts scored, ever
        self.wave = 0  # decode waves so far
        self.pending: dict[int, dict[int, list[int]]] = {}  # decode wave -> depth -> the experts predicted for it

    def predicted(self, depth: int, experts: list[int]) -> None:
        """The running decode wave's lookahead predicted `experts` for the wave `depth` MoE waves later."""
        if 1 <= depth <= self.max_depth:
            self.pending.setdefault(self.wave + depth, {})[depth] = experts

    def routed(self, experts, decoding: bool = True) -> None:
        """A wave routed to `experts`: a decode wave scores the predictions made for it; a prefill wave (a new
        prompt: the decode waves predicted so far will not come) drops every pending one."""
        if not decoding:
            self.pending.clear()
            return
        self.wave += 1
        predictions = self.pending.pop(self.wave, None)
        if not predictions:
            return
        routed = set(experts)
        keep = 1.0 - len(routed) / WINDOW
        for depth, guess in predictions.items():
            i = depth - 1
            self.hits[i] = self.hits[i] * keep + len(routed.intersection(guess))
            self.scored[i] = self.scored[i] * keep + len(routed)
            self.count[i] += len(routed)

    def recall(self, depth: int) -> float | None:
        """The running recall `depth` MoE layers ahead; None until MIN_SCORED experts were scored there."""
        i = depth - 1
        return self.hits[i] / self.scored[i] if self.count[i] >= MIN_SCORED and self.scored[i] > 0 else None

    def depth(self) -> int:
        """How many MoE layers ahead to prefetch: the leading depths whose recall is RECALL_TO_PREFETCH or more."""
        d = 0
        while d < self.max_depth:
            r = self.recall(d + 1)
            if r is None or r < RECALL_TO_PREFETCH:
                break
            d += 1
        return d

    def as_list(self) -> list[float | None]:
        return [self.recall(d) for d in range(1, self.max_depth + 1)]
