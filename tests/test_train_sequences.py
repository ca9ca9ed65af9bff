"""Training sequences: the llava_v0 format, assistant-only labels, image tokens as the processor expands them."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from llava.conversation import conv_templates
from llava.data import teacher
from llava.data.world import sample_scene, scene_context
from llava.model.tiny import DEFAULT_CORPUS, build_processor, train_tokenizer
from llava.train.corpus import build_corpus, chat_text
from llava.train.sequences import (
    IGNORE,
    collate,
    encode_record,
    encode_text,
    length_grouped_batches,
    render_with_spans,
)

N_IMAGE = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(list(DEFAULT_CORPUS) + build_corpus(300, 50, 0), 600)


def _record(seed: int = 0, kind: str = "conversation") -> dict:
    rng = random.Random(seed)
    qas = teacher.teach(scene_context(sample_scene(rng)), kind, rng)
    return teacher.to_record(f"r{seed}", "pic.png", qas)


def test_render_matches_the_template():
    record = _record()
    text, spans = render_with_spans(record["conversations"])
    conv = conv_templates["llava_v0"].copy()
    for k, turn in enumerate(record["conversations"]):
        conv.append_message(conv.roles[k % 2], turn["value"])
    assert text == conv.get_prompt()
    answers = [t["value"] for t in record["conversations"][1::2]]
    assert [text[s:e] for s, e in spans] == [f" {a}###" for a in answers]


def test_only_assistant_tokens_have_labels(tokenizer):
    for seed in range(20):
        record = _record(seed, ("conversation", "detail", "complex_reasoning")[seed % 3])
        ex = encode_record(record, tokenizer, N_IMAGE)
        labelled = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE]
        assert all(lab in (IGNORE, t) for t, lab in zip(ex.input_ids, ex.labels, strict=True))
        answers = "".join(f" {t['value']}###" for t in record["conversations"][1::2])
        assert tokenizer.decode(labelled) == answers
        assert ex.labels[0] == IGNORE  # BOS
        assert ex.input_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == N_IMAGE
        assert ex.image == "pic.png"


def test_ids_equal_what_the_processor_makes(tokenizer):
    processor = build_processor(tokenizer, 64, 16)
    record = _record(3)
    ex = encode_record(record, tokenizer, N_IMAGE)
    text, _ = render_with_spans(record["conversations"])
    enc = processor(images=Image.new("RGB", (64, 64), "white"), text=text, return_tensors="pt")
    assert enc.input_ids[0].tolist() == ex.input_ids


def test_serving_prompt_is_a_prefix_of_the_training_sequence(tokenizer):
    """What the worker sends ("...###Assistant:") tokenizes to the start of the training sequence."""
    record = _record(4)
    first_q = record["conversations"][0]["value"]
    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], first_q)
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt().replace("<image>", "<image>" * N_IMAGE)
    prompt_ids = tokenizer(prompt).input_ids
    ex = encode_record(record, tokenizer, N_IMAGE)
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert ex.labels[len(prompt_ids) - 1] == IGNORE and ex.labels[len(prompt_ids)] != IGNORE


def test_text_only_records_and_other_templates(tokenizer):
    record = {"id": "t", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
    ex = encode_record(record, tokenizer, N_IMAGE)
    assert ex.image is None and tokenizer.convert_tokens_to_ids("<image>") not in ex.input_ids
    with pytest.raises(ValueError, match="llava_v0"):
        render_with_spans(record["conversations"], template="vicuna_v1")
    assert chat_text(_record(5)["conversations"]).count("<image>") == 0


def test_collate_and_length_grouping(tokenizer):
    examples = [encode_record(_record(s), tokenizer, N_IMAGE) for s in range(12)]
    examples.append(encode_text("plain text for the language model", tokenizer, 64))
    batch = collate(examples[:3] + examples[-1:], tokenizer.pad_token_id)
    width = max(len(e.input_ids) for e in examples[:3] + examples[-1:])
    assert batch.input_ids.shape == (4, width)
    assert batch.images == ["pic.png"] * 3
    assert int(batch.attention_mask[3].sum()) == len(examples[-1].input_ids)
    assert (batch.labels[batch.attention_mask == 0] == IGNORE).all()
    gen = length_grouped_batches(examples, 4, random.Random(0), group=2)
    seen = [next(gen) for _ in range(6)]
    assert all(len(b) == 4 for b in seen)
    first_epoch = [i for b in seen[:3] for i in b]  # 13 examples -> 3 full batches, no repeats
    assert len(set(first_epoch)) == 12
    assert torch.tensor([len(set(b)) for b in seen]).eq(4).all()
