"""Loading and generation on a tiny random checkpoint loaded through from_pretrained."""

import functools
import inspect
import json
import shutil

import pytest
import torch

from llava.conversation import conv_templates
from llava.errors import ContextOverflowError, ModelLoadError, PromptError
from llava.generation import GenerationParams, _held_back, eos_token_ids, generate, prepare_inputs, stream_generate
from llava.images import encode_base64
from llava.model.loader import load_pretrained, model_name_from_path


def _prompt(question: str = "What color is the circle?", image: bool = True) -> str:
    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], ("<image>\n" if image else "") + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def test_load_returns_model_processor_context(tiny_loaded):
    model, processor, context_len, template = tiny_loaded
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.tokenizer is not None
    assert context_len == 512
    assert template == "llava_v0"
    assert str(model.device) == "cpu"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("checkpoints/llava-shapes-chat", "llava-shapes-chat"),
        ("checkpoints/llava-shapes-chat/", "llava-shapes-chat"),
        ("/runs/llava-v1.5/checkpoint-500", "llava-v1.5_checkpoint-500"),
    ],
)
def test_model_name_from_path(path, name):
    assert model_name_from_path(path) == name


def test_load_errors(tmp_path, tiny_ckpt):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_pretrained(tmp_path)
    not_llava = tmp_path / "bert"
    not_llava.mkdir()
    (not_llava / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a LLaVA one"):
        load_pretrained(not_llava)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="failed to load"):
        load_pretrained(broken)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads_and_answers_about_a_picture(tiny_ckpt, shapes_image, dtype):
    """What a CUDA worker loads by default (bfloat16), tried on CPU: pixels must follow the weights' dtype."""
    loaded = load_pretrained(tiny_ckpt, device="cpu", dtype=dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    out = generate(loaded, _prompt(), [shapes_image], GenerationParams(temperature=0, max_new_tokens=6))
    assert 1 <= out.output_tokens <= 6 and out.finish_reason in ("stop", "length")


def test_bad_device_or_dtype_is_a_clear_error(tiny_ckpt):
    with pytest.raises(ModelLoadError, match="unknown dtype 'int8'"):
        load_pretrained(tiny_ckpt, device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            load_pretrained(tiny_ckpt, device="cuda")


def test_greedy_is_deterministic_and_streams_prefixes(tiny_loaded, shapes_image):
    params = GenerationParams(temperature=0, max_new_tokens=12)
    deltas = list(stream_generate(tiny_loaded, _prompt(), [shapes_image], params))
    final = deltas[-1]
    assert final.finish_reason in ("stop", "length")
    assert all(d.finish_reason is None for d in deltas[:-1])
    for a, b in zip(deltas, deltas[1:], strict=False):
        assert b.text.startswith(a.text)
    assert 1 <= final.output_tokens <= 12
    # the tiny model's context: prompt tokens include the 16 image tokens
    unexpanded = tiny_loaded.processor.tokenizer(_prompt())["input_ids"]  # <image> is one token here
    assert final.prompt_tokens == len(unexpanded) - 1 + 16
    again = generate(tiny_loaded, _prompt(), [encode_base64(shapes_image)], params)  # base64 gives the same pixels
    assert again.text == final.text
    assert again.output_tokens == final.output_tokens
    assert final.timings["total_s"] >= final.timings["first_token_s"] > 0


def test_decoding_over_the_cache_matches_recomputing_everything(tiny_loaded, shapes_image, monkeypatch):
    model = tiny_loaded.model
    kwargs_seen: list[set[str]] = []
    forward = model.forward

    @functools.wraps(forward)
    def spy(*args, **kwargs):
        kwargs_seen.append(set(kwargs))
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    out = generate(tiny_loaded, _prompt(), [shapes_image], GenerationParams(temperature=0, max_new_tokens=8))
    monkeypatch.undo()
    assert len(kwargs_seen) >= 2  # prefill, then at least one step over the cache
    if "cache" in inspect.signature(forward).parameters:  # transformers >= 5.24: the old name only warns
        assert not any("past_key_values" in seen for seen in kwargs_seen)

    inputs = prepare_inputs(tiny_loaded, _prompt(), [shapes_image])
    ids, eos = inputs["input_ids"], eos_token_ids(tiny_loaded)
    new: list[int] = []
    with torch.inference_mode():
        for _ in range(8):
            mask = torch.ones_like(ids)
            token = int(
                model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits[0, -1].argmax()
            )
            if token in eos:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert out.output_tokens == len(new)
    assert out.text == tiny_loaded.processor.tokenizer.decode(new, skip_special_tokens=True)


def test_sampling_with_seed_is_reproducible(tiny_loaded, shapes_image):
    params = GenerationParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=7)
    a = generate(tiny_loaded, _prompt(), [shapes_image], params)
    b = generate(tiny_loaded, _prompt(), [shapes_image], params)
    assert a.text == b.text


def test_max_new_tokens_caps_output(tiny_loaded, shapes_image):
    out = generate(tiny_loaded, _prompt(), [shapes_image], GenerationParams(temperature=0, max_new_tokens=3))
    assert out.output_tokens <= 3


def test_stop_string_is_trimmed(tiny_loaded, shapes_image):
    free = generate(tiny_loaded, _prompt(), [shapes_image], GenerationParams(temperature=0, max_new_tokens=20))
    assert len(free.text) > 2
    stop = free.text[2:4]  # a string the greedy answer is known to contain
    cut = generate(
        tiny_loaded, _prompt(), [shapes_image], GenerationParams(temperature=0, max_new_tokens=20, stop=(stop,))
    )
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert stop not in cut.text


def test_context_cap_counts_image_tokens(tiny_loaded, shapes_image):
    prompt_tokens = generate(tiny_loaded, _prompt(), [shapes_image], GenerationParams(max_new_tokens=1)).prompt_tokens
    room = tiny_loaded.context_len - prompt_tokens
    out = generate(tiny_loaded, _prompt(), [shapes_image], GenerationParams(temperature=0, max_new_tokens=100_000))
    assert out.output_tokens <= room


def test_prompt_too_long_is_a_clear_error(tiny_loaded, shapes_image):
    with pytest.raises(ContextOverflowError, match=r"16 of them for 1 image.*context holds 512"):
        generate(tiny_loaded, _prompt("red " * 600), [shapes_image])


def test_image_count_must_match_tokens(tiny_loaded, shapes_image):
    with pytest.raises(PromptError, match="1 <image> token"):
        generate(tiny_loaded, _prompt(), [])
    with pytest.raises(PromptError, match="0 <image> token"):
        generate(tiny_loaded, _prompt(image=False), [shapes_image])


def test_bad_params_are_refused():
    with pytest.raises(PromptError, match="temperature"):
        GenerationParams(temperature=-1)
    with pytest.raises(PromptError, match="top_p"):
        GenerationParams(top_p=0)
    with pytest.raises(PromptError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("hello #", ("###",), 1),
        ("hello ##", ("###",), 2),
        ("hello", ("###",), 0),
        ("a </", ("</s>",), 2),
        ("x\ufffd", (), 1),
    ],
)
def test_partial_stop_is_held_back(text, stops, held):
    assert _held_back(text, stops) == held
