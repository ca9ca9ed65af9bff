"""Two checkpoints' answers to the same questions, question by question: which answers one model alone got right.

Accuracies on a few hundred pictures move by a few points from one draw to the next, so "94 against 92" says
little; whether a change helps shows in the questions that only one of the two models answers right. Both runs
score the same draw (same `--seed`, `--pictures`/`--problems` and renderer) and save their answers
(`python -m llava.eval chat ... --save-answers F`, `python -m llava.eval sqa ... --save-predictions F`); this
pairs the files by question id, per question kind, with a two-sided sign test on the discordant pairs.

    python -m llava.eval compare --a new.primary.jsonl new.alt.jsonl --b old.primary.jsonl old.alt.jsonl

Files are paired in the order given (the first `--a` file with the first `--b` file); each line is a JSON
object with `question_id`, `correct` and, optionally, `kind`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llava.data.instruct import DataFormatError
from llava.errors import LlavaError

ALL = "all"


@dataclass(slots=True)
class Pairs:
    """Per kind: questions, right from A, right from B, right from A only, right from B only."""

    cells: dict[str, list[int]] = field(default_factory=dict)
    # extra rows: name -> the kinds it pools (e.g. the chat targets' five kinds); listed before `all`
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def add(self, kind: str, a: bool, b: bool) -> None:
        # each row once: a kind may be named `all` (files without kinds) or like a group
        for key in dict.fromkeys((kind, *(name for name, kinds in self.groups.items() if kind in kinds), ALL)):
            cell = self.cells.setdefault(key, [0, 0, 0, 0, 0])
            cell[0] += 1
            cell[1] += a
            cell[2] += b
            cell[3] += a and not b
            cell[4] += b and not a

    def kinds(self) -> list[str]:
        rows = [k for k in self.cells if k != ALL and k not in self.groups]
        return rows + [k for k in self.groups if k in self.cells] + ([ALL] if self.cells else [])

    def to_json(self) -> dict:
        out = {}
        for kind in self.kinds():
            n, a, b, only_a, only_b = self.cells[kind]
            out[kind] = {
                "questions": n,
                "a": a / n,
                "b": b / n,
                "a_only": only_a,
                "b_only": only_b,
                "p": sign_test(only_a, only_b),
            }
        return out


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if either model were as likely to
    be the one right (ties, both right or both wrong, carry no information and are left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def load_outcomes(path: str | Path) -> dict[str, tuple[str, bool]]:
    """question id -> (kind, right?) from an answer file (JSON Lines with `question_id`, `correct`, `kind`)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise LlavaError(f"{path}: cannot read ({e.strerror})") from e
    out: dict[str, tuple[str, bool]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            qid, correct = str(row["question_id"]), row["correct"]
            kind = str(row.get("kind", ALL))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataFormatError(f"{path}, line {n}: not an answer with `question_id` and `correct` ({e})") from e
        if not isinstance(correct, (bool, int, float)):
            raise DataFormatError(f"{path}, line {n}: `correct` is {correct!r}, not true/false")
        if qid in out:
            raise DataFormatError(f"{path}, line {n}: question id {qid!r} comes twice")
        out[qid] = (kind, bool(correct))
    if not out:
        raise DataFormatError(f"{path}: no answers")
    return out


def compare(
    a_files: Sequence[str | Path], b_files: Sequence[str | Path], groups: dict[str, tuple[str, ...]] | None = None
) -> tuple[Pairs, int]:
    """Pair the i-th file of `a_files` with the i-th of `b_files` by question id; the pairs (with a row for each
    of `groups`, name -> kinds) and how many questions only one side answered (left out). Kinds come from A's
    files."""
    if len(a_files) != len(b_files) or not a_files:
        raise LlavaError(f"give as many --a files as --b files (got {len(a_files)} and {len(b_files)})")
    pairs, unmatched = Pairs(groups=dict(groups or {})), 0
    for fa, fb in zip(a_files, b_files, strict=True):
        a, b = load_outcomes(fa), load_outcomes(fb)
        common = [q for q in a if q in b]
        if not common:
            raise LlavaError(f"{fa} and {fb} share no question id: were they scored on the same draw?")
        unmatched += len(a) + len(b) - 2 * len(common)
        for q in common:
            pairs.add(a[q][0], a[q][1], b[q][1])
    return pairs, unmatched


def markdown(pairs: Pairs, labels: tuple[str, str] = ("A", "B")) -> str:
    la, lb = labels
    rows = [
        f"| kind | questions | {la} (%) | {lb} (%) | right from {la} only | right from {lb} only | p (sign test) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, cell in pairs.to_json().items():
        rows.append(
            f"| {kind} | {cell['questions']} | {100 * cell['a']:.1f} | {100 * cell['b']:.1f} | {cell['a_only']} | "
            f"{cell['b_only']} | {cell['p']:.3g} |"
        )
    return "\n".join(rows)
