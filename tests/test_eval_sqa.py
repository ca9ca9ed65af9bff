"""ScienceQA tables from real-format files (problems.json + LLaVA answer files), and the eval CLI."""

from __future__ import annotations

import json

import pytest

from llava.data.instruct import DataFormatError
from llava.eval.__main__ import main as eval_main
from llava.eval.sqa import (
    explained_option,
    grade_band,
    load_predictions,
    markdown,
    score_predictions,
    world_problems,
)

# Three problems in ScienceQA's schema (shortened real-style items).
PROBLEMS = {
    "1": {"question": "Which is a mammal?", "choices": ["frog", "dog"], "answer": 1, "hint": "", "image": None,
          "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "biology",
          "category": "", "skill": "", "lecture": "", "solution": "", "split": "test"},
    "2": {"question": "Which word is a noun?", "choices": ["run", "tree", "blue"], "answer": 1, "hint": "",
          "image": "image.png", "task": "closed choice", "grade": "grade8", "subject": "language science",
          "topic": "grammar", "category": "", "skill": "", "lecture": "", "solution": "", "split": "test"},
    "3": {"question": "Which state is highlighted?", "choices": ["Ohio", "Utah"], "answer": 0,
          "hint": "Look at the map.", "image": "image.png", "task": "closed choice", "grade": "grade4",
          "subject": "social science", "topic": "geography", "category": "", "skill": "", "lecture": "",
          "solution": "", "split": "val"},
}  # fmt: skip


def test_table_groups_as_the_paper():
    table = score_predictions(PROBLEMS, {"1": "A dog has fur. The answer is B.", "2": "The answer is C.", "3": "Ohio"})
    assert table.accuracy("subject", "NAT") == 1.0
    assert table.accuracy("subject", "LAN") == 0.0
    assert table.accuracy("subject", "SOC") == 0.0
    assert table.accuracy("context", "NO") == 1.0
    assert table.accuracy("context", "IMG") == 0.0
    assert table.groups["context"]["TXT"] == [0, 1]
    assert table.accuracy("grade", "G1-6") == 0.5 and table.accuracy("grade", "G7-12") == 0.0
    assert table.accuracy() == pytest.approx(1 / 3)
    assert table.format_ok == 2
    md = markdown(table, "t")
    assert "| G1-6 | G7-12 |" in md.replace("G1-6 | G7-12", "G1-6 | G7-12") and "33.3" in md


def test_explanation_diagnostics_split_reasoning_from_the_letter():
    choices = ["a blue triangle", "a yellow square", "a yellow triangle"]
    assert explained_option("Look at the picture. There is a yellow square; the others are not. The answer is B.",
                            choices) == 1  # fmt: skip
    assert explained_option("A yellow triangle is there. The answer is A.", choices) == 2  # not "triangle" twice
    assert explained_option("There are shapes. The answer is A.", choices) is None
    assert explained_option("Blue or yellow? The answer is A.", ["blue", "yellow"]) is None  # both named
    assert explained_option("There are two. The answer is B.", ["one", "two", "four"]) == 1
    problems = {
        "a": {"question": "q", "choices": ["one", "two"], "answer": 1, "hint": "", "image": None, "grade": "grade1",
              "subject": "numbers"},
        "b": {"question": "q", "choices": ["red", "blue"], "answer": 0, "hint": "", "image": None, "grade": "grade1",
              "subject": "colors"},
        "c": {"question": "q", "choices": ["red", "blue"], "answer": 0, "hint": "", "image": None, "grade": "grade1",
              "subject": "colors"},
    }  # fmt: skip
    predictions = {
        "a": "There are two. The answer is A.",  # right reasoning, wrong letter
        "b": "The square is red. The answer is A.",  # both right
        "c": "The square is blue. The answer is B.",  # wrong reasoning, consistent letter
    }
    table = score_predictions(problems, predictions)
    result = table.to_json()
    assert result["explained"] == 3
    assert result["explanation_right"] == pytest.approx(2 / 3)
    assert result["letter_matches_explanation"] == pytest.approx(2 / 3)
    assert table.failures[0]["answer"] == "B" and table.failures[0]["choices"] == ["one", "two"]
    assert "names one option" in markdown(table)


def test_world_grade_bands():
    assert grade_band("grade1", real=False) == "G1-2"
    assert grade_band("grade4", real=False) == "G3-4"
    assert grade_band("grade6", real=False) == "G5-6"
    assert grade_band("grade11", real=True) == "G7-12"


def test_prediction_files(tmp_path):
    jsonl = tmp_path / "answers.jsonl"
    jsonl.write_text('{"question_id": "1", "prompt": "...", "text": "The answer is B."}\n\n')
    assert load_predictions(jsonl) == {"1": "The answer is B."}
    jsonl.write_text('{"question_id": "1", "text": "x"}\n{"id": 2}\n')
    with pytest.raises(DataFormatError, match="answers.jsonl: line 2"):
        load_predictions(jsonl)
    plain = tmp_path / "answers.json"
    plain.write_text(json.dumps({"1": "The answer is A."}))
    assert load_predictions(plain) == {"1": "The answer is A."}
    plain.write_text("[1]")
    with pytest.raises(DataFormatError, match="answers.json: expected an object"):
        load_predictions(plain)


def test_cli_scores_real_files(tmp_path, capsys):
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps(PROBLEMS))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"question_id": k, "text": "The answer is B."}) for k in PROBLEMS))
    out = tmp_path / "scores.json"
    code = eval_main(["sqa", "--problems-file", str(problems), "--predictions", str(answers), "--split", "test",
                      "--json", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| NAT | LAN | IMG | NO | G1-6 | G7-12 | Avg | format kept |" in printed
    result = json.loads(out.read_text())["file"]
    assert result["accuracy"]["all/Avg"] == 1.0  # both test problems answer B; problem 3 (val) is left out
    assert result["counts"]["all/Avg"] == 2
    assert result["format_kept"] == 1.0


def test_cli_errors_are_messages(tmp_path, capsys):
    bad = tmp_path / "problems.json"
    bad.write_text(json.dumps({"7": {"question": "q", "choices": ["a"], "answer": 0}}))
    assert eval_main(["sqa", "--problems-file", str(bad), "--predictions", str(bad)]) == 2
    assert "problem '7'" in capsys.readouterr().err
    assert eval_main(["sqa"]) == 2
    missing = tmp_path / "nope" / "answers.jsonl"
    assert eval_main(["sqa", "--model", "x", "--save-predictions", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert eval_main(["chat", "--model", "x", "--json", str(missing)]) == 2
    assert f"{missing}: its folder" in capsys.readouterr().err


def test_cli_saves_world_answers_a_file_a_renderer(tmp_path, tiny_ckpt, capsys):
    answers, scores = tmp_path / "answers.jsonl", tmp_path / "scores.json"
    args = ["sqa", "--model", str(tiny_ckpt), "--problems", "3", "--seed", "5", "--quiet", "--json", str(scores)]
    assert eval_main([*args, "--renderer", "primary", "alt", "--save-predictions", str(answers)]) == 0
    assert not answers.exists()
    results = json.loads(scores.read_text())
    told = capsys.readouterr().err
    problems, _ = world_problems(3, "primary", seed=5)
    for renderer in ("primary", "alt"):
        path = tmp_path / f"answers.{renderer}.jsonl"
        assert f"{renderer} renderer's answers: {path}" in told
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["question_id"] for r in rows] == list(problems)
        assert all(r["prompt"].startswith("Question: ") and "\nOptions: (A) " in r["prompt"] for r in rows)
        # each answer's own score and kind, for `python -m llava.eval compare`
        assert sum(r["correct"] for r in rows) / len(rows) == results[renderer]["accuracy"]["all/Avg"]
        assert [r["kind"] for r in rows] == [p.get("skill") or p["topic"] for p in problems.values()]
        # the file scores exactly as the run did
        rescored = score_predictions(problems, load_predictions(path)).to_json()
        assert {k: rescored[k] for k in ("accuracy", "format_kept", "failures")} == {
            k: results[renderer][k] for k in ("accuracy", "format_kept", "failures")
        }
    assert eval_main([*args, "--renderer", "alt", "--save-predictions", str(answers)]) == 0
    assert [json.loads(line)["question_id"] for line in answers.read_text().splitlines()] == list(problems)
