"""The Side by side tab: one question to two models, both answers streamed at once, then a vote.

Each side is its own pane (conversation) and streams at its own pace: the handler merges the two streams and
shows whatever changed, so a slow side never holds up the other.
API endpoints: `/side_by_side`, `/side_by_side_regenerate`, `/side_by_side_stop`, `/side_by_side_clear`,
`/vote_a`, `/vote_b`, `/vote_tie`, `/vote_both_bad`.
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
from demo.turn import ANSWERS, Origin, Sampling, Services, merge, stream_turn

# api name -> (log name, button label), in the original LLaVA/FastChat arena's vote names
VOTES = {
    "vote_a": ("leftvote", "A is better"),
    "vote_b": ("rightvote", "B is better"),
    "vote_tie": ("tievote", "Tie"),
    "vote_both_bad": ("bothbad_vote", "Both bad"),
}


@dataclass
class SideBySideTab:
    services: Services
    models: tuple[gr.Dropdown, gr.Dropdown]
    refresh: gr.Button
    note: gr.Markdown
    chatbots: tuple[gr.Chatbot, gr.Chatbot]
    message: gr.MultimodalTextbox
    params: ParameterControls
    votes: dict[str, gr.Button]
    regenerate: gr.Button
    stop: gr.Button
    clear: gr.Button
    panes: tuple[gr.State, gr.State]

    # ---- layout ------------------------------------------------------------------------------
    @classmethod
    def build(cls, services: Services, models: list[str], defaults: Sampling) -> SideBySideTab:
        first, second = (models[0], models[-1]) if models else (None, None)
        gr.Markdown("Ask two models the same thing and compare. " + NEW_PICTURE_NOTE, elem_classes=["hint"])
        with gr.Row(equal_height=False):
            model_a = model_dropdown(models, first, "Model A", "sbs-model-a")
            model_b = model_dropdown(models, second, "Model B", "sbs-model-b")
            refresh = gr.Button("Refresh model list", size="sm", scale=0, min_width=160, elem_id="sbs-refresh")
        note = gr.Markdown(models_note(models), elem_id="sbs-models-note", elem_classes=["hint"])
        with gr.Row():
            chatbot_a = chat_window("Model A", "sbs-chatbot-a", 440)
            chatbot_b = chat_window("Model B", "sbs-chatbot-b", 440)
        message = message_box("sbs-message")
        with gr.Row():
            votes = {k: small_button(label, f"sbs-{k.replace('_', '-')}") for k, (_, label) in VOTES.items()}
            regenerate = small_button("Regenerate", "sbs-regenerate")
            stop = small_button("Stop", "sbs-stop", variant="stop")
            clear = small_button("Clear", "sbs-clear")
        params = parameter_controls(defaults, "sbs")
        panes = (gr.State(ChatSession()), gr.State(ChatSession()))
        tab = cls(services, (model_a, model_b), refresh, note, (chatbot_a, chatbot_b), message, params, votes,
                  regenerate, stop, clear, panes)  # fmt: skip
        tab._wire()
        return tab

    @property
    def buttons(self) -> list[gr.Button]:
        return [*self.votes.values(), self.regenerate, self.stop, self.clear]

    def _wire(self) -> None:
        sampling_inputs = self.params.sampling
        busy = dict(fn=self._busy, inputs=None, outputs=self.buttons, queue=False, api_visibility="private")
        idle = dict(fn=self._idle, inputs=[*self.panes], outputs=self.buttons, queue=False, api_visibility="private")

        check = dict(fn=check_message, inputs=[self.message, *self.panes], outputs=None, api_visibility="private",
                     concurrency_limit=None, show_progress="hidden")  # fmt: skip
        send = (
            self.message.submit(**check)
            .success(**busy)
            .success(
                self._send,
                [self.message, *self.models, self.params.process_mode, *sampling_inputs, *self.panes],
                [*self.chatbots, self.message],
                api_name="side_by_side",
                concurrency_id=ANSWERS,
                show_progress="hidden",
            )
        )
        send.then(**idle)
        send.failure(**idle)  # Gradio runs `.then` steps only after success or a cancel, not after an error
        again = self.regenerate.click(**busy).then(
            self._regenerate,
            [*self.models, self.params.process_mode, *sampling_inputs, *self.panes],
            [*self.chatbots],
            api_name="side_by_side_regenerate",
            concurrency_id=ANSWERS,
            show_progress="hidden",
        )
        again.then(**idle)
        again.failure(**idle)
        self.stop.click(self._stop, [*self.panes], [*self.chatbots], cancels=[send, again],
                        api_name="side_by_side_stop", concurrency_limit=None).then(**idle)  # fmt: skip
        self.clear.click(self._clear, [*self.panes], [*self.chatbots, self.message], api_name="side_by_side_clear",
                         concurrency_limit=None).then(**idle)  # fmt: skip
        for chatbot in self.chatbots:  # either window's trash icon clears both sides: they are one comparison
            chatbot.clear(self._clear, [*self.panes], [*self.chatbots, self.message], api_visibility="private",
                          concurrency_limit=None).then(**idle)  # fmt: skip
        for api_name, (kind, _) in VOTES.items():
            self.votes[api_name].click(self._vote(kind, api_name), [*self.models, *self.panes], None,
                                       api_name=api_name, concurrency_limit=None).then(**idle)  # fmt: skip

    # ---- handlers ----------------------------------------------------------------------------
    async def _send(self, message, model_a, model_b, mode, temperature, top_p, max_new_tokens,
                    pane_a: ChatSession, pane_b: ChatSession, request: gr.Request):  # fmt: skip
        text, image, image_file = await read_message(message)
        if pane_a.streaming or pane_b.streaming:
            raise gr.Error("The answers are still streaming: wait for them or press Stop first.")
        for pane, model in ((pane_a, model_a), (pane_b, model_b)):
            pane.model = model or ""
        start_turn(pane_a, text, image, image_file, mode)
        start_turn(pane_b, text, image, image_file, mode, notify=False)
        yield pane_a.chatbot(), pane_b.chatbot(), None
        async for _ in self._both(pane_a, pane_b, temperature, top_p, max_new_tokens, request):
            yield pane_a.chatbot(), pane_b.chatbot(), gr.skip()

    async def _regenerate(self, model_a, model_b, mode, temperature, top_p, max_new_tokens,
                          pane_a: ChatSession, pane_b: ChatSession, request: gr.Request):  # fmt: skip
        try:
            for pane, model in ((pane_a, model_a), (pane_b, model_b)):
                pane.prepare_regenerate(mode)
                pane.model = model or ""
        except PaneError as e:
            raise gr.Error(str(e)) from e
        async for _ in self._both(pane_a, pane_b, temperature, top_p, max_new_tokens, request):
            yield pane_a.chatbot(), pane_b.chatbot()

    def _both(self, pane_a: ChatSession, pane_b: ChatSession, temperature, top_p, max_new_tokens, request):
        params = sampling(temperature, top_p, max_new_tokens)
        where = Origin.of(request, "side_by_side")
        return merge(stream_turn(pane_a, self.services, params, where),
                     stream_turn(pane_b, self.services, params, where))  # fmt: skip

    @staticmethod
    def _stop(pane_a: ChatSession, pane_b: ChatSession):
        pane_a.stop()
        pane_b.stop()
        return pane_a.chatbot(), pane_b.chatbot()

    @staticmethod
    def _clear(pane_a: ChatSession, pane_b: ChatSession):
        if pane_a.streaming or pane_b.streaming:
            raise gr.Error("The answers are still streaming: press Stop first.")
        pane_a.reset()
        pane_b.reset()
        return [], [], None

    def _vote(self, kind: str, api_name: str):
        def vote(model_a: str, model_b: str, pane_a: ChatSession, pane_b: ChatSession, request: gr.Request) -> None:
            if not (pane_a.answered and pane_b.answered):
                raise gr.Error("Both models need an answer before you can vote.")
            if pane_a.voted or pane_b.voted:
                raise gr.Error("You have already voted on these answers; ask another question to vote again.")
            pane_a.voted = pane_b.voted = True
            o = Origin.of(request, "side_by_side")
            self.services.logger.log(
                {"type": kind, "tab": o.tab, "session": o.session, "ip": o.ip,
                 "models": [pane_a.model or model_a, pane_b.model or model_b],
                 "conversations": [pane_a.conversation_id, pane_b.conversation_id]},
                {"state_a": ConvSnapshot.of(pane_a.conv), "state_b": ConvSnapshot.of(pane_b.conv)},
            )  # fmt: skip
            gr.Info(f"Vote saved ({VOTES[api_name][1]}). Thank you!")

        vote.__name__ = api_name
        return vote

    @staticmethod
    def _busy():
        return [gr.update(interactive=False)] * len(VOTES) + [
            gr.update(interactive=False),
            gr.update(interactive=True),
            gr.update(interactive=False),
        ]

    @staticmethod
    def _idle(pane_a: ChatSession, pane_b: ChatSession):
        streaming = pane_a.streaming or pane_b.streaming
        turns = pane_a.has_turns or pane_b.has_turns
        can_vote = pane_a.answered and pane_b.answered and not (pane_a.voted or pane_b.voted)
        return [gr.update(interactive=can_vote)] * len(VOTES) + [
            gr.update(interactive=turns and not streaming),
            gr.update(interactive=streaming),
            gr.update(interactive=turns and not streaming),
        ]
