"""CLIP pre-training pieces: region targets from boxes, the region loss, and the corpus's option look-ups."""

from __future__ import annotations

import random

import pytest
import torch

from llava.data.scienceqa import ANSWER_RE
from llava.data.world import Scene, SceneObject, sample_scene
from llava.model.tiny import build_config, train_tokenizer
from llava.train.clip import (
    PAIRS,
    PHRASES,
    PLACED_PHRASES,
    SUMMARY_CLASSES,
    ClipConfig,
    build_clip,
    center_loss,
    object_centers,
    patch_targets,
    place_probe,
    pretrain_clip,
    region_accuracy,
    region_targets,
    scene_summary,
    summary_loss,
)
from llava.train.corpus import LOOKUP_WORDS, build_corpus, lookup_record
from llava.train.loop import OptimConfig


def test_region_weights_cover_exactly_the_box():
    obj = SceneObject("square", "red", "large", (0.5, 0.25, 0.75, 0.5))  # patches (row 1, cols 2) on a 4x4 grid
    weights, labels = region_targets([Scene((obj,))], grid=4)
    assert weights.shape == (1, 4, 16) and labels.tolist() == [[PHRASES.index("large red square"), -1, -1, -1]]
    grid = weights[0, 0].view(4, 4)
    assert grid[1, 2] == pytest.approx(1.0) and grid.sum() == pytest.approx(1.0)
    straddle = SceneObject("circle", "blue", "small", (0.125, 0.0, 0.375, 0.25))  # half of cols 0 and 1, row 0
    w = region_targets([Scene((straddle,))], grid=4)[0][0, 0].view(4, 4)
    assert w[0, 0] == pytest.approx(0.5) and w[0, 1] == pytest.approx(0.5) and w[1:].sum() == 0


def test_region_weights_for_random_scenes_sum_to_one():
    scenes = [sample_scene(random.Random(i)) for i in range(20)]
    weights, labels = region_targets(scenes, grid=8)
    for n, scene in enumerate(scenes):
        assert (labels[n] >= 0).sum() == len(scene.objects)
        sums = weights[n].sum(-1)
        assert torch.allclose(sums[: len(scene.objects)], torch.ones(len(scene.objects)))
        assert sums[len(scene.objects) :].sum() == 0


def test_patch_targets_label_the_patches_a_box_covers_enough():
    square = SceneObject("square", "red", "large", (0.5, 0.25, 0.75, 0.5))  # exactly patch (1, 2) of 4x4
    straddle = SceneObject("circle", "blue", "small", (0.0, 0.625, 0.125, 0.875))  # half of (2, 0) and (3, 0)
    labels = patch_targets([Scene((square, straddle))], grid=4, cover=0.25).view(4, 4)
    red, blue = PHRASES.index("large red square"), PHRASES.index("small blue circle")
    assert labels[1, 2] == red and labels[2, 0] == blue and labels[3, 0] == blue
    assert (labels >= 0).sum() == 3
    strict = patch_targets([Scene((square, straddle))], grid=4, cover=0.6).view(4, 4)
    assert strict[1, 2] == red and (strict >= 0).sum() == 1  # the halves fall short of 0.6
    placed = patch_targets([Scene((square, straddle))], grid=4, cover=0.25, placed=True).view(4, 4)
    assert PLACED_PHRASES[placed[1, 2]] == "large red square in the center"  # centre (0.625, 0.375)
    assert PLACED_PHRASES[placed[2, 0]] == PLACED_PHRASES[placed[3, 0]] == "small blue circle at the bottom left"
    assert len(PLACED_PHRASES) == 9 * len(PHRASES) == len(set(PLACED_PHRASES))


def test_patch_targets_for_random_scenes_name_only_their_objects():
    scenes = [sample_scene(random.Random(i)) for i in range(20)]
    labels = patch_targets(scenes, grid=8, cover=0.25)
    for n, scene in enumerate(scenes):
        named = {PHRASES[i] for i in labels[n].tolist() if i >= 0}
        assert named == {f"{o.size} {o.color} {o.shape}" for o in scene.objects}  # every object has a patch


def test_scene_summary_counts_kinds_and_pairs():
    box = (0.1, 0.1, 0.2, 0.2)
    scene = Scene(
        (
            SceneObject("circle", "red", "small", box),
            SceneObject("circle", "red", "large", (0.5, 0.5, 0.8, 0.8)),
            SceneObject("square", "blue", "small", (0.1, 0.6, 0.2, 0.7)),
        )
    )
    counts, present = scene_summary([scene, Scene((SceneObject("triangle", "orange", "small", box),))])
    # objects - 1, then red green blue yellow purple orange, then circle square triangle
    assert counts.tolist() == [[2, 2, 0, 1, 0, 0, 0, 2, 1, 0], [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]]
    assert {PAIRS[i] for i in present[0].nonzero().flatten().tolist()} == {("red", "circle"), ("blue", "square")}
    assert present[1].sum() == 1 and present[1, PAIRS.index(("orange", "triangle"))] == 1


def test_summary_loss_is_low_only_for_the_right_read_out():
    scenes = [sample_scene(random.Random(i)) for i in range(6)]
    counts, present = scene_summary(scenes)
    right = torch.full((6, 5, SUMMARY_CLASSES), -20.0)
    kinds = counts.shape[1] - 1
    for n in range(6):
        right[n, :, counts[n, 0]] = 20.0
        for k in range(kinds):
            right[n, :, 4 + k * 5 + counts[n, 1 + k]] = 20.0
        right[n, :, -len(PAIRS) :] = present[n] * 40 - 20
    assert summary_loss(right, counts, present) < 1e-6
    wrong = right.roll(1, dims=0)  # each scene read as another's
    assert summary_loss(wrong, counts, present) > 1.0
    with pytest.raises(ValueError, match="67 logits, got 66"):
        summary_loss(right[..., :-1], counts, present)


def test_object_centers_mark_the_patches_an_object_covers():
    scene = Scene((SceneObject("square", "red", "large", (0.0, 0.0, 0.5, 0.5)),))
    centers = object_centers([scene], 4, cover=0.25)
    covered = ~centers[0, :, 0].isnan()
    assert covered.view(4, 4)[:2, :2].all() and covered.sum() == 4
    assert torch.equal(centers[0, 0], torch.tensor([0.25, 0.25]))
    head = torch.nn.Linear(3, 2)  # a read-out that is right: hidden carries the centre in its first two units
    with torch.no_grad():
        head.weight.copy_(torch.eye(2, 3))
        head.bias.zero_()
    hidden = torch.zeros(1, 16, 3)
    hidden[0, covered, :2] = 0.25
    with torch.no_grad():
        assert float(center_loss(head, hidden, centers)) < 1e-12
        assert float(center_loss(head, torch.zeros(1, 16, 3), centers)) == pytest.approx(0.0625)


def test_place_probe_reads_places_only_where_the_patches_carry_them():
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(200)]
    placed = torch.eye(16).repeat(len(scenes), 1, 1)  # each patch says which patch it is: the centre is linear in it
    r2 = place_probe(placed, scenes)
    assert r2["place_r2_x"] > 0.9 and r2["place_r2_y"] > 0.9
    blind = torch.randn(len(scenes), 16, 16, generator=torch.Generator().manual_seed(0))
    r2 = place_probe(blind, scenes)
    assert r2["place_r2_x"] < 0.3 and r2["place_r2_y"] < 0.3
    assert place_probe(placed[:10], scenes[:10]) == {}  # fewer objects to fit on than unknowns


@pytest.fixture(scope="module")
def tiny_clip():
    tokenizer = train_tokenizer(build_corpus(100, 20, 0), 400)
    cfg = build_config(
        tokenizer, image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2,
        text_hidden=48, text_layers=2, text_heads=2, text_intermediate=96, max_position_embeddings=256,
    )  # fmt: skip
    return tokenizer, cfg


@pytest.mark.parametrize("region_weight", [0.0, 1.0])
def test_pretraining_runs_with_and_without_the_region_losses(tiny_clip, region_weight):
    tokenizer, cfg = tiny_clip
    torch.manual_seed(0)
    clip_cfg = ClipConfig(
        text_hidden=32, text_layers=1, text_heads=2, batch_size=8, region_weight=region_weight,
        patch_weight=region_weight, summary_weight=region_weight, center_weight=region_weight,
        hard_negatives=region_weight == 0, optim=OptimConfig(steps=3, lr=1e-3, warmup=1),
    )  # fmt: skip
    clip = build_clip(cfg.vision_config, tokenizer, clip_cfg)
    scenes = [sample_scene(random.Random(i)) for i in range(60)]  # enough held-out objects for `place_probe`
    pixels = torch.randint(0, 255, (60, 3, 32, 32), dtype=torch.uint8)
    before = clip.vision_model.embeddings.patch_embedding.weight.clone()
    history = pretrain_clip(
        clip, tokenizer, pixels[:16], scenes[:16], clip_cfg, lambda x: x.float() / 255, holdout=(pixels, scenes),
        progress=False,
    )  # fmt: skip
    assert len(history.losses) == 3 and all(v > 0 for v in history.losses)
    assert not torch.equal(before, clip.vision_model.embeddings.patch_embedding.weight)
    assert {"region", "region_color", "region_shape", "region_size", "patch_l-2", "color"} <= set(history.evals)
    assert ({"summary_count", "summary_kind", "summary_pairs"} <= set(history.evals)) == bool(region_weight)
    assert {"place_r2_x", "place_r2_y"} <= set(history.evals)  # every run says how well its patches tell places
    acc = region_accuracy(clip, tokenizer, pixels[:8].float() / 255, scenes[:8])
    assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_lookup_records_name_the_right_letter():
    rng = random.Random(0)
    for k in range(200):
        record = lookup_record(rng, f"l{k}")
        human, answer = (t["value"] for t in record["conversations"])
        listed = human.split("Options: ")[1]
        letter = ANSWER_RE.search(answer).group(1)
        said = answer.split("It is ")[1].split(". The answer")[0]
        assert said in LOOKUP_WORDS
        assert f"({letter}) {said}" in listed
        assert "image" not in record


def test_corpus_holds_the_lookups():
    base = build_corpus(20, 5, 0)
    more = build_corpus(20, 5, 0, n_lookups=7)
    assert more[: len(base)] == base and len(more) == len(base) + 7
    assert all("The answer is" in t for t in more[len(base) :])
