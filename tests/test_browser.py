"""The web UI in a real browser: Debian's Chromium driven by Playwright against the real processes of
test_demo.py (controller, two workers on a tiny checkpoint, the UI), plus one run of `python -m serve.launch`.

Screenshots go to test-artifacts/screenshots/, timings to test-artifacts/timings.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from test_demo import (
    CHAT,
    CURSOR,
    EXAMPLES,
    QUESTIONS,
    SQA,
    DemoStack,
    gallery,
    llava_v0,
    shared_stack,
    streaming_question,
)

from tests.procs import ENV, free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SHOTS = ARTIFACTS / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
LOCAL = re.compile(r"^(https?|wss?)://(127\.0\.0\.1|localhost)(:\d+)?/|^(data|blob):")
PICTURE = EXAMPLES / "images" / "ex-where.png"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # CI sets LLAVA_REQUIRE_BROWSER=1: there a missing browser is a failure
        why = f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)"
        if os.environ.get("LLAVA_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def demo_stack(tiny_ckpt, tmp_path_factory) -> Iterator[DemoStack]:
    """The processes of test_demo.py, started once per session whichever file runs first."""
    yield from shared_stack(tiny_ckpt, tmp_path_factory)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser session; fails the test if the page fetched anything beyond this machine."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: None if LOCAL.match(r.url) else outside.append(r.url))
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()
    assert not outside, f"the page reached beyond this machine: {outside}"


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def timings(**values: float) -> None:
    """Add measured numbers to test-artifacts/timings.json (read by people, not by tests)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update({k: round(v, 3) for k, v in values.items()})
    path.write_text(json.dumps(data, indent=2) + "\n")


def shot(page: Page, name: str, full_page: bool = True) -> Path:
    """Save a screenshot; notices (toasts) float over the window, so shots of them take the window only."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.wait_for_timeout(500)  # let fades and button transitions finish, so the picture shows the settled page
    page.screenshot(path=str(path), full_page=full_page)
    return path


# ---- page helpers -----------------------------------------------------------------------------------------


def open_ui(page: Page, url: str, reloads_models: bool = True) -> float:
    """Load the page and wait until it is usable: a model picked, the message box ready and, when the UI asks
    the controller on every page load, that answer shown. Returns the seconds it took."""
    start = time.perf_counter()
    page.goto(url)
    expect(page.locator("#chat-model input[role=combobox]")).not_to_have_value("", timeout=60_000)
    expect(page.locator("#chat-message textarea")).to_be_editable()
    if reloads_models:
        expect(page.locator("#chat-models-note")).to_contain_text("checked", timeout=30_000)
    return time.perf_counter() - start


def set_parameters(page: Page, prefix: str, temperature: float, max_tokens: int) -> None:
    page.locator(f"#{prefix}-parameters").get_by_text("Parameters").click()
    for elem, value in ((f"#{prefix}-temperature", temperature), (f"#{prefix}-max-tokens", max_tokens)):
        box = page.locator(f"{elem} input[type=number]")
        for _ in range(3):  # now and then the slider puts its old value back right after a typed one: retype
            box.fill(str(value))
            box.press("Tab")
            page.wait_for_timeout(200)
            if box.input_value() == str(value):
                break
        expect(box).to_have_value(str(value))


def watch_answers(page: Page, chatbot: str) -> None:
    """Record every text the newest answer in `chatbot` shows, with its time, as the DOM changes."""
    page.evaluate(
        """(id) => {
            const root = document.querySelector('#' + id);
            window.__frames = [];
            const snap = () => {
                const bots = root.querySelectorAll('[data-testid="bot"]');
                const text = bots.length ? bots[bots.length - 1].innerText : null;
                const last = window.__frames[window.__frames.length - 1];
                if (!last || last.text !== text || last.n !== bots.length)
                    window.__frames.push({t: performance.now(), text: text, n: bots.length});
            };
            new MutationObserver(snap).observe(root, {subtree: true, childList: true, characterData: true});
        }""",
        chatbot,
    )


def send(page: Page, prefix: str, text: str, picture: Path | None = None) -> float:
    """Type (and attach) a message and press Enter; returns the page's clock at the key press (ms)."""
    if picture is not None:
        page.locator(f"#{prefix}-message input[type=file]").set_input_files(str(picture))
        expect(page.locator(f"#{prefix}-message img")).to_have_count(1)  # the thumbnail in the box
    page.locator(f"#{prefix}-message textarea").fill(text)
    sent = page.evaluate("performance.now()")
    page.locator(f"#{prefix}-message textarea").press("Enter")
    return sent


def answers(page: Page, chatbot: str) -> list[str]:
    return page.locator(f"#{chatbot} [data-testid='bot']").all_inner_texts()


def wait_answer(page: Page, chatbot: str, count: int) -> str:
    """Wait for the `count`-th answer to be complete (no cursor, Stop off again); returns its text."""
    bots = page.locator(f"#{chatbot} [data-testid='bot']")
    expect(bots).to_have_count(count, timeout=60_000)
    expect(bots.nth(count - 1)).not_to_contain_text(CURSOR, timeout=60_000)
    stop = "#chat-stop" if chatbot.startswith("chat") else "#sbs-stop"
    expect(page.locator(stop)).to_be_disabled()
    text = bots.nth(count - 1).inner_text().strip()
    assert text
    return text


def frames(page: Page) -> list[dict]:
    return page.evaluate("window.__frames")


# ---- tests ----------------------------------------------------------------------------------------------------


def test_ask_about_a_picture_see_it_stream_follow_up_and_clear(page: Page, demo_stack: DemoStack):
    ready_s = open_ui(page, demo_stack.ui)
    expect(page.locator("#chat-model input[role=combobox]")).to_have_value(CHAT)
    set_parameters(page, "chat", 0, 24)
    watch_answers(page, "chat-chatbot")
    question = streaming_question(demo_stack, PICTURE, QUESTIONS)  # one the tiny model answers at length
    sent = send(page, "chat", question, PICTURE)
    first = wait_answer(page, "chat-chatbot", 1)
    shot(page, "chat-answer")

    seen = [f for f in frames(page) if f["n"] == 1 and f["text"]]
    partial = [f["text"].removesuffix(CURSOR) for f in seen if f["text"].endswith(CURSOR)]
    assert any(not p for p in partial), seen  # a cursor before any text: the turn showed at once
    assert len({p for p in partial if p}) >= 2, seen  # text arrived in pieces, in place
    ttft_ms = next(f["t"] for f in seen if f["text"].removesuffix(CURSOR).strip()) - sent
    user = page.locator("#chat-chatbot [data-testid='user']")
    expect(user.first.locator("img")).to_have_count(1)  # the picture is in the conversation
    expect(user.nth(1)).to_have_text(question)
    expect(page.locator("#chat-message textarea")).to_have_value("")

    send(page, "chat", "Why is that so?")
    second = wait_answer(page, "chat-chatbot", 2)
    assert answers(page, "chat-chatbot")[0].strip() == first
    shot(page, "chat-follow-up")
    event = demo_stack.wait_event(lambda e: "Why is that so?" in (e["prompt"] or ""), "the follow-up in the log")
    logged_first = event["state"]["messages"][1][1]
    assert event["prompt"] == llava_v0(question, logged_first, "Why is that so?")
    assert event["outcome"] == "ok" and event["state"]["messages"][3][1] and second

    for button in ("upvote", "regenerate", "clear"):
        expect(page.locator(f"#chat-{button}")).to_be_enabled()
    expect(page.locator("#chat-stop")).to_be_disabled()
    page.locator("#chat-clear").click()
    expect(page.locator("#chat-chatbot [data-testid='bot']")).to_have_count(0)
    expect(page.locator("#chat-chatbot [data-testid='user']")).to_have_count(0)
    expect(page.locator("#chat-clear")).to_be_disabled()
    shot(page, "chat-cleared")
    timings(browser_page_ready_s=ready_s, browser_first_token_s=ttft_ms / 1000)


def test_clicking_an_example_fills_the_chat_box_and_picks_the_scienceqa_model(page: Page, demo_stack: DemoStack):
    open_ui(page, demo_stack.ui)
    set_parameters(page, "chat", 0, 24)
    examples = gallery()
    index = next(i for i, ex in enumerate(examples) if ex["model"] == SQA)
    page.locator("#tab-examples-button").click()
    rows = page.locator("#examples-gallery tr.tr-body")
    expect(rows).to_have_count(len(examples))
    expect(rows.nth(0).locator("img")).to_be_visible()
    shot(page, "examples-gallery")
    rows.nth(index).click()

    expect(page.locator("#tab-chat-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#chat-message textarea")).to_have_value(examples[index]["prompt"])
    expect(page.locator("#chat-message img")).to_have_count(1)
    expect(page.locator("#chat-model input[role=combobox]")).to_have_value(SQA)
    shot(page, "example-filled")
    page.locator("#chat-message textarea").press("Enter")
    wait_answer(page, "chat-chatbot", 1)
    expect(page.locator("#chat-chatbot [data-testid='user']").nth(1)).to_contain_text("Question: Which shape is red?")
    shot(page, "example-answered")
    event = demo_stack.wait_event(
        lambda e: e["model"] == SQA and e["tab"] == "chat" and e["prompt"] == llava_v0(examples[index]["prompt"]),
        "the example's turn",
    )
    assert event["outcome"] == "ok"


def test_side_by_side_streams_both_answers_then_a_vote_is_recorded(page: Page, demo_stack: DemoStack):
    open_ui(page, demo_stack.ui)
    page.locator("#tab-side-by-side-button").click()
    expect(page.locator("#sbs-model-a input[role=combobox]")).to_have_value(CHAT)
    expect(page.locator("#sbs-model-b input[role=combobox]")).to_have_value(SQA)
    set_parameters(page, "sbs", 0, 24)
    # An example clicked from here comes back here.
    page.locator("#tab-examples-button").click()
    page.locator("#examples-gallery tr.tr-body").nth(1).click()
    expect(page.locator("#tab-side-by-side-button")).to_have_attribute("aria-selected", "true")
    prompt = gallery()[1]["prompt"]
    expect(page.locator("#sbs-message textarea")).to_have_value(prompt)
    page.locator("#sbs-message textarea").press("Enter")
    a = wait_answer(page, "sbs-chatbot-a", 1)
    b = wait_answer(page, "sbs-chatbot-b", 1)
    assert a and b

    expect(page.locator("#sbs-vote-a")).to_be_enabled()
    page.locator("#sbs-vote-a").click()
    expect(page.get_by_text("Vote saved (A is better)")).to_be_visible()
    expect(page.locator("#sbs-vote-a")).to_be_disabled()
    shot(page, "side-by-side-voted", full_page=False)
    vote = demo_stack.wait_event(lambda e: e["type"] == "leftvote" and e["state_a"]["messages"][0][1]["text"] == prompt,
                                 "the vote in the log")  # fmt: skip
    assert vote["models"] == [CHAT, SQA]
    assert vote["state_a"]["messages"][1][1] and vote["state_b"]["messages"][1][1]

    page.locator("#sbs-clear").click()
    expect(page.locator("#sbs-chatbot-a [data-testid='bot']")).to_have_count(0)
    expect(page.locator("#sbs-chatbot-b [data-testid='bot']")).to_have_count(0)


def test_a_model_named_in_the_link_is_picked_in_both_tabs(page: Page, demo_stack: DemoStack):
    open_ui(page, f"{demo_stack.ui}/?model={SQA}")
    expect(page.locator("#chat-model input[role=combobox]")).to_have_value(SQA)
    page.locator("#tab-side-by-side-button").click()
    expect(page.locator("#sbs-model-a input[role=combobox]")).to_have_value(SQA)
    expect(page.locator("#sbs-model-b input[role=combobox]")).to_have_value(CHAT)  # B differs from A
    open_ui(page, f"{demo_stack.ui}/?model=llava-unknown")
    expect(page.get_by_text("The link asks for llava-unknown, which no worker serves right now.")).to_be_visible()
    expect(page.locator("#chat-model input[role=combobox]")).to_have_value(CHAT)


def test_errors_say_what_happened(page: Page, demo_stack: DemoStack, tmp_path):
    open_ui(page, demo_stack.ui)
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"not really a picture")
    page.locator("#chat-message input[type=file]").set_input_files(str(fake))
    page.locator("#chat-message textarea").fill("What is this?")
    page.locator("#chat-message textarea").press("Enter")
    expect(page.get_by_text("That picture cannot be used: data is not a recognised image")).to_be_visible()
    expect(page.locator("#chat-message textarea")).to_have_value("What is this?")  # nothing was lost
    expect(page.locator("#chat-chatbot")).not_to_contain_text("Error")  # the chat window is untouched
    expect(page.locator("#chat-stop")).to_be_disabled()
    shot(page, "error-bad-picture", full_page=False)

    open_ui(page, demo_stack.ui)  # a fresh page: no refused picture in the box
    combobox = page.locator("#chat-model input[role=combobox]")
    combobox.fill("llava-nobody")  # a model whose worker has gone away since the page loaded
    combobox.press("Tab")
    expect(combobox).to_have_value("llava-nobody")
    send(page, "chat", "Hello there")
    expect(page.locator("#chat-chatbot [data-testid='bot']").last).to_contain_text("No worker serves llava-nobody")
    shot(page, "error-no-worker")


def test_serve_launch_gives_a_usable_page_and_a_first_token(browser: Browser, tmp_path):
    """The README's demo command, end to end; records the two numbers the issue asks for."""
    controller, worker, ui = free_port(), free_port(), free_port()
    env = {**ENV, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "launch.log").open("wb")
    start = time.perf_counter()
    launch = subprocess.Popen(
        [sys.executable, "-m", "serve.launch", "--controller-port", str(controller), "--worker-port", str(worker),
         "--ui-port", str(ui)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        url = f"http://127.0.0.1:{ui}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert launch.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        open_ui(page, url, reloads_models=False)
        usable_s = time.perf_counter() - start
        models = httpx.post(f"http://127.0.0.1:{controller}/list_models").json()["models"]
        assert len(models) == 2, models
        set_parameters(page, "chat", 0.2, 32)  # the first token is what is timed; a short answer keeps this quick
        watch_answers(page, "chat-chatbot")
        sent = send(page, "chat", "What color is the circle?", EXAMPLES / "images" / "ex-color-of-circle.png")
        wait_answer(page, "chat-chatbot", 1)
        seen = [f for f in frames(page) if f["n"] == 1 and f["text"] and f["text"].removesuffix(CURSOR).strip()]
        ttft_s = (seen[0]["t"] - sent) / 1000
        shot(page, "launch-first-answer")
        timings(launch_to_usable_page_s=usable_s, launch_first_token_s=ttft_s, launch_models=len(models))
    finally:
        context.close()
        children = child_pids(launch.pid)  # each in its own session: a group kill of the launcher misses them
        stopping = time.perf_counter()
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGTERM)  # the launcher stops its children, then itself
        try:
            launch.wait(timeout=30)
            timings(launch_stop_s=time.perf_counter() - stopping)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()
        for pid in children:  # only what the launcher failed to stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        log.close()
    assert launch.returncode == 0, (tmp_path / "launch.log").read_text()[-3000:]
    for port in (controller, worker, worker + 1, ui):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
