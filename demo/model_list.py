"""The model pickers of both chat tabs, filled from the controller: at startup, on every page load ('reload'
mode) and on Refresh. A note under each picker says what is served and when that was checked."""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from demo.turn import Services
from demo.worker_client import ServiceError

NO_MODELS = "No model is served right now: start a worker, then press Refresh."


def models_note(served: list[str], checked_now: bool = False) -> str:
    """'2 models served: a, b (checked 10:42:07)'; models from the startup list say so instead."""
    if not served:
        return NO_MODELS
    when = f"checked {time.strftime('%H:%M:%S')}" if checked_now else "as listed when the server started"
    return f"{len(served)} model{'s' if len(served) != 1 else ''} served: {', '.join(served)} ({when})"


def pick(served: list[str], *wanted: str | None) -> str | None:
    """The first wanted model that is served, else the first served model (None when nothing is served)."""
    for w in wanted:
        if w and w in served:
            return w
    return served[0] if served else None


@dataclass
class ModelPickers:
    services: Services
    reload_on_page_load: bool
    startup_models: list[str]
    chat: gr.Dropdown
    side_a: gr.Dropdown
    side_b: gr.Dropdown
    notes: list[gr.Markdown]

    def wire(self, demo: gr.Blocks, refresh_buttons: list[gr.Button]) -> None:
        pickers = [self.chat, self.side_a, self.side_b]
        for i, button in enumerate(refresh_buttons):
            button.click(self._refresh, pickers, [*pickers, *self.notes], concurrency_limit=None,
                         **({"api_name": "refresh_models"} if i == 0 else {"api_visibility": "private"}))  # fmt: skip
        demo.load(self._on_load, pickers, [*pickers, *self.notes], api_visibility="private", concurrency_limit=None)

    def _updates(
        self, served: list[str], checked_now: bool, chat: str | None, side_a: str | None, side_b: str | None
    ) -> tuple:
        """Keep each picker's model while it is served; side B prefers a model other than side A's."""
        a = pick(served, side_a)
        other = next((m for m in served if m != a), None)
        note = models_note(served, checked_now)
        return (
            gr.Dropdown(choices=served, value=pick(served, chat)),
            gr.Dropdown(choices=served, value=a),
            gr.Dropdown(choices=served, value=pick(served, side_b if side_b != a else None, other)),
            *[note] * len(self.notes),
        )

    async def _refresh(self, chat: str | None, side_a: str | None, side_b: str | None):
        try:
            served = await self.services.client.list_models(refresh=True)
        except ServiceError as e:
            raise gr.Error(str(e)) from e
        if not served:
            gr.Warning(NO_MODELS)
        return self._updates(served, True, chat, side_a, side_b)

    async def _on_load(self, chat: str | None, side_a: str | None, side_b: str | None, request: gr.Request):
        served, checked_now = self.startup_models, False
        if self.reload_on_page_load:
            try:
                served, checked_now = await self.services.client.list_models(refresh=True), True
            except ServiceError as e:
                gr.Warning(str(e))
        wanted = request.query_params.get("model") if request is not None else None
        if wanted and wanted not in served:
            gr.Warning(f"The link asks for {wanted}, which no worker serves right now.")
        elif wanted:
            chat = side_a = wanted  # ?model=NAME picks the model in both tabs
        return self._updates(served, checked_now, chat, side_a, side_b)
