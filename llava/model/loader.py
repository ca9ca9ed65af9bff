"""Load any Hugging Face-format LLaVA folder: model, processor and context length."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch

from llava.errors import ModelLoadError

log = logging.getLogger(__name__)

# model_type values in config.json that AutoModelForImageTextToText maps to a LLaVA family class.
LLAVA_MODEL_TYPES = frozenset({"llava", "llava_next", "llava_onevision", "vipllava"})
DEFAULT_CONTEXT_LEN = 2048


class LoadedModel(NamedTuple):
    model: Any  # a transformers *ForConditionalGeneration in eval mode
    processor: Any  # the matching AutoProcessor (tokenizer + image processor)
    context_len: int  # tokens the language model attends over, image tokens included
    template: str | None  # conversation template the checkpoint declares, if any


def model_name_from_path(path: str | Path) -> str:
    """A worker's model name: the folder's last part, `parent_checkpoint-N` for training snapshots."""
    parts = [p for p in str(path).rstrip("/").split("/") if p]
    if not parts:
        raise ModelLoadError(f"cannot name a model from path {str(path)!r}")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16") from None


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, with errors that say what is wrong with the folder."""
    if not path.exists():
        raise ModelLoadError(f"model path {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {str(path)!r} is not a folder; pass a Hugging Face checkpoint folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{str(path)!r} has no config.json; it is not a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e
    model_type = config.get("model_type")
    if model_type not in LLAVA_MODEL_TYPES:
        raise ModelLoadError(
            f"{str(path)!r} holds a {model_type or 'unknown'!s} model, not a LLaVA one "
            f"(config.json model_type must be one of {sorted(LLAVA_MODEL_TYPES)})"
        )
    return config


def context_length(config: dict[str, Any]) -> int:
    text = config.get("text_config") or {}
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        if key in text:
            return int(text[key])
    return DEFAULT_CONTEXT_LEN


def load_pretrained(path: str | Path, device: str = "auto", dtype: str | torch.dtype = "auto") -> LoadedModel:
    """Load a LLaVA checkpoint folder for inference: CUDA when present, CPU otherwise."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar per load clutters worker logs

    path = Path(path)
    config = read_config(path)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype)
    except Exception as e:  # transformers raises many types; the user needs the folder and the cause
        raise ModelLoadError(f"failed to load the checkpoint in {str(path)!r}: {e}") from e
    model.to(device).eval()
    log.info("loaded %s on %s (%s)", path, device, torch_dtype)
    return LoadedModel(model, processor, context_length(config), config.get("conv_template"))
