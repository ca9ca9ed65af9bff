"""The web UI against real processes: a controller, two workers on a tiny checkpoint and the UI, driven through
`gradio_client` over real HTTP. `DemoStack` and the `demo_stack` fixture are shared with test_browser.py.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from inspect import cleandoc
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from llava.conversation import conv_templates
from llava.images import encode_base64, load_image
from serve.protocol import iter_chunks
from tests.procs import Proc, free_port, registered_workers, start_controller, wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CHAT, SQA = "llava-shapes-chat", "llava-shapes-sqa"  # two workers, one tiny random checkpoint
CURSOR = "▌"

pytestmark = pytest.mark.slow


# ---- the processes ------------------------------------------------------------------------------


@dataclass
class DemoStack:
    """Controller + a worker per model + the web UI, each a real process on a free loopback port."""

    tmp: Path
    controller: str = ""
    workers: dict[str, str] = field(default_factory=dict)  # model -> worker URL
    ui: str = ""
    log_dir: Path = Path()
    procs: list[Proc] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)
    startup_s: float = 0.0  # UI process start to its page answering

    @classmethod
    def start(cls, tmp: Path, ckpt: Path) -> DemoStack:
        stack = cls(tmp, log_dir=tmp / "logs")
        try:
            stack._start(ckpt)
        except BaseException:
            stack.stop()
            raise
        return stack

    def _start(self, ckpt: Path) -> None:
        proc, self.controller = start_controller(self.tmp)
        self.procs.append(proc)
        # The SQA worker runs one generation at a time, so a test can keep it busy (a slow side).
        for model, extra in ((CHAT, []), (SQA, ["--limit-model-concurrency", "1"])):
            self.workers[model] = self.start_worker(ckpt, model, *extra, wait=False)
        for model, url in self.workers.items():
            wait_for(lambda u=url: u in registered_workers(self.controller), 120, f"{model} registered", self.procs)
        port = free_port()
        self.ui = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        ui = Proc(["demo.gradio_web_server", "--controller-url", self.controller, "--port", str(port),
                   "--log-dir", str(self.log_dir), "--model-list-mode", "reload"], self.tmp / "ui.log")  # fmt: skip
        self.procs.append(ui)
        wait_for(lambda: httpx.get(self.ui).status_code == 200, 120, "the web UI", [ui])
        self.startup_s = time.monotonic() - started

    def start_worker(self, ckpt: Path, model: str, *extra: str, wait: bool = True) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = ["serve.model_worker", "--port", str(port), "--worker-address", url, "--controller-address",
                self.controller, "--model-path", str(ckpt), "--model-name", model, *extra]  # fmt: skip
        self.procs.append(Proc(args, self.tmp / f"worker-{model}-{port}.log"))
        if wait:
            wait_for(lambda: url in registered_workers(self.controller), 120, f"{model} registered", self.procs)
        return url

    def stop(self) -> None:
        # Open heartbeat streams would hold the UI's shutdown for seconds; each close waits up to 1 s, so at once.
        closing = [threading.Thread(target=c.close, daemon=True) for c in self.clients]
        for t in closing:
            t.start()
        for t in closing:
            t.join(5)
        for proc in reversed(self.procs):
            proc.stop()

    def client(self) -> Client:
        """A new browser session, as far as the UI can tell (fresh per-session state)."""
        client = Client(self.ui, verbose=False, analytics_enabled=False, download_files=False)
        self.clients.append(client)
        return client

    # ---- the conversation log, read back --------------------------------------------------------
    def events(self) -> list[dict]:
        lines = []
        for path in sorted(self.log_dir.glob("*-conv.jsonl")):
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return lines

    def wait_event(self, match, what: str, timeout: float = 15.0) -> dict:
        """The newest logged event for which `match(event)` holds (the log is written on a background thread)."""
        found: list[dict] = []

        def matches(event: dict) -> bool:
            try:
                return bool(match(event))
            except (KeyError, IndexError, TypeError):  # another kind of event (a vote has no prompt, ...)
                return False

        def check() -> bool:
            found[:] = [e for e in self.events() if matches(e)]
            return bool(found)

        wait_for(check, timeout, what, self.procs)
        return found[-1]


_STACK: dict[str, DemoStack] = {}  # one stack per pytest session, shared by test_demo.py and test_browser.py


def shared_stack(ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """Body of the session fixtures of both files: the first to run starts the stack, the first to finish
    (at the end of the session) stops it."""
    if "stack" not in _STACK:
        _STACK["stack"] = DemoStack.start(tmp_path_factory.mktemp("demo"), ckpt)
    try:
        yield _STACK["stack"]
    finally:
        stack = _STACK.pop("stack", None)
        if stack is not None:
            stack.stop()


@pytest.fixture(scope="session")
def demo_stack(tiny_ckpt, tmp_path_factory) -> Iterator[DemoStack]:
    yield from shared_stack(tiny_ckpt, tmp_path_factory)


# ---- helpers ------------------------------------------------------------------------------------


def message(text: str, image: Path | None = None) -> dict:
    return {"text": text, "files": [handle_file(str(image))] if image else []}


def texts(chatbot: list[dict]) -> list[tuple[str, str]]:
    """(role, text) per message of a Chatbot value as the API returns it (files left out)."""
    out = []
    for m in chatbot:
        parts = [c["text"] for c in m["content"] if c.get("type") == "text"]
        out.append((m["role"], " ".join(parts)))
    return out


def has_picture(chatbot_message: dict) -> bool:
    return any(c.get("type") == "file" for c in chatbot_message["content"])


def last_answer(chatbot: list[dict]) -> str:
    role, text = texts(chatbot)[-1]
    assert role == "assistant", chatbot
    return text


def direct_answer(worker: str, prompt: str, images: list[str], max_new_tokens: int, stop: str = "###") -> str:
    """What the worker answers to exactly this prompt at temperature 0, asked without the UI."""
    payload = {"prompt": prompt, "images": images, "temperature": 0.0, "top_p": 0.7,
               "max_new_tokens": max_new_tokens, "stop": [stop]}  # fmt: skip
    with httpx.stream("POST", f"{worker}/worker_generate_stream", json=payload, timeout=60) as r:
        chunks = list(iter_chunks(r.iter_bytes()))
    assert chunks[-1]["error_code"] == 0, chunks[-1]
    return chunks[-1]["text"][len(prompt) :].strip()


def image_b64(path: Path) -> str:
    # What the UI sends for a small picture in "Default" mode: the decoded pixels, re-encoded as PNG.
    return encode_base64(load_image(path))


def chat_args(model: str = CHAT, mode: str = "Default", max_new_tokens: int = 24) -> tuple:
    return model, mode, 0.0, 0.7, max_new_tokens


def llava_v0(*turns: str, image_first: bool = True) -> str:
    """The prompt for alternating human/assistant turns (the last human turn awaits its answer)."""
    conv = conv_templates["llava_v0"].copy()
    for i, text in enumerate(turns):
        conv.append_message(conv.roles[i % 2], f"<image>\n{text}" if i == 0 and image_first else text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def streaming_question(stack: DemoStack, picture: Path, candidates: list[str], min_words: int = 4) -> str:
    """A canonical question whose temperature-0 answer from the tiny model is long enough to watch it stream."""
    for q in candidates:
        if len(direct_answer(stack.workers[CHAT], llava_v0(q), [image_b64(picture)], 24).split()) >= min_words:
            return q
    pytest.fail(f"the tiny model answers none of {candidates} with {min_words}+ words; pick other questions")


def hold_worker(stack: DemoStack, model: str, n: int = 2) -> list[threading.Thread]:
    """Queue `n` generations of 300 tokens (no stop string can end them early) on a worker started with
    --limit-model-concurrency 1: the next request waits behind them, 30 times longer than an 8-token answer."""
    hold = (stack.workers[model], llava_v0("Count slowly.", image_first=False), [], 300, "@@never@@")
    busy = [threading.Thread(target=direct_answer, args=hold, daemon=True) for _ in range(n)]
    for t in busy:
        t.start()
    queued = lambda: httpx.get(f"{stack.workers[model]}/health").json()["queue_length"] >= n - 1  # noqa: E731
    wait_for(queued, 10, f"{model}'s worker busy")
    return busy


def gallery() -> list[dict]:
    return json.loads((EXAMPLES / "examples.json").read_text())["examples"]


QUESTIONS = ["Where is the orange triangle?", "Describe the image in detail.", "How many shapes are there in the image?",
             "Is there a purple square in the image?", "What shape is the green object?"]  # fmt: skip
PICTURE = EXAMPLES / "images" / "ex-where.png"


# ---- chat -----------------------------------------------------------------------------------------


def test_picture_and_question_get_a_streamed_answer_and_the_follow_up_carries_the_history(demo_stack):
    stack = demo_stack
    question = streaming_question(stack, PICTURE, QUESTIONS)
    client = stack.client()

    job = client.submit(message(question, PICTURE), *chat_args(), api_name="/chat")
    job.result(timeout=60)
    outputs = job.outputs()
    chatbots = [o[0] for o in outputs]
    final = chatbots[-1]
    assert texts(final)[0] == ("user", question) and has_picture(final[0])
    answer = last_answer(final)
    assert answer and CURSOR not in answer
    # Streamed: the answer grew over several updates, each one a prefix of the final text, cursor while streaming.
    partial = [last_answer(c) for c in chatbots[1:-1] if len(c) == 2]
    growing = [p.removesuffix(CURSOR) for p in partial if p.endswith(CURSOR) and p != CURSOR]
    assert len(set(growing)) >= 2, partial
    assert all(answer.startswith(p.strip()) for p in growing), (growing, answer)
    assert not (outputs[0][1] or {}).get("text")  # the message box was emptied when the question went out

    # The log holds the exact prompt the worker got, and the worker answers that prompt the same way directly.
    first = stack.wait_event(lambda e: e["type"] == "chat" and e["session"] == client.session_hash,
                             "the first turn in the log")  # fmt: skip
    assert first["prompt"] == llava_v0(question)
    assert first["outcome"] == "ok" and first["model"] == CHAT and first["worker"] == stack.workers[CHAT]
    logged_answer = first["state"]["messages"][1][1]
    assert cleandoc(logged_answer) == answer
    assert direct_answer(stack.workers[CHAT], first["prompt"], [image_b64(PICTURE)], 24) == logged_answer
    assert (stack.log_dir / "images" / f"{first['images'][0]}.png").is_file()
    assert first["params"] == {"temperature": 0.0, "top_p": 0.7, "max_new_tokens": 24}
    assert first["start"] <= first["finish"] and first["first_token_s"] is not None

    # Second turn, text only: same conversation, the whole history goes to the worker.
    final2 = client.predict(message("Why?"), *chat_args(), api_name="/chat")[0]
    assert [r for r, _ in texts(final2)] == ["user", "assistant", "user", "assistant"]
    assert texts(final2)[2] == ("user", "Why?") and has_picture(final2[0])
    second = stack.wait_event(lambda e: e["type"] == "chat" and e["conversation"] == first["conversation"]
                              and len(e["state"]["messages"]) == 4, "the second turn in the log")  # fmt: skip
    assert second["prompt"] == llava_v0(question, logged_answer, "Why?")
    assert (
        direct_answer(stack.workers[CHAT], second["prompt"], [image_b64(PICTURE)], 24)
        == (second["state"]["messages"][3][1])
    )
    assert second["images"] == first["images"]  # the picture is logged once, by hash


def test_a_new_picture_starts_a_new_conversation_and_clear_resets(demo_stack):
    client = demo_stack.client()
    client.predict(message("What color is the circle?", EXAMPLES / "images" / "ex-color-of-circle.png"),
                   *chat_args(), api_name="/chat")  # fmt: skip
    chatbot = client.predict(message("How many shapes are there in the image?", EXAMPLES / "images" / "ex-count-all.png"),
                             *chat_args(), api_name="/chat")[0]  # fmt: skip
    assert [t for _, t in texts(chatbot)][0] == "How many shapes are there in the image?"
    assert len(chatbot) == 2
    event = demo_stack.wait_event(lambda e: e["session"] == client.session_hash and "How many" in (e["prompt"] or ""),
                                  "the new conversation")  # fmt: skip
    assert event["prompt"] == llava_v0("How many shapes are there in the image?")

    assert client.predict(api_name="/clear")[0] == []
    chatbot = client.predict(message("Hello there"), *chat_args(), api_name="/chat")[0]
    assert texts(chatbot)[0] == ("user", "Hello there") and not has_picture(chatbot[0])
    event = demo_stack.wait_event(lambda e: e["session"] == client.session_hash and "Hello" in (e["prompt"] or ""),
                                  "the text-only conversation")  # fmt: skip
    assert event["prompt"] == llava_v0("Hello there", image_first=False) and "images" not in event
    client.predict(CHAT, api_name="/flag")
    flag = demo_stack.wait_event(lambda e: e["type"] == "flag" and e["session"] == client.session_hash, "the flag")
    assert flag["conversation"] == event["conversation"] and flag["state"] == event["state"]


def test_regenerate_asks_again_with_the_new_process_mode_and_votes_are_logged(demo_stack):
    client = demo_stack.client()
    picture = EXAMPLES / "images" / "ex-yes-no.png"
    client.predict(message("Is there a purple square in the image?", picture), *chat_args(), api_name="/chat")
    chatbot = client.predict(*chat_args(mode="Pad"), api_name="/regenerate")  # one output: the chatbot
    assert len(chatbot) == 2 and last_answer(chatbot)
    regen = demo_stack.wait_event(
        lambda e: e["session"] == client.session_hash and e["state"]["messages"][0][1]["process_mode"] == "Pad",
        "the regenerated turn",
    )
    assert regen["state"]["messages"][0][1]["text"] == "Is there a purple square in the image?"

    client.predict(CHAT, api_name="/upvote")
    vote = demo_stack.wait_event(lambda e: e["type"] == "upvote" and e["conversation"] == regen["conversation"],
                                 "the upvote")  # fmt: skip
    assert vote["model"] == CHAT and vote["state"]["messages"] == regen["state"]["messages"]
    with pytest.raises(AppError, match="already been rated"):
        client.predict(CHAT, api_name="/flag")


def test_stop_ends_the_answer_and_the_conversation_goes_on(demo_stack):
    stack = demo_stack
    busy = hold_worker(stack, SQA)  # the answer waits in the worker's queue until Stop
    client = stack.client()
    job = client.submit(message("Hello there"), *chat_args(model=SQA), api_name="/chat")
    wait_for(lambda: any(last_answer(o[0]) == CURSOR for o in job.outputs() if len(o[0]) == 2), 10, "streaming")
    # The Stop button does both: the page cancels the running event (Gradio's `cancels`), the handler tidies up.
    job.cancel()
    chatbot = client.predict(api_name="/stop")
    assert "Stopped before any answer came" in last_answer(chatbot)
    event = stack.wait_event(lambda e: e["session"] == client.session_hash, "the stopped turn")
    assert event["outcome"] == "stopped" and event["model"] == SQA
    for t in busy:
        t.join(60)
    # The stopped turn is replaced by the next message, which gets an answer.
    chatbot = client.predict(message("Hello again"), *chat_args(model=CHAT), api_name="/chat")[0]
    assert [t for r, t in texts(chatbot) if r == "user"] == ["Hello again"] and last_answer(chatbot)


# ---- side by side -----------------------------------------------------------------------------------


def test_side_by_side_returns_two_answers_and_records_the_vote(demo_stack):
    client = demo_stack.client()
    picture = EXAMPLES / "images" / "ex-sqa-which-red.png"
    prompt = next(ex["prompt"] for ex in gallery() if ex["model"] == SQA)
    a, b, box = client.predict(message(prompt, picture), CHAT, SQA, "Default", 0.0, 0.7, 24, api_name="/side_by_side")
    assert texts(a)[0] == ("user", prompt) and texts(b)[0] == ("user", prompt)
    answer_a, answer_b = last_answer(a), last_answer(b)
    assert answer_a and answer_b and CURSOR not in answer_a + answer_b
    logged = {e["model"]: e for e in demo_stack.events() if e["session"] == client.session_hash}
    assert set(logged) == {CHAT, SQA}
    assert logged[CHAT]["worker"] == demo_stack.workers[CHAT] and logged[SQA]["worker"] == demo_stack.workers[SQA]
    assert logged[CHAT]["prompt"] == logged[SQA]["prompt"] == llava_v0(prompt)

    client.predict(CHAT, SQA, api_name="/vote_b")
    vote = demo_stack.wait_event(lambda e: e["type"] == "rightvote" and e["session"] == client.session_hash,
                                 "the side-by-side vote")  # fmt: skip
    assert vote["models"] == [CHAT, SQA]
    assert vote["state_a"]["messages"][1][1] == logged[CHAT]["state"]["messages"][1][1]
    assert vote["state_b"]["messages"][1][1] == logged[SQA]["state"]["messages"][1][1]
    with pytest.raises(AppError, match="already voted"):
        client.predict(CHAT, SQA, api_name="/vote_tie")

    # Regenerate asks both again (and a new vote is possible); Clear empties both sides.
    a, b = client.predict(CHAT, SQA, "Default", 0.0, 0.7, 24, api_name="/side_by_side_regenerate")
    assert len(a) == len(b) == 2 and last_answer(a) == answer_a and last_answer(b) == answer_b  # temperature 0
    client.predict(CHAT, SQA, api_name="/vote_tie")
    assert demo_stack.wait_event(lambda e: e["type"] == "tievote" and e["session"] == client.session_hash, "tie")
    a, b, _ = client.predict(api_name="/side_by_side_clear")
    assert a == b == []


def test_side_by_side_streams_each_side_at_its_own_pace(demo_stack):
    """Keep the SQA worker (one generation at a time) busy: the chat side must finish while side B still waits."""
    stack = demo_stack
    busy = hold_worker(stack, SQA)
    job = stack.client().submit(message("Hello there"), CHAT, SQA, "Default", 0.0, 0.7, 8, api_name="/side_by_side")
    a_done_while_b_held = False
    for a, b, _ in job:  # updates as they arrive
        a_done = len(a) == 2 and not last_answer(a).endswith(CURSOR)
        b_waiting = len(b) == 1 or last_answer(b) == CURSOR
        if a_done and b_waiting and any(t.is_alive() for t in busy):
            a_done_while_b_held = True
    a, b, _ = job.result(timeout=120)
    for t in busy:
        t.join(60)
    assert a_done_while_b_held, job.outputs()
    assert last_answer(a) and last_answer(b) and CURSOR not in last_answer(b)


# ---- examples ----------------------------------------------------------------------------------------


def test_clicking_an_example_fills_the_box_and_picks_its_model(demo_stack):
    examples = gallery()
    index = next(i for i, ex in enumerate(examples) if ex["model"] == SQA)
    client = demo_stack.client()
    chat_box, chat_model, _, _ = client.predict(index, api_name="/use_example")  # (the tab switch is not in the API)
    assert chat_box["text"] == examples[index]["prompt"]
    assert Path(chat_box["files"][0]["path"]).name == Path(examples[index]["image"]).name
    chat_model = chat_model["value"] if isinstance(chat_model, dict) else chat_model  # an update: choices + value
    assert chat_model == SQA
    # The prompt answers through the model it names.
    chatbot = client.predict(chat_box, chat_model, "Default", 0.0, 0.7, 8, api_name="/chat")[0]
    assert texts(chatbot)[0][1] == examples[index]["prompt"] and has_picture(chatbot[0])


# ---- errors a user sees --------------------------------------------------------------------------------


def test_no_worker_for_the_model_says_so(demo_stack):
    client = demo_stack.client()
    chatbot = client.predict(message("Hello there"), *chat_args(model="llava-nobody"), api_name="/chat")[0]
    answer = last_answer(chatbot)
    assert "No worker serves llava-nobody" in answer and CHAT in answer
    event = demo_stack.wait_event(lambda e: e["session"] == client.session_hash, "the failed turn")
    assert event["outcome"] == "error" and event["error"] in answer


def test_a_bad_picture_is_refused_with_the_reason(demo_stack, tmp_path):
    fake = tmp_path / "not-a-picture.png"
    fake.write_bytes(b"this is text, not a PNG")
    with pytest.raises(AppError, match="That picture cannot be used: data is not a recognised image"):
        demo_stack.client().predict(message("What is this?", fake), *chat_args(), api_name="/chat")


def test_too_long_a_question_says_the_conversation_is_too_long(demo_stack):
    chatbot = demo_stack.client().predict(message("circle " * 600), *chat_args(), api_name="/chat")[0]
    answer = last_answer(chatbot)
    assert "The conversation is too long for llava-shapes-chat" in answer and "512" in answer, answer


def test_a_dead_worker_is_reported_and_a_failed_turn_can_be_replaced(demo_stack, tiny_ckpt):
    stack = demo_stack
    url = stack.start_worker(tiny_ckpt, "llava-doomed")
    client = stack.client()
    assert last_answer(client.predict(message("Hello there"), *chat_args(model="llava-doomed"), api_name="/chat")[0])
    doomed = next(p for p in stack.procs if "llava-doomed" in p.args)
    stack.procs.remove(doomed)  # its death is the point: the stack's health checks must not trip on it
    doomed.kill(signal.SIGKILL)
    doomed.stop()
    chatbot = client.predict(message("Are you there?"), *chat_args(model="llava-doomed"), api_name="/chat")[0]
    answer = last_answer(chatbot)
    assert f"The worker serving llava-doomed at {url} is not answering" in answer, answer
    # The failed turn is shown but not kept: the next message replaces it and goes to a live model.
    chatbot = client.predict(message("And now?"), *chat_args(model=CHAT), api_name="/chat")[0]
    assert [t for r, t in texts(chatbot) if r == "user"] == ["Hello there", "And now?"]
    event = stack.wait_event(lambda e: e["session"] == client.session_hash and e["model"] == CHAT,
                             "the replaced turn")  # fmt: skip
    assert "Are you there?" not in event["prompt"]
