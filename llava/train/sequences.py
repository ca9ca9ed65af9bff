"""Conversations -> token ids and labels, exactly as serving will see them.

A record is rendered with the conversation template (`llava_v0`: `system###Human: ...###Assistant: ...###`),
`<image>` is expanded to one token per image patch as `LlavaProcessor` does, and only the assistant's
tokens carry a loss: the answer and its `###` stop, nothing of the system prompt or the human turns.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from llava.conversation import SeparatorStyle, conv_templates

IGNORE = -100  # label of a token without loss
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    image: str | None  # the picture's name, the key of its cached features


def render_with_spans(conversations: list[dict], template: str = "llava_v0") -> tuple[str, list[tuple[int, int]]]:
    """The template's prompt string and the character spans the assistant wrote (answer + stop)."""
    conv = conv_templates[template].copy()
    if conv.sep_style != SeparatorStyle.SINGLE:
        raise ValueError(f"training supports '###'-style templates (llava_v0); {template!r} is {conv.sep_style.value}")
    text = conv.system + conv.sep
    spans = []
    for k, turn in enumerate(conversations):
        role = conv.roles[k % 2]
        head = f"{role}:"
        body = f" {turn['value']}{conv.sep}"  # the space belongs to the answer: serving prompts end at "Assistant:"
        if k % 2:
            spans.append((len(text) + len(head), len(text) + len(head) + len(body)))
        text += head + body
        conv.append_message(role, turn["value"])
    assert text == conv.get_prompt(), "training format drifted from the conversation template"
    return text, spans


def encode_record(record: dict, tokenizer, n_image_tokens: int, template: str = "llava_v0") -> Example:
    """Token ids (image token expanded) and assistant-only labels of one LLaVA-Instruct record."""
    text, spans = render_with_spans(record["conversations"], template)
    if IMAGE_TOKEN in text:
        # expanding shifts every span after the image token by the same amount
        at = text.index(IMAGE_TOKEN)
        extra = len(IMAGE_TOKEN) * (n_image_tokens - 1)
        text = text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_image_tokens, 1)
        spans = [(s + extra, e + extra) if s > at else (s, e) for s, e in spans]
    enc = tokenizer(text, return_offsets_mapping=True)
    labels = []
    for token, (start, end) in zip(enc.input_ids, enc.offset_mapping, strict=True):
        inside = end > start and any(s <= start < e for s, e in spans)
        labels.append(token if inside else IGNORE)
    return Example(enc.input_ids, labels, record.get("image"))


def encode_text(text: str, tokenizer, max_len: int) -> Example:
    """Plain language-model pre-training: every token after BOS is a target."""
    ids = tokenizer(text).input_ids[:max_len]
    return Example(ids, [IGNORE] + ids[1:], None)


@dataclass(slots=True)
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T) IGNORE on padding and non-assistant tokens
    images: list[str]  # names of the pictures of the rows that have one, in row order


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for k, e in enumerate(examples):
        n = len(e.input_ids)
        ids[k, :n] = torch.tensor(e.input_ids)
        labels[k, :n] = torch.tensor(e.labels)
        mask[k, :n] = 1
    return Batch(ids, mask, labels, [e.image for e in examples if e.image is not None])


def length_grouped_batches(
    examples: Sequence[Example], batch_size: int, rng: random.Random, group: int = 32
) -> Iterator[list[int]]:
    """Endless batches of indices; within a shuffled window of `group` batches, similar lengths go together."""
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        window = batch_size * group
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(examples[i].input_ids))
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from (b for b in batches if len(b) == batch_size)
