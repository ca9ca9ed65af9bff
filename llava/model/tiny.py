"""Offline builders for LLaVA checkpoints: tokenizer, processor, config and a tiny random-weight model.

The shipped checkpoints are made by `llava/train` with these same functions (bigger sizes, trained
weights); tests build the tiny one on the fly.  Everything runs offline: no hub, no downloads.

    python -m llava.model.tiny OUT_DIR [--seed 0] [--image-size 32] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import logging as hf_logging

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)  # ids 0..4, in this order
CONV_TEMPLATE_KEY = "conv_template"  # extra key in config.json naming the llava.conversation template

# --- default corpus -----------------------------------------------------------------------------

_TEMPLATE_TEXTS = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language.",
    "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.<|im_end|>",
    "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|><|im_start|>assistant\n",
    "###Human: <image>\nWhat is unusual about this image?###Assistant: Nothing is unusual.###",
    "###Human: Why?###Assistant:",
    "USER: <image>\nDescribe the image in detail. ASSISTANT: The image shows shapes.</s>",
    "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n<image>\nWhat is this? [/INST] A shape. </s><s>",
    "Question: Which shape is red?\nContext: The image shows shapes.\nOptions: (A) circle (B) square (C) triangle",
    "Question: How many shapes are there?\nContext: \nOptions: (A) one (B) two (C) three (D) four",
    "LECTURE: Shapes have colors and sizes. SOLUTION: Look at the image.\nThe answer is A.",
    "The answer is A. The answer is B. The answer is C. The answer is D.",
    "Yes, there is. No, there is not. Yes. No.",
)

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
COUNT_WORDS = ("one", "two", "three", "four")
POSITIONS = ("left", "right", "top", "bottom", "center")


def _shape_world_texts() -> list[str]:
    """Questions and answers about the synthetic world, so its words become single tokens."""
    texts = []
    for color, shape in itertools.product(COLORS, SHAPES):
        texts += [
            f"What color is the {shape}?###Assistant: The {shape} is {color}.###",
            f"What shape is the {color} object? It is a {shape}.",
            f"Is there a {color} {shape} in the image? Yes, there is a {color} {shape}.",
            f"Where is the {color} {shape}? The {color} {shape} is on the "
            f"{POSITIONS[len(color + shape) % len(POSITIONS)]}.",
        ]
        for size in SIZES:
            texts.append(f"There is a {size} {color} {shape}. A {size} {color} {shape}.")
    for n, (word, plural) in enumerate(itertools.product(COUNT_WORDS, [s + "s" for s in SHAPES + COLORS])):
        texts.append(f"How many {plural} are there? There are {word} {plural}. {n % 4 + 1}")
    for word, digit in zip(COUNT_WORDS, "1234", strict=True):
        texts.append(f"How many shapes are there in the image? There are {word} ({digit}) shapes.")
    texts += [f"It is at the {p} of the image, on the {p} side, in the {p}." for p in POSITIONS]
    texts.append(
        "Describe the image in detail. The image shows a large red circle on the left, "
        "two blue squares at the top, and a small green triangle in the center of a light background."
    )
    return texts


DEFAULT_CORPUS: tuple[str, ...] = _TEMPLATE_TEXTS + tuple(_shape_world_texts())


# --- tokenizer, processor, config ---------------------------------------------------------------


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (Llama-like: BOS prepended, `<image>` one special id) on `corpus`."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        image_token=IMAGE,  # becomes `tokenizer.image_token`, which LlavaProcessor reads
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        padding_side="left",  # batched generation pads on the left
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """A LlavaProcessor whose `<image>` expands to (image_size // patch_size)**2 tokens."""
    image_processor = CLIPImageProcessorPil(  # the PIL backend: no torchvision here
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    # CLIP adds a CLS token (+1) that the "default" strategy drops again (-1).
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE,
    )


def build_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int,
    patch_size: int,
    vision_hidden: int,
    vision_layers: int,
    vision_heads: int,
    text_hidden: int,
    text_layers: int,
    text_heads: int,
    text_intermediate: int,
    max_position_embeddings: int,
) -> LlavaConfig:
    """A LlavaConfig (CLIP ViT + Llama) sized as asked, with the tokenizer's special ids."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_intermediate,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),  # `image_token_id` is an alias of this
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,  # penultimate ViT layer, as in the paper
        vision_feature_select_strategy="default",  # drop CLS, keep the patch grid
        projector_hidden_act="gelu",
    )


def save_checkpoint(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    out_dir: str | Path,
    conv_template: str = "llava_v0",
) -> Path:
    """Save model (safetensors), processor and a generation config stopping at `</s>`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = processor.tokenizer
    setattr(model.config, CONV_TEMPLATE_KEY, conv_template)  # transformers keeps unknown config keys
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


# --- the tiny checkpoint ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TinySizes:
    """Sizes of the tiny checkpoint; each field is also a CLI flag (`--image-size` ...)."""

    vocab_size: int = 1024  # BPE vocabulary incl. special tokens
    image_size: int = 32  # pixels, square
    patch_size: int = 8  # ViT patch; 32 / 8 -> 16 image tokens
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 128
    max_position_embeddings: int = 512


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Write a random-weight LLaVA checkpoint folder; same seed, same weights."""
    s = TinySizes(**sizes)
    tokenizer = train_tokenizer(DEFAULT_CORPUS, s.vocab_size)
    tokenizer.model_max_length = s.max_position_embeddings
    processor = build_processor(tokenizer, s.image_size, s.patch_size)
    config_sizes = {k: v for k, v in dataclasses.asdict(s).items() if k != "vocab_size"}
    config = build_config(tokenizer, **config_sizes)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    return save_checkpoint(model, processor, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llava.model.tiny", description=build_tiny_checkpoint.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    for field in dataclasses.fields(TinySizes):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=field.default)
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(TinySizes)}
    start = time.perf_counter()
    out = build_tiny_checkpoint(args.out_dir, seed=args.seed, **sizes)
    print(out.resolve())
    print(f"built in {time.perf_counter() - start:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
