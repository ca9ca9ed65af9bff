"""The web UI's parts that need no processes: pane rules, the conversation log, the worker client's error
handling against real sockets, and the example gallery."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from demo.conv_log import ConvLogger, ConvSnapshot, log_file
from demo.examples import ExamplesError, fitting_model, load_examples
from demo.session import CURSOR, ChatSession, PaneError, retemplate
from demo.turn import merge
from demo.worker_client import (
    ServiceError,
    Timeouts,
    Worker,
    WorkerClient,
    describe_worker_error,
    iter_chunks_async,
)
from llava.conversation import conv_templates
from llava.images import image_hash
from serve.protocol import ErrorCode, GenerateRequest, encode_chunk

ROOT = Path(__file__).resolve().parent.parent


def red_square() -> Image.Image:
    img = Image.new("RGB", (40, 30), (245, 245, 245))
    img.paste((220, 30, 30), (10, 5, 30, 25))
    return img


# ---- panes ------------------------------------------------------------------------------------------


def answered(pane: ChatSession, text: str) -> None:
    pane.begin_answer()
    pane.set_answer(text)
    pane.end_answer()


def test_turns_render_under_llava_v0_with_the_image_first():
    pane = ChatSession()
    assert not pane.add_user_message("What color is it?", red_square(), "/tmp/x.png", "Pad")
    answered(pane, "It is red.")
    pane.add_user_message("Why?")
    assert pane.prompt() == (
        conv_templates["llava_v0"].system + "###Human: <image>\nWhat color is it?###Assistant: It is red.###"
        "Human: Why?###Assistant:"
    )
    assert len(pane.images()) == 1
    shown = pane.chatbot()
    assert shown[0] == {"role": "user", "content": [{"path": "/tmp/x.png"}, "What color is it?"]}
    assert shown[1:] == [{"role": "assistant", "content": "It is red."}, {"role": "user", "content": "Why?"}]


def test_a_new_picture_starts_a_new_conversation():
    pane = ChatSession()
    pane.add_user_message("First?", red_square(), "/tmp/a.png")
    answered(pane, "One.")
    first_id = pane.conversation_id
    assert pane.add_user_message("Second?", red_square().rotate(90), "/tmp/b.png") is True
    assert pane.conversation_id != first_id
    assert [m[1][0] if isinstance(m[1], tuple) else m[1] for m in pane.messages] == ["Second?", None]
    assert pane.image_file == "/tmp/b.png"


def test_a_picture_alone_asks_for_a_description_and_image_tokens_typed_by_users_are_dropped():
    pane = ChatSession()
    pane.add_user_message("  <image>  ", red_square(), "/tmp/a.png")
    assert pane.messages[0][1][0] == "Describe the image in detail."
    with pytest.raises(PaneError, match="Type a question"):
        ChatSession().add_user_message("<image>")


def test_a_failed_answer_is_shown_never_sent_and_is_replaced_by_the_next_message():
    pane = ChatSession()
    pane.add_user_message("What is this?", red_square(), "/tmp/a.png", "Crop")
    pane.begin_answer()
    pane.end_answer("No worker serves m right now.")
    assert pane.last_failed and not pane.answered
    assert pane.chatbot()[-1] == {"role": "assistant", "content": "**Error:** No worker serves m right now."}
    pane.add_user_message("And now?")  # replaces the failed turn, keeps its picture and process mode
    assert pane.prompt().endswith("###Human: <image>\nAnd now?###Assistant:")
    assert pane.messages[0][1][2] == "Crop" and pane.image_file == "/tmp/a.png"
    assert pane.error is None


def test_regenerate_drops_the_answer_and_takes_the_new_process_mode():
    pane = ChatSession()
    with pytest.raises(PaneError, match="nothing to regenerate"):
        pane.prepare_regenerate()
    pane.add_user_message("What is this?", red_square(), "/tmp/a.png", "Default")
    answered(pane, "A square.")
    pane.voted = True
    pane.prepare_regenerate("Pad")
    assert pane.messages[-1][1] is None and pane.messages[0][1][2] == "Pad" and not pane.voted


def test_streaming_shows_a_cursor_and_blocks_new_messages_until_stopped():
    pane = ChatSession()
    pane.add_user_message("Hi")
    pane.begin_answer()
    assert pane.chatbot()[-1]["content"] == CURSOR
    pane.set_answer("Hel")
    assert pane.chatbot()[-1]["content"] == "Hel" + CURSOR
    with pytest.raises(PaneError, match="still streaming"):
        pane.add_user_message("again")
    pane.stop()
    assert pane.answered and pane.chatbot()[-1]["content"] == "Hel"


def test_stop_before_any_text_and_an_empty_answer_count_as_failed():
    pane = ChatSession()
    pane.add_user_message("Hi")
    pane.begin_answer()
    pane.stop()
    assert pane.last_failed and "Stopped before any answer" in pane.error
    pane.prepare_regenerate()
    pane.begin_answer()
    pane.end_answer()
    assert pane.last_failed and "empty answer" in pane.error


def test_retemplate_keeps_the_messages_under_the_new_roles():
    pane = ChatSession()
    pane.add_user_message("What is it?", red_square(), None)
    answered(pane, "A square.")
    pane.add_user_message("Sure?")
    conv = retemplate(pane.conv, "llava_v1")
    assert conv.get_prompt().endswith("USER: <image>\nWhat is it? ASSISTANT: A square.</s>USER: Sure? ASSISTANT:")
    assert retemplate(conv, "llava_v1") is conv


def test_reset_starts_over_under_the_same_template():
    pane = ChatSession()
    pane.use_template("chatml")
    pane.add_user_message("Hi")
    old = pane.conversation_id
    pane.reset()
    assert not pane.has_turns and pane.conv.name == "chatml" and pane.conversation_id != old


# ---- merge: two streams at their own pace -----------------------------------------------------------------


def test_merge_yields_as_soon_as_either_stream_changes():
    log: list[str] = []

    async def side(name: str, delays: list[float]):
        for i, d in enumerate(delays):
            await asyncio.sleep(d)
            log.append(f"{name}{i}")
            yield

    async def run() -> list[list[str]]:
        seen = []
        async for _ in merge(side("fast", [0.01, 0.01]), side("slow", [0.3])):
            seen.append(list(log))
        return seen

    seen = asyncio.run(run())
    assert seen[0] == ["fast0"] and ["fast0", "fast1"] in seen  # the fast side did not wait for the slow one
    assert seen[-1] == ["fast0", "fast1", "slow0"]


def test_merge_stops_both_streams_when_its_task_is_cancelled():
    finished: list[str] = []

    async def forever(name: str):
        try:
            while True:
                await asyncio.sleep(0.01)
                yield
        finally:
            finished.append(name)

    async def run() -> list[str]:
        async def consume():
            async for _ in merge(forever("a"), forever("b")):
                pass

        task = asyncio.create_task(consume())  # Stop cancels the handler's task like this
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return sorted(finished)

    assert asyncio.run(run()) == ["a", "b"]


# ---- conversation log ---------------------------------------------------------------------------------


def test_log_writes_one_line_per_event_and_each_picture_once(tmp_path):
    logger = ConvLogger(tmp_path)
    pane = ChatSession()
    pane.add_user_message("What is it?", red_square(), None)
    answered(pane, "A square.")
    for kind in ("chat", "upvote"):
        logger.log({"type": kind, "model": "m"}, {"state": ConvSnapshot.of(pane.conv)})
    assert logger.flush()
    lines = [json.loads(line) for line in log_file(tmp_path, time.time()).read_text().splitlines()]
    assert [e["type"] for e in lines] == ["chat", "upvote"]
    digest = image_hash(red_square())
    assert lines[0]["images"] == [digest]
    assert lines[0]["state"]["messages"][0] == ["Human", {"text": "What is it?", "image": digest,
                                                          "process_mode": "Default"}]  # fmt: skip
    assert lines[0]["state"]["template"] == "llava_v0" and "tstamp" in lines[0]
    assert [p.name for p in (tmp_path / "images").iterdir()] == [f"{digest}.png"]
    assert image_hash(Image.open(tmp_path / "images" / f"{digest}.png")) == digest
    logger.close()


def test_logging_never_raises_or_blocks_even_when_the_disk_fails(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log folder should be")
    logger = ConvLogger(blocker)
    pane = ChatSession()
    pane.add_user_message("Hi", red_square(), None)
    start = time.perf_counter()
    for _ in range(50):
        logger.log({"type": "chat"}, {"state": ConvSnapshot.of(pane.conv)})
    assert time.perf_counter() - start < 0.5  # enqueueing only
    assert logger.flush()
    assert logger.dropped == 50
    logger.close()


class _StuckDiskLogger(ConvLogger):
    """A logger whose writes hang until `gate` opens, like a disk that stopped answering."""

    def __init__(self, log_dir: Path, gate: threading.Event, max_pending: int) -> None:
        self.gate = gate
        super().__init__(log_dir, max_pending)

    def _write(self, event, states) -> None:
        self.gate.wait(10)
        super()._write(event, states)


def test_a_full_queue_drops_events_instead_of_waiting(tmp_path):
    gate = threading.Event()
    logger = _StuckDiskLogger(tmp_path, gate, max_pending=2)
    logger.log({"type": "first"})
    deadline = time.monotonic() + 5
    while not logger._queue.empty() and time.monotonic() < deadline:  # the writer took it and is stuck
        time.sleep(0.01)
    start = time.perf_counter()
    for _ in range(5):
        logger.log({"type": "chat"})
    assert time.perf_counter() - start < 0.5 and logger.dropped == 3
    gate.set()
    assert logger.flush()
    assert len(log_file(tmp_path, time.time()).read_text().splitlines()) == 3
    logger.close()


def test_logging_off_does_nothing(tmp_path):
    logger = ConvLogger(None)
    logger.log({"type": "chat"})
    assert not logger.enabled and logger.flush()


# ---- worker client: errors a user can read --------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_controller_is_a_readable_error():
    client = WorkerClient(f"http://127.0.0.1:{closed_port()}", Timeouts(connect=1))
    with pytest.raises(ServiceError, match="Cannot reach the controller at http://127.0.0.1:.*is it running"):
        asyncio.run(client.list_models())


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (ErrorCode.CONTEXT_OVERFLOW, "the prompt is 900 tokens", "The conversation is too long for m: the prompt"),
        (ErrorCode.BAD_REQUEST, "image 1 of 1: not an image", "m refused the request: image 1 of 1"),
        (ErrorCode.OVERLOADED, "12 queued", "m is busy right now (12 queued)"),
        (ErrorCode.INTERNAL, "", "m failed while answering (error 50001: no details given)"),
    ],
)
def test_worker_error_codes_become_messages(code, text, expected):
    assert describe_worker_error(code, text, "m").startswith(expected)


class _ScriptedWorker(BaseHTTPRequestHandler):
    """A protocol peer that sends a scripted byte stream, split where the script says, and may die halfway
    (b"CUT": the connection closes before the announced body is complete). Real HTTP on a real socket; it
    stands in for a worker only to make split reads and mid-answer deaths happen on cue."""

    protocol_version = "HTTP/1.1"
    script: list[bytes] = []
    status = 200

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"".join(p for p in self.script if p != b"CUT")
        self.send_response(self.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) + (100 if b"CUT" in self.script else 0)))
        self.end_headers()
        for piece in self.script:
            if piece == b"CUT":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.01)  # separate reads on the other side

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted_worker():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedWorker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def stream_all(server, script: list[bytes], status: int = 200) -> list[str]:
    _ScriptedWorker.script, _ScriptedWorker.status = script, status
    worker = Worker("m", f"http://127.0.0.1:{server.server_port}", "llava_v0", 512)
    client = WorkerClient(f"http://127.0.0.1:{closed_port()}", Timeouts(connect=1))

    async def run():
        return [t async for t in client.stream(worker, GenerateRequest(prompt="P:", images=[]))]

    return asyncio.run(run())


def test_stream_strips_the_prompt_and_reassembles_split_chunks(scripted_worker):
    whole = encode_chunk("P: Hel") + encode_chunk("P: Hello")
    assert stream_all(scripted_worker, [whole[:7], whole[7:20], whole[20:]]) == ["Hel", "Hello"]


def test_a_refusal_chunk_becomes_the_message(scripted_worker):
    with pytest.raises(ServiceError, match="too long for m: the prompt is 900 tokens") as e:
        stream_all(scripted_worker, [encode_chunk("the prompt is 900 tokens", ErrorCode.CONTEXT_OVERFLOW)], 400)
    assert e.value.code == ErrorCode.CONTEXT_OVERFLOW


def test_an_http_error_without_our_framing_is_reported_with_its_status(scripted_worker):
    with pytest.raises(ServiceError, match=r"answered HTTP 502 \(Bad Gateway\)"):
        stream_all(scripted_worker, [b"Bad Gateway"], 502)


def test_a_worker_dying_mid_answer_says_so(scripted_worker):
    with pytest.raises(ServiceError, match="stopped in the middle of the answer"):
        stream_all(scripted_worker, [encode_chunk("P: Hel"), b'{"text": "P: Hello", "err', b"CUT"])


def test_iter_chunks_async_handles_any_split():
    data = encode_chunk("a") + encode_chunk("b\u00e9") + encode_chunk("c", 40001)

    async def pieces(size: int):
        for i in range(0, len(data), size):
            yield data[i : i + size]

    async def collect(size: int):
        return [c async for c in iter_chunks_async(pieces(size))]

    for size in (1, 3, len(data)):
        assert [c["text"] for c in asyncio.run(collect(size))] == ["a", "b\u00e9", "c"]


# ---- example gallery -------------------------------------------------------------------------------------


def test_the_gallery_covers_both_checkpoints_with_qcm_prompts_for_scienceqa():
    examples = load_examples()
    assert len(examples) >= 8
    assert {ex.model for ex in examples} == {"llava-shapes-chat", "llava-shapes-sqa"}
    for ex in examples:
        assert Path(ex.image).is_file()
        with Image.open(ex.image) as img:
            assert img.size == (256, 256)
        if ex.kind == "scienceqa":
            lines = ex.prompt.splitlines()
            assert [line.split(":")[0] for line in lines] == ["Question", "Context", "Options"]
            assert "(A) " in lines[2] and "(B) " in lines[2]
            assert ex.answer.endswith(tuple(f"The answer is {x}." for x in "ABCDE"))


def test_the_committed_gallery_is_what_build_examples_renders(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("build_examples", ROOT / "examples" / "build_examples.py")
    build_examples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_examples)
    for name, data in build_examples.build().items():
        assert (ROOT / "examples" / name).read_bytes() == data, f"examples/{name} is stale: rerun the script"
    assert build_examples.main(["--check", "--out", str(tmp_path)]) == 1
    assert "missing or out of date" in capsys.readouterr().err
    assert build_examples.main(["--out", str(tmp_path)]) == 0
    assert build_examples.main(["--check", "--out", str(tmp_path)]) == 0
    assert load_examples(tmp_path / "examples.json")[0].id == "color-of-circle"


def test_a_broken_examples_file_names_the_problem(tmp_path):
    bad = tmp_path / "examples.json"
    with pytest.raises(ExamplesError, match="not found"):
        load_examples(bad)
    bad.write_text("{")
    with pytest.raises(ExamplesError, match="not valid JSON"):
        load_examples(bad)
    bad.write_text(json.dumps({"examples": [{"id": "x", "title": "t", "image": "nope.png", "prompt": "p",
                                             "model": "m", "kind": "chat"}]}))  # fmt: skip
    with pytest.raises(ExamplesError, match="names nope.png, which does not exist"):
        load_examples(bad)
    bad.write_text(json.dumps({"examples": [{"id": "x", "kind": "poem"}]}))
    with pytest.raises(ExamplesError, match="examples.0.kind"):
        load_examples(bad)


def test_an_example_picks_its_model_or_one_that_fits_its_kind():
    chat, sqa = (
        next(e for e in load_examples() if e.kind == "chat"),
        next(e for e in load_examples() if e.kind == "scienceqa"),
    )
    assert fitting_model(chat, ["llava-shapes-sqa", "llava-shapes-chat"]) == "llava-shapes-chat"
    assert fitting_model(sqa, ["llava-tiny-chat", "llava-tiny-sqa"]) == "llava-tiny-sqa"  # the launcher's stand-ins
    assert fitting_model(chat, ["llava-tiny-chat", "llava-tiny-sqa"]) == "llava-tiny-chat"
    assert fitting_model(sqa, ["llava-v1.5-7b"]) is None


# ---- what a user sends ---------------------------------------------------------------------------------


def test_a_big_picture_is_kept_small_and_a_broken_one_is_refused_with_the_reason(tmp_path):
    from gradio import Error as GradioError

    from demo.controls import KEPT_SIDE, read_message

    big = tmp_path / "photo.png"
    Image.new("RGB", (3000, 1500), (200, 30, 30)).save(big)
    text, image, path = asyncio.run(read_message({"text": "What is it?", "files": [str(big)]}))
    assert (text, path) == ("What is it?", str(big)) and image.size == (KEPT_SIDE, KEPT_SIDE // 2)
    broken = tmp_path / "broken.png"
    broken.write_bytes(big.read_bytes()[:200])
    with pytest.raises(GradioError, match="That picture cannot be used: .*truncated or corrupt") as e:
        asyncio.run(read_message({"text": "", "files": [str(broken)]}))
    assert str(tmp_path) not in str(e.value)  # server paths mean nothing to the user
    with pytest.raises(GradioError, match="one picture at a time"):
        asyncio.run(read_message({"text": "", "files": [str(big), str(big)]}))
