"""Grounding supervision: the right words get the right patches, the hand-made attention is the model's own
in every layer, and the loss teaches the heads to look where they are told."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava.data import teacher
from llava.data.build import instruct_records, make_pictures
from llava.data.scienceqa import to_instruct
from llava.data.sqa_world import make_problems
from llava.data.world import Scene, SceneObject
from llava.model.tiny import build_tiny_checkpoint
from llava.train.clip import box_cover
from llava.train.corpus import lookup_record
from llava.train.features import llava_logits, vision_features
from llava.train.ground import (
    CHOOSE_HEAD,
    COLOR_HEAD,
    COUNT_HEAD,
    EXTREME_HEAD,
    MENTION_HEAD,
    NEXT_HEAD,
    OPTION_HEAD,
    PAIR_COUNT_HEAD,
    PHRASE_HEAD,
    PICK_HEAD,
    RECALL_HEAD,
    SHAPE_HEAD,
    SPAN_HEAD,
    Target,
    TokenText,
    _spread,
    _tokens,
    attention_logprobs,
    center_spread,
    check_heads,
    described_targets,
    example_targets,
    extreme_targets,
    grounding_loss,
    grounding_targets,
    object_words,
    option_targets,
    phrase_targets,
    word_ids,
)
from llava.train.loop import OptimConfig
from llava.train.pixels import normalize, to_uint8
from llava.train.sequences import collate, encode_record, pack_by_picture
from llava.train.stages import StageConfig, count_readout_loss, count_targets, run_stage, stage_targets


@pytest.fixture(scope="module")
def parts(tiny_ckpt):
    processor = AutoProcessor.from_pretrained(tiny_ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt, attn_implementation="eager").eval()
    return processor, model


def _scene() -> Scene:
    objects = (
        SceneObject("triangle", "red", "large", (0.0, 0.0, 0.5, 0.5)),
        SceneObject("triangle", "blue", "small", (0.5, 0.5, 0.75, 0.75)),
        SceneObject("circle", "blue", "small", (0.75, 0.0, 1.0, 0.25)),
    )
    return Scene(objects=objects)


def _features(model, processor, pictures):
    pixels = to_uint8([p.image() for p in pictures], processor.image_processor)
    return vision_features(model, pixels, lambda x: normalize(x, processor.image_processor))


@pytest.mark.parametrize("absent", [False, True])
def test_words_get_the_patches_of_their_objects(parts, absent):
    processor, model = parts
    tok, n_img = processor.tokenizer, model.config.image_seq_length
    qas = [
        ("What color is the triangle?", "There are two triangles: red and blue."),
        ("Is the blue triangle small?", "No."),
        ("A square?", "No."),
        ("A red circle?", "No."),  # a red object and a circle, not together
    ]
    example = encode_record(teacher.to_record("r", "x.png", qas), tok, n_img)
    targets = example_targets(example, _scene(), word_ids(tok), model.config.image_token_id, n_img, absent)
    words = [tok.decode([example.input_ids[t.position]]).strip().removesuffix("###") for t in targets]
    # "square" has nothing to look at; after each shape word its next token looks at the same objects,
    # narrowed to the colour named right before it ("blue triangle" -> only the blue one). Where nothing
    # matches, it looks at every object of the shape, or (absent=True) at the first token (None below)
    expected = [
        ("triangle", SHAPE_HEAD, (0, 1)), ("?", NEXT_HEAD, (0, 1)), ("triangles", SHAPE_HEAD, (0, 1)),
        (":", NEXT_HEAD, (0, 1)), ("red", COLOR_HEAD, (0,)), ("blue", COLOR_HEAD, (1, 2)),
        ("blue", COLOR_HEAD, (1, 2)), ("triangle", SHAPE_HEAD, (0, 1)), ("small", NEXT_HEAD, (1,)),
    ] + ([("?", NEXT_HEAD, None)] if absent else []) + [
        ("red", COLOR_HEAD, (0,)), ("circle", SHAPE_HEAD, (2,)), ("?", NEXT_HEAD, None if absent else (2,)),
    ]  # fmt: skip
    assert words == [w for w, _, _ in expected]
    assert [(t.layer, t.head) for t in targets] == [head for _, head, _ in expected]
    start = example.input_ids.index(model.config.image_token_id)
    grid = int(n_img**0.5)
    for t, (_, _, objects) in zip(targets, expected, strict=True):
        assert torch.isclose(t.weights.sum(), torch.tensor(1.0))
        if objects is None:
            assert (t.start, t.weights.tolist()) == (0, [1.0])
            continue
        assert t.start == start
        inside = sum(box_cover(_scene().objects[k].box, grid) for k in objects) > 0
        assert torch.all(t.weights[~inside] == 0) and torch.all(t.weights[inside] > 0)
    (through,) = grounding_targets([example], {"x.png": _scene()}, tok, model.config.image_token_id, n_img, absent)
    firsts = [t.position for t in through if t.start == 0]  # the flag reaches example_targets
    assert firsts == [t.position for t, (_, _, objects) in zip(targets, expected, strict=True) if objects is None]
    text_only = encode_record(teacher.to_record("t", None, [("A triangle?", "Yes.")]), tok, n_img)
    assert grounding_targets([text_only], {}, tok, model.config.image_token_id, n_img) == [[]]


def test_counting_heads_share_their_look_between_the_first_token_and_each_object(parts):
    processor, model = parts
    tok, n_img, image_id = processor.tokenizer, model.config.image_seq_length, model.config.image_token_id
    qas = [
        ("Is there a blue triangle?", "Yes."), ("A red circle?", "No."), ("How many squares?", "None."),
        ("How many red shapes are there?", "One."),
    ]  # fmt: skip
    example = encode_record(teacher.to_record("r", "x.png", qas), tok, n_img)
    targets = example_targets(example, _scene(), word_ids(tok), image_id, n_img, count=True)
    counting = [t for t in targets if (t.layer, t.head) in (COUNT_HEAD, PAIR_COUNT_HEAD)]
    words = [tok.decode([example.input_ids[t.position]]).strip().removesuffix("###") for t in counting]
    # which objects of _scene() each one counts: a word's kind ("shapes": all); after a shape word or "shapes",
    # the colour named before it too
    expected = [
        ("blue", COUNT_HEAD, (1, 2)), ("triangle", COUNT_HEAD, (0, 1)), ("?", PAIR_COUNT_HEAD, (1,)),
        ("red", COUNT_HEAD, (0,)), ("circle", COUNT_HEAD, (2,)), ("?", PAIR_COUNT_HEAD, ()),
        ("squares", COUNT_HEAD, ()), ("?", PAIR_COUNT_HEAD, ()),
        ("red", COUNT_HEAD, (0,)), ("shapes", COUNT_HEAD, (0, 1, 2)), ("are", PAIR_COUNT_HEAD, (0,)),
    ]  # fmt: skip
    assert words == [w for w, _, _ in expected]
    assert [(t.layer, t.head) for t in counting] == [head for _, head, _ in expected]
    start, grid = example.input_ids.index(image_id), int(n_img**0.5)
    for t, (word, _, objects) in zip(counting, expected, strict=True):
        assert (t.start, len(t.weights)) == (0, start + n_img)
        assert torch.isclose(t.weights.sum(), torch.tensor(1.0))
        share = 1 / (len(objects) + 1)
        assert torch.isclose(t.weights[0], torch.tensor(share)), word
        assert torch.all(t.weights[1:start] == 0)
        each = [box_cover(_scene().objects[k].box, grid) for k in objects]  # each object as much as the first token
        assert torch.allclose(t.weights[start:], share * sum((c / c.sum() for c in each), torch.zeros(n_img)))
    # off by default; on, grounding_targets passes it down and leaves the other heads' targets as they were

    def plain(targets):
        return [(t.position, t.layer, t.head, t.start, t.weights.tolist()) for t in targets]

    assert plain(example_targets(example, _scene(), word_ids(tok), image_id, n_img)) == plain(
        t for t in targets if (t.layer, t.head) not in (COUNT_HEAD, PAIR_COUNT_HEAD)
    )
    (on,) = grounding_targets([example], {"x.png": _scene()}, tok, image_id, n_img, count=True)
    (off,) = grounding_targets([example], {"x.png": _scene()}, tok, image_id, n_img)
    assert plain(t for t in on if (t.layer, t.head) in (COUNT_HEAD, PAIR_COUNT_HEAD)) == plain(counting)
    assert plain(t for t in on if (t.layer, t.head) not in (COUNT_HEAD, PAIR_COUNT_HEAD)) == plain(off)
    # a stage asks for them with ground_count; a model without a fifth head is refused, the head named
    stage = StageConfig("t", 8, OptimConfig(steps=1, lr=1e-3, warmup=1), True, ground_weight=1.0, ground_count=True)
    (staged,) = stage_targets(stage, [example], {"x.png": _scene()}, tok, model.config)
    assert plain(staged) == plain(on)
    with pytest.raises(ValueError, match=r"\(0, 4\), \(1, 4\)"):
        check_heads(model, [on])
    # ground_count_center: the same positions and first-token shares, each object's share on the patches around
    # its box's centre; the other heads' targets as they were
    stage.ground_count_center = True
    (centred,) = stage_targets(stage, [example], {"x.png": _scene()}, tok, model.config)
    assert [(t.position, t.layer, t.head, t.start) for t in centred] == [p[:4] for p in plain(on)]
    for t, c in zip(centred, on, strict=True):
        if (t.layer, t.head) not in (COUNT_HEAD, PAIR_COUNT_HEAD):
            assert torch.equal(t.weights, c.weights)
            continue
        assert torch.isclose(t.weights.sum(), torch.tensor(1.0)) and t.weights[0] == c.weights[0]
        objects = [o for o in _scene().objects if box_cover(o.box, grid)[c.weights[start:] > 0].sum() > 0]
        assert torch.allclose(t.weights[start:], t.weights[0] * sum(
            (center_spread(o.box, grid) for o in objects), torch.zeros(n_img)
        ))  # fmt: skip


@pytest.mark.parametrize(
    ("box", "grid", "expected"),
    [
        ((0.25, 0.25, 0.5, 0.5), 4, {5: 1.0}),  # centre (0.375, 0.375): the middle of patch (1, 1)
        ((0.0, 0.0, 0.25, 0.5), 4, {0: 0.5, 4: 0.5}),  # centre (0.125, 0.25): between rows 0 and 1, column 0
        ((0.25, 0.25, 0.75, 0.75), 4, {5: 0.25, 6: 0.25, 9: 0.25, 10: 0.25}),  # the picture's centre: four patches
        ((0.95, 0.95, 1.0, 1.0), 4, {15: 1.0}),  # past the last patch centre: the corner patch
        ((0.1, 0.2, 0.3, 0.5), 8, {17: 0.63, 18: 0.07, 25: 0.27, 26: 0.03}),  # (0.2, 0.35): bilinear
    ],
)
def test_center_spread_puts_an_object_on_the_patches_around_its_centre(box, grid, expected):
    weights = center_spread(box, grid)
    assert weights.shape == (grid * grid,) and torch.isclose(weights.sum(), torch.tensor(1.0))
    assert {k: round(float(w), 6) for k, w in enumerate(weights) if w > 1e-9} == expected


@pytest.mark.parametrize("layer", [0, 1])
def test_hand_made_attention_is_the_models_own(parts, layer):
    processor, model = parts
    rng = random.Random(5)
    pictures = make_pictures(rng, 2, "g")
    n_img = model.config.image_seq_length
    examples = [encode_record(r, processor.tokenizer, n_img) for r in instruct_records(pictures, rng)]
    assert len(examples[0].input_ids) != len(examples[1].input_ids), "want a padded row"
    batch = collate(examples, processor.tokenizer.pad_token_id)
    feats = _features(model, processor, pictures).float()
    with torch.no_grad():
        _, layer_inputs = llava_logits(model, batch.input_ids, batch.attention_mask, feats, keep_layers=2)
        eager = model.model.language_model(
            inputs_embeds=layer_inputs[0], attention_mask=batch.attention_mask, output_attentions=True
        ).attentions[layer]  # (B, heads, T, T)
        rows, positions, heads = [], [], []
        for b, e in enumerate(examples):
            for p in (n_img + 3, len(e.input_ids) // 2, len(e.input_ids) - 1):
                for h in range(model.config.text_config.num_attention_heads):
                    rows.append(b), positions.append(p), heads.append(h)
        rows, positions, heads = map(torch.tensor, (rows, positions, heads))
        logp = attention_logprobs(model, layer_inputs[layer], layer, batch.attention_mask, rows, positions, heads)
    assert torch.allclose(logp.exp(), eager[rows, heads, positions], atol=1e-5)


def test_grounding_loss_teaches_the_head_to_look(tiny_ckpt):
    processor = AutoProcessor.from_pretrained(tiny_ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt)
    rng = random.Random(7)
    pictures = make_pictures(rng, 16, "g")
    n_img, image_id = model.config.image_seq_length, model.config.image_token_id
    examples = [encode_record(r, processor.tokenizer, n_img) for r in instruct_records(pictures, rng)]
    scenes = {p.name: p.scene for p in pictures}
    ground = grounding_targets(examples, scenes, processor.tokenizer, image_id, n_img)
    assert sum(map(len, ground)) > 16
    feats = _features(model, processor, pictures)
    index = {p.name: i for i, p in enumerate(pictures)}
    batch = collate(examples, processor.tokenizer.pad_token_id)

    def measure(layer: int) -> float:
        only = [[t for t in row if t.layer == layer] for row in ground]
        with torch.no_grad():
            feats_in = feats[[index[n] for n in batch.images]]
            _, layer_inputs = llava_logits(model, batch.input_ids, batch.attention_mask, feats_in, keep_layers=2)
            return float(grounding_loss(model, layer_inputs, batch.attention_mask, only))

    before = [measure(0), measure(1)]
    cfg = StageConfig("t", 8, OptimConfig(steps=30, lr=3e-3, warmup=1), train_lm=True, ground_weight=1.0)
    run_stage(model, examples, feats, index, cfg, progress=False, ground=ground)
    after = [measure(0), measure(1)]
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1], (before, after)
    with pytest.raises(ValueError, match="only 1 layer inputs kept"):
        grounding_loss(model, (torch.zeros(len(examples), batch.input_ids.shape[1], 8),), batch.attention_mask, ground)
    with pytest.raises(ValueError, match="grounding targets"):
        run_stage(model, examples, feats, index, cfg, progress=False)


def _phrases(parts, question: str, answer: str):
    """The phrase targets of a one-turn chat about `_scene()`: (tokenizer, example, targets, image tokens)."""
    processor, model = parts
    tok, n_img, image_id = processor.tokenizer, model.config.image_seq_length, model.config.image_token_id
    example = encode_record(teacher.to_record("r", "x.png", [(question, answer)]), tok, n_img)
    return tok, example, phrase_targets(example, _scene(), TokenText(tok), image_id, n_img), n_img


def test_object_phrases_look_at_the_object_they_name(parts):
    answer = "There is a small blue triangle at the bottom right. There is a large green square."
    tok, example, targets, n_img = _phrases(parts, "Describe it.", answer)
    image_id = parts[1].config.image_token_id
    said = [(tok.decode([example.input_ids[t.position]]), (t.layer, t.head)) for t in targets]
    # the green square is not in the scene; "at" right after the shape word is example_targets' (NEXT_HEAD)
    assert said == [(" a", PHRASE_HEAD), (" small", PHRASE_HEAD), (" blue", PHRASE_HEAD)] + [
        (w, NEXT_HEAD) for w in (" the", " bottom")
    ]
    grid = int(n_img**0.5)
    blue_triangle = box_cover(_scene().objects[1].box, grid) > 0
    for t in targets:  # only the small blue triangle, not the large red one
        assert t.start == example.input_ids.index(image_id)
        assert torch.all(t.weights[~blue_triangle] == 0) and torch.all(t.weights[blue_triangle] > 0)


def test_phrases_without_a_size_count_in_answers_only(parts):
    answer = "The blue circle is at the top right. There is a blue triangle."
    tok, example, targets, n_img = _phrases(parts, "Where is the blue circle?", answer)
    said = [(tok.decode([example.input_ids[t.position]]).strip(), (t.layer, t.head)) for t in targets]
    # the question's "the blue circle" is not supervised; " is" right after the shape is example_targets'
    circle = [("The", PHRASE_HEAD), ("blue", PHRASE_HEAD)] + [(w, NEXT_HEAD) for w in ("at", "the", "top")]
    assert said == circle + [("a", PHRASE_HEAD), ("blue", PHRASE_HEAD)]
    grid = int(n_img**0.5)
    on_circle, on_triangle = (box_cover(_scene().objects[k].box, grid) > 0 for k in (2, 1))
    assert all(torch.all((t.weights > 0) == on_circle) for t in targets[:5])
    assert all(torch.all((t.weights > 0) == on_triangle) for t in targets[5:])


DESCRIBED = (
    "Here is a description of a picture. Two shapes on a light background: a small red circle at the bottom and a "
    "large blue square at the top right."
)


def _described(parts, hint: str = DESCRIBED):
    processor, model = parts
    tok = processor.tokenizer
    problem = {
        "question": "What color is the square in the description?", "choices": ["red", "blue"], "answer": 1,
        "hint": hint, "solution": "Read the description. The square is blue.",
    }  # fmt: skip
    return tok, encode_record(to_instruct("q", problem), tok, model.config.image_seq_length)


def _looked_at(tok, example, target) -> str:
    """The tokens a target weighs, joined."""
    return "".join(tok.decode([example.input_ids[target.start + k]]) for k in target.weights.nonzero().flatten())


def test_a_described_picture_is_looked_up_in_its_description(parts):
    tok, example = _described(parts)
    targets = described_targets(example, TokenText(tok), word_ids(tok))
    context_end = tok.decode(example.input_ids).index("Options:")
    said = [(tok.decode([example.input_ids[t.position]]).strip(), (t.layer, t.head), _looked_at(tok, example, t))
            for t in targets]  # fmt: skip
    red, blue = " a small red circle at the bottom", " a large blue square at the top right"
    # the options' words, then the answer's: shape and colour words find their object's phrase, and the token
    # after "square" (which says its colour next) looks there too; the question, before the description: nothing
    assert said == [
        ("red", COLOR_HEAD, red), ("blue", COLOR_HEAD, blue),
        ("square", SHAPE_HEAD, blue), ("is", NEXT_HEAD, blue), ("blue", COLOR_HEAD, blue),
    ]  # fmt: skip
    for t in targets:
        assert len(tok.decode(example.input_ids[: t.position])) > context_end
        assert torch.isclose(t.weights.sum(), torch.tensor(1.0)) and t.position > t.start
        on = t.weights[t.weights > 0]
        assert torch.allclose(on, on[0])  # evenly over the phrase
    # the answer's object phrase: article and colour at the object (its place words at it too, as in a picture)
    record = to_instruct("q", {
        "question": "Which object is highest?", "choices": ["the red circle", "the blue square"], "answer": 1,
        "hint": DESCRIBED, "solution": "The blue square is at the top right. So the object highest is the blue square.",
    })  # fmt: skip
    example_with_phrase = encode_record(record, tok, parts[1].config.image_seq_length)
    answer = [t for t in described_targets(example_with_phrase, TokenText(tok), word_ids(tok)) if t.head == 2]
    words = [tok.decode([example_with_phrase.input_ids[t.position]]).strip() for t in answer]
    assert words == ["The", "blue", "the", "blue"]
    assert all(_looked_at(tok, example_with_phrase, t) == blue for t in answer)


def test_described_counting_heads_no_description_and_off_unless_asked(parts):
    tok, example = _described(parts)
    counting = [t for t in described_targets(example, TokenText(tok), word_ids(tok), count=True) if t.head == 4]
    square = next(t for t in counting if (t.layer, t.head) == COUNT_HEAD and "square" in tok.decode(
        [example.input_ids[t.position]]))  # fmt: skip
    assert square.start == 0 and square.weights[0] == pytest.approx(0.5)  # the first token and one square
    assert _looked_at(tok, example, square).endswith(" a large blue square at the top right")
    # nothing described: no targets, and grounding_targets asks described_targets for examples without a picture
    tok, bare = _described(parts, hint="")
    assert described_targets(bare, TokenText(tok), word_ids(tok)) == []
    model = parts[1]
    image_id, n_img = model.config.image_token_id, model.config.image_seq_length
    [mine] = grounding_targets([example], {}, tok, image_id, n_img, described=True)
    plain = lambda t: (t.position, t.layer, t.head, t.start, t.weights.tolist())  # noqa: E731
    assert [plain(t) for t in described_targets(example, TokenText(tok), word_ids(tok))] == [
        plain(t) for t in mine if (t.layer, t.head) in (SHAPE_HEAD, COLOR_HEAD, NEXT_HEAD, PHRASE_HEAD)
    ]
    [without] = grounding_targets([example], {}, tok, image_id, n_img)  # off unless asked: only option look-ups
    assert {(t.layer, t.head) for t in without} <= {OPTION_HEAD, SPAN_HEAD, PICK_HEAD, MENTION_HEAD}


def test_object_is_a_after_a_colour_looks_at_that_colours_objects(parts):
    processor, model = parts
    tok, n_img, image_id = processor.tokenizer, model.config.image_seq_length, model.config.image_token_id
    linked = object_words(tok)
    assert linked is not None
    answer = "The blue object is a triangle. There is no green object."
    example = encode_record(teacher.to_record("r", "x.png", [("Which shape is blue?", answer)]), tok, n_img)
    words = word_ids(tok)
    plain = example_targets(example, _scene(), words, image_id, n_img)
    both = example_targets(example, _scene(), words, image_id, n_img, linked=linked)
    added = [t for t in both if all((t.position, t.layer, t.head) != (u.position, u.layer, u.head) for u in plain)]
    said = [tok.decode([example.input_ids[t.position]]).strip() for t in added]
    assert said == ["object", "is", "a"] and {(t.layer, t.head) for t in added} == {NEXT_HEAD}
    grid = int(n_img**0.5)
    blue = sum(box_cover(_scene().objects[k].box, grid) for k in (1, 2)) > 0  # the blue triangle and circle
    assert all(torch.equal(t.weights > 0, blue) for t in added)
    # the same in a description: the blue square's phrase; and off unless asked
    record = to_instruct("q", {
        "question": "Which shape is blue?", "choices": ["circle", "square"], "answer": 1, "hint": DESCRIBED,
        "solution": "Read the description. The blue object is a square.",
    })  # fmt: skip
    described = encode_record(record, tok, n_img)
    on = described_targets(described, TokenText(tok), words, linked=linked)
    off = {(t.position, t.layer, t.head) for t in described_targets(described, TokenText(tok), words)}
    added = [t for t in on if (t.position, t.layer, t.head) not in off]
    assert [tok.decode([described.input_ids[t.position]]).strip() for t in added] == ["object", "is", "a"]
    assert all((t.layer, t.head) == NEXT_HEAD for t in added)
    assert all(_looked_at(tok, described, t) == " a large blue square at the top right" for t in added)


def test_the_furthest_object_is_found_by_the_word_and_recalled_by_the_answer(parts):
    processor, model = parts
    tok, n_img, image_id = processor.tokenizer, model.config.image_seq_length, model.config.image_token_id
    turns = [
        ("Which object is furthest to the right?", "The blue circle is furthest to the right; it is at the top right."),
        ("Which object is furthest to the left?", "The red triangle is at the top left. So the object furthest to "
         "the left is the red triangle."),
    ]  # fmt: skip
    example = encode_record(teacher.to_record("r", "x.png", turns), tok, n_img)
    targets = extreme_targets(example, _scene(), TokenText(tok), image_id, n_img)
    said = lambda t: tok.decode([example.input_ids[t.position]]).strip()  # noqa: E731
    found = [t for t in targets if (t.layer, t.head) == EXTREME_HEAD]
    assert [said(t) for t in found] == ["right", "left"]
    grid = int(n_img**0.5)
    image = example.input_ids.index(image_id)
    for t, k in zip(found, (2, 0), strict=True):  # the blue circle (top right), the red triangle (top left)
        cover = box_cover(_scene().objects[k].box, grid)
        assert t.start == image and torch.allclose(t.weights, cover / cover.sum())
    recalls = [t for t in targets if (t.layer, t.head) == RECALL_HEAD]
    assert all(len(t.weights) == 1 and t.weights.item() == 1.0 for t in recalls)
    # each answer's choosing words and the token before its repeated word look back at its own question's word
    assert [(said(t), t.start) for t in recalls] == [
        ("The", found[0].position), ("blue", found[0].position), ("the", found[0].position),
        ("The", found[1].position), ("red", found[1].position), ("the", found[1].position),
        ("the", found[1].position), ("red", found[1].position),
    ]  # fmt: skip
    assert all(example.labels[t.position] != -100 for t in recalls)
    # the choosing words (not the one before the repeated word) then look at the object itself
    chosen = [(said(t), t.weights) for t in targets if (t.layer, t.head) == CHOOSE_HEAD]
    assert [w for w, _ in chosen] == ["The", "blue", "The", "red", "the", "red"]
    assert all(torch.equal(w, f.weights) for (_, w), f in zip(chosen, [found[0]] * 2 + [found[1]] * 4, strict=True))
    # two objects nearly as far left: no clear answer, nothing supervised
    close = Scene(objects=(
        SceneObject("circle", "red", "small", (0.10, 0.1, 0.3, 0.3)),
        SceneObject("square", "blue", "small", (0.15, 0.6, 0.35, 0.8)),
    ))  # fmt: skip
    left = encode_record(teacher.to_record("r", "x.png", turns[1:]), tok, n_img)
    assert extreme_targets(left, close, TokenText(tok), image_id, n_img) == []
    assert len(extreme_targets(left, _scene(), TokenText(tok), image_id, n_img)) == 10
    # a word that is no single token has no query position that means it ("highest" here: h/i/g/he/st)
    highest = encode_record(
        teacher.to_record("r", "x.png", [("Which object is highest?", "The blue circle.")]), tok, n_img
    )
    assert len(tok(" highest", add_special_tokens=False).input_ids) > 1
    assert extreme_targets(highest, _scene(), TokenText(tok), image_id, n_img) == []
    # off unless asked
    scenes = {"x.png": _scene()}
    heads = lambda ts: {(t.layer, t.head) for t in ts}  # noqa: E731
    [off] = grounding_targets([example], scenes, tok, image_id, n_img)
    [on] = grounding_targets([example], scenes, tok, image_id, n_img, extreme=4.0)
    assert not heads(off) & {EXTREME_HEAD, RECALL_HEAD} and heads(on) >= {EXTREME_HEAD, RECALL_HEAD}
    assert len(on) == len(off) + len(targets)
    assert {(t.layer, t.head) for t in on if t.importance != 1.0} == {EXTREME_HEAD, CHOOSE_HEAD}
    assert {t.importance for t in on if (t.layer, t.head) in (EXTREME_HEAD, CHOOSE_HEAD)} == {4.0}


def test_a_targets_importance_counts_as_that_many_copies(parts):
    processor, model = parts
    tok, n_img, image_id = processor.tokenizer, model.config.image_seq_length, model.config.image_token_id
    example = encode_record(teacher.to_record("r", "x.png", [("What color is the circle?", "It is blue.")]), tok, n_img)
    targets = example_targets(example, _scene(), word_ids(tok), image_id, n_img)
    assert len(targets) >= 2
    a, rest = targets[0], targets[1:]
    heavy = Target(a.position, a.layer, a.head, a.start, a.weights, importance=3.0)
    mask = torch.ones(1, len(example.input_ids), dtype=torch.long)
    inputs = [
        torch.randn(
            1, len(example.input_ids), model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(k)
        )
        for k in range(4)
    ]
    with torch.no_grad():
        weighted = grounding_loss(model, inputs, mask, [[heavy, *rest]])
        copied = grounding_loss(model, inputs, mask, [[a, a, a, *rest]])
        plain = grounding_loss(model, inputs, mask, [[a, *rest]])
    assert torch.allclose(weighted, copied) and not torch.allclose(weighted, plain)


def _qcm(question: str, choices: list[str], answer: int, explanation: str, image: bool = False) -> dict:
    problem = {"question": question, "choices": choices, "answer": answer, "solution": explanation}
    return to_instruct("q", problem | ({"image": "image.png"} if image else {}))


def _keys(tok, example, target) -> str:
    return tok.decode(example.input_ids[target.start : target.start + len(target.weights)])


def test_the_letter_position_looks_up_the_option_the_answer_named(parts):
    processor, model = parts
    tok, n_img = processor.tokenizer, model.config.image_seq_length
    record = _qcm(
        "Which of these shapes is in the picture?", ["a red circle", "two", "a blue square"], 2,
        "A blue square has four sides. The other two are not there. There is a blue square.", image=True,
    )  # fmt: skip
    example = encode_record(record, tok, n_img)
    targets = option_targets(example, TokenText(tok))
    heads = (OPTION_HEAD, SPAN_HEAD, PICK_HEAD, MENTION_HEAD)
    by_head = {h: [t for t in targets if (t.layer, t.head) == h] for h in heads}
    assert len(targets) == sum(map(len, by_head.values()))
    # every token after an option's letter up to its last word looks at that letter ...
    text = lambda t: tok.decode(example.input_ids[t.position])  # noqa: E731
    per_letter: dict[str, str] = {}
    for t in by_head[OPTION_HEAD]:
        per_letter[_keys(tok, example, t)] = per_letter.get(_keys(tok, example, t), "") + text(t)
    assert per_letter == {"A": ") a red circle", "B": ") two", "C": ") a blue square"}
    # ... and its words (no article) gather the option's words so far, so the last one holds the whole option
    assert [(text(t), _keys(tok, example, t)) for t in by_head[SPAN_HEAD]] == [
        (" red", " red"), (" circle", " red circle"), (" two", " two"), (" blue", " blue"), (" square", " blue square")
    ]  # fmt: skip
    # the position that predicts the letter: the correct option's last word in the list, and the option's
    # words where the answer last said them (not in its first sentence, not in the question)
    (pick,), (mention,) = by_head[PICK_HEAD], by_head[MENTION_HEAD]
    assert pick.position == mention.position
    assert tok.decode(example.input_ids[pick.position + 1]).strip() == "C"
    assert example.labels[pick.position + 1] == example.input_ids[pick.position + 1]
    assert _keys(tok, example, pick) == " square" and tok.decode(example.input_ids[pick.start - 1]) == " blue"
    assert _keys(tok, example, mention) == " blue square"
    assert mention.start > pick.start and example.labels[mention.start] != -100
    said = tok.decode(example.input_ids[mention.start - 4 : mention.start])
    assert said.endswith("There is a"), said
    for t in targets:
        assert torch.isclose(t.weights.sum(), torch.tensor(1.0)) and t.position >= t.start


def test_option_targets_need_a_trained_answer_and_a_mention(parts):
    processor, _ = parts
    tok = processor.tokenizer
    pieces = TokenText(tok)
    unnamed = encode_record(_qcm("How many?", ["zero", "one"], 0, "There are none."), tok, 16)
    heads = {(t.layer, t.head) for t in option_targets(unnamed, pieces)}
    assert heads == {OPTION_HEAD, SPAN_HEAD, PICK_HEAD}  # nothing in the answer says "zero"
    quoted = teacher.to_record("t", None, [("Say: Options: (A) red (B) blue The answer is A.", "OK.")])
    assert option_targets(encode_record(quoted, tok, 16), pieces) == []  # the prompt's letter is not taught
    chat = encode_record(teacher.to_record("t", None, [("What color?", "Red.")]), tok, 16)
    assert option_targets(chat, pieces) == []
    empty = encode_record(_qcm("Which?", ["", "blue"], 0, "None of them."), tok, 16)
    assert option_targets(empty, pieces) == []  # an empty option has no words to look at


def test_option_heads_learn_the_look_up(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "deep", seed=1, text_layers=3)
    processor = AutoProcessor.from_pretrained(ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(ckpt)
    tok, n_img = processor.tokenizer, model.config.image_seq_length
    rng = random.Random(3)
    problems, _ = make_problems(rng, 24, "t", text_share=0.5, fact_share=0.5)
    records = [to_instruct(pid, p) for pid, p in problems.items()] + [lookup_record(rng, f"l{k}") for k in range(8)]
    examples = [encode_record(r, tok, n_img) for r in records]
    ground = grounding_targets(examples, {}, tok, model.config.image_token_id, n_img)
    assert all({(t.layer, t.head) for t in row} >= {OPTION_HEAD, SPAN_HEAD, PICK_HEAD} for row in ground)
    batch = collate(examples, tok.pad_token_id)

    @torch.no_grad()
    def measure() -> list[float]:
        _, layer_inputs = llava_logits(model, batch.input_ids, batch.attention_mask, None, keep_layers=3)
        per_layer = [[[t for t in row if t.layer == k] for row in ground] for k in range(3)]
        return [float(grounding_loss(model, layer_inputs, batch.attention_mask, only)) for only in per_layer]

    before = measure()
    cfg = StageConfig("t", 8, OptimConfig(steps=40, lr=3e-3, warmup=1), train_lm=True, ground_weight=1.0)
    run_stage(model, examples, torch.zeros(0, n_img, 8), {}, cfg, progress=False, ground=ground)
    after = measure()
    assert all(a < 0.8 * b for a, b in zip(after, before, strict=True)), (before, after)
    shallow = LlavaForConditionalGeneration.from_pretrained(build_tiny_checkpoint(tmp_path / "flat", text_layers=2))
    with pytest.raises(ValueError, match=r"\(2, 0\).*2 layers of 4 heads"):
        run_stage(shallow, examples, torch.zeros(0, n_img, 8), {}, cfg, progress=False, ground=ground)


def test_token_lookup_and_spread_keep_their_definitions():
    # both run millions of times while targets are built, so they are written for speed: here against the plain
    # definitions, on token texts with empty tokens and groups that name a position twice
    rng = random.Random(5)
    for _ in range(300):
        lengths = [rng.choice([0, 1, 1, 2, 3, 5]) for _ in range(rng.randint(1, 30))]
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        begin = rng.randint(-2, starts[-1] + 2)
        end = rng.randint(begin, starts[-1] + 3)
        assert _tokens(starts, begin, end) == [
            k for k in range(len(starts) - 1) if starts[k] < end and starts[k + 1] > begin
        ]
        width = rng.randint(1, 12)
        groups = [[rng.randrange(width) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(0, 4))]
        first_token = rng.random() < 0.3
        plain = torch.zeros(width)
        for group in groups:
            plain[group] += 1 / len(group)  # a position twice in one group takes its share once
        if first_token:
            plain[0] += 1.0
        got = _spread(groups, 0, width, first_token)
        if plain.sum() == 0:
            assert got is None
        else:
            assert torch.equal(got, plain / plain.sum())  # to the last bit


def test_the_count_read_out_reads_the_number_each_counting_look_counts(tmp_path):
    ckpt = build_tiny_checkpoint(tmp_path / "wide", seed=2, text_heads=8)
    processor = AutoProcessor.from_pretrained(ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(ckpt)
    tok, n_img = processor.tokenizer, model.config.image_seq_length
    qas = [
        ("How many shapes are there?", "Three."), ("How many red shapes are there?", "One."),
        ("Is there a blue circle?", "Yes."), ("How many circles?", "One."),
    ]  # fmt: skip
    example = encode_record(teacher.to_record("r", "x.png", qas), tok, n_img)
    stage = StageConfig("t", 8, OptimConfig(steps=1, lr=1e-3, warmup=1), True, ground_weight=1.0, ground_count=True)
    (targets,) = stage_targets(stage, [example], {"x.png": _scene()}, tok, model.config)
    # read out: the counting looks of a "how many" of a kind, each the number of _scene()'s objects it counts
    # ("red" 1, "are" after "red shapes" 1, "circles" 1, the token after it 1); not the whole picture's count, nor
    # the looks of other questions
    counted = count_targets(targets)
    words = [tok.decode([example.input_ids[p]]).strip().removesuffix("###") for p, _, _ in counted]
    assert list(zip(words, [(layer, n) for _, layer, n in counted], strict=True)) == [
        ("red", (0, 1)), ("are", (1, 1)), ("circles", (0, 1)), ("?", (1, 1)),
    ]  # fmt: skip
    assert sum((t.layer, t.head) in (COUNT_HEAD, PAIR_COUNT_HEAD) for t in targets) > len(counted)
    # in a packed row (`pack_by_picture`) each member's read-outs move with its tokens
    second = encode_record(teacher.to_record("r", "x.png", [("How many blue shapes are there?", "Two.")]), tok, n_img)
    (packed,) = pack_by_picture([example, second])
    (row,) = stage_targets(stage, [packed], {"x.png": _scene()}, tok, model.config)
    (alone,) = stage_targets(stage, [second], {"x.png": _scene()}, tok, model.config)
    assert count_targets(row) == [
        (packed.packed_index(k, p), layer, n)
        for k, m in enumerate((counted, count_targets(alone)))
        for p, layer, n in m
    ]
    assert [n for _, _, n in count_targets(alone)] == [2, 2]  # "blue", "are"
    # the loss: every position's read-out on the layers from its head's on, one cross-entropy over all of them
    batch = collate([example, example], tok.pad_token_id)
    torch.manual_seed(0)
    embeds = [torch.randn(2, batch.input_ids.shape[1], 16) for _ in range(2)]
    heads = [torch.nn.Linear(16, 5) for _ in range(2)]
    got = count_readout_loss(heads, embeds, [counted, counted[:2]])
    reads = [(layer, b, p, n) for layer in (0, 1) for b, row in enumerate([counted, counted[:2]])
             for p, head_layer, n in row if head_layer <= layer]  # fmt: skip
    want = torch.stack([
        torch.nn.functional.cross_entropy(heads[layer](embeds[layer][b, p]), torch.tensor(n))
        for layer, b, p, n in reads
    ]).mean()  # fmt: skip
    assert len(reads) == (2 + 1) + (4 + 2) and torch.isclose(got, want)  # layer 0: the layer-0 looks only
    assert float(count_readout_loss(heads, embeds, [[], []])) == 0.0
    # a stage with it: the counting heads are needed, no more layers than the LM has; it adds to the loss
    pictures = make_pictures(random.Random(4), 6, "c")
    examples = [encode_record(r, tok, n_img) for r in instruct_records(pictures, random.Random(4))]
    ground = stage_targets(stage, examples, {p.name: p.scene for p in pictures}, tok, model.config)
    feats, index = _features(model, processor, pictures), {p.name: i for i, p in enumerate(pictures)}
    stage.batch_size = 2
    start = {k: v.clone() for k, v in model.state_dict().items()}
    plain = run_stage(model, examples, feats, index, stage, progress=False, ground=ground)
    model.load_state_dict(start)
    stage.count_weight = 1.0
    read = run_stage(model, examples, feats, index, stage, progress=False, ground=ground)
    assert read.losses[0] > plain.losses[0]
    stage.count_layers = model.config.text_config.num_hidden_layers + 1
    with pytest.raises(ValueError, match="count_layers=3, the LM has 2"):
        run_stage(model, examples, feats, index, stage, progress=False, ground=ground)
    stage.count_layers, stage.ground_count = 2, False
    with pytest.raises(ValueError, match="needs the counting heads"):
        run_stage(model, examples, feats, index, stage, progress=False, ground=ground)
