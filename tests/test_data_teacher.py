"""The rule-based teacher (answers checked against the scenes it never saw) and LLaVA-Instruct files."""

from __future__ import annotations

import json
import random
import re

import pytest

from llava.data import teacher
from llava.data.build import instruct_records, make_pictures
from llava.data.instruct import DataFormatError, load_instruct, save_instruct
from llava.data.sqa_world import make_problems
from llava.data.world import NUMBER_WORDS, Scene, SceneContext, SceneObject, region_of, sample_scene, scene_context
from llava.model.tiny import COLORS, SHAPES

SCENES = [sample_scene(random.Random(100 + k)) for k in range(150)]


def _count(answer: str) -> int:
    for n, word in enumerate(NUMBER_WORDS):
        if re.search(rf"\b{word}\b", answer):
            return n
    if re.search(r"\bno\b", answer):
        return 0
    raise AssertionError(f"no count in {answer!r}")


def test_read_items_refuses_bad_context():
    with pytest.raises(ValueError, match="colour"):
        teacher.read_items(SceneContext([], [("pink blob", [0.1, 0.1, 0.2, 0.2])]))
    with pytest.raises(ValueError, match="normalised"):
        teacher.read_items(SceneContext([], [("red circle", [0.5, 0.1, 0.2, 0.2])]))
    with pytest.raises(ValueError, match="no boxes"):
        teacher.read_items(SceneContext(["a caption"], []))


def test_sizes_come_from_the_boxes():
    for scene in SCENES:
        items = teacher.read_items(scene_context(scene))
        assert sorted(i.size for i in items) == sorted(o.size for o in scene.objects)


def test_canonical_answers_match_the_scene():
    rng = random.Random(0)
    for scene in SCENES:
        items = teacher.read_items(scene_context(scene))
        objs = scene.objects
        q, a = teacher.ask_count_all(items, rng)
        assert _count(a) == len(objs), (q, a)
        q, a = teacher.ask_count_some(items, rng)
        noun = q.removeprefix("How many ").split(" are")[0]
        if noun.split()[0] in {o.color for o in objs} | {"red", "green", "blue", "yellow", "purple", "orange"}:
            truth = sum(o.color == noun.split()[0] for o in objs)
        else:
            truth = sum(o.shape + "s" == noun for o in objs)
        assert _count(a) == truth, (q, a)
        q, a = teacher.ask_exists(items, rng)
        color, shape = re.search(r"a (\w+) (\w+)( in the image)?\?$", q).group(1, 2)
        present = any(o.color == color and o.shape == shape for o in objs)
        assert a.startswith("Yes" if present else "No"), (q, a)
        q, a = teacher.ask_color(items, rng)
        shape = re.search(r"the (\w+)( have)?\?$", q).group(1)
        colours = [o.color for o in objs if o.shape == shape]
        if len(colours) == 1:
            assert a == f"The {shape} is {colours[0]}."
        elif not colours:
            assert a.startswith("There is no")
        qa = teacher.ask_where(items, rng)
        if qa:
            name = re.search(r"the (\w+ \w+)( located)?\?$", qa[0]).group(1)
            (obj,) = [o for o in objs if f"{o.color} {o.shape}" == name]
            assert region_of(obj.center) in qa[1]


def test_yes_no_questions_are_balanced():
    rng = random.Random(1)
    answers = [teacher.ask_exists(teacher.read_items(scene_context(s)), rng)[1] for s in SCENES * 2]
    yes = sum(a.startswith("Yes") for a in answers) / len(answers)
    assert 0.35 < yes < 0.65


def test_pictures_can_weigh_scenes_by_their_object_count():
    weighed = make_pictures(random.Random(0), 400, "w", count_weights=(1, 2, 3, 4))
    share = [sum(len(p.scene.objects) == n for p in weighed) / 400 for n in (1, 2, 3, 4)]
    assert share[0] < 0.15 and share[3] > 0.32 and share == sorted(share)
    assert {len(p.scene.objects) for p in make_pictures(random.Random(0), 20, "w", count_weights=(0, 0, 0, 1))} == {4}
    uniform = make_pictures(random.Random(0), 400, "u")
    assert all(0.18 < sum(len(p.scene.objects) == n for p in uniform) / 400 < 0.32 for n in (1, 2, 3, 4))
    problems, scenes = make_problems(random.Random(0), 60, "w", count_weights=(0, 0, 1))
    assert scenes and {len(s.objects) for s in scenes.values()} == {3}
    assert all("three shapes" in p["hint"].lower() for p in problems.values() if p["hint"])  # told scenes too


def test_description_names_every_object_with_size_colour_shape_and_place():
    for scene in SCENES:
        text = teacher.describe(teacher.read_items(scene_context(scene)))
        for o in scene.objects:
            assert f"{o.size} {o.color} {o.shape}" in text
        assert text.startswith(f"The image shows {NUMBER_WORDS[len(scene.objects)]} shape")


def test_description_goes_in_the_palettes_order():
    rng = random.Random(3)
    for scene in [sample_scene(rng, count_weights=(0, 0, 1, 1)) for _ in range(50)]:
        text = teacher.describe(teacher.read_items(scene_context(scene)))
        named = re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b", text)
        assert len(named) == len(scene.objects)
        assert named == sorted(named, key=lambda cs: (COLORS.index(cs[0]), SHAPES.index(cs[1])))


def test_reasoning_answers():
    two = Scene(
        (
            SceneObject("circle", "red", "large", (0.05, 0.35, 0.37, 0.67)),
            SceneObject("circle", "blue", "small", (0.75, 0.05, 0.92, 0.22)),
        )
    )
    items = teacher.read_items(scene_context(two))
    rng = random.Random(0)
    assert "red circle" in teacher.reason_largest(items, rng)[1].split(";")[0]
    assert "circles" in teacher.reason_common(items, rng)[1]
    q, a = teacher.reason_remove(items, rng)
    assert "one shape left" in a
    for _ in range(20):
        qa = teacher.reason_left_of(items, rng)
        assert qa[1].startswith("Yes" if qa[0].startswith("Is the red") else "No")
    for scene in SCENES:
        qas = teacher.complex_reasoning(teacher.read_items(scene_context(scene)), rng)
        assert len(qas) == 1 and qas[0][0].endswith("?")


def test_conversation_turns_are_distinct():
    rng = random.Random(2)
    for scene in SCENES:
        qas = teacher.conversation(teacher.read_items(scene_context(scene)), rng)
        assert 2 <= len(qas) <= 5
        assert len({q for q, _ in qas}) == len(qas)


def test_records_follow_llava_instruct(tmp_path):
    rng = random.Random(3)
    pictures = make_pictures(rng, 40, "shapes")
    records = instruct_records(pictures, rng, per_picture=2)
    assert len(records) == 80
    kinds = {r["id"].rsplit("-", 1)[1] for r in records}
    assert kinds == {"conversation", "detail", "complex_reasoning"}
    for r in records:
        assert r["image"].endswith(".png")
        turns = r["conversations"]
        assert turns[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    path = save_instruct(records, tmp_path / "data.json")
    assert load_instruct(path) == records
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records))
    assert load_instruct(jsonl) == records


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "x", "conversations": []}, "non-empty list"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "missing field 'id'"),
        ({"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}, "expected 'human'"),
        ({"id": "x", "conversations": [{"from": "human", "value": "a"}]}, "pairs"),
        ({"id": "x", "image": "a.png", "conversations": [{"from": "human", "value": "no token"}, {"from": "gpt", "value": "b"}]}, "0 <image>"),
        ({"id": "x", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "b"}]}, "no 'image'"),
        ({"id": "x", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}, "empty"),
        ("not a record", "expected an object"),
    ],
)  # fmt: skip
def test_malformed_records_name_file_and_record(tmp_path, record, message):
    good = {"id": "ok", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, record]))
    with pytest.raises(DataFormatError) as err:
        load_instruct(path)
    assert str(path) in str(err.value)
    assert "record 1" in str(err.value)
    assert message in str(err.value)


def test_broken_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="a.json: not valid JSON"):
        load_instruct(tmp_path / "a.json")
    (tmp_path / "b.jsonl").write_text('{"id": 1, "conversations": []}\n{oops\n')
    with pytest.raises(DataFormatError, match="b.jsonl: line 2"):
        load_instruct(tmp_path / "b.jsonl")
    (tmp_path / "c.json").write_text('{"id": 1}')
    with pytest.raises(DataFormatError, match="expected a JSON list"):
        load_instruct(tmp_path / "c.json")
    with pytest.raises(DataFormatError, match="file not found"):
        load_instruct(tmp_path / "missing.json")
