"""Training recipes (TrainingRecipe; not the quantization Recipe of mote_edge.quant.recipe): the phases
`train.py` runs, as data (docs/ACCURACY.md explains each choice).

A phase is one cosine schedule (linear warm-up, decay to 5% of the peak lr) over one row mix. Dense
phases run one after the other on one model; the MoE phases run on each up-cycled model (MoTE, fp MoE).

Row sets (training/common.py encodes both from one rendering):
  ordered  each image's question row + its caption, objects named left to right (3x3 location words)
  lookup   the question row + a caption naming the objects in a seeded random order + "Where is the
           <object>?" rows: the location must be read off the named object, which is what position
           (and colour-of-X) questions need
"""

from __future__ import annotations

from dataclasses import dataclass

from .batches import AUX_IMAGES

ROW_SETS = {"ordered": (False, False), "lookup": (True, True)}  # name -> common.RowKind (where, shuffle)
TRAINABLE = ("all", "moe", "not_shared")  # all | routers + routed experts | everything but the shared experts


@dataclass(frozen=True)
class Phase:
    name: str  # label in log.jsonl
    steps: int
    lr: float  # peak
    rows: str = "lookup"  # a ROW_SETS key
    aux_fraction: float = 0.2  # share of auxiliary rows (captions, "Where is") per batch
    qtype_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)  # color, shape, count, position
    aux_images: str = "same"  # auxiliary rows of the question rows' images ("same") or of others ("other")
    warmup: int = 100
    seed: int = 0  # added to --seed for this phase's batch order
    trainable: str = "all"  # a TRAINABLE value (MoE phases)

    def __post_init__(self):
        if self.rows not in ROW_SETS:
            raise ValueError(f"phase {self.name}: rows must be one of {sorted(ROW_SETS)}, not {self.rows!r}")
        if self.aux_images not in AUX_IMAGES:  # checked here too so a bad recipe fails before hours of training
            raise ValueError(f"phase {self.name}: aux_images must be one of {AUX_IMAGES}, not {self.aux_images!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"phase {self.name}: trainable must be one of {TRAINABLE}, not {self.trainable!r}")
        if self.steps <= 0 or self.lr <= 0:
            raise ValueError(f"phase {self.name}: steps and lr must be positive")


@dataclass(frozen=True)
class TrainingRecipe:
    dense: tuple[Phase, ...]
    moe: tuple[Phase, ...]  # applied to each up-cycled model
    aux_coef: float = 0.01  # MoE load-balancing loss (MoE-LLaVA's coefficient)
    train_examples: int = 200_000  # training images rendered (seeds 0..N-1), one question row each


_UPCYCLE = (
    Phase("a", 300, 1e-3, trainable="moe", seed=1),  # routers + routed experts only
    Phase("b", 900, 5e-4, trainable="not_shared", seed=2),  # everything but the shared experts
)

RECIPES: dict[str, TrainingRecipe] = {
    # the phases the shipped examples were trained with (58.5 min on a 2-core Zen 4; dense 95.1%)
    "s6": TrainingRecipe(
        dense=(
            Phase("a", 3000, 2e-3, rows="ordered", aux_fraction=0.5, warmup=200),
            Phase("b", 1000, 1e-3, aux_fraction=0.5, qtype_weights=(1, 1, 1, 3), seed=3),
            Phase("c", 1500, 1e-3, aux_fraction=0.5, qtype_weights=(1, 1, 1, 3), warmup=200),
            Phase("d", 1200, 1e-3, warmup=200),
            Phase("e", 1200, 1e-3, warmup=200, seed=1),
        ),
        moe=_UPCYCLE),
    # the default (~30 min): phase (a) with 7/8 captions of *other* images (128 distinct images per step: shape
    # is learned from caption views), then the lookup rows in two phases; 100k images, shorter up-cycling
    "s7": TrainingRecipe(
        dense=(
            Phase("a", 1700, 2e-3, rows="ordered", aux_fraction=0.875, aux_images="other", warmup=200),
            Phase("b", 700, 1e-3, aux_fraction=0.5, qtype_weights=(1, 1, 1, 3), seed=3),
            Phase("c", 1500, 1e-3, warmup=200, seed=4),
        ),
        moe=(Phase("a", 100, 1e-3, trainable="moe", seed=1), Phase("b", 350, 5e-4, trainable="not_shared", seed=2)),
        train_examples=100_000),
    # a few steps of every phase kind, for the end-to-end test (tests/test_training.py)
    "smoke": TrainingRecipe(
        dense=(Phase("a", 3, 2e-3, rows="ordered", aux_fraction=0.5, aux_images="other", warmup=1),
               Phase("b", 2, 1e-3, aux_fraction=0.5, qtype_weights=(1, 1, 1, 3), warmup=1)),
        moe=(Phase("a", 2, 1e-3, trainable="moe", warmup=1), Phase("b", 2, 5e-4, trainable="not_shared", warmup=1))),
}

DEFAULT_RECIPE = "s7"
