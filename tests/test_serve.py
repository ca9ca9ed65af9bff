"""Controller and workers as real processes on loopback ports, spoken to over real HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest

from llava.conversation import conv_templates
from llava.images import encode_base64
from llava.model.tiny import build_tiny_checkpoint
from serve.protocol import DELIMITER, ErrorCode, iter_chunks
from tests.procs import ENV, ROOT, free_port, registered_workers, start_controller, start_worker, wait_for

pytestmark = pytest.mark.slow
MODEL = "llava-tiny"


def _prompt(question: str = "What color is the circle?", image: bool = True) -> str:
    conv = conv_templates["llava_v0"].copy()
    conv.append_message(conv.roles[0], ("<image>\n" if image else "") + question)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@pytest.fixture(scope="module")
def cluster(tiny_ckpt, tmp_path_factory):
    """One controller and two workers serving the same tiny model."""
    tmp = tmp_path_factory.mktemp("cluster")
    procs = []
    try:
        controller, url = start_controller(tmp)
        procs.append(controller)
        workers = []
        for _ in range(2):
            proc, wurl = start_worker(tmp, url, tiny_ckpt, "--heart-beat-interval", "1")
            procs.append(proc)
            workers.append((proc, wurl))
        yield url, workers
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def image_b64(shapes_image) -> str:
    return encode_base64(shapes_image)


def test_registration_and_listing(cluster):
    controller, workers = cluster
    assert httpx.post(f"{controller}/list_models").json() == {"models": [MODEL]}
    assert sorted(registered_workers(controller)) == sorted(u for _, u in workers)
    status = httpx.post(f"{controller}/worker_get_status").json()
    assert status["model_names"] == [MODEL] and status["speed"] == 2
    assert httpx.get(f"{controller}/health").json()["workers"] == 2
    assert httpx.post(f"{controller}/get_worker_address", json={"model": "nope"}).json() == {"address": ""}
    details = httpx.post(f"{workers[0][1]}/model_details").json()
    assert details == {"model_name": MODEL, "context_length": 512, "conv_template": "llava_v0",
                       "takes_images": True, "image_tokens": 16}  # fmt: skip


def test_stream_framing_and_prompt_prefix(cluster, image_b64):
    controller, _ = cluster
    address = httpx.post(f"{controller}/get_worker_address", json={"model": MODEL}).json()["address"]
    prompt = _prompt()
    payload = {"model": MODEL, "prompt": prompt, "images": [image_b64], "temperature": 0, "max_new_tokens": 16,
               "stop": "###"}  # fmt: skip
    raw = b""
    with httpx.stream("POST", f"{address}/worker_generate_stream", json=payload, timeout=60) as r:
        assert r.status_code == 200
        for piece in r.iter_bytes():
            raw += piece
    assert raw.endswith(DELIMITER)
    chunks = [json.loads(c) for c in raw.split(DELIMITER) if c]
    assert chunks  # how many depends on speed: text made between two looks goes out as one chunk
    texts = [c["text"] for c in chunks]
    assert all(c["error_code"] == 0 for c in chunks)
    assert all(t.startswith(prompt) for t in texts)
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert "###" not in texts[-1][len(prompt) :]
    # as in FastChat, every chunk carries the token counts so far; the last one says why it ended
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and chunks[-1]["usage"]["finish_reason"] in ("stop", "length")
    assert all(c["usage"]["finish_reason"] is None for c in chunks[:-1])
    # the one-shot endpoint gives the same greedy answer, with usage
    full = httpx.post(f"{address}/worker_generate", json=payload, timeout=60).json()
    assert full["text"] == texts[-1] and full["error_code"] == 0
    assert full["usage"]["completion_tokens"] >= 1 and full["usage"]["prompt_tokens"] > 16
    assert full["usage"] == chunks[-1]["usage"]


def test_original_client_style_request(cluster):
    """The original test_message.py: text-only prompt, a stop string, no images key, iter_lines on NUL."""
    import requests

    _, workers = cluster
    prompt = _prompt("Tell me a story", image=False)
    r = requests.post(
        f"{workers[0][1]}/worker_generate_stream",
        stream=True,
        timeout=60,
        json={"model": MODEL, "prompt": prompt, "max_new_tokens": 8, "temperature": 0.7, "stop": "###"},
    )
    outputs = []
    for chunk in r.iter_lines(decode_unicode=False, delimiter=b"\0"):
        if chunk:
            data = json.loads(chunk.decode())
            assert data["error_code"] == 0
            outputs.append(data["text"][len(prompt) :])
    assert outputs


def test_shortest_queue_spreads_concurrent_requests(cluster, image_b64):
    controller, workers = cluster
    served: list[str] = []
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        address = httpx.post(f"{controller}/get_worker_address", json={"model": MODEL}).json()["address"]
        payload = {"prompt": _prompt(), "images": [image_b64], "temperature": 0, "max_new_tokens": 32}
        with httpx.stream("POST", f"{address}/worker_generate_stream", json=payload, timeout=120) as r:
            for chunk in iter_chunks(r.iter_bytes()):
                if chunk["error_code"]:
                    errors.append(chunk["text"])
        served.append(address)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors and len(served) == 8
    counts = Counter(served)
    assert set(counts) == {u for _, u in workers}
    assert min(counts.values()) >= 3, counts


BAD_REQUESTS = [
    ("not json", b"{oops", ErrorCode.BAD_REQUEST, "not valid JSON"),
    ("no prompt", {"images": []}, ErrorCode.BAD_REQUEST, "prompt"),
    ("temperature", {"prompt": "hi", "temperature": -1}, ErrorCode.BAD_REQUEST, "temperature"),
    ("top_p", {"prompt": "hi", "top_p": 0}, ErrorCode.BAD_REQUEST, "top_p"),
    ("max tokens", {"prompt": "hi", "max_new_tokens": 0}, ErrorCode.BAD_REQUEST, "max_new_tokens"),
    ("bad base64", {"prompt": "<image>\nhi", "images": ["***not base64***"]}, ErrorCode.BAD_REQUEST, "base64"),
    ("not a picture", {"prompt": "<image>\nhi", "images": ["aGVsbG8gd29ybGQ="]}, ErrorCode.BAD_REQUEST, "image"),
    ("url", {"prompt": "<image>\nhi", "images": ["http://example.com/a.png"]}, ErrorCode.BAD_REQUEST,
     "--allow-image-urls"),
    ("path", {"prompt": "<image>\nhi", "images": ["/etc/passwd.png"]}, ErrorCode.BAD_REQUEST, "--allow-image-paths"),
    ("too few images", {"prompt": "<image>\nhi", "images": []}, ErrorCode.BAD_REQUEST, "1 <image> token"),
    ("wrong model", {"model": "other", "prompt": "hi"}, ErrorCode.BAD_REQUEST, "serves 'llava-tiny'"),
    ("too long", {"prompt": "red " * 700}, ErrorCode.CONTEXT_OVERFLOW, "context holds 512"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "code", "message"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_are_refused_clearly(cluster, image_b64, case, body, code, message):
    _, workers = cluster
    url = workers[0][1]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    for endpoint in ("worker_generate_stream", "worker_generate"):
        r = httpx.post(f"{url}/{endpoint}", content=content, headers={"content-type": "application/json"},
                       timeout=60)  # fmt: skip
        assert 400 <= r.status_code < 500
        data = json.loads(r.content.rstrip(DELIMITER))
        assert data["error_code"] == code
        assert message in data["text"]
    # and the worker keeps serving
    ok = httpx.post(f"{url}/worker_generate", json={"prompt": _prompt(), "images": [image_b64], "max_new_tokens": 2},
                    timeout=60)  # fmt: skip
    assert ok.status_code == 200 and ok.json()["error_code"] == 0


def test_restarted_controller_relists_workers_and_killed_worker_expires(tiny_ckpt, tmp_path):
    expiration = 4.0
    controller, url = start_controller(tmp_path, expiration=expiration)
    port = int(url.rsplit(":", 1)[1])
    worker, wurl = start_worker(tmp_path, url, tiny_ckpt, "--heart-beat-interval", "1", "--model-name", "doomed")
    new_controller = None
    try:
        # 1. the controller restarts on the same port: the worker is listed again within one heartbeat
        controller.stop()
        new_controller, _ = start_controller(tmp_path, port=port, expiration=expiration)
        took = wait_for(lambda: wurl in registered_workers(url), 10, "re-registration", [worker])
        assert took <= 1.0 + 1.5, took  # one heartbeat interval plus slack
        assert httpx.post(f"{url}/list_models").json()["models"] == ["doomed"]
        # 2. SIGKILL the worker: it disappears from /list_models within the expiration
        worker.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: httpx.post(f"{url}/list_models").json()["models"] == [], expiration + 2, "expiry")
        assert time.monotonic() - killed <= expiration + 1.1
        # the sweep removes it from the registry too
        wait_for(lambda: registered_workers(url) == [], expiration, "sweep")
    finally:
        worker.stop()
        (new_controller or controller).stop()


def test_refresh_drops_unreachable_workers(tiny_ckpt, tmp_path):
    controller, url = start_controller(tmp_path, expiration=60)
    worker, wurl = start_worker(tmp_path, url, tiny_ckpt, "--model-name", "gone")
    try:
        worker.kill(signal.SIGKILL)
        assert httpx.post(f"{url}/list_models").json()["models"] == ["gone"]  # heartbeats not yet expired
        assert httpx.post(f"{url}/refresh_all_workers").json()["models"] == []
        assert httpx.post(f"{url}/receive_heart_beat", json={"worker_name": wurl}).json() == {"exist": False}
    finally:
        worker.stop()
        controller.stop()


@pytest.fixture(scope="module")
def slow_ckpt(tmp_path_factory):
    """A larger random model with a long context, so one generation lasts seconds."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("slow") / "llava-slow", seed=1, text_hidden=256,
                                 text_layers=4, text_intermediate=512, max_position_embeddings=4096)  # fmt: skip


def test_client_disconnect_stops_generation_and_frees_slot(slow_ckpt, tmp_path):
    worker, url = start_worker(tmp_path, "http://127.0.0.1:9", slow_ckpt, "--no-register",
                               "--limit-model-concurrency", "1", "--max-queue-length", "1")  # fmt: skip
    try:
        # greedy on this random model runs the whole budget (~20 s) unless it is stopped
        payload = {"prompt": _prompt(image=False), "temperature": 0, "max_new_tokens": 4000, "stop": ["<none>"]}
        with httpx.stream("POST", f"{url}/worker_generate_stream", json=payload, timeout=60) as r:
            pieces = iter_chunks(r.iter_bytes())  # keep a reference: a dropped iterator closes the response
            texts = [next(pieces)["text"] for _ in range(3)]  # it streams: growing text while it generates
            assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:], strict=False))
            busy = httpx.post(f"{url}/worker_generate_stream", json=payload, timeout=10)
            assert busy.status_code == 429
            assert json.loads(busy.content.rstrip(DELIMITER))["error_code"] == ErrorCode.OVERLOADED
        # leaving the block closed the connection mid-stream
        wait_for(lambda: httpx.get(f"{url}/health").json()["queue_length"] == 0, 10, "slot freed", [worker])
        wait_for(lambda: "client went away" in worker.log(), 10, "log line", [worker])
        line = next(ln for ln in worker.log().splitlines() if "client went away" in ln)
        produced = int(line.split("output_tokens=")[1].split()[0])
        assert produced < 4000
        ok = httpx.post(f"{url}/worker_generate", json={**payload, "max_new_tokens": 3}, timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3
    finally:
        worker.stop()


def test_request_log_line(cluster):
    _, workers = cluster
    proc, _ = workers[0]
    line = next(ln for ln in proc.log().splitlines() if "request model=" in ln and "error_code=0" in ln)
    for field in ("prompt_tokens=", "output_tokens=", "ttft=", "total=", "error_code="):
        assert field in line
    assert "receive_heart_beat" not in proc.log()  # heartbeats only at debug level


def test_cli_client_streams_an_answer(cluster, tmp_path, shapes_image):
    controller, _ = cluster
    image = tmp_path / "s.png"
    shapes_image.save(image)
    cmd = [sys.executable, "-m", "serve.client", "--controller-address", controller, "--model-name", MODEL,
           "--image", str(image), "--message", "What color is the circle?", "--temperature", "0",
           "--max-new-tokens", "8"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert "first chunk" in proc.stderr and "total" in proc.stderr
    missing = subprocess.run(cmd[:6] + ["nope"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert missing.returncode == 2 and "no worker serves 'nope'" in missing.stderr


def test_launch_starts_everything_and_stops_on_sigterm(tiny_ckpt, tmp_path):
    ports = [free_port() for _ in range(4)]
    cmd = [sys.executable, "-m", "serve.launch", "--model-path", str(tiny_ckpt), "--controller-port", str(ports[0]),
           "--worker-port", str(ports[1]), "--ui-port", str(ports[2]), "--openai-port", str(ports[3]), "--no-ui",
           "--dtype", "bfloat16"]  # fmt: skip
    log = tmp_path / "launch.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        try:
            wait_for(lambda: "everything is up" in log.read_text(), 120, "launch")
            controller = f"http://127.0.0.1:{ports[0]}"
            assert httpx.post(f"{controller}/list_models").json()["models"] == [MODEL]
            assert "on cpu (torch.bfloat16)" in log.read_text()  # --dtype reaches the worker
            api = f"http://127.0.0.1:{ports[3]}/v1"
            assert "OpenAI API" in log.read_text() and api in log.read_text()
            assert [m["id"] for m in httpx.get(f"{api}/models").json()["data"]] == [MODEL]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            for port in (ports[0], ports[1], ports[3]):
                with pytest.raises(httpx.ConnectError):
                    httpx.get(f"http://127.0.0.1:{port}/health")
        finally:
            if proc.poll() is None:
                proc.kill()
    # a busy port is refused up front with a clear message
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports[0]))
        s.listen()
        busy = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert busy.returncode == 1 and f"port {ports[0]}" in busy.stderr and "in use" in busy.stderr
    assert "--controller-port" in busy.stderr  # says how to pick another


def test_mailbox_passes_the_newest_text_and_never_skips_errors_or_the_end():
    import asyncio

    from llava.generation import Delta
    from serve.model_worker import _DONE, Mailbox

    def delta(text: str) -> Delta:
        return Delta(text, 5, len(text), None, {})

    async def drain(box: Mailbox) -> list:
        got = []
        while not got or got[-1] is not _DONE:
            got.append(await box.get())
        return got

    box = Mailbox(interval=0.001)
    error = RuntimeError("boom")
    for item in (delta("a"), delta("ab"), error, delta("abc"), delta("abcd"), _DONE):
        box.put(item)
    got = asyncio.run(drain(box))
    assert [g.text if isinstance(g, Delta) else g for g in got] == ["ab", error, "abcd", _DONE]

    async def put_later() -> list:  # a thread puts while the loop waits: the loop finds it on its next look
        import threading

        box = Mailbox(interval=0.001)
        threading.Timer(0.02, lambda: [box.put(delta("x")), box.put(_DONE)]).start()
        return await drain(box)

    assert [getattr(g, "text", g) for g in asyncio.run(put_later())] == ["x", _DONE]


def test_launch_refuses_a_bad_dtype_before_starting_anything():
    port = free_port()
    cmd = [sys.executable, "-m", "serve.launch", "--no-ui", "--controller-port", str(port), "--dtype", "int8"]
    bad = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'int8'" in bad.stderr and "bfloat16" in bad.stderr
    assert bad.stdout == ""  # argparse's message alone: no controller was started
    light = "import sys, serve.launch; print('torch' in sys.modules)"  # the check needs no torch
    assert subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=60).stdout.strip() == "False"  # fmt: skip


def test_generations_run_on_a_fixed_set_of_threads_that_outlive_each_request(monkeypatch):
    """On CUDA a thread's first answer decoded ~12x slower than its later ones: no request may get a new thread."""
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    import serve.model_worker as mw
    from llava.generation import Delta

    seen: list[threading.Thread] = []
    running = []
    peak = []

    def fake_stream(loaded, prompt, images, params):
        seen.append(threading.current_thread())
        running.append(1)
        peak.append(len(running))
        time.sleep(0.05)
        running.pop()
        yield Delta("ok", 3, 1, "stop", {"first_token_s": 0.0, "total_s": 0.05})

    monkeypatch.setattr(mw, "stream_generate", fake_stream)
    settings = mw.WorkerSettings(model_path="x/llava-fake", register=False, limit_model_concurrency=2)
    worker = mw.ModelWorker(settings, SimpleNamespace(template="llava_v0", context_len=512))
    payload = {"prompt": "hi", "temperature": 0, "max_new_tokens": 4}
    with TestClient(mw.create_app(worker)) as client:
        for _ in range(5):
            assert client.post("/worker_generate", json=payload).json()["text"] == "hiok"
        together = [threading.Thread(target=client.post, args=("/worker_generate",), kwargs={"json": payload})
                    for _ in range(6)]  # fmt: skip
        for t in together:
            t.start()
        for t in together:
            t.join()
    assert len(seen) == 11
    assert len(set(seen)) <= 2 and all(t.name.startswith("generate") for t in seen)
    assert max(peak) <= 2
    worker.pool.shutdown()


def test_warm_up_gives_each_generation_thread_one_answer_and_requests_reuse_those_threads(monkeypatch):
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    import serve.model_worker as mw
    from llava.generation import Delta

    seen: list[tuple[threading.Thread, str, int]] = []

    def fake_stream(loaded, prompt, images, params):
        seen.append((threading.current_thread(), prompt, len(images)))
        time.sleep(0.02)
        yield Delta("ok", 3, 1, "stop", {"first_token_s": 0.0, "total_s": 0.02})

    def fake_generate(loaded, prompt, images, params):
        return list(fake_stream(loaded, prompt, images, params))[-1]

    monkeypatch.setattr(mw, "stream_generate", fake_stream)  # requests
    monkeypatch.setattr(mw, "generate", fake_generate)  # the warm-up's whole answers
    settings = mw.WorkerSettings(model_path="x/llava-fake", register=False, limit_model_concurrency=3)
    model = SimpleNamespace(config=SimpleNamespace(vision_config=object()))
    worker = mw.ModelWorker(settings, SimpleNamespace(model=model, template="llava_v0", context_len=512))
    assert worker.warm_up() < 5
    warmed = {t for t, _, _ in seen}
    assert len(seen) == 3 and len(warmed) == 3  # one answer on each of the three threads
    assert all(p.endswith("###Assistant:") and "<image>" in p and n == 1 for _, p, n in seen)
    with TestClient(mw.create_app(worker)) as client:
        for _ in range(4):
            client.post("/worker_generate", json={"prompt": "hi", "temperature": 0, "max_new_tokens": 4})
    assert {t for t, _, _ in seen[3:]} <= warmed
    worker.pool.shutdown()
