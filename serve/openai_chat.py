"""OpenAI chat messages -> the exact prompt a LLaVA checkpoint was trained on, and the pictures it names."""

from __future__ import annotations

from dataclasses import dataclass

from llava.conversation import IMAGE_TOKEN, conv_templates
from serve.openai_protocol import ApiError, ChatMessage


@dataclass(slots=True)
class Prompt:
    text: str
    images: list[str]  # one per <image> in `text`, as the worker protocol carries them
    stop: list[str]  # the template's end of turn first


def render_chat(messages: list[ChatMessage], template: str, extra_stops: list[str] = ()) -> Prompt:
    """The exact prompt the checkpoint was trained on, for an OpenAI message list.

    System (and developer) messages replace the template's system prompt; consecutive messages of one role are
    joined; each picture becomes an `<image>` line before its message's text, where LLaVA was trained to see it.
    """
    conv = conv_templates[template].copy()
    system = [_text_of(m, i, None) for i, m in enumerate(messages) if m.role in ("system", "developer")]
    if system:
        conv.system = "\n".join(system)
    turns: list[tuple[str, list[str], list[str]]] = []  # (role, texts, images)
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            continue
        images: list[str] = []
        text = _text_of(m, i, images if m.role == "user" else None)
        if turns and turns[-1][0] == m.role:
            turns[-1][1].append(text)
            turns[-1][2].extend(images)
        else:
            turns.append((m.role, [text], images))
    if not turns or turns[0][0] != "user":
        raise ApiError(400, "the first message after the system messages must be from the user", code="messages")
    if turns[-1][0] != "user":
        raise ApiError(400, "the last message must be from the user: it is the one the model answers", code="messages")
    pictures: list[str] = []
    for role, texts, images in turns:
        text = "\n".join(t for t in texts if t)
        if role == "user":
            if not text and not images:
                raise ApiError(400, "a user message has neither text nor pictures", code="messages")
            text = f"{IMAGE_TOKEN}\n" * len(images) + text
            pictures.extend(images)
        conv.append_message(conv.roles[0 if role == "user" else 1], text)
    conv.append_message(conv.roles[1], None)
    stops = [conv.stop_str, *(s for s in extra_stops if s != conv.stop_str)]
    return Prompt(conv.get_prompt(), pictures, stops)


def _text_of(message: ChatMessage, index: int, images: list[str] | None) -> str:
    """A message's text parts joined; its pictures appended to `images` (None: pictures are refused here)."""
    texts = []
    for part in message.parts():
        if part.type == "text":
            if IMAGE_TOKEN in part.text:
                raise ApiError(
                    400,
                    f"messages[{index}] contains the text {IMAGE_TOKEN!r}; send pictures as image_url parts instead",
                    code="messages",
                )
            texts.append(part.text)
        elif images is None:
            raise ApiError(400, f"messages[{index}] ({message.role}) has a picture; only user messages may", "messages")
        else:
            url = part.image_url.url
            if not url.startswith(("data:", "http://", "https://")):
                raise ApiError(
                    400,
                    f"messages[{index}]: image_url.url must be a data: URL ('data:image/png;base64,...') "
                    "or an http(s) URL",
                    code="image_url",
                )
            images.append(url)
    return "\n".join(texts)
