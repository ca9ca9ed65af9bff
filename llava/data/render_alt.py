"""A second, independently built renderer: the check that a model is not tied to our own pixels.

It shares nothing with `world.render` but the scene description. Shapes are rasterised in numpy from
analytic inside-tests on a supersampled grid (anti-aliased edges by area coverage), triangles are
equilateral instead of box-filling, colours come from another palette (ColorBrewer Set1 shades) with their
own jitter, backgrounds are off-white paper tints, and the resolution is anything from 96 to 512 pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from llava.data.world import Scene, SceneObject

ALT_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (228, 26, 28),
    "green": (77, 175, 74),
    "blue": (55, 126, 184),
    "yellow": (255, 215, 0),
    "purple": (152, 78, 163),
    "orange": (255, 127, 0),
}
PAPER_TINTS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 240),  # ivory
    (250, 240, 230),  # linen
    (245, 245, 220),  # beige
    (240, 255, 240),  # honeydew
    (240, 248, 255),  # alice blue
    (245, 245, 245),  # white smoke
    (253, 245, 230),  # old lace
    (255, 255, 255),  # white
)


@dataclass(frozen=True, slots=True)
class AltStyle:
    resolution: int = 256  # pixels, square, 96..512
    background: tuple[int, int, int] = (250, 240, 230)
    supersample: int = 4  # samples per pixel side; 4 -> 16 coverage samples per pixel
    shade_jitter: int = 12  # max per-channel deviation from the palette shade
    seed: int = 0  # picks the shade deviations


def random_alt_style(rng: random.Random) -> AltStyle:
    return AltStyle(resolution=rng.randint(96, 512), background=rng.choice(PAPER_TINTS), seed=rng.randrange(2**31))


def _coverage(obj: SceneObject, res: int, ss: int) -> tuple[slice, slice, np.ndarray]:
    """Fraction of each pixel (within the object's pixel bbox) covered by the shape, shape (h, w)."""
    x1, y1, x2, y2 = (v * res for v in obj.box)
    c0, c1 = max(0, int(np.floor(x1)) - 1), min(res, int(np.ceil(x2)) + 1)
    r0, r1 = max(0, int(np.floor(y1)) - 1), min(res, int(np.ceil(y2)) + 1)
    # sample points at sub-pixel centres, in pixel units
    xs = c0 + (np.arange((c1 - c0) * ss) + 0.5) / ss
    ys = r0 + (np.arange((r1 - r0) * ss) + 0.5) / ss
    X, Y = np.meshgrid(xs, ys)  # (h*ss, w*ss)
    cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    if obj.shape == "circle":
        inside = (X - cx) ** 2 + (Y - cy) ** 2 <= half**2
    elif obj.shape == "square":
        inside = (np.abs(X - cx) <= half) & (np.abs(Y - cy) <= half)
    elif obj.shape == "triangle":  # equilateral, base = box width, centred vertically
        h = half * np.sqrt(3.0)
        t = (Y - (cy - h / 2)) / h  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(X - cx) <= t * half)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")
    cov = inside.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))
    return slice(r0, r1), slice(c0, c1), cov


def render_alt(scene: Scene, style: AltStyle | None = None) -> Image.Image:
    """Draw the scene anti-aliased at `style.resolution` pixels."""
    style = style or AltStyle()
    if not 16 <= style.resolution <= 4096:
        raise ValueError(f"resolution must be 16..4096 pixels, got {style.resolution}")
    res = style.resolution
    canvas = np.empty((res, res, 3), dtype=np.float32)
    canvas[:] = style.background
    shade_rng = np.random.default_rng(style.seed)
    for obj in scene.objects:
        deviation = shade_rng.integers(-style.shade_jitter, style.shade_jitter + 1, size=3)
        color = np.clip(np.array(ALT_PALETTE[obj.color]) + deviation, 0, 255).astype(np.float32)
        rows, cols, cov = _coverage(obj, res, style.supersample)
        patch = canvas[rows, cols]
        canvas[rows, cols] = patch * (1 - cov[..., None]) + color * cov[..., None]
    return Image.fromarray(np.round(canvas).astype(np.uint8))
