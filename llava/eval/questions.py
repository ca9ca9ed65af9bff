"""The canonical questions of DESIGN.md for a held-out scene, and how an answer is scored.

Questions are asked only where they have one right answer (`What color is the circle?` only when there is
one circle). Scoring reads plain words: colours, shapes, counts (words or digits), a leading Yes/No, the
3x3 region, and in descriptions every `<colour> <shape>` mention (with counts: `two blue squares`).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from llava.data.world import NUMBER_WORDS, REGIONS, Scene, region_of
from llava.model.tiny import COLORS, SHAPES

KINDS = ("color", "shape", "count", "count_kind", "yes_no", "where", "describe")
TARGET_KINDS = ("color", "shape", "count", "count_kind", "yes_no")  # the >= 95% target
REGION_TOLERANCE = 0.04  # a centre this close to a grid line may be called either side
_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_NUM = "|".join(NUMBER_WORDS[1:5] + ("a", "an", r"\d"))
MENTION_RE = re.compile(rf"\b(?:({_NUM})\s+)?(?:(?:small|large|big)\s+)?({_COLOR})\s+({_SHAPE})(s?)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Question:
    kind: str  # one of KINDS
    text: str
    truth: object  # colour, shape, int, bool, set of regions, or Counter of (colour, shape)
    detail: dict = field(default_factory=dict)


def _count_of(scene: Scene, color: str | None = None, shape: str | None = None) -> int:
    return sum((color is None or o.color == color) and (shape is None or o.shape == shape) for o in scene.objects)


def regions_near(center: tuple[float, float], tol: float = REGION_TOLERANCE) -> set[str]:
    """The region of the point and of the points within `tol` of it on each axis."""
    x, y = center
    return {region_of((x + dx, y + dy)) for dx in (-tol, 0, tol) for dy in (-tol, 0, tol)}


def canonical_questions(scene: Scene, rng: random.Random) -> list[Question]:
    """One question of each kind that has a single right answer for this scene."""
    objs = scene.objects
    out: list[Question] = []
    unique_shapes = [s for s in SHAPES if _count_of(scene, shape=s) == 1]
    if unique_shapes:
        s = rng.choice(unique_shapes)
        out.append(Question("color", f"What color is the {s}?", next(o.color for o in objs if o.shape == s)))
    unique_colors = [c for c in COLORS if _count_of(scene, color=c) == 1]
    if unique_colors:
        c = rng.choice(unique_colors)
        out.append(Question("shape", f"What shape is the {c} object?", next(o.shape for o in objs if o.color == c)))
    out.append(Question("count", "How many shapes are there in the image?", len(objs)))
    if rng.random() < 0.5:
        c = rng.choice([o.color for o in objs] + list(COLORS))
        out.append(Question("count_kind", f"How many {c} shapes are there?", _count_of(scene, color=c)))
    else:
        s = rng.choice([o.shape for o in objs] + list(SHAPES))
        out.append(Question("count_kind", f"How many {s}s are there?", _count_of(scene, shape=s)))
    if rng.random() < 0.5:
        o = rng.choice(objs)
        c, s = o.color, o.shape
    else:  # absent; half the time a hard one (the colour or the shape is there)
        pairs = [(c, s) for c in COLORS for s in SHAPES if not _count_of(scene, c, s)]
        hard = [(c, s) for c, s in pairs if _count_of(scene, color=c) or _count_of(scene, shape=s)]
        c, s = rng.choice(hard if hard and rng.random() < 0.5 else pairs)
    out.append(Question("yes_no", f"Is there a {c} {s} in the image?", _count_of(scene, c, s) > 0))
    unique = [o for o in objs if _count_of(scene, o.color, o.shape) == 1]
    if unique:
        o = rng.choice(unique)
        out.append(
            Question(
                "where", f"Where is the {o.color} {o.shape}?", regions_near(o.center), {"exact": region_of(o.center)}
            )
        )
    out.append(Question("describe", "Describe the image in detail.", Counter((o.color, o.shape) for o in objs)))
    return out


# --- reading answers ------------------------------------------------------------------------------


def words_in(answer: str, vocabulary: tuple[str, ...]) -> set[str]:
    found = set()
    for word in vocabulary:
        if re.search(rf"\b{word}s?\b", answer, re.IGNORECASE):
            found.add(word)
    return found


def first_number(answer: str) -> int | None:
    """The first count in the answer: a number word, a digit, or `no`/`none` for zero."""
    m = re.search(r"\b(no|none|zero|one|two|three|four|five|six|\d+)\b", answer, re.IGNORECASE)
    if not m:
        return None
    word = m.group(1).lower()
    if word in ("no", "none"):
        return 0
    return int(word) if word.isdigit() else NUMBER_WORDS.index(word)


def region_in(answer: str) -> str | None:
    """The 3x3 region an answer names (`at the top left` -> 'top left'); two-word regions win."""
    text = answer.lower().replace("centre", "center").replace("middle", "center")
    for region in sorted(REGIONS, key=len, reverse=True):
        if re.search(rf"\b{region}\b", text):
            return region
    return None


AXES = {"row": ("top", "middle", "bottom"), "column": ("left", "center", "right")}


def bands(region: str) -> dict[str, str]:
    """A 3x3 region's band on each axis: 'top left' -> {"row": "top", "column": "left"}."""
    words = region.split()
    return {
        "row": next((w for w in words if w in AXES["row"]), "middle"),
        "column": next((w for w in words if w in AXES["column"]), "center"),
    }


def mentions(answer: str) -> Counter:
    """(colour, shape) pairs a description names, with their counts (`two blue squares` counts 2)."""
    found: Counter = Counter()
    for m in MENTION_RE.finditer(answer):
        num, color, shape, plural_s = m.groups()
        n = 1
        if num and num.lower() in NUMBER_WORDS:
            n = NUMBER_WORDS.index(num.lower())
        elif num and num.isdigit():
            n = int(num)
        elif plural_s:
            n = 2
        found[(color.lower(), shape.lower())] += n
    return found


def score(question: Question, answer: str) -> dict[str, float]:
    """`correct` (0/1) for every kind; descriptions also give `named`, `objects` and `extra` counts."""
    kind, truth = question.kind, question.truth
    if kind == "color":
        return {"correct": float(words_in(answer, COLORS) == {truth})}
    if kind == "shape":
        return {"correct": float(words_in(answer, SHAPES) == {truth})}
    if kind in ("count", "count_kind"):
        return {"correct": float(first_number(answer) == truth)}
    if kind == "yes_no":
        head = answer.strip().lower()
        said = True if head.startswith("yes") else False if head.startswith("no") else None
        return {"correct": float(said is truth)}
    if kind == "where":
        return {"correct": float(region_in(answer) in truth)}
    if kind == "describe":
        said = mentions(answer)
        named = sum((said & truth).values())
        total = sum(truth.values())
        extra = sum((said - truth).values())
        return {"correct": float(named == total and extra == 0), "named": named, "objects": total, "extra": extra}
    raise ValueError(f"unknown question kind {kind!r}")
