"""The synthetic world: scenes of flat shapes, the primary renderer and the paper's symbolic context.

A `Scene` is 1 to 4 non-overlapping objects (shape, colour, size, normalised box). `render` draws it with
PIL at any resolution; `scene_context` gives what the paper feeds its text-only teacher: several captions
and one bounding box per object (`red circle: [x1, y1, x2, y2]`). Nothing downstream of the context sees
the `Scene` itself, so real captions + boxes could stand in for ours.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image, ImageDraw

from llava.model.tiny import COLORS, SHAPES, SIZES

Placed = TypeVar("Placed")  # anything with a `.center` (x, y)

Box = tuple[float, float, float, float]  # normalised x1, y1, x2, y2; y grows downwards

# Canonical colours of this renderer (RGB); other renderers may pick other shades of the same names.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 160, 70),
    "blue": (45, 85, 215),
    "yellow": (240, 205, 35),
    "purple": (135, 65, 175),
    "orange": (245, 135, 30),
}
SIDE = {"small": (0.14, 0.19), "large": (0.28, 0.36)}  # box side as a fraction of the picture side
LARGE_THRESHOLD = 0.235  # a box side above this reads as "large" (between the two ranges)
MAX_OBJECTS = 4
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")

assert set(PALETTE) == set(COLORS) and set(SIDE) == set(SIZES)


@dataclass(frozen=True, slots=True)
class SceneObject:
    shape: str  # one of SHAPES
    color: str  # one of COLORS
    size: str  # "small" | "large"
    box: Box

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass(frozen=True, slots=True)
class Scene:
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")


@dataclass(frozen=True, slots=True)
class RenderStyle:
    """How the primary renderer draws a scene; `random_style` varies it for training."""

    resolution: int = 64  # pixels, square
    background: tuple[int, int, int] = (245, 245, 245)
    jitter: tuple[tuple[int, int, int], ...] = ()  # per-object RGB offsets added to PALETTE


@dataclass(frozen=True, slots=True)
class SceneContext:
    """The paper's symbolic representation of a picture: captions and labelled, normalised boxes."""

    captions: list[str]
    boxes: list[tuple[str, list[float]]] = field(default_factory=list)  # ("red circle", [x1, y1, x2, y2])

    def to_text(self) -> str:
        """The context as the paper's prompt shows it: captions, then one `label: [box]` line per object."""
        lines = list(self.captions)
        lines += [f"{label}: [{', '.join(f'{v:.3f}' for v in box)}]" for label, box in self.boxes]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"captions": self.captions, "boxes": [{"label": label, "box": box} for label, box in self.boxes]}


# --- sampling -----------------------------------------------------------------------------------


def _overlaps(a: Box, b: Box, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def sample_scene(
    rng: random.Random,
    n_objects: int | None = None,
    gap: float = 0.03,
    margin: float = 0.03,
    count_weights: Sequence[float] | None = None,
) -> Scene:
    """A random scene: uniform shape, colour and size; boxes never overlap. The object count is `n_objects`, or
    drawn with `count_weights[k]` the weight of k + 1 objects, or uniform."""
    if n_objects is None and count_weights:
        n_objects = rng.choices(range(1, len(count_weights) + 1), count_weights)[0]
    n = n_objects or rng.randint(1, MAX_OBJECTS)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n}")
    while True:  # restart on the rare dead end (four large boxes placed badly)
        objects: list[SceneObject] = []
        for _ in range(n):
            size = rng.choice(SIZES)
            side = rng.uniform(*SIDE[size])
            for _attempt in range(100):
                x1 = rng.uniform(margin, 1 - margin - side)
                y1 = rng.uniform(margin, 1 - margin - side)
                box = (round(x1, 3), round(y1, 3), round(x1 + side, 3), round(y1 + side, 3))
                if not any(_overlaps(box, o.box, gap) for o in objects):
                    objects.append(SceneObject(rng.choice(SHAPES), rng.choice(COLORS), size, box))
                    break
            else:
                break
        if len(objects) == n:
            return Scene(tuple(objects))


def random_style(
    rng: random.Random, n_objects: int, resolutions: tuple[int, ...] = (64, 96, 128, 192, 256)
) -> RenderStyle:
    """Training-time variety: resolution, a light background with a tint, and per-object shade jitter."""
    base = rng.randint(228, 255)
    background = tuple(min(255, base + rng.randint(-8, 8)) for _ in range(3))
    jitter = tuple(tuple(rng.randint(-22, 22) for _ in range(3)) for _ in range(n_objects))
    return RenderStyle(rng.choice(resolutions), background, jitter)  # type: ignore[arg-type]


# --- rendering ----------------------------------------------------------------------------------


def _clip(v: int) -> int:
    return max(0, min(255, v))


def render(scene: Scene, style: RenderStyle | None = None) -> Image.Image:
    """Draw the scene with PIL (hard, aliased edges) at `style.resolution` pixels."""
    style = style or RenderStyle()
    r = style.resolution
    img = Image.new("RGB", (r, r), style.background)
    draw = ImageDraw.Draw(img)
    for i, obj in enumerate(scene.objects):
        offset = style.jitter[i] if i < len(style.jitter) else (0, 0, 0)
        fill = tuple(_clip(c + d) for c, d in zip(PALETTE[obj.color], offset, strict=True))
        x1, y1, x2, y2 = (v * r for v in obj.box)
        if obj.shape == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return img


# --- words for the symbolic context -------------------------------------------------------------


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def join_words(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# "furthest to the left", "highest", ...: the word that says which way -> (axis, furthest = largest coordinate)
DIRECTIONS = {"left": (0, False), "right": (0, True), "highest": (1, False), "lowest": (1, True)}
EXTREME_WORDS = ("furthest to the left", "furthest to the right", "highest", "lowest")  # as questions ask


def furthest(things: Sequence[Placed], direction: str, margin: float = 0.1) -> Placed | None:
    """The one of `things` (each with a `.center` (x, y)) furthest in `direction` (a key of DIRECTIONS), or None
    when the next one is within `margin` of it along that axis (which one is furthest is then no clear fact)."""
    axis, descending = DIRECTIONS[direction]
    ranked = sorted(things, key=lambda t: t.center[axis], reverse=descending)
    if not ranked or (len(ranked) > 1 and abs(ranked[0].center[axis] - ranked[1].center[axis]) < margin):
        return None
    return ranked[0]


def region_of(center: tuple[float, float]) -> str:
    """One of REGIONS: the cell of a 3x3 grid holding the point."""
    x, y = center
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else ""
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else ""
    return f"{row} {col}".strip() or "center"


def region_phrase(region: str) -> str:
    """'on the left', 'at the top right', 'in the center'."""
    if region == "center":
        return "in the center"
    if region in ("left", "right"):
        return f"on the {region}"
    return f"at the {region}"


def left_to_right(objects: tuple[SceneObject, ...] | list[SceneObject]) -> list[SceneObject]:
    return sorted(objects, key=lambda o: (o.center[0], o.center[1]))


def object_phrase(obj: SceneObject, with_article: bool = True, with_position: bool = True) -> str:
    """'a large red circle on the left'."""
    words = f"{obj.size} {obj.color} {obj.shape}"
    if with_article:
        words = f"{article(obj.size)} {words}"
    if with_position:
        words += " " + region_phrase(region_of(obj.center))
    return words


def full_caption(scene: Scene) -> str:
    """The caption that names every object with size, colour, shape and position, left to right."""
    objs = left_to_right(scene.objects)
    n = len(objs)
    head = f"{number_word(n).capitalize()} {plural('shape', n)} on a light background"
    return f"{head}: {join_words([object_phrase(o) for o in objs])}."


def _count_phrase(counts: dict[str, int], noun: str | None = None) -> str:
    """{'circle': 2, 'square': 1} -> 'two circles and one square' (noun=None) or 'two red shapes' (noun given)."""
    parts = []
    for key, n in counts.items():
        parts.append(f"{number_word(n)} {key} {plural(noun, n)}" if noun else f"{number_word(n)} {plural(key, n)}")
    return join_words(parts)


def count_by(objects: tuple[SceneObject, ...] | list[SceneObject], attr: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in left_to_right(objects):
        key = getattr(o, attr)
        out[key] = out.get(key, 0) + 1
    return out


def scene_captions(scene: Scene) -> list[str]:
    """Five captions from different angles, as COCO gives five per picture."""
    objs = left_to_right(scene.objects)
    n = len(objs)
    captions = [full_caption(scene)]
    captions.append(f"A picture of {_count_phrase(count_by(objs, 'shape'))}.")
    colors = count_by(objs, "color")
    captions.append(f"There {'is' if next(iter(colors.values())) == 1 else 'are'} {_count_phrase(colors, 'shape')}.")
    sizes = count_by(objs, "size")
    captions.append(f"{_count_phrase(sizes, 'shape').capitalize()} on a plain background.")
    if n == 1:
        captions.append(f"A single {objs[0].color} {objs[0].shape} {region_phrase(region_of(objs[0].center))}.")
    else:
        a, b = objs[0], objs[-1]
        captions.append(f"The {a.color} {a.shape} is to the left of the {b.color} {b.shape}.")
    return captions


def scene_context(scene: Scene) -> SceneContext:
    """Captions + one `colour shape` box per object (left to right), the teacher's only input."""
    boxes = [(f"{o.color} {o.shape}", [round(v, 3) for v in o.box]) for o in left_to_right(scene.objects)]
    return SceneContext(scene_captions(scene), boxes)
