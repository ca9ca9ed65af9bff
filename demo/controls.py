"""Controls both chat tabs share, and reading what a user sent: the message box's text and picture, validated."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from demo.session import ChatSession, PaneError
from demo.turn import Sampling
from llava.images import PROCESS_MODES, ImageError, load_image

MESSAGE_PLACEHOLDER = "Add a picture (the clip button, or drop one here) and/or type a question, then press Enter"
NEW_PICTURE_NOTE = "Each picture starts a new conversation. To keep talking about the current picture, send text only."
TEMPERATURE_RANGE = (0.0, 1.0)  # the sliders' ranges; the CLI checks its defaults against them
TOP_P_RANGE = (0.05, 1.0)
MAX_NEW_TOKENS_RANGE = (1, 1024)
KEPT_SIDE = 1024  # pictures are kept (per session, for every later turn) at most this big; workers see <= 800
PROCESS_MODE_INFO = "How a non-square picture is made square for the model (Default: the model's own processor)"


@dataclass(slots=True)
class ParameterControls:
    process_mode: gr.Radio
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider

    @property
    def sampling(self) -> list[gr.Slider]:
        return [self.temperature, self.top_p, self.max_new_tokens]


def parameter_controls(defaults: Sampling, elem_prefix: str) -> ParameterControls:
    process_mode = gr.Radio(list(PROCESS_MODES), value="Default", label="Image process mode", info=PROCESS_MODE_INFO,
                            elem_id=f"{elem_prefix}-process-mode")  # fmt: skip
    with gr.Accordion("Parameters", open=False, elem_id=f"{elem_prefix}-parameters"):
        temperature = gr.Slider(
            *TEMPERATURE_RANGE,
            value=defaults.temperature,
            step=0.05,
            label="Temperature",
            info="0 always picks the likeliest word",
            elem_id=f"{elem_prefix}-temperature",
        )
        top_p = gr.Slider(*TOP_P_RANGE, value=defaults.top_p, step=0.05, label="Top P", elem_id=f"{elem_prefix}-top-p")
        max_new_tokens = gr.Slider(*MAX_NEW_TOKENS_RANGE, value=defaults.max_new_tokens, step=1, label="Max output tokens",
                                   elem_id=f"{elem_prefix}-max-tokens")  # fmt: skip
    return ParameterControls(process_mode, temperature, top_p, max_new_tokens)


def model_dropdown(models: list[str], value: str | None, label: str, elem_id: str) -> gr.Dropdown:
    # Custom values: a model may come and go between page load and send; the answer then says what happened.
    return gr.Dropdown(
        models,
        value=value,
        label=label,
        interactive=True,
        allow_custom_value=True,
        elem_id=elem_id,
        scale=4,
        info=None if models else "No model is being served; start a worker and press Refresh",
    )


def chat_window(label: str, elem_id: str, height: int) -> gr.Chatbot:
    return gr.Chatbot(
        label=label,
        height=height,
        elem_id=elem_id,
        elem_classes=["chat-window"],
        feedback_options=None,  # rating is done with the vote buttons, once per answer, and logged
        buttons=["copy"],
        allow_file_downloads=False,
        placeholder="Answers appear here.",
    )


def small_button(label: str, elem_id: str, variant: str = "secondary") -> gr.Button:
    """The chat tabs' action buttons: small, one row, off until there is something to act on."""
    return gr.Button(label, size="sm", variant=variant, interactive=False, min_width=90, elem_id=elem_id)


def message_box(elem_id: str) -> gr.MultimodalTextbox:
    return gr.MultimodalTextbox(
        interactive=True,
        file_count="single",
        file_types=["image"],
        sources=["upload"],
        placeholder=MESSAGE_PLACEHOLDER,
        show_label=False,
        submit_btn="Send",
        elem_id=elem_id,
    )


def sampling(temperature: float, top_p: float, max_new_tokens: float) -> Sampling:
    return Sampling(float(temperature), float(top_p), int(max_new_tokens))


def _file_path(entry: Any) -> str:
    # The message box hands over paths; API callers sometimes send the file dict instead.
    if isinstance(entry, dict):
        return str(entry.get("path") or entry.get("name") or "")
    return str(entry)


async def read_message(message: dict | str | None) -> tuple[str, Image.Image | None, str | None]:
    """(text, picture, picture's file) from the message box; gr.Error with the reason for a bad picture."""
    if isinstance(message, str) or message is None:
        return (message or ""), None, None
    text = str(message.get("text") or "")
    files = [_file_path(f) for f in (message.get("files") or [])]
    if len(files) > 1:
        raise gr.Error("Send one picture at a time: a conversation is about one picture.")
    if not files:
        return text, None, None
    try:
        image = await asyncio.to_thread(load_image, files[0])
    except ImageError as e:
        raise gr.Error(f"That picture cannot be used: {_without_path(str(e), files[0])}") from e
    if max(image.size) > KEPT_SIDE:  # a 12-megapixel photo would otherwise sit in memory for the whole session
        await asyncio.to_thread(image.thumbnail, (KEPT_SIDE, KEPT_SIDE), Image.Resampling.BICUBIC)
    return text, image, files[0]


def _without_path(message: str, path: str) -> str:
    # load_image names the file; the server-side upload path means nothing to the user.
    return message.replace(f"{path}: ", "").replace(path, "the file")


async def check_message(message: dict | str | None, *panes: ChatSession) -> None:
    """Refuse a message before anything on the page changes: gr.Error shows a notice, the box keeps its text.

    The event that sends the message checks again (API callers skip this step); this step only spares the
    page an error mark on the chat window for what is the user's to fix.
    """
    text, image, _ = await read_message(message)
    try:
        for pane in panes:
            pane.check_user_message(text, image is not None)
    except PaneError as e:
        raise gr.Error(str(e)) from e


def start_turn(
    pane: ChatSession, text: str, image: Image.Image | None, image_file: str | None, mode: str, notify: bool = True
) -> None:
    """Add the user's message to the pane; gr.Error when it cannot be sent now, a notice on a new conversation."""
    try:
        restarted = pane.add_user_message(text, image, image_file, mode)
    except PaneError as e:
        raise gr.Error(str(e)) from e
    if restarted and notify:
        gr.Info("New picture: a new conversation has started.")
