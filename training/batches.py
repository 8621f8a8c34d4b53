"""Training batches: question rows by type, auxiliary rows (captions, "Where is" lookups) on the same images.

Each batch takes a fixed number of question rows from each question type's pool (by weight; each
pool is walked in a fresh random order, epoch after epoch), then its auxiliary rows from the
*images of those question rows* (a uniformly chosen auxiliary row of each image, cycling over the
images when there are more auxiliary rows than question rows). Sharing images lets the forward
pass run the vision tower and the image positions once per image (common.batch_logits).
With aux_images="other" the auxiliary rows are walked like a pool of their own instead (images
independent of the question rows': more distinct images per batch, less sharing)."""

from __future__ import annotations

import torch

from .common import Encoded
from .data import QTYPES


AUX_IMAGES = ("same", "other")  # auxiliary rows of the question rows' images | of other images


class BatchSampler:
    def __init__(self, data: Encoded, bs: int, aux_fraction: float, qtype_weights=None, seed: int = 0,
                 aux_images: str = "same"):
        if aux_images not in AUX_IMAGES:
            raise ValueError(f"aux_images must be one of {AUX_IMAGES}, not {aux_images!r}")
        self.aux_images = aux_images
        weights = qtype_weights or (1.0,) * len(QTYPES)
        self.gen = torch.Generator().manual_seed(seed)
        self.pools = [torch.nonzero(data.qtype == t).flatten() for t in range(len(QTYPES))]
        aux = torch.nonzero(data.qtype == len(QTYPES)).flatten()  # [A] row ids
        aux = aux[torch.argsort(data.img[aux], stable=True)]  # grouped by image
        n_images = len(data.pixels)
        self.aux_rows = aux
        self.aux_count = torch.bincount(data.img[aux], minlength=n_images)  # [N_img]
        self.aux_start = torch.cumsum(self.aux_count, 0) - self.aux_count  # [N_img]
        self.img = data.img
        n_aux = int(round(bs * aux_fraction)) if len(aux) else 0
        n_q = bs - n_aux
        self.sizes = [int(round(n_q * w / sum(weights))) for w in weights]
        self.sizes[0] += n_q - sum(self.sizes)
        self.n_aux = n_aux
        if n_aux and aux_images == "same" and bool((self.aux_count[data.img[torch.cat(self.pools)]] == 0).any()):
            raise ValueError("an image with a question row has no auxiliary row")
        if aux_images == "other":  # the auxiliary rows become one more pool, walked like the others
            self.pools.append(aux)
            self.sizes.append(n_aux)
        for name, pool, size in zip(QTYPES + ("auxiliary",), self.pools, self.sizes):
            if len(pool) < size:
                raise ValueError(f"{len(pool)} {name} rows cannot fill {size} per batch")
        self.perms = [p[torch.randperm(len(p), generator=self.gen)] for p in self.pools]
        self.cursor = [0] * len(self.pools)

    def _take(self, k: int) -> torch.Tensor:
        size = self.sizes[k]
        if self.cursor[k] + size > len(self.perms[k]):
            self.perms[k] = self.pools[k][torch.randperm(len(self.pools[k]), generator=self.gen)]
            self.cursor[k] = 0
        rows = self.perms[k][self.cursor[k]:self.cursor[k] + size]
        self.cursor[k] += size
        return rows

    def next(self) -> torch.Tensor:
        """-> row ids [bs]: question rows, then auxiliary rows whose images are among theirs."""
        if self.aux_images == "other" or not self.n_aux:
            return torch.cat([self._take(k) for k in range(len(self.pools))])
        questions = torch.cat([self._take(k) for k in range(len(QTYPES))])  # [n_q]
        images = self.img[questions[torch.arange(self.n_aux) % len(questions)]]  # [n_aux]
        count = self.aux_count[images]  # >= 1 (checked once in __init__)
        pick = (torch.rand(self.n_aux, generator=self.gen) * count).long().clamp(max=count - 1)
        return torch.cat([questions, self.aux_rows[self.aux_start[images] + pick]])
