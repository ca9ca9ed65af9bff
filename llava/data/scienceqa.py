"""ScienceQA's `problems.json` schema, validated loading, and the paper's QCM -> LEA conversion.

A problem (ScienceQA's own fields): question, choices, answer (index), hint (the text context), image
(file name or null), task, grade, subject, topic, category, skill, lecture, solution, split.
The paper feeds `Question: ...\\nContext: ...\\nOptions: (A) ... (B) ...` and trains the answer as
lecture + explanation, then `The answer is X.` (LEA); `parse_answer` reads the letter back.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

from llava.data.instruct import DataFormatError

REQUIRED = {"question": str, "choices": list, "answer": int}
OPTIONAL_STR = ("hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution", "split")
ANSWER_RE = re.compile(r"The answer is ([A-Z])\.")
LETTERS = string.ascii_uppercase


def validate_problem(pid: str, problem: Any, source: str) -> dict[str, Any]:
    """Check one problem's fields; raise `DataFormatError` naming the file and the problem id."""

    def fail(why: str) -> DataFormatError:
        return DataFormatError(f"{source}: problem {pid!r}: {why}")

    if not isinstance(problem, dict):
        raise fail(f"expected an object, got {type(problem).__name__}")
    for key, kind in REQUIRED.items():
        if key not in problem:
            raise fail(f"missing field {key!r}")
        if not isinstance(problem[key], kind) or (kind is int and isinstance(problem[key], bool)):
            raise fail(f"field {key!r} must be {kind.__name__}, got {type(problem[key]).__name__}")
    choices = problem["choices"]
    if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise fail(f"'choices' must be 2 to {len(LETTERS)} strings, got {choices!r}")
    if not 0 <= problem["answer"] < len(choices):
        raise fail(f"'answer' {problem['answer']} is not an index into {len(choices)} choices")
    for key in OPTIONAL_STR:
        if problem.get(key) is not None and not isinstance(problem[key], str):
            raise fail(f"field {key!r} must be a string, got {type(problem[key]).__name__}")
    if problem.get("image") is not None and not isinstance(problem["image"], str):
        raise fail("field 'image' must be a file name or null")
    return problem


def load_problems(path: str | Path, split: str | None = None) -> dict[str, dict[str, Any]]:
    """Read a ScienceQA `problems.json` ({pid: problem}); keep one split if asked."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected an object mapping problem ids to problems")
    problems = {str(pid): validate_problem(str(pid), p, str(path)) for pid, p in data.items()}
    if split is not None:
        problems = {pid: p for pid, p in problems.items() if p.get("split") == split}
    return problems


def save_problems(problems: dict[str, dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(problems, indent=1))
    return path


# --- QCM -> LEA ---------------------------------------------------------------------------------


def options_text(choices: list[str]) -> str:
    return " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def qcm_prompt(problem: dict[str, Any]) -> str:
    """The paper's input: question, context (the hint, `N/A` when empty), multiple-choice options."""
    context = (problem.get("hint") or "").strip() or "N/A"
    return f"Question: {problem['question']}\nContext: {context}\nOptions: {options_text(problem['choices'])}"


def lea_answer(problem: dict[str, Any]) -> str:
    """The paper's best output form: lecture, explanation (solution), then `The answer is X.`"""
    parts = [(problem.get("lecture") or "").strip(), (problem.get("solution") or "").strip()]
    reasoning = " ".join(p for p in parts if p)
    final = f"The answer is {LETTERS[problem['answer']]}."
    return f"{reasoning} {final}" if reasoning else final


def to_instruct(pid: str, problem: dict[str, Any]) -> dict[str, Any]:
    """One LLaVA-Instruct record: image token first when the problem has a picture."""
    has_image = bool(problem.get("image"))
    human = qcm_prompt(problem)
    record: dict[str, Any] = {"id": pid}
    if has_image:
        record["image"] = f"{pid}/{problem['image']}"
        human = f"<image>\n{human}"
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": lea_answer(problem)}]
    return record


def parse_answer(text: str, n_choices: int) -> int | None:
    """The chosen option index from `The answer is X.` (the last one wins), None when absent or invalid."""
    found = ANSWER_RE.findall(text)
    if not found:
        return None
    index = LETTERS.index(found[-1])
    return index if index < n_choices else None


def format_kept(text: str) -> bool:
    """The answer ends with exactly `The answer is X.`"""
    return re.search(r"The answer is [A-Z]\.$", text.strip()) is not None


def context_modality(problem: dict[str, Any]) -> list[str]:
    """ScienceQA's context groups: TXT (a hint), IMG (a picture), NO (neither); TXT and IMG can both hold."""
    groups = []
    if (problem.get("hint") or "").strip():
        groups.append("TXT")
    if problem.get("image"):
        groups.append("IMG")
    return groups or ["NO"]
