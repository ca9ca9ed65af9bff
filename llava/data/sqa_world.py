"""ScienceQA-style multiple-choice problems about the shape world, in ScienceQA's own schema.

Picture problems are made from a scene's symbolic context (boxes only, like the teacher); text-context
problems describe a scene in the hint instead of showing it; no-context problems ask facts about colours
and shapes. Subjects, grades and topics are our world's stand-ins for ScienceQA's categories.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llava.data.teacher import Item, in_palette_order, matching, read_items, uniquely_named
from llava.data.world import (
    EXTREME_WORDS,
    Scene,
    article,
    full_caption,
    furthest,
    join_words,
    number_word,
    sample_scene,
    scene_context,
)
from llava.model.tiny import COLORS, SHAPES

LECTURES = {
    "colors": "Color is one way to tell objects apart. Red, green, blue, yellow, purple and orange are colors.",
    "shapes": "A circle is round and has no corners. A square has four equal sides. A triangle has three sides.",
    "numbers": "To count objects, point to each one once and say the numbers in order.",
    "space": "Words like left, right, top and bottom tell where an object is in a picture.",
    "size": "To compare sizes, look at how much space each object takes up.",
}
CORNERS = {"circle": 0, "triangle": 3, "square": 4}
MIXES = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("blue", "red"): "purple"}
Problem = dict[str, Any]
Maker = Callable[[list[Item], random.Random], Problem | None]


def _problem(question: str, correct: str, wrong: list[str], rng: random.Random, **fields: Any) -> Problem:
    """Shuffle the options; `answer` is the index of `correct`. Every solution's last sentence names the
    correct option in the option's own words, so "The answer is X." follows from a look-up of what was
    just said (see `llava.train.ground.option_targets`)."""
    choices = [correct, *wrong]
    rng.shuffle(choices)
    base = {"hint": "", "image": None, "task": "closed choice", "category": fields.get("topic", "")}
    return {**base, **fields, "question": question, "choices": choices, "answer": choices.index(correct)}


def _a(noun: str) -> str:
    return f"{article(noun)} {noun}"


def _are(n: int) -> str:
    return "is" if n == 1 else "are"


def _numbers(n: int, rng: random.Random, low: int = 1) -> list[str]:
    """Two wrong counts near n."""
    wrong = [k for k in range(low, 5) if k != n]
    return [number_word(k) for k in rng.sample(wrong, 2)]


# --- picture problems (context from boxes) --------------------------------------------------------


def color_of_shape(items: list[Item], rng: random.Random) -> Problem | None:
    shapes = [s for s in SHAPES if len(matching(items, shape=s)) == 1]
    if not shapes:
        return None
    shape = rng.choice(shapes)
    color = matching(items, shape=shape)[0].color
    wrong = rng.sample([c for c in COLORS if c != color], 2)
    return _problem(
        f"What color is the {shape} in the picture?", color, wrong, rng, subject="colors", topic="color",
        grade="grade1", skill="identify colors", lecture=LECTURES["colors"],
        solution=f"Look at the picture. The {shape} is {color}.",
    )  # fmt: skip


def shape_of_color(items: list[Item], rng: random.Random) -> Problem | None:
    colors = [c for c in COLORS if len(matching(items, color=c)) == 1]
    if not colors:
        return None
    color = rng.choice(colors)
    shape = matching(items, color=color)[0].shape
    return _problem(
        f"Which shape is {color}?", shape, [s for s in SHAPES if s != shape], rng, subject="shapes", topic="shape",
        grade="grade1", skill="identify shapes", lecture=LECTURES["shapes"],
        solution=f"Look at the picture. The {color} object is {_a(shape)}.",
    )  # fmt: skip


def counted(lead: str, found: list[Item]) -> str:
    """A counting solution: `lead`, then each object counted (`a red circle`, in the palette's order of colours,
    then shapes, then left to right, as descriptions name them), then the number, which is how many were named."""
    found = in_palette_order(found)
    listed = f"{lead}: {join_words([_a(i.name) for i in found])}." if found else f"{lead}."
    n = len(found)
    return f"{listed} There {_are(n)} {number_word(n)}."


# Counting solutions name the objects before the number ("Count only the circles: a red circle and a blue circle.
# There are two."), where they gave the number alone ("Count only the circles. There are two."). From the shipped
# weights' stage 1 (9b1e51e), same data stream otherwise (extreme x4, no-context 2%), float32 unless said: 600
# problems (seed 999, own renderer) 89.5 -> 91.0, its counting questions 138 -> 147 of 165 ("How many <shape>s?"
# 38 -> 43 of 53), but "Which shape is <colour>?" 66 -> 62 of 67; 300 (seed 7, stored bf16) 88.7 -> 90.7; the
# cards' 150 a renderer (bf16) 90.0/90.7 -> 90.0/86.0. Against the weights shipped before (stored bf16) on a draw used
# for no choice before, 500 problems (seed 2027) a renderer: 88.8/87.8 -> 91.6/90.8; shipped with it (8f43f4d).
# The whole count one colour at a time ("Count the shapes in the picture one color at a time. The green shapes: a
# green square and a green triangle. The orange shapes: an orange square. There are three."), so that a colour is
# never named right after itself: from the shipped weights' stage 1 (remade at 9b1e51e, the same losses to the
# bit), float32, against the shipped weights (500 problems a renderer): seed 5151 92.6/92.2 against 89.6/90.8
# (53 against 31 answers right from one model only), seed 8181 91.6/91.6 against 93.2/91.0 (42 against 47); both
# 95 against 78 (p = 0.22), and the whole count itself worse, 250 against 261 of 304 (where two objects share a
# colour 58 against 70 of 96 right). Teacher-forced (600 problems, seed 5555, own renderer) the colour after an
# article is right 189 of 189 (181 of 189 before: the repeated colour), but a colour's list goes on where it should
# 19 of 31 times (the lists before: 108 of 108): the miss moved from "which colour next" to "another of this
# colour?", which the lists of "How many <colour> shapes?" also get wrong (1 and 3 of 5). Not kept. Each colour's
# number before its list ("The green shapes, two: a green square and a green triangle.", the number where the
# counting head after "green shapes" says it), same stage 1: teacher-forced the lists go on 31 of 31, stop 158 of
# 158, colours 189 of 189, but the colour's number is right 137 of 158; the whole count 255 against 261 of 304
# (shared colour 56 against 70 of 96). Yet the whole table gains on both draws: seed 5151 91.8/92.6, seed 8181
# 95.0/93.2 (59 against 39 and 47 against 27 answers right from one model only; both p = 0.003), from other kinds
# (text-context "Which shape is <colour>?", extremes), as the run above gained on seed 5151. On a third, fresh draw
# (seed 6363) 92.8/92.2 against 91.6/92.8, 39 against 36 (p = 0.82), the whole count 88 against 93 of 138: the
# gain was the spread of a retrained stage, not the recipe. Not kept
def count_all(items: list[Item], rng: random.Random) -> Problem:
    n = len(items)
    return _problem(
        "How many shapes are in the picture?", number_word(n), _numbers(n, rng), rng, subject="numbers",
        topic="counting", grade="grade2", skill="count objects", lecture=LECTURES["numbers"],
        solution=counted("Count the shapes in the picture", items),
    )  # fmt: skip


def count_kind(items: list[Item], rng: random.Random) -> Problem:
    if rng.random() < 0.5:
        color = rng.choice(COLORS)
        found, noun = matching(items, color=color), f"{color} shapes"
    else:
        shape = rng.choice(SHAPES)
        found, noun = matching(items, shape=shape), f"{shape}s"
    n = len(found)
    return _problem(
        f"How many {noun} are in the picture?", number_word(n), _numbers(n, rng, low=0), rng, subject="numbers",
        topic="counting", grade="grade3", skill="count objects by kind", lecture=LECTURES["numbers"],
        solution=counted(f"Count only the {noun}", found),
    )  # fmt: skip


def largest(items: list[Item], rng: random.Random) -> Problem | None:
    large = [i for i in items if i.size == "large"]
    unique = uniquely_named(items)
    if len(items) < 2 or len(large) != 1 or large[0] not in unique:
        return None
    others = [f"the {i.name}" for i in unique if i is not large[0]]
    if not others:
        return None
    return _problem(
        "Which shape is the largest?", f"the {large[0].name}", rng.sample(others, min(2, len(others))), rng,
        subject="shapes", topic="size", grade="grade4", skill="compare sizes", lecture=LECTURES["size"],
        solution=f"The other shapes are small, so the largest is the {large[0].name}.",
    )  # fmt: skip


# Solutions that go through every option before choosing, tried from the stage 1 of the run shipped before
# ClipConfig.center_weight (1200 steps), against that run (300 problems, own/alt renderer): avg 84.3/85.0 ->
# 83.3/83.7. Own renderer, against that run's shipped (bf16) weights: extreme ("The blue circle is at the top. The
# green square is ... So the object furthest to the right is ...") 5 of 19 right before and after; the places it gives are mostly wrong, so the comparison has
# nothing to stand on. present ("There is no purple triangle. There is a green triangle. ... So the shape in the
# picture is ...") 38 -> 34 of 48: the verdict ("a" / "no") comes before the object is named, so it is a guess,
# and the final choice ignores it. A verdict after the name (`present`) is what ships
def extreme(items: list[Item], rng: random.Random) -> Problem | None:
    unique = uniquely_named(items)
    if len(unique) < 2:
        return None
    word = rng.choice(EXTREME_WORDS)
    best = furthest(items, word.split()[-1])
    if best is None or best not in unique:
        return None
    others = [f"the {i.name}" for i in unique if i is not best]
    return _problem(
        f"Which object is {word}?", f"the {best.name}", rng.sample(others, min(2, len(others))), rng,
        subject="space", topic="position", grade="grade5", skill="compare positions", lecture=LECTURES["space"],
        solution=f"The {best.name} is {best.where}. So the object {word} is the {best.name}.",
    )  # fmt: skip


def present(items: list[Item], rng: random.Random) -> Problem:
    item = rng.choice(items)
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if not matching(items, color=c, shape=s)]
    p = _problem(
        "Which of these shapes is in the picture?", _a(item.name), [_a(a) for a in rng.sample(absent, 2)], rng,
        subject="shapes", topic="shape", grade="grade2", skill="find objects", lecture=LECTURES["shapes"],
    )  # fmt: skip
    # each option named, then its verdict: the verdict reads the picture after the name has pointed at it. Tried with
    # ClipConfig.center_weight 10 against "The other two are not there. There is a ..." on the stage 1 without it (300
    # problems, own renderer): these problems 38 -> 45 of 48 right; the two changes together avg 84.3 -> 86.3.
    # The shipped weights' misses here (two draws, seeds 3131 and 4747, 500 problems a renderer): 20 of 24 have the
    # verdicts right and then conclude with another object ("A purple circle is there. ... So the shape in the
    # picture is a green triangle."). Taught to copy (a patch, not committed: each claim's "there" gathers the
    # claimed words in layer 1 head 6, the conclusion's choosing tokens look at the "there" of the claim that
    # holds in layer 2 head 2, importance 5), from the same stage 1 (9b1e51e): teacher-forced both heads look
    # where taught (mass 1.000 and 0.999, against 0.004 and 0.013 untaught), but the conclusion still names an
    # object of the picture; these problems 260 against 264 of 288 right (copy misses 18 against 20, wrong
    # verdicts 10 against 4); all problems 919 against 901 and 896 against 904 of 1000 (p = 0.05 and 0.37): not kept
    checks = [
        f"{c[0].upper()}{c[1:]} is {'' if k == p['answer'] else 'not '}there." for k, c in enumerate(p["choices"])
    ]
    p["solution"] = f"Look at the picture. {' '.join(checks)} So the shape in the picture is {_a(item.name)}."
    return p


PICTURE_MAKERS: tuple[Maker, ...] = (color_of_shape, shape_of_color, count_all, count_kind, largest, extreme, present)


# --- text-context and no-context problems ---------------------------------------------------------


TEXT_MAKERS: tuple[Maker, ...] = (color_of_shape, shape_of_color, count_all, largest, extreme)


def pick_maker(makers: Sequence[Maker], rng: random.Random, weights: Mapping[str, float] | None = None) -> Maker:
    """One of `makers`, each weighed by `weights[its name]` (missing: 1); without weights, `rng.choice` (so
    the problems drawn without weights stay as they were)."""
    if not weights:
        return rng.choice(makers)
    return rng.choices(makers, [weights.get(m.__name__, 1.0) for m in makers])[0]


def described(scene: Scene, rng: random.Random, maker_weights: Mapping[str, float] | None = None) -> Problem:
    """The scene is told in the hint, not shown; the question is answered by reading."""
    items = read_items(scene_context(scene))
    for _ in range(20):
        p = pick_maker(TEXT_MAKERS, rng, maker_weights)(items, rng)
        if p:
            break
    else:
        p = count_all(items, rng)
    p["question"] = p["question"].replace("in the picture", "in the description")
    p["hint"] = f"Here is a description of a picture. {full_caption(scene)}"
    p["solution"] = p["solution"].replace("Look at the picture.", "Read the description.")
    p["grade"] = "grade6" if p["grade"] >= "grade4" else "grade4"
    return p


def fact(rng: random.Random) -> Problem:
    """General knowledge about colours and shapes, no context at all."""
    kind = rng.randrange(4)
    if kind == 0:
        shape = rng.choice(SHAPES)
        n = CORNERS[shape]
        wrong = [number_word(k) for k in CORNERS.values() if k != n]
        return _problem(
            f"How many corners does a {shape} have?", number_word(n), wrong, rng, subject="shapes",
            topic="geometry", grade="grade3", skill="shape properties", lecture=LECTURES["shapes"],
            solution=f"{_a(shape).capitalize()} has {number_word(n)} corners.",
        )  # fmt: skip
    if kind == 1:
        shape = rng.choice(SHAPES)
        n = CORNERS[shape]
        clue = "no corners" if n == 0 else f"exactly {number_word(n)} sides"
        return _problem(
            f"Which shape has {clue}?", shape, [s for s in SHAPES if s != shape], rng, subject="shapes",
            topic="geometry", grade="grade3", skill="shape properties", lecture=LECTURES["shapes"],
            solution=f"{_a(shape).capitalize()} has {clue}.",
        )  # fmt: skip
    if kind == 2:
        color = rng.choice(COLORS)
        return _problem(
            "Which of these words names a color?", color, rng.sample(SHAPES, 2), rng, subject="colors",
            topic="color words", grade="grade2", skill="word meaning", lecture=LECTURES["colors"],
            solution=f"The other words name shapes. The word {color} names a color.",
        )  # fmt: skip
    (a, b), mix = rng.choice(list(MIXES.items()))
    return _problem(
        f"Which color do you get when you mix {a} and {b} paint?", mix,
        rng.sample([c for c in COLORS if c not in (a, b, mix)], 2), rng, subject="colors", topic="color mixing",
        grade="grade5", skill="mix colors", lecture=LECTURES["colors"],
        solution=f"Mixing {a} and {b} paint gives {mix}.",
    )  # fmt: skip


# --- a whole set ----------------------------------------------------------------------------------


def check_maker_weights(maker_weights: Mapping[str, float] | None) -> None:
    """ValueError unless every key names a question maker and every weight is positive (a picture that some
    makers cannot ask about needs the others)."""
    if maker_weights and (unknown := set(maker_weights) - {m.__name__ for m in PICTURE_MAKERS}):
        raise ValueError(f"maker_weights names no question maker: {sorted(unknown)}")
    if maker_weights and min(maker_weights.values()) <= 0:
        raise ValueError(f"maker_weights must be positive, got {maker_weights}")


TEXT_SHARE = 0.15  # problems whose scene is told in words (`described`), as held-out problems are drawn
FACT_SHARE = 0.1  # general knowledge with no context (`fact`)


def check_shares(fact_share: float, text_share: float = TEXT_SHARE) -> None:
    """ValueError unless the shares of fact and text problems are shares of one (the rest show a picture)."""
    if min(fact_share, text_share) < 0 or fact_share + text_share > 1:
        raise ValueError(f"fact_share and text_share must be shares of one, got {fact_share} and {text_share}")


def make_problems(
    rng: random.Random,
    n: int,
    split: str,
    start: int = 0,
    text_share: float = TEXT_SHARE,
    fact_share: float = FACT_SHARE,
    count_weights: Sequence[float] | None = None,
    per_scene: int = 1,
    maker_weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, Problem], dict[str, Scene]]:
    """`n` problems keyed by id, and the scene behind every picture problem (to render its image.png); scenes of
    k + 1 objects are weighed by `count_weights[k]` (default: uniform). A picture's scene is asked up to
    `per_scene` different questions, each its own problem (consecutive ids, the same `Scene` object). The kinds
    of question are weighed by `maker_weights` (a maker's name, as "extreme", to its weight; default: uniform).
    A share `fact_share` of the problems has no context (`fact`), `text_share` tells its scene in words
    (`described`), the rest show a picture."""
    check_maker_weights(maker_weights)
    check_shares(fact_share, text_share)
    if per_scene < 1:
        raise ValueError(f"per_scene must be at least 1, got {per_scene}")
    problems: dict[str, Problem] = {}
    scenes: dict[str, Scene] = {}
    # a picture roll makes `per_scene` problems: its odds shrink so the shares of problems stay as asked
    rolls = fact_share + text_share + (1 - fact_share - text_share) / per_scene
    k = start
    while k < start + n:
        roll = rng.random() * rolls
        if roll < fact_share:
            made = [fact(rng)]
        elif roll < fact_share + text_share:
            made = [described(sample_scene(rng, count_weights=count_weights), rng, maker_weights)]
        else:
            scene = sample_scene(rng, count_weights=count_weights)
            made = picture_problems(scene, rng, min(per_scene, start + n - k), maker_weights)
        for p in made:
            pid = f"shapes-{split}-{k:06d}"
            if p.get("image"):
                scenes[pid] = scene
            p["split"] = split
            problems[pid] = p
            k += 1
    return problems, scenes


def picture_problems(
    scene: Scene, rng: random.Random, count: int = 1, maker_weights: Mapping[str, float] | None = None
) -> list[Problem]:
    """Up to `count` problems about one picture, no question twice (one always)."""
    items = read_items(scene_context(scene))
    made: list[Problem] = []
    for _ in range(1 if count == 1 else 30):
        p = None
        while p is None:
            p = pick_maker(PICTURE_MAKERS, rng, maker_weights)(items, rng)
        if all(p["question"] != q["question"] for q in made):
            p["image"] = "image.png"
            made.append(p)
        if len(made) == count:
            break
    return made
