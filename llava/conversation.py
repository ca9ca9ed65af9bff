"""Conversation templates: how a chat becomes the exact prompt string a checkpoint was trained on.

Used as the original LLaVA code uses it::

    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], "<image>\\nWhat is unusual about this image?")
    conv.append_message(conv.roles[1], None)
    prompt = conv.get_prompt()

A message is a string, or a tuple ``(text, image, process_mode)`` that attaches an image (PIL or base64).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from PIL import Image

from llava.images import decode_base64, downscale, encode_base64, process_image

IMAGE_TOKEN = "<image>"


class SeparatorStyle(StrEnum):
    SINGLE = "single"  # role: msg<sep>  (llava_v0: "###")
    TWO = "two"  # role: msg<sep>role: msg<sep2>  (vicuna_v1: " " and "</s>")
    MPT = "mpt"  # role + msg + sep, roles carry their own markers (chatml)
    LLAMA_2 = "llama_2"  # [INST] <<SYS>>..<</SYS>> msg [/INST] answer </s><s>
    PLAIN = "plain"  # messages only (stage-1 pretraining format)


Message = str | tuple[str, Any, str] | None


@dataclass
class Conversation:
    """A chat under one template; holds the messages and renders the prompt."""

    name: str
    system: str
    roles: tuple[str, str]
    sep_style: SeparatorStyle
    sep: str
    sep2: str | None = None
    messages: list[list[Any]] = field(default_factory=list)  # [role, Message] pairs
    offset: int = 0  # messages before this index are few-shot examples, not shown in the UI

    # ---- building ---------------------------------------------------------------------------
    def append_message(self, role: str, message: Message) -> None:
        self.messages.append([role, message])

    def update_last_message(self, message: str) -> None:
        self.messages[-1][1] = message

    def copy(self) -> Conversation:
        return dataclasses.replace(self, messages=copy.deepcopy(self.messages))

    # ---- rendering --------------------------------------------------------------------------
    @property
    def stop_str(self) -> str:
        """The string that ends an assistant turn under this template (what generation stops on)."""
        if self.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.MPT):
            return self.sep
        return self.sep2 or self.sep

    def _texts(self) -> list[tuple[str, str | None]]:
        """Messages as (role, text) with the image token placed first in any message carrying an image."""
        out: list[tuple[str, str | None]] = []
        for role, message in self.messages:
            if isinstance(message, tuple):
                text = message[0]
                if IMAGE_TOKEN not in text:
                    text = f"{IMAGE_TOKEN}\n{text}"
                out.append((role, text))
            else:
                out.append((role, message))
        return out

    def get_prompt(self) -> str:
        messages = self._texts()
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            ret = self.system + self.sep
            for role, text in messages:
                ret += f"{role}: {text}{self.sep}" if text else f"{role}:"
            return ret
        if style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2 or self.sep)
            ret = self.system + seps[0]
            for i, (role, text) in enumerate(messages):
                ret += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
            return ret
        if style == SeparatorStyle.MPT:
            ret = self.system + self.sep
            for role, text in messages:
                ret += f"{role}{text}{self.sep}" if text else role
            return ret
        if style == SeparatorStyle.LLAMA_2:
            ret = ""
            for i, (_, text) in enumerate(messages):
                if not text:
                    continue
                if i == 0 and self.system:
                    text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
                if i % 2 == 0:
                    ret += f"{self.sep}[INST] {text} [/INST]"
                else:
                    ret += f" {text} {self.sep2}"
            return ret.removeprefix(self.sep)
        if style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2 or self.sep)
            ret = self.system
            for i, (_, text) in enumerate(messages):
                if text:
                    ret += text + seps[i % 2]
            return ret
        raise ValueError(f"unknown separator style {style!r}")

    # ---- images -----------------------------------------------------------------------------
    def get_images(self, return_pil: bool = False, max_len: int = 800, min_len: int = 400) -> list[Any]:
        """Images attached to human messages, process mode applied, downscaled for transport.

        Returns base64 PNG strings (what the worker protocol carries) or PIL images.
        """
        images: list[Any] = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if i % 2 != 0 or not isinstance(message, tuple):
                continue
            _, image, mode = message
            if isinstance(image, str):
                image = decode_base64(image)
            image = downscale(process_image(image, mode or "Default"), max_len, min_len)
            images.append(image if return_pil else encode_base64(image))
        return images

    def to_gradio_chatbot(self) -> list[dict[str, Any]]:
        """Shown messages in Gradio's `messages` format (images are rendered by the UI itself)."""
        out: list[dict[str, Any]] = []
        for role, message in self._texts()[self.offset :]:
            if message is None:
                continue
            text = message.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "")
            out.append({"role": "user" if role == self.roles[0] else "assistant", "content": text})
        return out

    # ---- serialisation (UI state, logs) -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        messages = []
        for role, message in self.messages:
            if isinstance(message, tuple):
                text, image, mode = message
                if isinstance(image, Image.Image):
                    image = encode_base64(image)
                message = [text, image, mode]
            messages.append([role, message])
        return {
            "name": self.name,
            "system": self.system,
            "roles": list(self.roles),
            "sep_style": self.sep_style.value,
            "sep": self.sep,
            "sep2": self.sep2,
            "messages": messages,
            "offset": self.offset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversation:
        messages = [
            [role, tuple(message) if isinstance(message, list) else message] for role, message in data["messages"]
        ]
        return cls(
            name=data["name"],
            system=data["system"],
            roles=tuple(data["roles"]),
            sep_style=SeparatorStyle(data["sep_style"]),
            sep=data["sep"],
            sep2=data.get("sep2"),
            messages=messages,
            offset=data.get("offset", 0),
        )


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

conv_templates: dict[str, Conversation] = {
    "llava_v0": Conversation(
        name="llava_v0",
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        roles=("Human", "Assistant"),
        sep_style=SeparatorStyle.SINGLE,
        sep="###",
    ),
    "vicuna_v1": Conversation(
        name="vicuna_v1",
        system=_VICUNA_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2="</s>",
    ),
    "llava_v1": Conversation(
        name="llava_v1",
        system=_VICUNA_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2="</s>",
    ),
    "llava_llama_2": Conversation(
        name="llava_llama_2",
        system="You are a helpful language and vision assistant. You are able to understand the visual content "
        "that the user provides, and assist the user with a variety of tasks using natural language.",
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.LLAMA_2,
        sep="<s>",
        sep2="</s>",
    ),
    "chatml": Conversation(
        name="chatml",
        system="<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
        "The assistant gives helpful and honest answers.",
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep_style=SeparatorStyle.MPT,
        sep="<|im_end|>",
    ),
    "plain": Conversation(
        name="plain",
        system="",
        roles=("", ""),
        sep_style=SeparatorStyle.PLAIN,
        sep="\n",
    ),
}
conv_templates["mpt"] = dataclasses.replace(conv_templates["chatml"], name="mpt")
default_conversation = conv_templates["llava_v0"]


def template_for_model(model_name: str, override: str | None = None) -> str:
    """The template name a model expects, chosen from its name as the original LLaVA demo does.

    `override` (a template name) wins; an unknown override raises with the valid names.
    """
    if override:
        if override not in conv_templates:
            raise ValueError(f"unknown conversation template {override!r}; choose one of {sorted(conv_templates)}")
        return override
    name = model_name.lower()
    if "llava" in name:
        if "llama-2" in name or "llama2" in name:
            return "llava_llama_2"
        if "mpt" in name or "chatml" in name or "34b" in name:
            return "chatml"
        if "plain" in name and "finetune" not in name:
            return "plain"
        if any(tag in name for tag in ("v1", "1.5", "1.6", "next")):
            return "llava_v1"
        return "llava_v0"
    if "mpt" in name:
        return "chatml"
    if "llama-2" in name or "llama2" in name:
        return "llava_llama_2"
    return "vicuna_v1"
