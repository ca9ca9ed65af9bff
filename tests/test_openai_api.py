"""The OpenAI-compatible API: the real `openai` SDK against controller, worker and API as real processes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llava.conversation import conv_templates
from llava.images import encode_base64
from serve.openai_chat import render_chat
from serve.openai_protocol import ApiError, ChatCompletionRequest, ChatMessage
from tests.procs import start_controller, start_openai_api, start_worker

MODEL = "llava-tiny"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def api(tiny_ckpt, tmp_path_factory):
    """(SDK client, worker URL, API base URL): one controller, one tiny worker, the API with a key."""
    tmp = tmp_path_factory.mktemp("openai")
    procs = []
    try:
        controller, url = start_controller(tmp)
        procs.append(controller)
        worker, worker_url = start_worker(tmp, url, tiny_ckpt)
        procs.append(worker)
        proc, base = start_openai_api(tmp, url, "--api-key", KEY)
        procs.append(proc)
        yield openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60), worker_url, base
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def image_url(shapes_image) -> str:
    return f"data:image/png;base64,{encode_base64(shapes_image)}"


def _worker_answer(worker: str, prompt: str, images: list[str], max_new_tokens: int) -> dict:
    payload = {"prompt": prompt, "images": images, "temperature": 0, "max_new_tokens": max_new_tokens, "stop": "###"}
    return httpx.post(f"{worker}/worker_generate", json=payload, timeout=60).json()


def _llava_v0(*turns: str) -> str:
    conv = conv_templates["llava_v0"].copy()
    for i, text in enumerate(turns):
        conv.append_message(conv.roles[i % 2], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


pytestmark = pytest.mark.slow


def test_models_are_listed_and_unknown_ones_are_404(api):
    client, _, _ = api
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_answer_with_a_picture_is_the_workers_own_greedy_answer(api, image_url, shapes_image):
    client, worker, _ = api
    reply = client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=12,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What color is the circle?"},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]}],
    )  # fmt: skip
    # the picture goes before the text, where LLaVA was trained to see it
    direct = _worker_answer(worker, _llava_v0("<image>\nWhat color is the circle?"), [image_url], 12)
    answer = direct["text"][len(_llava_v0("<image>\nWhat color is the circle?")) :].lstrip()
    assert reply.choices[0].message.content == answer and answer
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == direct["usage"]["finish_reason"]
    assert reply.usage.prompt_tokens == direct["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == direct["usage"]["completion_tokens"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == MODEL and reply.id.startswith("chatcmpl-")


def test_stream_gives_the_same_answer_piece_by_piece_then_usage(api, image_url):
    client, _, _ = api
    ask = {
        "model": MODEL, "temperature": 0, "max_tokens": 20,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": "How many shapes are there?"}]},
            {"role": "assistant", "content": "Two."},
            {"role": "user", "content": "Which one is on the left?"},
        ],
    }  # fmt: skip
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 1
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_is_server_sent_events_ending_in_done(api):
    _, _, base = api
    body = {"model": MODEL, "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) >= 3
    deltas = [json.loads(e.removeprefix("data: "))["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}  # the role once, as OpenAI sends it
    assert all("role" not in d and d.get("content", "") is not None for d in deltas[1:])


@pytest.mark.parametrize(
    ("ask", "error", "says"),
    [
        ({"model": "nope"}, openai.NotFoundError, "'nope' is not served here (served: llava-tiny)"),
        ({"n": 2}, openai.BadRequestError, "n must be 1"),
        ({"temperature": 3}, openai.BadRequestError, "temperature"),
        ({"messages": []}, openai.BadRequestError, "messages"),
        ({"messages": [{"role": "assistant", "content": "Hello"}]}, openai.BadRequestError, "from the user"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]},
         openai.BadRequestError, "image 1 of 1"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd.png"}}]}]},
         openai.BadRequestError, "data: URL"),
        ({"messages": [{"role": "user", "content": "word " * 600}]}, openai.BadRequestError, "context"),
    ],
    ids=["unknown-model", "n", "temperature", "no-messages", "last-not-user", "bad-image", "file-path", "too-long"],
)  # fmt: skip
def test_refusals_are_openai_errors_with_a_reason(api, ask, error, says):
    client, _, _ = api
    request = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}], **ask}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**request)
    assert says in caught.value.message
    assert caught.value.body["type"] in ("invalid_request_error", "not_found_error")


def test_context_overflow_has_openais_code(api):
    client, _, _ = api
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 600}])
    assert caught.value.code == "context_length_exceeded"


def test_a_wrong_key_is_refused_and_health_needs_none(api):
    _, _, base = api
    wrong = openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(base.removesuffix("/v1") + "/health").json()["status"] == "ok"


# ---- the prompt, without processes -----------------------------------------------------------------


def _messages(*raw: dict) -> list[ChatMessage]:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": list(raw)}).messages


def test_render_chat_follows_the_template():
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    prompt = render_chat(
        _messages(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Compare"}, img, img]},
            {"role": "user", "content": "these two."},
            {"role": "assistant", "content": "Same."},
            {"role": "user", "content": "Sure?"},
        ),
        "llava_v0",
        ["END"],
    )
    assert prompt.text == (
        "Be brief.###Human: <image>\n<image>\nCompare\nthese two.###Assistant: Same.###Human: Sure?###Assistant:"
    )
    assert prompt.images == ["data:image/png;base64,AAAA"] * 2
    assert prompt.stop == ["###", "END"]
    # no system message: the template's own
    plain = render_chat(_messages({"role": "user", "content": "Hi"}), "llava_v0")
    assert plain.text == _llava_v0("Hi") and plain.images == []


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "first message"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
        ([{"role": "user", "content": "look: <image>"}], "image_url parts"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
          {"role": "user", "content": "b"}], "only user messages"),
        ([{"role": "user", "content": ""}], "neither text nor pictures"),
    ],
)  # fmt: skip
def test_render_chat_refuses_what_it_cannot_render(raw, says):
    with pytest.raises(ApiError) as caught:
        render_chat(_messages(*raw), "llava_v0")
    assert caught.value.status == 400 and says in str(caught.value)


def test_a_dead_worker_is_dropped_and_the_request_goes_to_a_live_one(tiny_ckpt, tmp_path):
    from tests.procs import free_port

    procs = []
    try:
        controller, url = start_controller(tmp_path)
        procs.append(controller)
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        status = {"model_names": [MODEL], "speed": 1, "queue_length": 0}
        assert httpx.post(f"{url}/register_worker", json={"worker_name": dead, "worker_status": status}).json()
        live, live_url = start_worker(tmp_path, url, tiny_ckpt)
        procs.append(live)
        # the live worker looks busy until its next heartbeat (15 s), so the controller names the dead one first
        httpx.post(f"{url}/receive_heart_beat", json={"worker_name": live_url, "queue_length": 5})
        proc, base = start_openai_api(tmp_path, url)
        procs.append(proc)
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert "is unreachable; asking the controller again" in proc.log()
        assert dead not in [w["worker_name"] for w in httpx.post(f"{url}/list_workers").json()["workers"]]
    finally:
        for p in procs:
            p.stop()
