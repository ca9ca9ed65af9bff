"""The LLM teacher against a small OpenAI-compatible server on loopback (real HTTP, no mocks)."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llava.data import teacher as rules
from llava.data.build import main as build_main
from llava.data.instruct import load_instruct
from llava.data.llm_teacher import (
    SYSTEM_MESSAGES,
    LLMTeacher,
    LLMTeacherConfig,
    TeacherError,
    build_messages,
    format_response,
    parse_response,
)
from llava.data.world import SceneContext, sample_scene, scene_context


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions like a teacher that reads the boxes correctly (via the rule teacher)."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if server.fail_first and len(server.requests) <= server.fail_first:
            return self._send(503, {"error": {"message": "overloaded"}})
        if server.mode == "bad_request":
            return self._send(400, {"error": {"message": "model not found"}})
        if server.mode == "garbage":
            return self._send(200, {"choices": [{"message": {"content": "I cannot help with that."}}]})
        context_text = body["messages"][-1]["content"]
        kind = next(k for k, v in SYSTEM_MESSAGES.items() if v == body["messages"][0]["content"])
        lines = context_text.splitlines()
        boxes = []
        for line in lines[5:]:
            label, _, box = line.partition(": ")
            boxes.append((label, json.loads(box)))
        context = SceneContext(lines[:5], boxes)
        content = format_response(rules.teach(context, kind, random.Random(0)), kind)
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            },
        )

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    httpd.requests, httpd.mode, httpd.fail_first = [], "ok", 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _teacher(server, **kw) -> LLMTeacher:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return LLMTeacher(LLMTeacherConfig(url, model="fake-gpt", api_key="sk-test", **kw))


def test_prompt_is_system_fewshot_then_context():
    context = scene_context(sample_scene(random.Random(0)))
    messages = build_messages(context, "complex_reasoning", n_examples=2)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == SYSTEM_MESSAGES["complex_reasoning"]
    assert "bounding boxes" in messages[0]["content"]
    assert messages[-1]["content"] == context.to_text()
    assert messages[2]["content"].startswith("Question:\n") and "===\nAnswer:\n" in messages[2]["content"]


@pytest.mark.parametrize("kind", ["conversation", "detail", "complex_reasoning"])
def test_teacher_over_http(server, kind):
    scene = sample_scene(random.Random(5))
    context = scene_context(scene)
    qas = _teacher(server).teach(context, kind)
    request = server.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"]["model"] == "fake-gpt"
    assert (
        qas == rules.teach(context, kind, random.Random(0))
        if kind != "detail"
        else qas[0][1] == rules.describe(rules.read_items(context))
    )


def test_retries_on_server_errors(server):
    server.fail_first = 2
    qas = _teacher(server, retries=2).teach(scene_context(sample_scene(random.Random(1))), "conversation")
    assert qas and len(server.requests) == 3


def test_gives_up_with_the_cause(server):
    server.fail_first = 10
    with pytest.raises(TeacherError, match="after 2 tries.*503"):
        _teacher(server, retries=1).teach(scene_context(sample_scene(random.Random(1))), "conversation")


def test_client_errors_and_unparsable_replies(server):
    context = scene_context(sample_scene(random.Random(2)))
    server.mode = "bad_request"
    with pytest.raises(TeacherError, match="400.*model not found"):
        _teacher(server).teach(context, "conversation")
    server.mode = "garbage"
    with pytest.raises(TeacherError, match="cannot parse"):
        _teacher(server).teach(context, "conversation")


def test_unreachable_endpoint():
    with pytest.raises(TeacherError, match="cannot reach"):
        LLMTeacher(LLMTeacherConfig("http://127.0.0.1:9/v1", retries=0, timeout_s=2)).teach(
            scene_context(sample_scene(random.Random(0))), "detail"
        )


def test_parse_response_pairs():
    text = "Question:\nWhat is red?\n===\nAnswer:\nThe circle.\n===\nQuestion:\nHow many?\n===\nAnswer:\nTwo."
    assert parse_response(text, "conversation") == [("What is red?", "The circle."), ("How many?", "Two.")]
    with pytest.raises(TeacherError, match="empty"):
        parse_response("  ", "detail")
    with pytest.raises(TeacherError, match="no question/answer pair"):
        parse_response("Question:\nDangling?", "conversation")


def test_build_cli_uses_the_llm_teacher(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    build_main([str(tmp_path), "--pictures", "5", "--problems", "2", "--llm-url", url, "--llm-model", "fake-gpt"])
    records = load_instruct(tmp_path / "llava_instruct.json")
    assert len(records) == 5
    assert len(server.requests) == 5
