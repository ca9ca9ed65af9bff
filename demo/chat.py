"""The Chat tab: one model, a picture and many turns, answers streamed token by token.

API endpoints (for `gradio_client`): `/chat`, `/regenerate`, `/stop`, `/clear`, `/upvote`, `/downvote`, `/flag`.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from demo.controls import (
    NEW_PICTURE_NOTE,
    ParameterControls,
    chat_window,
    check_message,
    message_box,
    model_dropdown,
    parameter_controls,
    read_message,
    sampling,
    small_button,
    start_turn,
)
from demo.conv_log import ConvSnapshot
from demo.model_list import models_note
from demo.session import ChatSession, PaneError
from demo.turn import ANSWERS, Origin, Sampling, Services, stream_turn

VOTES = {"upvote": "Upvote", "downvote": "Downvote", "flag": "Flag"}


@dataclass
class ChatTab:
    services: Services
    model: gr.Dropdown
    refresh: gr.Button
    note: gr.Markdown
    chatbot: gr.Chatbot
    message: gr.MultimodalTextbox
    params: ParameterControls
    votes: dict[str, gr.Button]
    regenerate: gr.Button
    stop: gr.Button
    clear: gr.Button
    pane: gr.State

    # ---- layout ------------------------------------------------------------------------------
    @classmethod
    def build(cls, services: Services, models: list[str], defaults: Sampling) -> ChatTab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=260):
                model = model_dropdown(models, models[0] if models else None, "Model", "chat-model")
                refresh = gr.Button("Refresh model list", size="sm", elem_id="chat-refresh")
                note = gr.Markdown(models_note(models), elem_id="chat-models-note", elem_classes=["hint"])
                params = parameter_controls(defaults, "chat")
                gr.Markdown(NEW_PICTURE_NOTE, elem_classes=["hint"])
            with gr.Column(scale=8):
                chatbot = chat_window("Chat", "chat-chatbot", 520)
                message = message_box("chat-message")
                with gr.Row():
                    votes = {k: small_button(v, f"chat-{k}") for k, v in VOTES.items()}
                    regenerate = small_button("Regenerate", "chat-regenerate")
                    stop = small_button("Stop", "chat-stop", variant="stop")
                    clear = small_button("Clear", "chat-clear")
        pane = gr.State(ChatSession())
        tab = cls(services, model, refresh, note, chatbot, message, params, votes, regenerate, stop, clear, pane)
        tab._wire()
        return tab

    @property
    def buttons(self) -> list[gr.Button]:
        return [*self.votes.values(), self.regenerate, self.stop, self.clear]

    def _wire(self) -> None:
        sampling_inputs = self.params.sampling
        busy = dict(fn=self._busy, inputs=None, outputs=self.buttons, queue=False, api_visibility="private")
        idle = dict(fn=self._idle, inputs=[self.pane], outputs=self.buttons, queue=False, api_visibility="private")

        check = dict(fn=check_message, inputs=[self.message, self.pane], outputs=None, api_visibility="private",
                     concurrency_limit=None, show_progress="hidden")  # fmt: skip
        send = (
            self.message.submit(**check)
            .success(**busy)
            .success(
                self._chat,
                [self.message, self.model, self.params.process_mode, *sampling_inputs, self.pane],
                [self.chatbot, self.message],
                api_name="chat",
                concurrency_id=ANSWERS,
                show_progress="hidden",
            )
        )
        send.then(**idle)
        send.failure(**idle)  # Gradio runs `.then` steps only after success or a cancel, not after an error
        again = self.regenerate.click(**busy).then(
            self._regenerate,
            [self.model, self.params.process_mode, *sampling_inputs, self.pane],
            [self.chatbot],
            api_name="regenerate",
            concurrency_id=ANSWERS,
            show_progress="hidden",
        )
        again.then(**idle)
        again.failure(**idle)
        self.stop.click(self._stop, [self.pane], [self.chatbot], cancels=[send, again], api_name="stop",
                        concurrency_limit=None).then(**idle)  # fmt: skip
        self.clear.click(self._clear, [self.pane], [self.chatbot, self.message], api_name="clear",
                         concurrency_limit=None).then(**idle)  # fmt: skip
        # The chat window's own trash icon empties the display; the conversation must go with it.
        self.chatbot.clear(self._clear, [self.pane], [self.chatbot, self.message], api_visibility="private",
                           concurrency_limit=None).then(**idle)  # fmt: skip
        for kind, button in self.votes.items():
            button.click(self._vote(kind), [self.model, self.pane], None, api_name=kind,
                         concurrency_limit=None).then(**idle)  # fmt: skip

    # ---- handlers ----------------------------------------------------------------------------
    async def _chat(self, message, model, mode, temperature, top_p, max_new_tokens, pane: ChatSession,
                    request: gr.Request):  # fmt: skip
        text, image, image_file = await read_message(message)
        pane.model = model or ""
        start_turn(pane, text, image, image_file, mode)
        yield pane.chatbot(), None
        async for _ in stream_turn(pane, self.services, sampling(temperature, top_p, max_new_tokens),
                                   Origin.of(request, "chat")):  # fmt: skip
            yield pane.chatbot(), gr.skip()

    async def _regenerate(self, model, mode, temperature, top_p, max_new_tokens, pane: ChatSession,
                          request: gr.Request):  # fmt: skip
        try:
            pane.prepare_regenerate(mode)
        except PaneError as e:
            raise gr.Error(str(e)) from e
        pane.model = model or ""
        async for _ in stream_turn(pane, self.services, sampling(temperature, top_p, max_new_tokens),
                                   Origin.of(request, "chat")):  # fmt: skip
            yield pane.chatbot()

    @staticmethod
    def _stop(pane: ChatSession):
        pane.stop()
        return pane.chatbot()

    @staticmethod
    def _clear(pane: ChatSession):
        if pane.streaming:
            raise gr.Error("An answer is still streaming: press Stop first.")
        pane.reset()
        return [], None

    def _vote(self, kind: str):
        def vote(model: str, pane: ChatSession, request: gr.Request) -> None:
            if not pane.answered:
                raise gr.Error("There is no answer to rate yet.")
            if pane.voted:
                raise gr.Error("This answer has already been rated.")
            pane.voted = True
            o = Origin.of(request, "chat")
            self.services.logger.log(
                {"type": kind, "tab": o.tab, "session": o.session, "ip": o.ip, "conversation": pane.conversation_id,
                 "model": pane.model or model},
                {"state": ConvSnapshot.of(pane.conv)},
            )  # fmt: skip
            gr.Info("Thanks for the feedback: it is saved with the conversation." if kind != "flag"
                    else "Flagged: the conversation is saved for review.")  # fmt: skip

        vote.__name__ = kind
        return vote

    @staticmethod
    def _busy():
        return [gr.update(interactive=False)] * len(VOTES) + [
            gr.update(interactive=False),
            gr.update(interactive=True),
            gr.update(interactive=False),
        ]

    @staticmethod
    def _idle(pane: ChatSession):
        can_vote = pane.answered and not pane.voted
        return [gr.update(interactive=can_vote)] * len(VOTES) + [
            gr.update(interactive=pane.has_turns and not pane.streaming),
            gr.update(interactive=pane.streaming),
            gr.update(interactive=pane.has_turns and not pane.streaming),
        ]
