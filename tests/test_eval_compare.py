"""Pairing two models' saved answers question by question (`python -m llava.eval compare`)."""

from __future__ import annotations

import json

import pytest

from llava.data.instruct import DataFormatError
from llava.errors import LlavaError
from llava.eval.__main__ import main as eval_main
from llava.eval.compare import compare, load_outcomes, markdown, sign_test
from llava.eval.questions import KINDS, TARGET_KINDS


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(outcomes, kind="count"):
    return [{"question_id": f"{k}/{kind}", "kind": kind, "correct": bool(c)} for k, c in enumerate(outcomes)]


def test_sign_test_matches_the_binomial_tails():
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 5) == 1.0
    assert sign_test(10, 0) == sign_test(0, 10) == pytest.approx(2 / 1024)
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # P(X <= 2) twice, X ~ Bin(10, 1/2)
    assert sign_test(195, 51) < 1e-3


def test_compare_counts_the_answers_only_one_model_got_right(tmp_path):
    a = write(tmp_path / "a.jsonl", rows([1, 1, 1, 0, 0, 1]) + rows([1, 0], kind="color"))
    b = write(tmp_path / "b.jsonl", rows([1, 0, 0, 1, 0, 1]) + rows([1, 1], kind="color"))
    pairs, unmatched = compare([a], [b], groups={"numbers": ("count", "count_kind"), "none": ("where",)})
    assert unmatched == 0
    got = pairs.to_json()
    assert list(got) == ["count", "color", "numbers", "all"]  # a group no question falls in has no row
    assert got["numbers"] == got["count"]
    assert got["count"] | {"p": 0} == {"questions": 6, "a": 4 / 6, "b": 3 / 6, "a_only": 2, "b_only": 1, "p": 0}
    assert got["count"]["p"] == pytest.approx(sign_test(2, 1))
    assert (got["color"]["a_only"], got["color"]["b_only"]) == (0, 1)
    assert (got["all"]["questions"], got["all"]["a_only"], got["all"]["b_only"]) == (8, 2, 2)
    table = markdown(pairs, ("new", "old"))
    assert "| kind | questions | new (%) | old (%) | right from new only | right from old only |" in table
    assert "| count | 6 | 66.7 | 50.0 | 2 | 1 |" in table


def test_files_pair_in_order_and_unmatched_questions_are_left_out(tmp_path):
    a1 = write(tmp_path / "a1.jsonl", rows([1, 1]))
    a2 = write(tmp_path / "a2.jsonl", rows([0, 0, 1]))
    b1 = write(tmp_path / "b1.jsonl", rows([0, 1]))
    b2 = write(tmp_path / "b2.jsonl", rows([1, 0]))  # question 2 missing
    pairs, unmatched = compare([a1, a2], [b1, b2])
    assert unmatched == 1
    assert pairs.to_json()["count"] | {"p": 0} == {
        "questions": 4, "a": 0.5, "b": 0.5, "a_only": 1, "b_only": 1, "p": 0,
    }  # fmt: skip


def test_bad_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "1", "correct": true}\n{"question_id": "2"}\n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl, line 2: not an answer"):
        load_outcomes(bad)
    bad.write_text('{"question_id": "1", "correct": true}\n{"question_id": "1", "correct": false}\n')
    with pytest.raises(DataFormatError, match="line 2: question id '1' comes twice"):
        load_outcomes(bad)
    bad.write_text('{"question_id": "1", "correct": "yes"}\n')
    with pytest.raises(DataFormatError, match="line 1: `correct` is 'yes'"):
        load_outcomes(bad)
    bad.write_text("\n")
    with pytest.raises(DataFormatError, match="bad.jsonl: no answers"):
        load_outcomes(bad)
    with pytest.raises(LlavaError, match="nope.jsonl: cannot read"):
        load_outcomes(tmp_path / "nope.jsonl")
    a = write(tmp_path / "a.jsonl", rows([1]))
    b = write(tmp_path / "b.jsonl", rows([1], kind="color"))
    with pytest.raises(LlavaError, match="share no question id"):
        compare([a], [b])
    with pytest.raises(LlavaError, match="as many --a files as --b files"):
        compare([a, a], [b])


def test_chat_answers_saved_and_compared_through_the_cli(tmp_path, tiny_ckpt, capsys):
    saved, scores = tmp_path / "answers.jsonl", tmp_path / "scores.json"
    args = ["chat", "--model", str(tiny_ckpt), "--pictures", "2", "--seed", "3", "--quiet", "--json", str(scores)]
    assert eval_main([*args, "--save-answers", str(saved)]) == 0
    results = json.loads(scores.read_text())
    files = {r: tmp_path / f"answers.{r}.jsonl" for r in ("primary", "alt")}
    for renderer, path in files.items():
        answers = [json.loads(line) for line in path.read_text().splitlines()]
        assert {a["kind"] for a in answers} <= set(KINDS)
        assert len({a["question_id"] for a in answers}) == len(answers)
        assert {a["question_id"].split("/")[0] for a in answers} == {"0", "1"}
        for kind, accuracy in results[renderer]["accuracy"].items():
            mine = [a["correct"] for a in answers if a["kind"] == kind]
            assert sum(mine) / len(mine) == accuracy
        described = [a for a in answers if a["kind"] == "describe"]
        assert len(described) == 2 and all(0 <= a["named"] <= a["objects"] for a in described)
    # a model against itself: no answer right from one side only
    capsys.readouterr()
    out = tmp_path / "pairs.json"
    pair = ["--a", str(files["primary"]), str(files["alt"]), "--b", str(files["primary"]), str(files["alt"])]
    assert eval_main(["compare", *pair, "--labels", "new", "old", "--json", str(out)]) == 0
    assert "| kind | questions | new (%) | old (%) |" in capsys.readouterr().out
    got = json.loads(out.read_text())
    assert got["targets"]["questions"] == sum(got[k]["questions"] for k in TARGET_KINDS if k in got)
    assert got["all"]["a_only"] == got["all"]["b_only"] == 0 and got["all"]["p"] == 1.0
    assert got["all"]["questions"] == sum(len(p.read_text().splitlines()) for p in files.values())
    assert eval_main(["compare", "--a", str(files["primary"]), "--b", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: cannot read" in capsys.readouterr().err
    assert eval_main(["compare", *pair, "--group", "oops"]) == 2
    assert "--group 'oops': expected NAME=KIND,KIND" in capsys.readouterr().err
    assert eval_main(["compare", *pair, "--group", "words=color, shape, count", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["words"]["questions"] == sum(got[k]["questions"] for k in ("color", "shape", "count") if k in got)


def test_a_kind_named_like_a_row_counts_once(tmp_path):
    a = write(tmp_path / "a.jsonl", [{"question_id": "1", "correct": True}, {"question_id": "2", "correct": False}])
    b = write(tmp_path / "b.jsonl", [{"question_id": "1", "correct": False}, {"question_id": "2", "correct": False}])
    got = compare([a], [b], groups={"all": ("all",)})[0].to_json()
    assert list(got) == ["all"]
    assert (got["all"]["questions"], got["all"]["a_only"], got["all"]["b_only"]) == (2, 1, 0)
