"""One chat pane's state for one browser session: the `Conversation` a model sees and what the page shows.

Chat has one pane per session, Side by side two. A pane lives in a `gr.State` and handlers change it in place,
so what a cancelled (stopped) handler streamed so far is still there for the next one.

Rules a pane keeps:
- a conversation holds at most one picture, in its first human message; a new picture starts a new conversation;
- a failed answer is shown (as the error) but never sent to a model: Regenerate retries it, and a new message
  replaces the failed turn (keeping its picture);
- before each turn the conversation is re-rendered under the template of the model that answers it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from llava.conversation import IMAGE_TOKEN, Conversation, conv_templates

DEFAULT_TEMPLATE = "llava_v0"
CURSOR = "▌"


class PaneError(Exception):
    """Something the user asked for cannot be done now; the message says why."""


def retemplate(conv: Conversation, template: str) -> Conversation:
    """The same messages under another template (roles are mapped by position: human, assistant, ...)."""
    if conv.name == template:
        return conv
    new = conv_templates[template].copy()
    for i, (_, message) in enumerate(conv.messages[conv.offset :]):
        new.append_message(new.roles[i % 2], message)
    return new


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class ChatSession:
    """A pane's conversation plus display-only facts: the picture's file, the last error, streaming or not."""

    conv: Conversation = field(default_factory=lambda: conv_templates[DEFAULT_TEMPLATE].copy())
    model: str = ""  # the model that answers the next turn
    image_file: str | None = None  # the picture as shown in the chat (a file the page can load)
    error: str | None = None  # why the last answer failed; shown in its place, never sent to a model
    streaming: bool = False
    voted: bool = False  # one vote / flag per answer
    conversation_id: str = field(default_factory=_new_id)  # changes with Clear and with every new picture

    # ---- reading -----------------------------------------------------------------------------
    @property
    def messages(self) -> list[list[Any]]:
        return self.conv.messages[self.conv.offset :]

    @property
    def has_turns(self) -> bool:
        return bool(self.messages)

    @property
    def has_image(self) -> bool:
        return any(isinstance(m, tuple) for _, m in self.messages)

    @property
    def last_failed(self) -> bool:
        return self.has_turns and self.messages[-1][1] is None and not self.streaming

    @property
    def answered(self) -> bool:
        """The last turn has a complete answer (something to vote on)."""
        return self.has_turns and self.messages[-1][1] is not None and not self.streaming

    def prompt(self) -> str:
        return self.conv.get_prompt()

    def images(self) -> list[str]:
        """The pictures for the worker: process mode applied, downscaled, base64 (CPU work: call off the loop)."""
        return self.conv.get_images()

    # ---- changing ----------------------------------------------------------------------------
    def reset(self) -> None:
        self.conv = conv_templates[self.conv.name].copy()
        self.image_file = None
        self.error = None
        self.streaming = False
        self.voted = False
        self.conversation_id = _new_id()

    def add_user_message(
        self, text: str, image: Image.Image | None = None, image_file: str | None = None, mode: str = "Default"
    ) -> bool:
        """Start a turn; returns True when this started a new conversation because of a new picture."""
        self.check_user_message(text, image is not None)
        text = text.replace(IMAGE_TOKEN, " ").strip()  # the image token is ours to place
        if not text:
            text = "Describe the image in detail."  # a picture alone asks for the paper's detailed description
        restarted = False
        if image is not None and self.has_turns:
            self.reset()
            restarted = True
        elif self.last_failed:
            # The failed turn is replaced by this one; its picture, if it had one, carries over.
            _, failed = self.conv.messages[-2]
            del self.conv.messages[-2:]
            if isinstance(failed, tuple) and image is None:
                _, image, mode = failed
        self.error = None
        self.voted = False
        if image is not None:
            self.conv.append_message(self.conv.roles[0], (text, image, mode))
            if image_file is not None:
                self.image_file = image_file
        else:
            self.conv.append_message(self.conv.roles[0], text)
        self.conv.append_message(self.conv.roles[1], None)
        return restarted

    def check_user_message(self, text: str, has_image: bool) -> None:
        """PaneError when a message like this cannot be sent now (the UI asks before it changes anything)."""
        if self.streaming:
            raise PaneError("An answer is still streaming: wait for it or press Stop first.")
        if not text.replace(IMAGE_TOKEN, " ").strip() and not has_image:
            raise PaneError("Type a question (and optionally add a picture) before sending.")

    def prepare_regenerate(self, mode: str | None = None) -> None:
        """Drop the last answer so the same question is asked again (with a new process mode, if given)."""
        if self.streaming:
            raise PaneError("An answer is still streaming: wait for it or press Stop first.")
        if not self.has_turns:
            raise PaneError("There is nothing to regenerate yet: ask a question first.")
        self.conv.messages[-1][1] = None
        human = self.conv.messages[-2]
        if mode and isinstance(human[1], tuple):
            text, image, _ = human[1]
            human[1] = (text, image, mode)
        self.error = None
        self.voted = False

    def use_template(self, template: str) -> None:
        self.conv = retemplate(self.conv, template)

    def begin_answer(self) -> None:
        self.streaming = True
        self.error = None

    def set_answer(self, text: str) -> None:
        self.conv.messages[-1][1] = text

    def end_answer(self, error: str | None = None) -> None:
        """Finish the streaming turn; an empty answer counts as failed (it cannot be sent back to a model)."""
        self.streaming = False
        if error is None and not self.conv.messages[-1][1]:
            error = "The model gave an empty answer. Press Regenerate to try again."
        if error is not None:
            self.conv.messages[-1][1] = None
            self.error = error

    def stop(self) -> None:
        """Stop pressed: keep what streamed so far (or say nothing came)."""
        if self.streaming:
            partial = self.conv.messages[-1][1]
            self.end_answer(None if partial else "Stopped before any answer came. Press Regenerate to ask again.")

    # ---- showing -----------------------------------------------------------------------------
    def chatbot(self) -> list[dict[str, Any]]:
        """The conversation in Gradio's messages format, with the picture, the error or a cursor where due."""
        out: list[dict[str, Any]] = []
        messages = self.messages
        for i, (_, message) in enumerate(messages):
            last = i == len(messages) - 1
            if i % 2 == 0:
                if isinstance(message, tuple):
                    text = message[0].replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "").strip()
                    content: Any = [{"path": self.image_file}, text] if self.image_file else text
                else:
                    content = message
                out.append({"role": "user", "content": content})
            elif message is not None:
                out.append({"role": "assistant", "content": message + (CURSOR if last and self.streaming else "")})
            elif last:
                if self.streaming:
                    out.append({"role": "assistant", "content": CURSOR})
                elif self.error:
                    out.append({"role": "assistant", "content": f"**Error:** {self.error}"})
        return out
