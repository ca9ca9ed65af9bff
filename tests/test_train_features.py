"""The cached-feature training forward equals LLaVA's own forward; stages train only what they should."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava.data import teacher
from llava.data.build import instruct_records, make_pictures
from llava.data.world import sample_scene, scene_context
from llava.train.clip import object_centers
from llava.train.features import llava_logits, llava_loss, vision_features
from llava.train.loop import OptimConfig
from llava.train.pixels import normalize, to_uint8
from llava.train.sequences import collate, encode_record, render_with_spans
from llava.train.stages import StageConfig, place_loss, run_stage, set_trainable


@pytest.fixture(scope="module")
def parts(tiny_ckpt):
    processor = AutoProcessor.from_pretrained(tiny_ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt).eval()
    return processor, model


def _n_image(model) -> int:
    return model.config.image_seq_length


def test_uint8_pixels_normalise_to_the_processor_output(parts):
    processor, _ = parts
    images = [p.image() for p in make_pictures(random.Random(0), 5, "x")]
    expected = processor.image_processor(images, return_tensors="pt").pixel_values
    got = normalize(to_uint8(images, processor.image_processor), processor.image_processor)
    assert torch.allclose(got, expected, atol=1e-5)


def test_cached_forward_matches_llava_forward(parts):
    processor, model = parts
    rng = random.Random(1)
    scene = sample_scene(rng)
    image = make_pictures(random.Random(2), 1, "x")[0].image()
    record = teacher.to_record("r", "x.png", teacher.teach(scene_context(scene), "conversation", rng))
    example = encode_record(record, processor.tokenizer, _n_image(model))
    text, _ = render_with_spans(record["conversations"])
    enc = processor(images=image, text=text, return_tensors="pt")
    labels = torch.tensor([example.labels])
    with torch.no_grad():
        reference = model(**enc, labels=labels).loss
        pixels = to_uint8([image], processor.image_processor)
        feats = vision_features(model, pixels, lambda x: normalize(x, processor.image_processor))
        ours = llava_loss(model, collate([example], processor.tokenizer.pad_token_id), feats.float())
    assert feats.shape == (1, _n_image(model), model.config.vision_config.hidden_size)
    # features are stored in bfloat16, hence the tolerance
    assert torch.allclose(ours, reference, rtol=2e-2), (float(ours), float(reference))


def test_image_slots_must_match_features(parts):
    processor, model = parts
    record = teacher.to_record("r", "x.png", [("What?", "Nothing.")])
    batch = collate([encode_record(record, processor.tokenizer, _n_image(model))], processor.tokenizer.pad_token_id)
    with pytest.raises(ValueError, match="do not match"):
        llava_loss(model, batch, torch.zeros(2, _n_image(model), model.config.vision_config.hidden_size))


def test_set_trainable(parts):
    _, model = parts
    n = set_trainable(model, train_lm=False)
    assert n == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    set_trainable(model, train_lm=True)
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


def _stage_data(tiny_ckpt, seed: int, n_pictures: int):
    """A fresh tiny model, its processor, pictures, their cached features and index, and instruction examples."""
    processor = AutoProcessor.from_pretrained(tiny_ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt)
    rng = random.Random(seed)
    pictures = make_pictures(rng, n_pictures, "p")
    pixels = to_uint8([p.image() for p in pictures], processor.image_processor)
    feats = vision_features(model, pixels, lambda x: normalize(x, processor.image_processor))
    index = {p.name: i for i, p in enumerate(pictures)}
    examples = [encode_record(r, processor.tokenizer, _n_image(model)) for r in instruct_records(pictures, rng)]
    return model, processor, pictures, feats, index, examples


@pytest.mark.parametrize("train_lm", [False, True])
def test_stages_update_only_their_parts(tiny_ckpt, train_lm):
    model, processor, pictures, feats, index, examples = _stage_data(tiny_ckpt, 3, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = StageConfig("t", 4, OptimConfig(steps=8, lr=3e-3, warmup=1), train_lm=train_lm)
    history = run_stage(model, examples, feats, index, cfg, progress=False)
    assert len(history.losses) == 8
    assert history.losses[-1] < history.losses[0]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "nothing trained"
    assert all(not k.startswith("model.vision_tower") for k in changed)
    assert any(k.startswith("model.multi_modal_projector") for k in changed)
    assert any(k.startswith("model.language_model") for k in changed) == train_lm
    with pytest.raises(KeyError, match="no cached features"):
        run_stage(model, examples, feats, {}, cfg, progress=False)


def test_the_place_read_out_reads_each_layers_object_tokens(tiny_ckpt):
    model, processor, pictures, feats, index, examples = _stage_data(tiny_ckpt, 5, 8)
    vision, text = model.config.vision_config, model.config.text_config
    grid, layers = vision.image_size // vision.patch_size, text.num_hidden_layers
    centers = object_centers([p.scene for p in pictures], grid, 0.25)
    # the loss: at every layer's output, each object token's read-out against its object's centre, squared error
    # averaged over the object tokens, then over the layers
    batch = collate(examples[:3], processor.tokenizer.pad_token_id)
    rows = [index[name] for name in batch.images]
    with torch.no_grad():
        _, outs = llava_logits(model, batch.input_ids, batch.attention_mask, feats[rows], keep_layers=layers + 1)
    heads = [torch.nn.Linear(text.hidden_size, 2) for _ in range(layers)]
    slots = batch.input_ids == model.config.image_token_id
    want = []
    for head, out in zip(heads, outs[1:], strict=True):
        errors = []
        for b, row in enumerate(rows):
            tokens = out[b, slots[b]]  # this row's picture, patch by patch
            for k in range(grid * grid):
                if not torch.isnan(centers[row, k, 0]):
                    errors.append(((head(tokens[k]) - centers[row, k]) ** 2).mean())
        want.append(torch.stack(errors).mean())
    with torch.no_grad():
        got = place_loss(heads, outs[1:], slots, centers[rows])
    assert torch.isclose(got, torch.stack(want).mean(), rtol=1e-4)
    # a stage with it needs the centres; with them it trains the LM differently, the tower not at all
    cfg = StageConfig("t", 4, OptimConfig(steps=4, lr=3e-3, warmup=1), train_lm=True, place_weight=1.0)
    with pytest.raises(ValueError, match="centres of every picture"):
        run_stage(model, examples, feats, index, cfg, progress=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    placed = run_stage(model, examples, feats, index, cfg, progress=False, centers=centers)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    cfg.place_weight = 0.0
    plain = run_stage(model, examples, feats, index, cfg, progress=False)
    assert placed.losses[0] > plain.losses[0]  # the same first batch, plus the read-out's error
    differ = {k for k, v in model.state_dict().items() if not torch.equal(v, trained[k])}
    assert any(k.startswith("model.language_model") for k in differ)
    assert not any(k.startswith("model.vision_tower") for k in differ)
    # on the first layer only: still an extra error; no more layers than the LM has
    model.load_state_dict(start)
    cfg.place_weight, cfg.place_layers = 1.0, 1
    first = run_stage(model, examples, feats, index, cfg, progress=False, centers=centers)
    assert first.losses[0] > plain.losses[0]
    cfg.place_layers = layers + 1
    with pytest.raises(ValueError, match=f"place_layers={layers + 1}, the LM has {layers}"):
        run_stage(model, examples, feats, index, cfg, progress=False, centers=centers)
