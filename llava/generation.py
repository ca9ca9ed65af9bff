"""Streaming generation for one request: prefill once, then decode token by token over the KV cache.

The CLI, the model worker and the benchmarks all generate through `stream_generate`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from llava.errors import ContextOverflowError, PromptError
from llava.images import decode_base64
from llava.model.loader import LoadedModel

IMAGE_TOKEN = "<image>"


def cache_argument(model: torch.nn.Module) -> str:
    """The name `forward` takes the KV cache under: `cache` from transformers 5.24 on, where the older
    `past_key_values` still works but warns (and goes in 5.40); `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass(slots=True)
class GenerationParams:
    temperature: float = 0.2  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass kept
    max_new_tokens: int = 256  # further capped by the context left after the prompt
    stop: tuple[str, ...] = ()  # strings that end the answer; trimmed from the output
    seed: int | None = None  # fixes sampling for reproducible runs

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 5.0:
            raise PromptError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise PromptError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        self.stop = tuple(s for s in self.stop if s)


@dataclass(slots=True)
class Delta:
    """The state of a generation after each step: all text generated so far, stop strings trimmed."""

    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None = None  # None while running; "stop" or "length" at the end
    timings: dict[str, float] = field(default_factory=dict)  # "first_token_s", "total_s" once known


def prepare_inputs(loaded: LoadedModel, prompt: str, images: Sequence[Image.Image | str]) -> dict[str, torch.Tensor]:
    """Tokenize the prompt and preprocess the images; one image per `<image>` in the prompt."""
    processor = loaded.processor
    image_token = getattr(processor, "image_token", IMAGE_TOKEN)
    wanted = prompt.count(image_token)
    if wanted != len(images):
        raise PromptError(
            f"the prompt has {wanted} {image_token} token(s) but {len(images)} image(s) were sent; "
            f"send exactly one image per {image_token}"
        )
    pil = [decode_base64(im) if isinstance(im, str) else im for im in images]
    inputs = processor(text=prompt, images=pil or None, return_tensors="pt")
    model = loaded.model
    out: dict[str, torch.Tensor] = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.to(model.device)
        out[key] = value.to(model.dtype) if value.is_floating_point() else value
    return out


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """Next token from the last position's logits (vocab,): greedy at temperature 0, else top-p sampling."""
    if temperature < 1e-5:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that may be the start of a stop string (or half a UTF-8 char)."""
    if text.endswith("\ufffd"):
        return 1
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def eos_token_ids(loaded: LoadedModel) -> set[int]:
    ids: set[int] = set()
    gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, getattr(loaded.processor.tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids


@torch.inference_mode()
def stream_generate(
    loaded: LoadedModel,
    prompt: str,
    images: Sequence[Image.Image | str] = (),
    params: GenerationParams | None = None,
) -> Iterator[Delta]:
    """Yield a `Delta` after every decoded token whose text is safe to show; the last one has a finish_reason.

    Closing the iterator (a client went away) stops the computation at the next token.
    """
    params = params or GenerationParams()
    start = time.perf_counter()
    inputs = prepare_inputs(loaded, prompt, images)
    prompt_len = inputs["input_ids"].shape[1]
    room = loaded.context_len - prompt_len
    if room < 1:
        image_id = getattr(loaded.model.config, "image_token_id", None)
        n_image = int((inputs["input_ids"] == image_id).sum()) if image_id is not None else 0
        raise ContextOverflowError(
            f"the prompt is {prompt_len} tokens ({n_image} of them for {len(images)} image(s)), "
            f"but this model's context holds {loaded.context_len}; shorten the conversation or start a new one"
        )
    budget = min(params.max_new_tokens, room)
    tokenizer = loaded.processor.tokenizer
    eos = eos_token_ids(loaded)
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=loaded.model.device).manual_seed(params.seed)

    model = loaded.model
    cache = cache_argument(model)
    out = model(**inputs, use_cache=True)  # prefill: (1, T, vocab)
    past = getattr(out, cache)
    logits = out.logits[0, -1]
    ids: list[int] = []
    shown = 0
    timings: dict[str, float] = {}
    finish = "length"
    text = ""
    for _ in range(budget):
        token = sample(logits, params.temperature, params.top_p, generator)
        if token in eos:
            finish = "stop"
            break
        ids.append(token)
        timings.setdefault("first_token_s", time.perf_counter() - start)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
            finish = "stop"
            break
        visible = len(text) - _held_back(text, params.stop)
        if visible > shown:
            shown = visible
            yield Delta(text[:visible], prompt_len, len(ids), None, timings)
        if len(ids) == budget:
            break
        step = torch.tensor([[token]], device=model.device)
        out = model(input_ids=step, use_cache=True, **{cache: past})
        past = getattr(out, cache)
        logits = out.logits[0, -1]
    timings["total_s"] = time.perf_counter() - start
    timings.setdefault("first_token_s", timings["total_s"])
    yield Delta(text.removesuffix("\ufffd"), prompt_len, len(ids), finish, timings)


def generate(
    loaded: LoadedModel,
    prompt: str,
    images: Sequence[Image.Image | str] = (),
    params: GenerationParams | None = None,
) -> Delta:
    """The whole answer at once (the last `Delta` of the stream)."""
    last: Delta | None = None
    for last in stream_generate(loaded, prompt, images, params):  # noqa: B007
        pass
    assert last is not None
    return last
