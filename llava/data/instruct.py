"""LLaVA-Instruct JSON files: validated loading and saving.

A record is `{"id": ..., "image": "file.png" (optional), "conversations": [{"from": "human", "value": ...},
{"from": "gpt", "value": ...}, ...]}`, as in LLaVA-Instruct-150K. Both a JSON list and JSON Lines load.
Every problem is reported as `<file>: record <n> (id ...): <what is wrong>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llava.errors import LlavaError

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


class DataFormatError(LlavaError, ValueError):
    """A data file or one of its records is malformed; the message names the file and the record."""


def validate_record(record: Any, index: int, source: str) -> dict[str, Any]:
    """Check one LLaVA-Instruct record and return it unchanged."""
    rid = record.get("id") if isinstance(record, dict) else None
    where = f"{source}: record {index}" + (f" (id {rid!r})" if rid is not None else "")

    def fail(why: str) -> DataFormatError:
        return DataFormatError(f"{where}: {why}")

    if not isinstance(record, dict):
        raise fail(f"expected an object, got {type(record).__name__}")
    if "id" not in record:
        raise fail("missing field 'id'")
    image = record.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise fail("field 'image' must be a non-empty file name")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise fail("field 'conversations' must be a non-empty list")
    if len(turns) % 2:
        raise fail(f"'conversations' has {len(turns)} turns; human and gpt turns must come in pairs")
    n_image_tokens = 0
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not {"from", "value"} <= set(turn):
            raise fail(f"turn {k} must be an object with 'from' and 'value'")
        if turn["from"] != ROLES[k % 2]:
            raise fail(f"turn {k} is from {turn['from']!r}, expected {ROLES[k % 2]!r} (turns alternate, human first)")
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            raise fail(f"turn {k} has an empty or non-string 'value'")
        count = turn["value"].count(IMAGE_TOKEN)
        if count and (k != 0):
            raise fail(f"turn {k} holds {IMAGE_TOKEN}; only the first human turn may")
        n_image_tokens += count
    if image is not None and n_image_tokens != 1:
        raise fail(f"has an image but {n_image_tokens} {IMAGE_TOKEN} tokens; the first human turn needs exactly one")
    if image is None and n_image_tokens:
        raise fail(f"holds {IMAGE_TOKEN} but no 'image' field")
    return record


def load_instruct(path: str | Path) -> list[dict[str, Any]]:
    """Read and validate a LLaVA-Instruct file (.json list or .jsonl)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}: line {n + 1} is not valid JSON ({e})") from e
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(records, list):
            raise DataFormatError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return [validate_record(r, i, str(path)) for i, r in enumerate(records)]


def save_instruct(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records as a JSON list (LLaVA-Instruct-150K's layout); validated first."""
    path = Path(path)
    for i, r in enumerate(records):
        validate_record(r, i, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path
