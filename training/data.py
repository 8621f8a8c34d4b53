"""The tiny vision-language task: scenes of 1-4 coloured shapes, short-answer questions.

Every example is a pure function of its integer seed (`make_example(seed)`), so the train and
held-out splits are disjoint seed ranges:

    train:    seeds TRAIN_BASE + i   (i = 0, 1, 2, ...)
    held-out: seeds HELDOUT_BASE + i (i = 0 .. 9999)

A scene is rendered with Pillow at RENDER px (2x supersampled geometry, then Gaussian pixel noise) on a
varied background (low-saturation base colour, linear gradient, faint blobs); the model sees it
through `mote_edge.image.preprocess` (LLaVA pad + bicubic resize to the model's image size + CLIP
normalisation), exactly as the runtime does.

Question types (uniform):
  color    "What color is the {shape}?"                       -> red|green|blue|yellow|purple|orange
  shape    "What shape is the {color} object?"                -> circle|square|triangle|star
  count    "How many shapes are there?" / "How many {color} shapes are there?" /
           "How many {shape}s are there?"                     -> 0..4
  position "Is the {color} {shape} left or right of the {color} {shape}?" -> left|right
           "Is the {color} {shape} above or below the {color} {shape}?"     -> above|below
           (set_position_form("yesno"): the first form, "Is the A {left of|right of|above|below} the B?"
           -> yes|no, kept for the experiments in docs/ACCURACY.md)
The question always names objects uniquely; position questions only compare objects whose
centres differ by a clear margin along the asked axis. The yes/no form makes the answer the XOR of
the relation word and the objects' order; the left-or-right form does not (docs/ACCURACY.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RENDER = 96  # size of the rendered PNG; the model input is smaller (preprocess resizes)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
QTYPES = ("color", "shape", "count", "position")
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
CHOICES = {"left or right of": (0, ("left", "right")), "above or below": (1, ("above", "below"))}
POSITION_FORMS = ("yesno", "leftright")
TRAIN_BASE = 0
HELDOUT_BASE = 1_000_000_000
POS_MARGIN = 0.12  # position questions need centres this far apart (fraction of the image)
_position_form = "leftright"


def set_position_form(form: str) -> None:
    """Which position questions the task asks (process-wide: training, data caches and eval must agree)."""
    global _position_form
    if form not in POSITION_FORMS:
        raise ValueError(f"position form must be one of {POSITION_FORMS}, not {form!r}")
    _position_form = form


def position_form() -> str:
    return _position_form


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    x: float  # centre, fraction of the image width
    y: float
    r: float  # radius, fraction of the image


@dataclass(frozen=True)
class Example:
    seed: int
    image: Image.Image
    question: str
    answer: str
    qtype: str
    objects: tuple[Obj, ...]


def _scene(rng: random.Random, n: int) -> list[Obj]:
    """n non-overlapping objects (rejection sampling; shrinks if crowded)."""
    for attempt in range(200):
        scale = 1.0 if attempt < 100 else 0.8
        objs: list[Obj] = []
        for _ in range(n):
            for _try in range(50):
                r = rng.uniform(0.09, 0.16) * scale
                x, y = rng.uniform(r + 0.02, 1 - r - 0.02), rng.uniform(r + 0.02, 1 - r - 0.02)
                if all(math.hypot(x - o.x, y - o.y) > r + o.r + 0.03 for o in objs):
                    objs.append(Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), x, y, r))
                    break
            else:
                break
        if len(objs) == n:
            return objs
    raise RuntimeError("could not place the objects")  # pragma: no cover


def _background(rng: random.Random, size: int) -> np.ndarray:
    """[size, size, 3] float: low-saturation base + gradient + faint blobs."""
    dark = rng.random() < 0.3
    base = np.array([rng.uniform(20, 80) if dark else rng.uniform(150, 235)] * 3)
    base += np.array([rng.uniform(-25, 25) for _ in range(3)])
    g = np.linspace(-1, 1, size)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(ang) * g[None, :] + math.sin(ang) * g[:, None]  # [S, S]
    img = base[None, None, :] + rng.uniform(0, 30) * ramp[:, :, None]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(rng.randint(0, 3)):  # soft blobs (texture, not objects)
        cx, cy, s = rng.random(), rng.random(), rng.uniform(0.1, 0.3)
        amp = np.array([rng.uniform(-20, 20) for _ in range(3)])
        img += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[:, :, None]
    return img


def _polygon(o: Obj, size: int, rng: random.Random) -> list[tuple[float, float]] | None:
    cx, cy, r = o.x * size, o.y * size, o.r * size
    rot = rng.uniform(-0.25, 0.25)
    if o.shape == "square":
        k = r * 0.85
        return [(cx + k * math.cos(rot + a) * math.sqrt(2), cy + k * math.sin(rot + a) * math.sqrt(2))
                for a in (math.pi / 4, 3 * math.pi / 4, 5 * math.pi / 4, 7 * math.pi / 4)]
    if o.shape == "triangle":
        return [(cx + r * math.cos(rot - math.pi / 2 + i * 2 * math.pi / 3),
                 cy + r * 1.05 * math.sin(rot - math.pi / 2 + i * 2 * math.pi / 3) + r * 0.15) for i in range(3)]
    if o.shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = rot - math.pi / 2 + i * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    return None  # circle


def render(objs: list[Obj], rng: random.Random, size: int = RENDER) -> Image.Image:
    bg = _background(rng, size)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for o in objs:
        jitter = [rng.randint(-20, 20) for _ in range(3)]
        fill = tuple(int(min(255, max(0, c + j))) for c, j in zip(COLORS[o.color], jitter))
        poly = _polygon(o, size, rng)
        if poly is None:
            cx, cy, r = o.x * size, o.y * size, o.r * size
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    x = np.asarray(img).astype(np.float32)
    x += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(2, 14), x.shape)
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _plural(shape: str) -> str:
    return shape + "s"


def _question(rng: random.Random, objs: list[Obj], qtype: str) -> tuple[str, str] | None:
    """(question, answer) of type qtype about objs, or None if the scene cannot support it."""
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    if qtype == "color":
        unique = [o for o in objs if shapes.count(o.shape) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return f"What color is the {o.shape}?", o.color
    if qtype == "shape":
        unique = [o for o in objs if colors.count(o.color) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return f"What shape is the {o.color} object?", o.shape
    if qtype == "count":
        kind = rng.random()
        if kind < 0.4:
            return "How many shapes are there?", str(len(objs))
        if kind < 0.7:
            c = rng.choice(colors) if rng.random() < 0.75 else rng.choice(list(COLORS))
            return f"How many {c} shapes are there?", str(colors.count(c))
        s = rng.choice(shapes) if rng.random() < 0.75 else rng.choice(SHAPES)
        return f"How many {_plural(s)} are there?", str(shapes.count(s))
    if qtype != "position":
        raise ValueError(qtype)
    names = [(o.color, o.shape) for o in objs]
    named = [o for o, nm in zip(objs, names) if names.count(nm) == 1]  # objects a question can name uniquely
    if _position_form == "leftright":
        rel = rng.choice(list(CHOICES))
        axis, words = CHOICES[rel]
        want = rng.randrange(2)  # balanced answers: 0 = left / above, 1 = right / below
        offset = (lambda a, b: a.y - b.y) if axis else (lambda a, b: a.x - b.x)  # > 0: a right of / below b
        pairs = [(a, b) for a in named for b in named
                 if a is not b and abs(offset(a, b)) >= POS_MARGIN and (offset(a, b) > 0) == bool(want)]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        return f"Is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?", words[want]
    pairs = []
    for rel, (axis, sign) in RELATIONS.items():
        for a in named:
            for b in named:
                if a is b:
                    continue
                d = (a.y - b.y) if axis else (a.x - b.x)
                if abs(d) >= POS_MARGIN:
                    pairs.append((rel, a, b, "yes" if d * sign > 0 else "no"))
    if not pairs:
        return None
    want = "yes" if rng.random() < 0.5 else "no"
    pool = [p for p in pairs if p[3] == want] or pairs
    rel, a, b, ans = rng.choice(pool)
    return f"Is the {a.color} {a.shape} {rel} the {b.color} {b.shape}?", ans


def make_example(seed: int, qtype: str | None = None) -> Example:
    """The example of one seed (deterministic: same seed, same image bytes, same question)."""
    rng = random.Random(seed * 7919 + 17)
    qtype = qtype or QTYPES[rng.randrange(len(QTYPES))]
    while True:
        lo = 2 if qtype == "position" else 1
        objs = _scene(rng, rng.randint(lo, 4))
        qa = _question(rng, objs, qtype)
        if qa is not None:
            break
    image = render(objs, rng)
    return Example(seed, image, qa[0], qa[1], qtype, tuple(objs))


CAPTION_QUESTION = "Describe the image."


def _where(v: float, names: tuple[str, str, str]) -> str:
    return names[0] if v < 1 / 3 else names[1] if v < 2 / 3 else names[2]


def caption(objs, shuffle_seed: int | None = None) -> str:
    """Training-only caption (the alignment signal): objects left to right, each with a coarse
    3x3 location, e.g. "red circle top left, blue star middle right". With shuffle_seed the objects
    come in a seeded random order instead, so a location cannot be told from the order: it has to
    be read from the image tokens of the object just named (docs/ACCURACY.md, the position plateau)."""
    order = sorted(objs, key=lambda o: o.x)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    parts = [f"{o.color} {o.shape} {_where(o.y, ('top', 'middle', 'bottom'))} {_where(o.x, ('left', 'center', 'right'))}"
             for o in order]
    return ", ".join(parts)




def where_rows(objs) -> list[tuple[str, str]]:
    """Training-only lookups of position by name, one per uniquely named object:
    "Where is the red circle?" -> "top left" (the caption's 3x3 location)."""
    names = [(o.color, o.shape) for o in objs]
    return [(f"Where is the {o.color} {o.shape}?",
             f"{_where(o.y, ('top', 'middle', 'bottom'))} {_where(o.x, ('left', 'center', 'right'))}")
            for o, nm in zip(objs, names) if names.count(nm) == 1]


def train_seeds(n: int, start: int = 0) -> range:
    return range(TRAIN_BASE + start, TRAIN_BASE + start + n)


def heldout_seeds(n: int) -> range:
    return range(HELDOUT_BASE, HELDOUT_BASE + n)


def corpus_lines(n: int = 4000, seed: int = 12345) -> list[str]:
    """Text for the tokenizer: every question form and answer (seeded)."""
    lines = []
    for i in range(n):
        rng = random.Random(seed + i)
        objs = _scene(rng, rng.randint(2, 4))
        qa = _question(rng, objs, QTYPES[i % 4])
        if qa:
            lines.append(f"{qa[0]} {qa[1]}")
        lines.append(f"{CAPTION_QUESTION} {caption(objs)}")
    return lines
