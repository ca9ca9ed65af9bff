"""ScienceQA scoring in the paper's table form, for our problems or real `problems.json` + predictions.

Columns: accuracy by subject, by context modality (TXT, IMG, NO) and by grade band, then the average,
plus how many answers kept the `The answer is X.` format. Two diagnostics split a wrong letter into its
causes: of the answers whose last sentence before `The answer is` names exactly one option, how often that
option is the right one (the reasoning was right) and how often the letter is that option's (the letter was
read off the options correctly). Real ScienceQA subjects become NAT/SOC/LAN and
grades G1-6/G7-12 as in the paper; our world's subjects and grades stand in for them.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from llava.data.instruct import DataFormatError
from llava.data.scienceqa import LETTERS, context_modality, format_kept, parse_answer, qcm_prompt
from llava.data.sqa_world import make_problems
from llava.eval.chat import ask, draw
from llava.model.loader import LoadedModel

PAPER_ORDER = ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12"]
SUBJECT_ABBREV = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}


@dataclass(slots=True)
class SqaTable:
    groups: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # family -> column -> [correct, total]
    format_ok: int = 0
    total: int = 0
    failures: list[dict] = field(default_factory=list)
    explained: int = 0  # answers whose last sentence names exactly one option
    explained_right: int = 0  # ... and that option is the right one
    letter_matches: int = 0  # ... and the letter is that option's

    def add(self, family: str, column: str, correct: bool) -> None:
        cell = self.groups.setdefault(family, {}).setdefault(column, [0, 0])
        cell[0] += int(correct)
        cell[1] += 1

    def accuracy(self, family: str = "all", column: str = "Avg") -> float:
        correct, total = self.groups.get(family, {}).get(column, [0, 0])
        return correct / total if total else float("nan")

    def columns(self) -> list[tuple[str, str]]:
        """The paper's order (NAT SOC LAN, TXT IMG NO, G1-6 G7-12, Avg); other names alphabetically."""

        def key(column: str) -> tuple[int, str]:
            return (PAPER_ORDER.index(column), "") if column in PAPER_ORDER else (len(PAPER_ORDER), column)

        return [(f, c) for f in ("subject", "context", "grade", "all") for c in sorted(self.groups.get(f, {}), key=key)]

    def to_json(self) -> dict:
        return {
            "accuracy": {f"{f}/{c}": self.accuracy(f, c) for f, c in self.columns()},
            "counts": {f"{f}/{c}": self.groups[f][c][1] for f, c in self.columns()},
            "format_kept": self.format_ok / self.total if self.total else float("nan"),
            "explained": self.explained,
            "explanation_right": self.explained_right / self.explained if self.explained else float("nan"),
            "letter_matches_explanation": self.letter_matches / self.explained if self.explained else float("nan"),
            "failures": self.failures[:20],
        }


def grade_band(grade: str, real: bool) -> str:
    """`grade7` -> G7-12 for real ScienceQA; our world's grades 1..6 in pairs (G1-2, G3-4, G5-6)."""
    try:
        n = int("".join(ch for ch in grade if ch.isdigit()))
    except ValueError:
        return "G?"
    if real:
        return "G1-6" if n <= 6 else "G7-12"
    low = n - (n + 1) % 2
    return f"G{low}-{low + 1}"


def subject_column(subject: str) -> str:
    return SUBJECT_ABBREV.get(subject, subject)


def explained_option(text: str, choices: list[str]) -> int | None:
    """The one option the last sentence before `The answer is` names (None: none or several)."""
    head = text.rsplit("The answer is", 1)[0].strip()
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", head) if x]
    if not sentences:
        return None
    last = sentences[-1].lower()
    named = []
    for k, choice in enumerate(choices):
        core = re.sub(r"^(a|an|the)\s+", "", choice.strip().lower())
        if core and re.search(rf"\b{re.escape(core)}\b", last):
            named.append(k)
    # "a red square" also contains "square": keep only the longest of options nested in one another
    named = [k for k in named if not any(k != j and choices[k].lower() in choices[j].lower() for j in named)]
    return named[0] if len(named) == 1 else None


def score_predictions(problems: dict[str, dict[str, Any]], predictions: dict[str, str]) -> SqaTable:
    """The table for every problem that has a prediction; a missing or unparsable answer counts wrong."""
    real = any(p.get("subject") in SUBJECT_ABBREV for p in problems.values())
    table = SqaTable()
    for pid, problem in problems.items():
        text = predictions.get(pid, "")
        chosen = parse_answer(text, len(problem["choices"]))
        correct = chosen == problem["answer"]
        table.total += 1
        table.format_ok += format_kept(text)
        table.add("subject", subject_column(problem.get("subject", "?")), correct)
        for modality in context_modality(problem):
            table.add("context", modality, correct)
        table.add("grade", grade_band(problem.get("grade", ""), real), correct)
        table.add("all", "Avg", correct)
        named = explained_option(text, [str(c) for c in problem["choices"]])
        if named is not None:
            table.explained += 1
            table.explained_right += named == problem["answer"]
            table.letter_matches += chosen == named
        if not correct:
            table.failures.append(
                {
                    "pid": pid, "question": problem["question"], "choices": problem["choices"],
                    "answer": LETTERS[problem["answer"]], "prediction": text,
                }
            )  # fmt: skip
    return table


def load_predictions(path: str | Path) -> dict[str, str]:
    """LLaVA's answer file (JSON Lines of `{"question_id", "text"}`) or a JSON object `{pid: text}`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    if path.suffix == ".jsonl":
        out = {}
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[str(row["question_id"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataFormatError(f"{path}: line {n + 1} is not a {{question_id, text}} record ({e})") from e
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataFormatError(f"{path}: expected an object mapping problem ids to answer texts")
    return {str(k): v for k, v in data.items()}


def predict(
    loaded: LoadedModel,
    problems: dict[str, dict[str, Any]],
    image_for: Callable[[str], Image.Image | None],
    progress: bool = True,
    max_new_tokens: int = 128,
) -> dict[str, str]:
    """The model's answer to every problem, asked as the paper asks: QCM in, LEA out."""
    out = {}
    for pid, problem in tqdm(problems.items(), desc="scienceqa", disable=not progress, mininterval=5.0):
        image = image_for(pid) if problem.get("image") else None
        out[pid] = ask(loaded, image, qcm_prompt(problem), max_new_tokens=max_new_tokens)
    return out


def world_problems(
    n_problems: int, renderer: str, seed: int = 4321
) -> tuple[dict[str, dict[str, Any]], dict[str, Image.Image]]:
    """Fresh held-out problems about new scenes, and the pictures of those that have one, drawn by `renderer`.
    The problems depend on `seed` alone, so every renderer is asked the same ones."""
    rng = random.Random(seed)
    problems, scenes = make_problems(rng, n_problems, "test")
    return problems, {pid: draw(scene, renderer, rng) for pid, scene in scenes.items()}


def evaluate_world_sqa(
    loaded: LoadedModel,
    n_problems: int,
    renderer: str,
    seed: int = 4321,
    progress: bool = True,
    max_new_tokens: int = 128,
) -> SqaTable:
    """The table for `world_problems(n_problems, renderer, seed)`."""
    problems, images = world_problems(n_problems, renderer, seed)
    return score_predictions(problems, predict(loaded, problems, images.get, progress, max_new_tokens))


def write_answers(path: str | Path, problems: dict[str, dict[str, Any]], predictions: dict[str, str]) -> None:
    """LLaVA's answer file: one `{"question_id", "prompt", "text"}` per line, readable by `load_predictions`,
    with the problem's `kind` (its skill, else its topic) and whether the answer is `correct`, which
    `python -m llava.eval compare` pairs between two models."""
    lines = []
    for pid, text in predictions.items():
        problem = problems[pid]
        row = {"question_id": pid, "prompt": qcm_prompt(problem), "text": text}
        row["kind"] = problem.get("skill") or problem.get("topic") or "all"
        row["correct"] = parse_answer(text, len(problem["choices"])) == problem["answer"]
        lines.append(json.dumps(row))
    Path(path).write_text("\n".join(lines) + "\n")


def image_folder_loader(folder: str | Path, split: str, problems: dict[str, dict[str, Any]]):
    """Real ScienceQA layout: `<folder>/<split>/<pid>/<image>` (or `<folder>/<pid>/<image>`)."""
    folder = Path(folder)

    def load(pid: str) -> Image.Image | None:
        name = problems[pid].get("image")
        for path in (folder / split / pid / name, folder / pid / name):
            if path.is_file():
                return Image.open(path).convert("RGB")
        raise DataFormatError(f"problem {pid!r}: image {name!r} not found under {folder}")

    return load


def markdown(table: SqaTable, title: str = "") -> str:
    cols = table.columns()
    head = "| " + " | ".join(c for _, c in cols) + " | format kept |"
    sep = "|" + "---|" * (len(cols) + 1)
    row = "| " + " | ".join(f"{100 * table.accuracy(f, c):.1f}" for f, c in cols)
    row += f" | {100 * table.format_ok / max(1, table.total):.1f} |"
    counts = "| " + " | ".join(str(table.groups[f][c][1]) for f, c in cols) + f" | {table.total} |"
    lines = ([title, ""] if title else []) + [head, sep, row, counts]
    if table.explained:
        lines += [
            "",
            f"Of {table.explained} answers whose last sentence names one option: that option is the right one "
            f"{100 * table.explained_right / table.explained:.1f}% of the time, and the letter is that option's "
            f"{100 * table.letter_matches / table.explained:.1f}%.",
        ]
    return "\n".join(lines)
