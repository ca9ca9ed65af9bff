"""The tiny offline LLaVA checkpoint: tokenizer, processor, config, and loading it back through `Auto*`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from llava.model.tiny import (
    DEFAULT_CORPUS,
    IMAGE,
    TinySizes,
    build_config,
    build_processor,
    build_tiny_checkpoint,
    train_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
PROMPT = f"{SYSTEM}###Human: <image>\nWhat color is the circle?###Assistant:"
SIZES = TinySizes()
N_IMAGE_TOKENS = (SIZES.image_size // SIZES.patch_size) ** 2


def _picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size, (245, 245, 245))
    ImageDraw.Draw(img).ellipse((8, 8, 30, 30), fill=(220, 30, 30))
    return img


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DEFAULT_CORPUS, vocab_size=SIZES.vocab_size)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    start = time.perf_counter()
    build_tiny_checkpoint(out, seed=0)
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def loaded(built):
    path, _ = built
    return AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


# --- tokenizer ----------------------------------------------------------------------------------


def test_special_tokens(tokenizer):
    assert [tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token] == [
        "<unk>",
        "<s>",
        "</s>",
        "<pad>",
    ]
    assert len({tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>", IMAGE)}) == 5
    assert tokenizer.image_token == IMAGE


def test_image_token_is_one_id_even_inside_text(tokenizer):
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    assert tokenizer.encode(IMAGE, add_special_tokens=False) == [image_id]
    ids = tokenizer.encode("Human: <image>\nWhat", add_special_tokens=False)
    assert ids.count(image_id) == 1
    assert tokenizer.decode(ids) == "Human: <image>\nWhat"


def test_bos_prepended_no_eos(tokenizer):
    ids = tokenizer("Hello there").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.eos_token_id not in ids


@pytest.mark.parametrize(
    "text",
    [
        PROMPT + " The circle is red.###",
        "###",
        "Human:",
        "Assistant:",
        "  two  spaces,\ttab\n\nand newlines \n",
        "USER: hi ASSISTANT: hello</s>",
        "Question: Which?\nOptions: (A) red (B) blue\nThe answer is A.",
        "unseen wörds ünïcode 日本 42",
    ],
)
def test_decode_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text


def test_skip_special_tokens_drops_markers(tokenizer):
    ids = tokenizer(f"Human: {IMAGE}\nHi###</s>").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Human: \nHi###"


def test_shape_world_words_are_single_tokens(tokenizer):
    words = "red green blue yellow purple orange circle square triangle small large left right top bottom center"
    for word in words.split():
        assert len(tokenizer.tokenize(" " + word)) == 1, word
    assert len(tokenizer.tokenize(SYSTEM)) < 40


def test_tokenizer_training_is_deterministic(tokenizer):
    again = train_tokenizer(DEFAULT_CORPUS, vocab_size=SIZES.vocab_size)
    assert again.get_vocab() == tokenizer.get_vocab()


# --- processor and config -----------------------------------------------------------------------


@pytest.mark.parametrize(("image_size", "patch_size"), [(32, 8), (48, 16), (28, 14)])
def test_processor_expands_image_to_patch_grid(tokenizer, image_size, patch_size):
    processor = build_processor(tokenizer, image_size, patch_size)
    enc = processor(images=_picture(), text=PROMPT, return_tensors="pt")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    assert enc.pixel_values.shape == (1, 3, image_size, image_size)
    assert int((enc.input_ids == image_id).sum()) == (image_size // patch_size) ** 2


def test_config_fields(tokenizer):
    sizes = {k: v for k, v in dataclasses.asdict(SIZES).items() if k != "vocab_size"}
    config = build_config(tokenizer, **sizes)
    assert config.image_token_id == config.image_token_index == tokenizer.convert_tokens_to_ids(IMAGE)
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.projector_hidden_act == "gelu"
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.text_config.pad_token_id == tokenizer.pad_token_id
    assert config.text_config.eos_token_id == tokenizer.eos_token_id


# --- the checkpoint folder ----------------------------------------------------------------------


def test_build_is_fast_and_small(built):
    path, seconds = built
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"tiny checkpoint: built in {seconds:.2f} s, {size / 1e6:.2f} MB")
    assert seconds < 30
    assert size < 5e6
    assert (path / "model.safetensors").exists()


def test_saved_metadata(built):
    path, _ = built
    config = json.loads((path / "config.json").read_text())
    assert config["conv_template"] == "llava_v0"
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["text_config"]["eos_token_id"]


def test_loads_with_auto_classes(loaded):
    processor, model = loaded
    assert isinstance(model, LlavaForConditionalGeneration)
    assert model.config.conv_template == "llava_v0"
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("</s>")
    assert processor.tokenizer.encode(IMAGE, add_special_tokens=False) == [model.config.image_token_id]


def test_forward_with_image(loaded):
    processor, model = loaded
    enc = processor(images=_picture(), text=PROMPT, return_tensors="pt")
    assert int((enc.input_ids == model.config.image_token_id).sum()) == N_IMAGE_TOKENS
    assert enc.input_ids[0, 0] == processor.tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc.input_ids.shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_generate_runs(loaded):
    processor, model = loaded
    enc = processor(images=_picture(), text=PROMPT, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= enc.input_ids.shape[1] + 4


def test_same_seed_same_weights(built, tmp_path):
    path, _ = built
    build_tiny_checkpoint(tmp_path / "again", seed=0)
    build_tiny_checkpoint(tmp_path / "other", seed=1)
    first = load_file(path / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run(
        [sys.executable, "-m", "llava.model.tiny", str(out), "--seed", "3", "--image-size", "48", "--patch-size", "16"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == out.resolve()
    assert "built in" in proc.stderr
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.crop_size["height"] == 48
    assert json.loads((out / "config.json").read_text())["image_seq_length"] == 9
