"""Next-token sampling: greedy by default (deterministic), or temperature / top-k / top-p with a seed.

Temperature 0 is greedy: `argmax(logits)`, the first index on ties (as numpy and torch do), and
the other settings are ignored. Otherwise, in float64:

    p = softmax(logits / temperature)
    top-k (k > 0):   keep the k most probable tokens, renormalize
    top-p (p < 1):   keep the smallest set of most probable tokens whose cumulative probability
                     is >= top_p (at least one token), renormalize
    draw one token from what is left with the Sampler's own np.random.default_rng(seed)

Top-p looks at the distribution after top-k (as Hugging Face's warpers chain them). Among tokens
of equal probability the lower token id ranks first, so the kept set is deterministic. The rng is
created once per Sampler: a seed fixes the whole sequence of draws of that Sampler.

Cost per token is O(V): the candidates are found with np.partition, and only they are sorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mote_edge.errors import MoteError

__all__ = ["SamplingError", "SamplingParams", "Sampler"]

_TOP_P_FIRST_CANDIDATES = 256


class SamplingError(MoteError):
    """Sampling settings out of range (temperature, top-k, top-p, seed)."""


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: "int | None" = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)) or not math.isfinite(t) or t < 0:
            raise SamplingError(f"temperature must be a number >= 0 (0 = greedy), got {t!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise SamplingError(f"top-k must be an integer >= 0 (0 = off), got {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not (0 < p <= 1):  # NaN fails too
            raise SamplingError(f"top-p must be in (0, 1] (1 = off), got {p!r}")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0):
            raise SamplingError(f"seed must be an integer >= 0, got {s!r}")
        self.temperature, self.top_k, self.top_p = float(t), int(k), float(p)
        self.seed = None if s is None else int(s)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks the next token from a logits vector under `params` (see the module doc)."""

    def __init__(self, params: "SamplingParams | None" = None) -> None:
        self.params = params if params is not None else SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)

    def sample(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits)
        if logits.ndim != 1 or logits.size == 0:
            raise ValueError(f"logits must be a non-empty vector [V], got shape {list(logits.shape)}")
        if self.params.greedy:
            return int(np.argmax(logits))
        tokens, probs = self.distribution(logits)
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(tokens[min(i, len(tokens) - 1)])

    def distribution(self, logits: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
        """The tokens a non-greedy draw can return and their probabilities (float64, sum 1): most
        probable first when top-k or top-p is on, else every token id in order. Exposed for tests
        and for callers that want to inspect the choice."""
        params = self.params
        z = np.asarray(logits, dtype=np.float64) / params.temperature
        top = z.max()
        if not math.isfinite(top):
            raise ValueError("logits have no finite maximum (all -inf, or NaN / +inf present)")
        p = np.exp(z - top)
        p /= p.sum()
        v = p.size
        if 0 < params.top_k < v:
            tokens = _top_tokens(p, params.top_k)
            kept = p[tokens] / p[tokens].sum()
        elif params.top_p < 1.0:
            m = min(v, _TOP_P_FIRST_CANDIDATES)
            while True:  # grow the candidate set until it holds the nucleus
                tokens = _top_tokens(p, m)
                if m == v or p[tokens].sum() >= params.top_p:
                    break
                m = min(v, m * 16)
            kept = p[tokens]  # still probabilities of the whole distribution
        else:
            return np.arange(v), p  # plain temperature sampling: nothing to rank
        if params.top_p < 1.0:
            cum = np.cumsum(kept)
            n = min(len(kept), int(np.searchsorted(cum, params.top_p, side="left")) + 1)  # smallest n: cum[n-1] >= top_p
            tokens, kept = tokens[:n], kept[:n]
        kept = kept / kept.sum()
        return tokens, kept


def _top_tokens(p: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of p, largest first, lower index first among equals."""
    v = p.size
    if k >= v:
        candidates = np.arange(v)
    else:
        threshold = np.partition(p, v - k)[v - k]  # the k-th largest value
        candidates = np.flatnonzero(p >= threshold)  # ascending ids; ties at the threshold included
    order = np.argsort(-p[candidates], kind="stable")
    return candidates[order[:k]]
