"""The world: scene sampling, both renderers, and the symbolic context (captions + boxes)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llava.data.render_alt import ALT_PALETTE, AltStyle, random_alt_style, render_alt
from llava.data.world import (
    PALETTE,
    SIDE,
    RenderStyle,
    Scene,
    SceneObject,
    full_caption,
    random_style,
    region_of,
    render,
    sample_scene,
    scene_context,
)
from llava.model.tiny import COLORS, SHAPES

SCENES = [sample_scene(random.Random(seed)) for seed in range(200)]


def _inner_point(obj: SceneObject, res: int) -> tuple[int, int]:
    """A pixel well inside the shape for both renderers (the triangle's lower middle)."""
    x1, y1, x2, y2 = obj.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if obj.shape == "triangle":
        cy = y1 + 0.65 * (y2 - y1)
    return int(cx * res), int(cy * res)


def test_scenes_are_valid():
    counts = {n: 0 for n in range(1, 5)}
    for scene in SCENES:
        counts[len(scene.objects)] += 1
        boxes = [o.box for o in scene.objects]
        for o in scene.objects:
            assert o.shape in SHAPES and o.color in COLORS
            assert all(0.0 <= v <= 1.0 for v in o.box)
            lo, hi = SIDE[o.size]
            assert lo - 0.002 <= o.box[2] - o.box[0] <= hi + 0.002
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], "boxes overlap"
    assert all(c > 25 for c in counts.values()), counts


def test_sampling_is_seeded():
    assert sample_scene(random.Random(7)) == sample_scene(random.Random(7))
    assert sample_scene(random.Random(7)) != sample_scene(random.Random(8))
    with pytest.raises(ValueError):
        sample_scene(random.Random(0), n_objects=5)
    with pytest.raises(ValueError):
        Scene(())


@pytest.mark.parametrize("res", [64, 97, 256])
def test_primary_renderer_draws_each_object_in_its_colour(res):
    for scene in SCENES[:30]:
        img = np.asarray(render(scene, RenderStyle(resolution=res)))
        assert img.shape == (res, res, 3)
        assert tuple(img[0, 0]) == (245, 245, 245)
        for o in scene.objects:
            x, y = _inner_point(o, res)
            assert tuple(img[y, x]) == PALETTE[o.color], (o, res)


def test_alt_renderer_is_antialiased_and_uses_its_own_shades():
    rng = random.Random(1)
    for scene in SCENES[:30]:
        style = random_alt_style(rng)
        assert 96 <= style.resolution <= 512
        img = np.asarray(render_alt(scene, style)).astype(int)
        assert img.shape == (style.resolution, style.resolution, 3)
        assert tuple(img[0, 0]) == style.background
        for o in scene.objects:
            x, y = _inner_point(o, style.resolution)
            assert np.abs(img[y, x] - ALT_PALETTE[o.color]).max() <= style.shade_jitter, o
        # anti-aliasing: edge pixels are mixtures of shape and background
        n_colours = len(np.unique(img.reshape(-1, 3), axis=0))
        assert n_colours > len(scene.objects) + 1
        if any(o.shape != "square" for o in scene.objects):  # slanted and curved edges: many mixtures
            assert n_colours > 5 * (len(scene.objects) + 1)


def test_primary_edges_are_hard():
    img = np.asarray(render(SCENES[0], RenderStyle(resolution=128)))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) == len({o.color for o in SCENES[0].objects}) + 1


def test_renderers_agree_on_where_objects_are():
    rng = random.Random(2)
    for scene in SCENES[:20]:
        a = np.asarray(render(scene, RenderStyle(resolution=128))).astype(int)
        b = np.asarray(render_alt(scene, AltStyle(resolution=128, background=(245, 245, 245)))).astype(int)
        ink_a = np.abs(a - 245).sum(-1) > 60
        ink_b = np.abs(b - 245).sum(-1) > 60
        iou = (ink_a & ink_b).sum() / (ink_a | ink_b).sum()
        assert iou > 0.6, (scene, iou)
        _ = rng


def test_random_style_varies_but_stays_light():
    rng = random.Random(3)
    styles = [random_style(rng, 3) for _ in range(50)]
    assert len({s.resolution for s in styles}) > 2
    assert all(min(s.background) >= 220 for s in styles)
    assert all(len(s.jitter) == 3 for s in styles)


@pytest.mark.parametrize(
    ("point", "region"),
    [
        ((0.1, 0.1), "top left"),
        ((0.5, 0.1), "top"),
        ((0.9, 0.5), "right"),
        ((0.5, 0.5), "center"),
        ((0.2, 0.9), "bottom left"),
    ],
)
def test_regions(point, region):
    assert region_of(point) == region


def test_context_has_five_captions_and_a_box_per_object():
    for scene in SCENES[:50]:
        ctx = scene_context(scene)
        assert len(ctx.captions) == 5
        assert len(ctx.boxes) == len(scene.objects)
        assert sorted(label for label, _ in ctx.boxes) == sorted(f"{o.color} {o.shape}" for o in scene.objects)
        text = ctx.to_text()
        assert text.count(": [") == len(scene.objects)
        assert ctx.to_json()["boxes"][0]["label"] == ctx.boxes[0][0]


def test_full_caption_names_every_object():
    scene = Scene(
        (
            SceneObject("circle", "red", "large", (0.05, 0.35, 0.37, 0.67)),
            SceneObject("square", "blue", "small", (0.75, 0.05, 0.92, 0.22)),
        )
    )
    assert full_caption(scene) == (
        "Two shapes on a light background: a large red circle on the left and a small blue square at the top right."
    )
    assert scene_context(scene).captions[1] == "A picture of one circle and one square."
    assert scene_context(scene).captions[2] == "There is one red shape and one blue shape."
