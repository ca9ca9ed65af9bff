"""Exact prompt strings for every template, multi-turn included."""

import pytest
from PIL import Image

from llava.conversation import Conversation, conv_templates, template_for_model
from llava.images import decode_base64

V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def _chat(name: str, turns: list[tuple[str, str | None]]) -> Conversation:
    conv = conv_templates[name].copy()
    for human, assistant in turns:
        conv.append_message(conv.roles[0], human)
        conv.append_message(conv.roles[1], assistant)
    return conv


def test_llava_v0_matches_design_string():
    conv = _chat(
        "llava_v0",
        [("<image>\nWhat is unusual about this image?", "The unusual ..."), ("Why?", None)],
    )
    assert conv.get_prompt() == (
        V0_SYSTEM
        + "###Human: <image>\nWhat is unusual about this image?###Assistant: The unusual ...###Human: Why?###Assistant:"
    )
    assert conv.stop_str == "###"


def test_copy_is_independent_of_template():
    conv = _chat("llava_v0", [("hi", None)])
    assert conv_templates["llava_v0"].messages == []
    assert conv.get_prompt() == V0_SYSTEM + "###Human: hi###Assistant:"


def test_vicuna_and_llava_v1():
    for name in ("vicuna_v1", "llava_v1"):
        conv = _chat(name, [("<image>\nQ1", "A1"), ("Q2", None)])
        assert conv.get_prompt() == V1_SYSTEM + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
        assert conv.stop_str == "</s>"


def test_llava_llama_2():
    conv = _chat("llava_llama_2", [("<image>\nQ1", "A1"), ("Q2", None)])
    system = conv.system
    assert conv.get_prompt() == (
        f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n<image>\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    )
    assert conv.stop_str == "</s>"


@pytest.mark.parametrize("name", ["chatml", "mpt"])
def test_chatml(name):
    conv = _chat(name, [("<image>\nQ1", "A1"), ("Q2", None)])
    assert conv.get_prompt() == (
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers.<|im_end|>"
        "<|im_start|>user\n<image>\nQ1<|im_end|><|im_start|>assistant\nA1<|im_end|>"
        "<|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n"
    )
    assert conv.stop_str == "<|im_end|>"


def test_plain():
    conv = _chat("plain", [("<image>", "a red circle")])
    assert conv.get_prompt() == "<image>\na red circle\n"


def test_image_tuple_puts_image_token_first_and_get_images():
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], ("What color is it?", img, "Pad"))
    conv.append_message(conv.roles[1], "Red.")
    conv.append_message(conv.roles[0], "Sure?")
    conv.append_message(conv.roles[1], None)
    assert (
        conv.get_prompt()
        == V0_SYSTEM + "###Human: <image>\nWhat color is it?###Assistant: Red.###Human: Sure?###Assistant:"
    )
    (b64,) = conv.get_images()
    padded = decode_base64(b64)
    assert padded.size == (40, 40)  # Pad made it square
    assert padded.getpixel((20, 20)) == (200, 10, 10)
    (pil,) = conv.get_images(return_pil=True)
    assert pil.size == (40, 40)


def test_dict_round_trip_keeps_prompt_and_images():
    img = Image.new("RGB", (16, 16), (0, 0, 255))
    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], ("Q", img, "Default"))
    conv.append_message(conv.roles[1], "A")
    data = conv.to_dict()
    import json

    back = Conversation.from_dict(json.loads(json.dumps(data)))
    assert back.get_prompt() == conv.get_prompt()
    assert back.stop_str == "###"
    assert decode_base64(back.get_images()[0]).getpixel((3, 3)) == (0, 0, 255)


def test_gradio_chatbot_hides_image_token():
    conv = _chat("llava_v0", [("<image>\nQ1", "A1"), ("Q2", None)])
    assert conv.to_gradio_chatbot() == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]


@pytest.mark.parametrize(
    ("model", "template"),
    [
        ("llava-shapes-chat", "llava_v0"),
        ("llava-shapes-sqa", "llava_v0"),
        ("llava-v1.5-7b", "llava_v1"),
        ("llava-1.5-7b-hf", "llava_v1"),
        ("llava-llama-2-13b-chat-lightning-preview", "llava_llama_2"),
        ("llava-v1.6-34b", "chatml"),
        ("llava-v1.5-7b-pretrain-plain", "plain"),
        ("vicuna-7b-v1.5", "vicuna_v1"),
        ("llava_checkpoint-500", "llava_v0"),
    ],
)
def test_template_for_model(model, template):
    assert template_for_model(model) == template


def test_template_override():
    assert template_for_model("llava-shapes-chat", "chatml") == "chatml"
    with pytest.raises(ValueError, match="choose one of"):
        template_for_model("x", "nope")
