"""Shared fixtures: one tiny random-weight checkpoint per test session, built through the real builder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from llava.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llava-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_ckpt):
    from llava.model.loader import load_pretrained

    return load_pretrained(tiny_ckpt, device="cpu")


@pytest.fixture(scope="session")
def shapes_image() -> Image.Image:
    img = Image.new("RGB", (96, 64), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    draw.ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    draw.rectangle((56, 16, 88, 48), fill=(30, 80, 220))
    return img
