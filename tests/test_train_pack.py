"""Packed rows: a picture's records share their prefix once, and every token's logits, loss and supervised
attention are those of its record trained alone."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava.data.build import instruct_records, make_pictures
from llava.train.attention import FLOAT32_SDPA
from llava.train.features import llava_logits, vision_features
from llava.train.ground import attention_logprobs, grounding_loss, grounding_targets
from llava.train.pixels import normalize, to_uint8
from llava.train.sequences import IGNORE, Example, collate, encode_record, pack, pack_by_picture


@pytest.fixture(scope="module", params=["sdpa", FLOAT32_SDPA, "eager"])
def parts(tiny_ckpt, request):
    processor = AutoProcessor.from_pretrained(tiny_ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt, attn_implementation=request.param).eval()
    rng = random.Random(11)
    pictures = make_pictures(rng, 3, "p", count_weights=(0, 0, 1, 1))
    records = instruct_records(pictures, rng, per_picture=4)
    examples = [encode_record(r, processor.tokenizer, model.config.image_seq_length) for r in records]
    pixels = to_uint8([p.image() for p in pictures], processor.image_processor)
    feats = vision_features(model, pixels, lambda x: normalize(x, processor.image_processor)).float()
    index = {p.name: i for i, p in enumerate(pictures)}
    return processor, model, pictures, examples, feats, index


def _forward(model, batch, feats, index, keep=1):
    image_features = feats[[index[n] for n in batch.images]]
    return llava_logits(
        model, batch.input_ids, batch.attention_mask, image_features, keep, batch.segments, batch.position_ids
    )


def test_pack_shares_the_prefix_and_keeps_every_record(parts):
    processor, model, pictures, examples, _, _ = parts
    packed = pack_by_picture(examples)
    assert [p.image for p in packed] == [p.name for p in pictures]
    n_img, image_id = model.config.image_seq_length, model.config.image_token_id
    for row in packed:
        assert len(row.members) == 4
        assert row.input_ids.count(image_id) == n_img  # the picture once, in the prefix
        assert row.input_ids.index(image_id) + n_img <= row.prefix
        assert len(row.input_ids) == row.prefix + sum(len(m.input_ids) - row.prefix for m in row.members)
        positions = row.positions()
        for k, m in enumerate(row.members):
            mine = [i for i in range(len(row.input_ids)) if row.segments[i] in (0, k + 1)]
            assert [row.input_ids[i] for i in mine] == m.input_ids
            assert [row.labels[i] for i in mine] == m.labels
            assert [positions[i] for i in mine] == list(range(len(m.input_ids)))
            assert [row.packed_index(k, i) for i in range(len(m.input_ids))] == mine
            assert row.labels[row.segments.index(k + 1)] == IGNORE  # never predicted across segments
    # every record in exactly one row, and what packing saves is the shared prefix (system prompt and picture)
    # of every record but the first of its row
    assert sorted(id(m) for r in packed for m in r.members) == sorted(id(e) for e in examples)
    saved = sum(len(e.input_ids) for e in examples) - sum(len(r.input_ids) for r in packed)
    assert saved == sum((len(r.members) - 1) * r.prefix for r in packed) > 0


def test_pack_refuses_records_of_other_pictures(parts):
    examples = parts[3]
    with pytest.raises(ValueError, match="one picture"):
        pack([examples[0], examples[-1]])
    assert pack(examples[:1]) is examples[0]
    text = Example([1, 5, 6], [IGNORE, 5, 6], None)
    assert pack_by_picture([text, *examples[:2]])[0] is text
    assert text.prefix == 0 and text.positions() == [0, 1, 2]
    gap = Example([1, 2, 3, 4], [IGNORE] * 4, "p", (text, text, text), (0, 1, 1, 3))  # member 2 has no token
    assert gap.prefix == 1 and gap.packed_index(2, 1) == 3
    with pytest.raises(ValueError, match="segment 2 has no token"):
        gap.packed_index(1, 1)


def test_packed_logits_are_each_records_own(parts):
    processor, model, _, examples, feats, index = parts
    pad = processor.tokenizer.pad_token_id
    packed = pack_by_picture(examples)
    with torch.no_grad():
        alone, _ = _forward(model, collate(examples, pad), feats, index)
        together, _ = _forward(model, collate(packed, pad), feats, index)
    head = model.lm_head
    k = 0
    for row, r in zip(packed, together, strict=True):
        for member, m in enumerate(row.members):
            mine = [row.packed_index(member, i) for i in range(len(m.input_ids))]
            assert torch.allclose(head(r[mine]), head(alone[k, : len(m.input_ids)]), atol=1e-4)
            k += 1
    # and the loss over the same trained tokens is the same
    from llava.train.features import next_token_loss

    with torch.no_grad():
        a = next_token_loss(model, alone, collate(examples, pad).labels)
        b = next_token_loss(model, together, collate(packed, pad).labels)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_packed_grounding_is_each_records_own(parts, layer):
    processor, model, pictures, examples, feats, index = parts
    tok, pad = processor.tokenizer, processor.tokenizer.pad_token_id
    n_img, image_id = model.config.image_seq_length, model.config.image_token_id
    scenes = {p.name: p.scene for p in pictures}
    packed = pack_by_picture(examples)
    counted = [grounding_targets(x, scenes, tok, image_id, n_img, count=True) for x in (examples, packed)]
    assert sum(map(len, counted[0])) == sum(map(len, counted[1])) > 0
    alone = grounding_targets(examples, scenes, tok, image_id, n_img)  # the tiny model has no head 4 to count
    together = grounding_targets(packed, scenes, tok, image_id, n_img)
    assert sum(map(len, together)) == sum(map(len, alone)) > 0
    a_batch, p_batch = collate(examples, pad), collate(packed, pad)
    with torch.no_grad():
        _, a_in = _forward(model, a_batch, feats, index, keep=2)
        _, p_in = _forward(model, p_batch, feats, index, keep=2)
        a_only = [[t for t in row if t.layer == layer] for row in alone]
        p_only = [[t for t in row if t.layer == layer] for row in together]
        a_loss = grounding_loss(model, a_in, a_batch.attention_mask, a_only)
        p_loss = grounding_loss(model, p_in, p_batch.attention_mask, p_only, p_batch.segments, p_batch.position_ids)
        assert torch.allclose(a_loss, p_loss, atol=1e-4)
        # the hand-made attention of a packed row is the model's own there
        eager = model.model.language_model(
            inputs_embeds=p_in[0], attention_mask=_mask(model, p_batch), position_ids=p_batch.position_ids,
            output_attentions=True,
        ).attentions[layer] if model.config.text_config._attn_implementation == "eager" else None  # fmt: skip
        if eager is not None:
            rows = torch.tensor([b for b, row in enumerate(p_only) for _ in row])
            positions = torch.tensor([t.position for row in p_only for t in row])
            heads = torch.tensor([t.head for row in p_only for t in row])
            logp = attention_logprobs(
                model, p_in[layer], layer, p_batch.attention_mask, rows, positions, heads, p_batch.segments,
                p_batch.position_ids,
            )  # fmt: skip
            assert torch.allclose(logp.exp(), eager[rows, heads, positions], atol=1e-5)


def _mask(model, batch):
    from llava.train.features import packed_mask

    return packed_mask(model, batch.attention_mask, batch.segments)
