"""Model cards say which targets the figures next to them miss."""

from __future__ import annotations

import json
from types import SimpleNamespace

from llava.eval.questions import TARGET_KINDS
from llava.train.card import grounding_options, missed_targets, precision_line, question_weights, stage_table


def chat_eval(**acc: float) -> dict:
    return {
        "accuracy": {k: acc.get(k, 0.97) for k in TARGET_KINDS},
        "description_objects_named": acc.get("named", 0.92),
    }


def test_chat_targets_name_each_miss_by_renderer():
    assert missed_targets({"primary": chat_eval(), "alt": chat_eval()}, is_chat=True) == []
    missed = missed_targets({"primary": chat_eval(count=0.88), "alt": chat_eval(yes_no=0.9499, named=0.89)}, True)
    assert missed == [
        "count on the own renderer (88.0)",
        "yes_no on the second renderer (95.0)",
        "objects named on the second renderer (89.0)",
    ]
    assert missed_targets({"primary": chat_eval(color=0.95)}, True) == []  # the target is >= 95%


def test_sqa_targets_are_accuracy_and_every_format_kept():
    ok = {"accuracy": {"subject/colors": 0.5, "all/Avg": 0.96}, "format_kept": 1.0}
    assert missed_targets({"primary": ok}, is_chat=False) == []
    bad = {"accuracy": {"all/Avg": 0.81}, "format_kept": 0.99}
    assert missed_targets({"alt": bad}, False) == [
        "accuracy on the second renderer (81.0)",
        "format kept on the second renderer (99.0)",
    ]


def test_accuracy_by_object_count_reads_as_a_table_and_survives_json():
    from llava.eval.chat import ChatResult
    from llava.train.card import by_objects_table

    result = ChatResult("primary")
    for n, scores in ((1, [1, 1]), (4, [1, 0, 0, 0])):
        result.by_objects["count"][n] += scores
    result.by_objects["describe"][2].append(1.0)
    evals = {"primary": json.loads(json.dumps(result.to_json())), "alt": {}}  # keys become strings; alt has none
    assert evals["primary"]["accuracy_by_objects"] == {"count": {"1": 1.0, "4": 0.25}, "describe": {"2": 1.0}}
    table = by_objects_table(evals).splitlines()
    assert table[0] == "| kind | pictures | 1 object | 2 objects | 4 objects |"
    assert table[2:] == [
        "| count | own renderer | 100.0 | — | 25.0 |",
        "| describe (every object named) | own renderer | — | 100.0 | — |",
    ]


def test_where_answers_by_band_show_which_way_a_model_errs():
    from llava.eval.chat import ChatResult
    from llava.eval.questions import bands
    from llava.train.card import where_bands_table

    assert bands("top left") == {"row": "top", "column": "left"}
    assert bands("right") == {"row": "middle", "column": "right"}
    assert bands("center") == {"row": "middle", "column": "center"}
    result = ChatResult("alt")
    result.add_where("top left", "The red circle is on the right.")
    result.add_where("top left", "It is at the top left.")
    result.add_where("bottom", "I cannot tell.")
    evals = {"alt": json.loads(json.dumps(result.to_json())), "primary": {}}  # primary has none
    column = evals["alt"]["where_bands"]["column"]
    assert column["left"] == {"left": 1, "center": 0, "right": 1, "none": 0}
    assert column["center"] == {"left": 0, "center": 0, "right": 0, "none": 1}
    assert evals["alt"]["where_bands"]["row"]["top"] == {"top": 1, "middle": 1, "bottom": 0, "none": 0}
    assert where_bands_table(evals, "column").splitlines() == [
        "| pictures | object's column | answered left | answered center | answered right | no place |",
        "|---|---|---|---|---|---|",
        "| second renderer | left | 1 | 0 | 1 | 0 |",
        "| second renderer | center | 0 | 0 | 0 | 1 |",
        "| second renderer | right | 0 | 0 | 0 | 0 |",
    ]
    assert where_bands_table({"primary": {}}, "row") == ""


def test_count_answers_by_objects_and_colours_show_a_model_that_counts_colours():
    from llava.data.world import Scene, SceneObject
    from llava.eval.chat import ChatResult
    from llava.train.card import count_answers_table

    def scene(*colors: str) -> Scene:
        return Scene(
            tuple(SceneObject("circle", c, "small", (0.1 * k, 0.1, 0.1 * k + 0.05, 0.15)) for k, c in enumerate(colors))
        )

    result = ChatResult("primary")
    result.add_count(scene("red", "red", "blue", "green"), "There are three shapes in the image.")
    result.add_count(scene("red", "red", "blue", "green"), "There are 4 shapes.")
    result.add_count(scene("red", "blue", "green", "yellow"), "There are four shapes in the image.")
    result.add_count(scene("red", "blue", "green"), "There are five shapes.")
    result.add_count(scene("red", "blue", "green"), "I cannot tell.")
    evals = {"primary": json.loads(json.dumps(result.to_json())), "alt": {}}  # alt has none
    assert evals["primary"]["count_answers"] == {
        "3": {"3": {"5": 1, "none": 1}},
        "4": {"3": {"3": 1, "4": 1}, "4": {"4": 1}},
    }
    assert count_answers_table(evals).splitlines() == [
        "| pictures | objects | colours | questions | right (%) | too few | too many | no number |",
        "|---|---|---|---|---|---|---|---|",
        "| own renderer | 3 | 3 | 2 | 0.0 | 0 | 1 | 1 |",
        "| own renderer | 4 | 3 | 2 | 50.0 | 1 | 0 | 0 |",
        "| own renderer | 4 | 4 | 1 | 100.0 | 0 | 0 | 0 |",
    ]
    assert count_answers_table({"alt": {}}) == ""


def test_the_whole_pipeline_row_says_whether_its_minutes_include_the_evaluation():
    optim = {"steps": 10, "lr": 1e-3}
    stage = {"optim": optim, "batch_size": 4}
    config = {"clip": stage, "lm_optim": optim, "lm_batch": 4, "stage1": stage, "stage2": stage, "sqa": stage}
    timings = {"clip": 60.0, "lm": 120.0, "stage1": 30.0, "stage2-sqa": 600.0, "total": 810.0}
    table = stage_table(SimpleNamespace(config=config, timings=timings), "stage2-sqa")
    assert "| stage2-sqa | ScienceQA-format tuning" in table and "| 10.0 |" in table and "stage2-chat" not in table
    assert table.endswith("| **whole pipeline** (this checkpoint alone, no evaluation) | | | | | 13.5 |")
    timings |= {"stage2-chat": 900.0, "eval": 240.0, "total": 1950.0}
    table = stage_table(SimpleNamespace(config=config, timings=timings), "stage2-chat")
    assert table.endswith("| **whole pipeline** (both checkpoints, evaluation included) | | | | | 32.5 |")


def test_the_card_names_the_look_ups_a_stage_switched_on():
    assert grounding_options({"ground_weight": 0.6, "ground_count": False}) == ""
    line = grounding_options({"ground_link": True, "ground_extreme": 10.0, "ground_described": False})
    assert line.startswith(" Also: ") and line.endswith(".") and line.count(";") == 1
    assert "colour's objects" in line and "Which object is highest?" in line and "description" not in line
    assert "from the first 2 language-model layers" in grounding_options({"place_weight": 10.0, "place_layers": 2})
    assert "from every language-model layer" in grounding_options({"place_weight": 1.0, "place_layers": 0})
    counting = grounding_options({"count_weight": 1.0, "count_layers": 2})
    assert "reads out the number it counts from the first 2 language-model layers" in counting
    assert "count" not in grounding_options({"count_weight": 0.0, "count_layers": 2})


def test_the_card_says_which_kinds_of_question_were_asked_more():
    assert question_weights(None) == question_weights({}) == question_weights({"extreme": 1.0}) == ""
    line = question_weights({"extreme": 4.0, "count_kind": 0.5})
    assert line == "; extreme questions 4x as often, count kind questions 0.5x as often"
    assert question_weights(None, 0.1) == ""  # the held-out problems' share of no-context ones
    assert question_weights({"extreme": 4.0}, 0.02) == (
        "; extreme questions 4x as often, 2% of them with no context (held-out problems: 10%)"
    )


def test_the_card_says_when_clip_trained_in_float32_beside_bf16_stages():
    def cfg(stage2_bf16: bool, clip_bf16: bool | None) -> dict:
        clip = {} if clip_bf16 is None else {"optim": {"bf16": clip_bf16}}
        return {"stage2": {"optim": {"bf16": stage2_bf16, "compile": True}}, "clip": clip}

    compiled = ", the transformer layers compiled (torch.compile)"
    both = "bfloat16 autocast, attention in float32" + compiled
    assert precision_line(cfg(True, False)) == both + "; CLIP pre-trained in float32"
    assert precision_line(cfg(True, True)) == both
    assert precision_line(cfg(True, None)) == both  # reports without CLIP's settings
    assert precision_line(cfg(False, False)) == "float32 (the CPU has no native bfloat16)" + compiled
