"""ScienceQA-format problems about the world: schema, QCM -> LEA, answer parsing, malformed files."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from llava.data.build import write_dataset
from llava.data.instruct import DataFormatError, load_instruct
from llava.data.scienceqa import (
    context_modality,
    format_kept,
    lea_answer,
    load_problems,
    parse_answer,
    qcm_prompt,
    save_problems,
    to_instruct,
)
from llava.data.sqa_world import make_problems
from llava.model.tiny import COLORS, SHAPES

FIELDS = {"question", "choices", "answer", "hint", "image", "task", "grade", "subject", "topic", "category", "skill"}
FIELDS |= {"lecture", "solution", "split"}


@pytest.fixture(scope="module")
def problems():
    return make_problems(random.Random(0), 400, "train")


def test_problems_use_scienceqa_fields(problems):
    probs, scenes = problems
    assert len(probs) == 400
    for pid, p in probs.items():
        assert set(p) == FIELDS, pid
        assert p["split"] == "train"
        assert 0 <= p["answer"] < len(p["choices"])
        assert len(set(p["choices"])) == len(p["choices"]), p
        assert (p["image"] is not None) == (pid in scenes)
    modalities = {tuple(context_modality(p)) for p in probs.values()}
    assert modalities == {("IMG",), ("TXT",), ("NO",)}
    assert len({p["subject"] for p in probs.values()}) >= 4
    assert len({p["grade"] for p in probs.values()}) >= 5


def test_several_problems_about_one_picture():
    probs, scenes = make_problems(random.Random(1), 2000, "train", per_scene=4)
    assert len(probs) == 2000
    groups: dict[int, list[str]] = {}
    for pid, scene in scenes.items():
        groups.setdefault(id(scene), []).append(pid)
    sizes = [len(pids) for pids in groups.values()]
    assert max(sizes) == 4 and sum(s == 4 for s in sizes) > 0.9 * len(sizes)
    order = list(probs)
    for pids in groups.values():
        at = [order.index(pid) for pid in pids]
        assert at == list(range(at[0], at[0] + len(at)))  # consecutive ids
        assert len({probs[pid]["question"] for pid in pids}) == len(pids)  # no question twice
    # the shares of picture, text-context and no-context problems stay as with one problem a picture
    shares = [Counter(context_modality(p)[0] for p in ps.values()) for ps in (probs, problems_one(2000))]
    assert all(abs(shares[0][m] - shares[1][m]) < 0.05 * 2000 for m in ("IMG", "TXT", "NO")), shares
    with pytest.raises(ValueError, match="per_scene"):
        make_problems(random.Random(1), 10, "train", per_scene=0)


def problems_one(n: int) -> dict:
    return make_problems(random.Random(1), n, "train")[0]


def test_maker_weights_shift_the_kinds_of_question():
    def shares(weights):
        probs, _ = make_problems(random.Random(2), 3000, "train", per_scene=3, maker_weights=weights)
        kinds = Counter((context_modality(p)[0], p["topic"]) for p in probs.values())
        return {k: n / len(probs) for k, n in kinds.items()}

    plain, heavy = shares(None), shares({"extreme": 4.0})
    for modality in ("IMG", "TXT"):  # picture and text-context extremes both grow
        assert heavy[modality, "position"] > 1.5 * plain[modality, "position"], (modality, plain, heavy)
    assert heavy["IMG", "counting"] < plain["IMG", "counting"]
    # weights of 1 draw the kinds as no weights do (from another stream of choices); an empty mapping is no weights
    ones = shares({"extreme": 1.0})
    assert all(abs(ones.get(k, 0) - share) < 0.02 for k, share in plain.items()), (plain, ones)
    assert make_problems(random.Random(2), 50, "train", maker_weights={}) == make_problems(
        random.Random(2), 50, "train"
    )
    with pytest.raises(ValueError, match="extremes"):
        make_problems(random.Random(2), 10, "train", maker_weights={"extremes": 2.0})
    with pytest.raises(ValueError, match="positive"):
        make_problems(random.Random(2), 10, "train", maker_weights={"extreme": 1.0, "largest": 0.0})


def test_fact_share_sets_the_share_of_problems_without_context():
    def no_context(share):
        probs, _ = make_problems(random.Random(3), 2000, "train", per_scene=3, fact_share=share)
        return sum(context_modality(p)[0] == "NO" for p in probs.values()) / len(probs)

    assert 0.07 < no_context(0.1) < 0.13 and no_context(0.02) < 0.035 and no_context(0.0) == 0
    # the default draws the problems as it always did
    assert make_problems(random.Random(3), 50, "train", fact_share=0.1) == make_problems(random.Random(3), 50, "train")
    for bad in (-0.1, 0.9):  # with the text share's 0.15, 0.9 leaves less than nothing for pictures
        with pytest.raises(ValueError, match="shares of one"):
            make_problems(random.Random(3), 10, "train", fact_share=bad)


def test_answers_are_right_about_the_pictures(problems):
    probs, scenes = problems
    checked = 0
    for pid, p in probs.items():
        m = re.fullmatch(r"What color is the (\w+) in the picture\?", p["question"])
        if m and pid in scenes:
            (obj,) = [o for o in scenes[pid].objects if o.shape == m.group(1)]
            assert p["choices"][p["answer"]] == obj.color
            checked += 1
        if p["question"] == "How many shapes are in the picture?":
            n = len(scenes[pid].objects)
            assert p["choices"][p["answer"]] == ["one", "two", "three", "four"][n - 1]
            checked += 1
    assert checked > 30


def test_which_shape_is_there_goes_through_every_option_before_choosing(problems):
    """Each option is named before its verdict, and the verdicts are right about the picture."""
    probs, scenes = problems
    asked = [(pid, p) for pid, p in probs.items() if p["question"] == "Which of these shapes is in the picture?"]
    assert len(asked) > 10
    for pid, p in asked:
        there = {f"{o.color} {o.shape}" for o in scenes[pid].objects}
        checks = re.findall(r"(?:An?) (\w+ \w+) is (not )?there\.", p["solution"])
        assert [name for name, _ in checks] == [c.split(" ", 1)[1] for c in p["choices"]], p["solution"]
        assert [not no for _, no in checks] == [name in there for name, _ in checks], (p["solution"], there)
        assert sum(not no for _, no in checks) == 1


def test_counting_names_each_object_counted_before_the_number(problems):
    """The list is the picture's objects of that kind, in the palette's order, and the number is its length."""
    probs, scenes = problems
    words = ["zero", "one", "two", "three", "four"]
    asked = [(pid, p) for pid, p in probs.items() if pid in scenes and p["question"].startswith("How many")]
    assert len(asked) > 20
    zero = 0
    for pid, p in asked:
        noun = re.fullmatch(r"How many (.+) are in the picture\?", p["question"]).group(1)
        kind = noun.removesuffix(" shapes").removesuffix("s")
        counted = [o for o in scenes[pid].objects if noun == "shapes" or kind in (o.color, o.shape)]
        counted.sort(key=lambda o: (COLORS.index(o.color), SHAPES.index(o.shape)))
        listed = re.fullmatch(r"Count [^:.]+(?:: (.+))?\. There (?:is|are) (\w+)\.", p["solution"])
        assert listed, p["solution"]
        names = re.split(r", | and ", listed.group(1)) if listed.group(1) else []
        assert names == [f"{'an' if o.color == 'orange' else 'a'} {o.color} {o.shape}" for o in counted], p
        assert listed.group(2) == words[len(names)] == p["choices"][p["answer"]]
        zero += not names
    assert 0 < zero < len(asked)


def test_every_solution_ends_by_naming_the_right_option(problems):
    """The letter is then a look-up of what was just said (llava.train.ground.option_targets)."""
    from llava.eval.sqa import explained_option

    probs, _ = problems
    for pid, p in probs.items():
        assert explained_option(lea_answer(p), p["choices"]) == p["answer"], (pid, p["solution"], p["choices"])


def test_qcm_and_lea_forms():
    p = {
        "question": "Which shape is red?",
        "choices": ["circle", "square"],
        "answer": 1,
        "hint": "",
        "image": "image.png",
    }
    p |= {"lecture": "Shapes have names.", "solution": "The red one is a square."}
    assert qcm_prompt(p) == "Question: Which shape is red?\nContext: N/A\nOptions: (A) circle (B) square"
    assert lea_answer(p) == "Shapes have names. The red one is a square. The answer is B."
    record = to_instruct("p1", p)
    assert record["image"] == "p1/image.png"
    assert record["conversations"][0]["value"].startswith("<image>\nQuestion: ")
    text_only = to_instruct("p2", {**p, "image": None, "hint": "A square is red."})
    assert "image" not in text_only and "<image>" not in text_only["conversations"][0]["value"]
    assert "Context: A square is red." in text_only["conversations"][0]["value"]


@pytest.mark.parametrize(
    ("text", "n", "index", "kept"),
    [
        ("Because. The answer is B.", 3, 1, True),
        ("The answer is A. No wait. The answer is C.", 3, 2, True),
        ("The answer is D.", 3, None, True),
        ("It is the circle.", 3, None, False),
        ("The answer is A. Extra words", 3, 0, False),
    ],
)
def test_parse_answer(text, n, index, kept):
    assert parse_answer(text, n) == index
    assert format_kept(text) == kept


def test_round_trip_and_malformed_problems(tmp_path, problems):
    probs, _ = problems
    path = save_problems(probs, tmp_path / "problems.json")
    assert load_problems(path) == probs
    assert load_problems(path, split="test") == {}
    bad = dict(list(probs.items())[:3])
    pid = next(iter(bad))
    for broken, message in [
        ({**bad[pid], "answer": 7}, "not an index"),
        ({k: v for k, v in bad[pid].items() if k != "question"}, "missing field 'question'"),
        ({**bad[pid], "choices": "abc"}, "'choices' must be list"),
        ({**bad[pid], "hint": 3}, "'hint' must be a string"),
    ]:
        path.write_text(json.dumps({**bad, pid: broken}))
        with pytest.raises(DataFormatError) as err:
            load_problems(path)
        assert str(path) in str(err.value) and repr(pid) in str(err.value) and message in str(err.value)
    path.write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="mapping problem ids"):
        load_problems(path)


def test_build_cli_writes_scienceqa_layout(tmp_path):
    write_dataset(tmp_path, n_pictures=6, n_problems=12, seed=0, renderer="alt")
    probs = load_problems(tmp_path / "scienceqa" / "problems.json")
    for pid, p in probs.items():
        if p["image"]:
            assert (tmp_path / "scienceqa" / "images" / "test" / pid / "image.png").is_file()
    records = load_instruct(tmp_path / "scienceqa" / "llava_sqa.json")
    assert len(records) == 12
    assert len(load_instruct(tmp_path / "llava_instruct.json")) == 6
    assert len(list((tmp_path / "images").glob("*.png"))) == 6
