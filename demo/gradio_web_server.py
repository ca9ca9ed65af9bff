"""The web UI: Chat, Side by side and Examples tabs in front of a controller and its workers.

    python -m demo.gradio_web_server --controller-url http://127.0.0.1:21001 --port 7860

Everything the page needs is served from here: fonts are Gradio's bundled ones, analytics are off, so it works
on a machine with no internet. `?model=NAME` in the URL picks the model in both tabs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from demo.chat import ChatTab  # noqa: E402
from demo.controls import MAX_NEW_TOKENS_RANGE, TEMPERATURE_RANGE, TOP_P_RANGE  # noqa: E402
from demo.conv_log import ConvLogger  # noqa: E402
from demo.examples import (  # noqa: E402
    CHAT_TAB,
    DEFAULT_EXAMPLES,
    EXAMPLES_TAB,
    SIDE_BY_SIDE_TAB,
    ExamplesError,
    ExamplesTab,
    load_examples,
)
from demo.model_list import ModelPickers  # noqa: E402
from demo.side_by_side import SideBySideTab  # noqa: E402
from demo.turn import Sampling, Services  # noqa: E402
from demo.worker_client import ServiceError, Timeouts, WorkerClient  # noqa: E402

log = logging.getLogger("demo.gradio_web_server")

TITLE = "LLaVA: chat about a picture"
INTRO = (
    "# LLaVA: Large Language and Vision Assistant\n"
    "Chat with a visual instruction-tuned model about a picture, compare two models side by side, or start from "
    "an example. The shipped models know a small world of flat coloured shapes (circles, squares, triangles)."
)
TERMS = (
    "**Terms of use.** This is a research preview: answers can be wrong. Conversations, votes and pictures are "
    "logged to improve the models; do not send anything private."
)
CSS = """
.hint { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
/* Sharing a picture goes to Hugging Face, which this offline demo cannot reach. */
.chat-window button[aria-label="Share"] { display: none !important; }
"""


@dataclass(slots=True)
class UISettings:
    controller_url: str = "http://127.0.0.1:21001"
    host: str = "127.0.0.1"
    port: int = 7860
    concurrency_count: int = 16  # answers streamed at once, over all users
    model_list_mode: str = "once"  # "once": ask the controller at startup; "reload": on every page load
    log_dir: str | None = "logs"  # conversation logs; None turns logging off
    examples: str = str(DEFAULT_EXAMPLES)
    worker_timeout: float = 120.0  # seconds to wait for a worker's next chunk
    defaults: Sampling = field(default_factory=Sampling)

    def __post_init__(self) -> None:
        if self.model_list_mode not in ("once", "reload"):
            raise ValueError(f"model_list_mode must be 'once' or 'reload', got {self.model_list_mode!r}")
        if self.concurrency_count < 1:
            raise ValueError(f"concurrency_count must be at least 1, got {self.concurrency_count}")
        for name, value, (low, high) in (
            ("temperature", self.defaults.temperature, TEMPERATURE_RANGE),
            ("top-p", self.defaults.top_p, TOP_P_RANGE),
            ("max new tokens", self.defaults.max_new_tokens, MAX_NEW_TOKENS_RANGE),
        ):
            if not low <= value <= high:  # the slider could not show it
                raise ValueError(f"default {name} {value} is outside the slider's range {low}..{high}")


def theme() -> gr.themes.Theme:
    # Gradio's bundled copies of the fonts (static/fonts), never Google Fonts: the page must work offline.
    return gr.themes.Default(
        font=[gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"],
    )


def build_demo(settings: UISettings, services: Services, models: list[str]) -> gr.Blocks:
    """The whole page; `models` fills the pickers until the page loads (and for good in 'once' mode)."""
    examples = load_examples(settings.examples)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        active = gr.State(CHAT_TAB)  # the chat tab an example goes to
        with gr.Tabs(selected=CHAT_TAB, elem_id="tabs") as tabs:
            with gr.Tab("Chat", id=CHAT_TAB, elem_id="tab-chat") as chat_tab:
                chat = ChatTab.build(services, models, settings.defaults)
            with gr.Tab("Side by side", id=SIDE_BY_SIDE_TAB, elem_id="tab-side-by-side") as sbs_tab:
                sbs = SideBySideTab.build(services, models, settings.defaults)
            with gr.Tab("Examples", id=EXAMPLES_TAB, elem_id="tab-examples"):
                gallery = ExamplesTab.build(services, examples)
        gr.Markdown(TERMS, elem_classes=["hint"])

        chat_tab.select(lambda: CHAT_TAB, None, active, queue=False, api_visibility="private")
        sbs_tab.select(lambda: SIDE_BY_SIDE_TAB, None, active, queue=False, api_visibility="private")
        gallery.wire(tabs, active, chat, sbs)

        pickers = ModelPickers(services, settings.model_list_mode == "reload", models, chat.model, *sbs.models,
                               notes=[chat.note, sbs.note])  # fmt: skip
        pickers.wire(demo, [chat.refresh, sbs.refresh])
    return demo


def initial_models(client: WorkerClient) -> list[str]:
    """The models served at startup; a controller that is not up yet is not fatal (Refresh asks again)."""
    try:
        return asyncio.run(client.list_models(refresh=True))
    except ServiceError as e:
        log.warning("%s; starting with no models", e)
        return []


def parse_args(argv: list[str] | None = None) -> UISettings:
    p = argparse.ArgumentParser(prog="python -m demo.gradio_web_server", description=__doc__.splitlines()[0])
    p.add_argument("--controller-url", default="http://127.0.0.1:21001")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--concurrency-count", type=int, default=16, help="answers streamed at once, over all users")
    p.add_argument("--model-list-mode", choices=["once", "reload"], default="once",
                   help="ask the controller for models at startup only, or on every page load")  # fmt: skip
    p.add_argument("--log-dir", default="logs", help="conversation logs and pictures ('' turns logging off)")
    p.add_argument("--examples", default=str(DEFAULT_EXAMPLES), help="the example gallery's JSON file")
    p.add_argument("--worker-timeout", type=float, default=120.0, help="seconds to wait for a worker's next chunk")
    p.add_argument("--temperature", type=float, default=0.2, help="default of the temperature slider")
    p.add_argument("--top-p", type=float, default=0.7, help="default of the top-p slider")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default of the max output tokens slider")
    a = p.parse_args(argv)
    try:
        return UISettings(a.controller_url.rstrip("/"), a.host, a.port, a.concurrency_count, a.model_list_mode,
                          a.log_dir or None, a.examples, a.worker_timeout,
                          Sampling(a.temperature, a.top_p, a.max_new_tokens))  # fmt: skip
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    client = WorkerClient(settings.controller_url, Timeouts(stream_read=settings.worker_timeout))
    logger = ConvLogger(settings.log_dir)
    services = Services(client, logger)
    models = initial_models(client)
    log.info("controller %s serves %s", settings.controller_url, models or "no models yet")
    try:
        demo = build_demo(settings, services, models)
    except ExamplesError as e:
        sys.exit(f"gradio_web_server: {e}")
    demo.queue(default_concurrency_limit=settings.concurrency_count, max_size=settings.concurrency_count * 8)
    examples_dir = str(Path(settings.examples).resolve().parent)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the launcher stops us with SIGTERM, a terminal with Ctrl-C
        signal.signal(sig, lambda signum, frame: stop.set())
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=False,
        theme=theme(),
        css=CSS,
        allowed_paths=[examples_dir],
        footer_links=[],
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        show_error=True,
        quiet=True,
        prevent_thread_lock=True,
    )
    log.info("web UI at http://%s:%d (controller %s)", settings.host, settings.port, settings.controller_url)
    try:
        while not stop.wait(0.5) and demo.is_running:
            pass
    finally:
        log.info("stopping the web UI")
        # Open pages keep event streams open and waiting for them holds a stop for seconds, so cut them; uvicorn
        # then reports the cut lifespan task as an error, which on purpose it is not.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        demo.server.force_exit = True
        demo.close()
        logger.close()


if __name__ == "__main__":
    main()
