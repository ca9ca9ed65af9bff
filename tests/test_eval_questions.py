"""Canonical questions and the scoring of free-text answers (right answers pass, wrong ones fail)."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from llava.data import teacher
from llava.data.world import Scene, SceneObject, sample_scene, scene_context
from llava.eval.questions import (
    KINDS,
    Question,
    canonical_questions,
    first_number,
    mentions,
    region_in,
    regions_near,
    score,
)

SCENE = Scene(
    (
        SceneObject("circle", "red", "large", (0.05, 0.35, 0.37, 0.67)),
        SceneObject("square", "blue", "small", (0.75, 0.05, 0.92, 0.22)),
        SceneObject("square", "blue", "small", (0.72, 0.75, 0.89, 0.92)),
    )
)


def test_questions_only_where_one_answer_is_right():
    rng = random.Random(0)
    for _ in range(30):
        qs = {q.kind: q for q in canonical_questions(SCENE, rng)}
        assert qs["count"].truth == 3
        assert qs["describe"].truth == Counter({("blue", "square"): 2, ("red", "circle"): 1})
        if "color" in qs:
            assert qs["color"].text == "What color is the circle?" and qs["color"].truth == "red"
        if "shape" in qs:
            assert qs["shape"].text == "What shape is the red object?"
        assert qs["where"].text == "Where is the red circle?"  # the squares share their name
    kinds = Counter(q.kind for s in range(100) for q in canonical_questions(sample_scene(random.Random(s)), rng))
    assert set(kinds) == set(KINDS)
    yes = [
        q.truth
        for s in range(200)
        for q in canonical_questions(sample_scene(random.Random(s)), rng)
        if q.kind == "yes_no"
    ]
    assert 0.35 < sum(yes) / len(yes) < 0.65


@pytest.mark.parametrize(
    ("kind", "truth", "answer", "ok"),
    [
        ("color", "red", "The circle is red.", True),
        ("color", "red", "The circle is red or blue.", False),
        ("color", "red", "It is blue.", False),
        ("shape", "square", "The blue object is a square.", True),
        ("shape", "square", "The blue object is a circle.", False),
        ("count", 3, "There are three shapes in the image.", True),
        ("count", 3, "There are 3 shapes.", True),
        ("count", 3, "There are two shapes.", False),
        ("count_kind", 0, "There are no red shapes.", True),
        ("count_kind", 1, "There is one circle.", True),
        ("yes_no", True, "Yes, there is a small blue square.", True),
        ("yes_no", False, "Yes, there is one.", False),
        ("yes_no", False, "No, there is no green circle in the image.", True),
        ("yes_no", True, "There is a red circle.", False),
        ("where", {"top right"}, "The blue square is at the top right.", True),
        ("where", {"top right"}, "The blue square is at the top.", False),
        ("where", {"center"}, "It is in the middle of the picture.", True),
    ],
)
def test_scoring(kind, truth, answer, ok):
    assert score(Question(kind, "q", truth), answer)["correct"] == float(ok)


def test_description_scoring():
    truth = Counter({("blue", "square"): 2, ("red", "circle"): 1})
    good = teacher.describe(teacher.read_items(scene_context(SCENE)))
    s = score(Question("describe", "q", truth), good)
    assert s == {"correct": 1.0, "named": 3, "objects": 3, "extra": 0}
    grouped = score(Question("describe", "q", truth), "There are two blue squares and a large red circle.")
    assert grouped["named"] == 3 and grouped["correct"] == 1.0
    wrong = score(Question("describe", "q", truth), "There is a large red square and a small blue square.")
    assert wrong["named"] == 1 and wrong["extra"] == 1 and wrong["correct"] == 0.0


def test_readers():
    assert first_number("I count four.") == 4
    assert first_number("none at all") == 0
    assert first_number("hmm") is None
    assert region_in("It is at the bottom left of the image.") == "bottom left"
    assert region_in("On the left side.") == "left"
    assert region_in("somewhere") is None
    assert mentions("a small green triangle, 2 red circles") == Counter(
        {("green", "triangle"): 1, ("red", "circle"): 2}
    )
    assert regions_near((0.34, 0.5)) == {"left", "center"}
    assert regions_near((0.5, 0.5)) == {"center"}


def test_chat_cli_prints_every_table(tiny_ckpt, tmp_path, capsys):
    from llava.eval.__main__ import main as eval_main

    out = tmp_path / "chat.json"
    args = [
        "chat",
        "--model",
        str(tiny_ckpt),
        "--pictures",
        "2",
        "--renderer",
        "primary",
        "--quiet",
        "--json",
        str(out),
    ]
    assert eval_main(args) == 0
    printed = capsys.readouterr().out
    assert "accuracy (%) per question kind" in printed and "by the number of objects" in printed
    for axis in ("column", "row"):
        assert f"`where` answers by the object's {axis}" in printed
    asked = json.loads(out.read_text())["primary"]
    where = sum(sum(said.values()) for said in asked["where_bands"]["column"].values())
    assert where == asked["questions"].get("where", 0)
    assert '"How many shapes?" by the objects and their colours' in printed
    counted = sum(sum(said.values()) for by_colors in asked["count_answers"].values() for said in by_colors.values())
    assert counted == asked["questions"]["count"]
