"""Conversations -> token ids and labels, exactly as serving will see them.

A record is rendered with the conversation template (`llava_v0`: `system###Human: ...###Assistant: ...###`),
`<image>` is expanded to one token per image patch as `LlavaProcessor` does, and only the assistant's
tokens carry a loss: the answer and its `###` stop, nothing of the system prompt or the human turns.

Records of one picture can be packed into one row (`pack`): the tokens they share (system prompt and image
patches, 97 of a one-question record's ~111) once, then each record's own tokens as a segment that sees the
shared prefix and itself, at the positions it has alone. Every token's logits are those of its record trained
alone, at a fraction of the cost.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llava.conversation import SeparatorStyle, conv_templates

IGNORE = -100  # label of a token without loss
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True, slots=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss
    image: str | None  # the picture's name, the key of its cached features
    # packed rows (`pack`): the records, and each token's segment: 0 the shared prefix, k the k-th record's own
    members: tuple[Example, ...] = ()
    segments: tuple[int, ...] = ()
    # where each segment starts (index k: segment k), -1 where it has no token: looking a member's tokens up is
    # what building grounding targets for packed rows does millions of times
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [-1] * (max(self.segments, default=-1) + 1)
        for k, segment in enumerate(self.segments):
            if starts[segment] < 0:
                starts[segment] = k
        object.__setattr__(self, "_starts", tuple(starts))

    def _start(self, segment: int) -> int:
        if segment >= len(self._starts) or self._starts[segment] < 0:
            raise ValueError(f"segment {segment} has no token in this row")
        return self._starts[segment]

    @property
    def prefix(self) -> int:
        """Tokens every member shares (0 when not packed)."""
        return self._start(1) if self.segments else 0

    def positions(self) -> list[int]:
        """Each token's position: in a packed row, where it stands in its own record."""
        if not self.segments:
            return list(range(len(self.input_ids)))
        return [*range(self.prefix)] + [k for m in self.members for k in range(self.prefix, len(m.input_ids))]

    def packed_index(self, member: int, index: int) -> int:
        """Where token `index` of member `member` (0-based) stands in this packed row."""
        if index < self.prefix:
            return index
        return self._start(member + 1) + index - self.prefix


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
    # `<image>` is a special token, split off before the rest is tokenized: the text is tokenized with it once
    # and its token repeated after, as the processor's n copies would tokenize (and at half the cost)
    enc = tokenizer(text, return_offsets_mapping=True)
    span_starts = [s for s, _ in spans]  # the assistant's spans, in order and apart
    labels = []
    for token, (start, end) in zip(enc.input_ids, enc.offset_mapping, strict=True):
        k = bisect.bisect_right(span_starts, start) - 1
        inside = end > start and k >= 0 and start < spans[k][1]
        labels.append(token if inside else IGNORE)
    ids, image_id = enc.input_ids, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if IMAGE_TOKEN in text and image_id in ids:  # the first one, as the processor expands
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * n_image_tokens + ids[at + 1 :]
        labels = labels[:at] + [labels[at]] * n_image_tokens + labels[at + 1 :]
    return Example(ids, labels, record.get("image"))


def pack(examples: Sequence[Example]) -> Example:
    """One row for records of the same picture: their common prefix (the image included) once, then each record's
    remaining tokens. The prefix stops before the first trained token, so no segment starts with one (a segment's
    first token is predicted from the row's previous token, not from its own record's)."""
    if len({e.image for e in examples}) != 1 or examples[0].image is None:
        raise ValueError("pack() takes records of one picture")
    if len(examples) == 1:
        return examples[0]
    first_trained = min(next(k for k, lab in enumerate(e.labels) if lab != IGNORE) for e in examples)
    prefix = 0
    while prefix < first_trained - 1 and len({e.input_ids[prefix] for e in examples}) == 1:
        prefix += 1
    ids, labels = list(examples[0].input_ids[:prefix]), list(examples[0].labels[:prefix])
    segments = [0] * prefix
    for k, e in enumerate(examples, 1):
        ids += e.input_ids[prefix:]
        labels += e.labels[prefix:]
        segments += [k] * (len(e.input_ids) - prefix)
    return Example(ids, labels, examples[0].image, tuple(examples), tuple(segments))


def pack_by_picture(examples: Sequence[Example]) -> list[Example]:
    """Every picture's records packed into one row (`pack`), in the order the pictures first come; examples
    without a picture stay as they are."""
    groups: dict[str | None, list[Example]] = {}
    out: list[Example | str] = []
    for e in examples:
        if e.image is None:
            out.append(e)
        elif e.image not in groups:
            groups[e.image] = [e]
            out.append(e.image)
        else:
            groups[e.image].append(e)
    return [pack(groups[x]) if isinstance(x, str) else x for x in out]


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
    segments: torch.Tensor | None = None  # (B, T) packed rows' segment ids (`Example.segments`); None: none packed
    position_ids: torch.Tensor | None = None  # (B, T) with `segments`


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any(e.segments for e in examples)
    segments = torch.zeros((len(examples), width), dtype=torch.long) if packed else None
    positions = torch.zeros((len(examples), width), dtype=torch.long) if packed else None
    for k, e in enumerate(examples):
        n = len(e.input_ids)
        ids[k, :n] = torch.tensor(e.input_ids)
        labels[k, :n] = torch.tensor(e.labels)
        mask[k, :n] = 1
        if packed:
            positions[k, :n] = torch.tensor(e.positions())
            if e.segments:
                segments[k, :n] = torch.tensor(e.segments)
    return Batch(ids, mask, labels, [e.image for e in examples if e.image is not None], segments, positions)


def visible(attention_mask: torch.Tensor, segments: torch.Tensor | None) -> torch.Tensor:
    """(B, T, T) which key each query sees: causal, not padding, and in a packed row the shared prefix and the
    query's own segment. A padding query sees itself, so no softmax row is empty."""
    T = attention_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    out = causal[None] & attention_mask.bool()[:, None, :]
    if segments is not None:
        out &= (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
    return out | torch.eye(T, dtype=torch.bool, device=attention_mask.device)[None]


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
