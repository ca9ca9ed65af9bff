"""A model worker: hosts one LLaVA checkpoint, registers with the controller and streams generations.

`python -m serve.model_worker --port 21002 --worker-address http://127.0.0.1:21002
    --controller-address http://127.0.0.1:21001 --model-path checkpoints/llava-shapes-chat`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import uvicorn  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response, StreamingResponse  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from llava.conversation import conv_templates, template_for_model  # noqa: E402
from llava.errors import ContextOverflowError, LlavaError  # noqa: E402
from llava.generation import Delta, GenerationParams, generate, stream_generate  # noqa: E402
from llava.model import DTYPES  # noqa: E402
from llava.model.loader import LoadedModel, load_pretrained, model_name_from_path  # noqa: E402
from serve.heartbeat import Heartbeat  # noqa: E402
from serve.image_input import ImageSource, resolve_images  # noqa: E402
from serve.protocol import (  # noqa: E402
    HTTP_STATUS,
    ErrorCode,
    GenerateRequest,
    GenerateResponse,
    ModelDetails,
    Usage,
    WorkerHealth,
    WorkerStatus,
    encode_chunk,
)

log = logging.getLogger("serve.model_worker")


@dataclass(slots=True)
class WorkerSettings:
    model_path: str
    host: str = "127.0.0.1"
    port: int = 21002
    worker_address: str = ""  # how the controller and clients reach us; default http://host:port
    controller_address: str = "http://127.0.0.1:21001"
    model_name: str = ""  # default: the checkpoint folder's name
    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU; bfloat16 on CUDA where supported, else float16
    conv_template: str = ""  # default: the checkpoint's own, else chosen from the model name
    limit_model_concurrency: int = 5  # generations running at once
    max_queue_length: int = 64  # running + waiting beyond this is refused as overloaded
    heart_beat_interval: float = 15.0
    register: bool = True
    allow_image_urls: bool = False
    allow_image_paths: bool = False

    def __post_init__(self) -> None:
        self.worker_address = self.worker_address or f"http://{self.host}:{self.port}"
        self.model_name = self.model_name or model_name_from_path(self.model_path)
        if self.limit_model_concurrency < 1 or self.max_queue_length < self.limit_model_concurrency:
            raise ValueError("need 1 <= limit_model_concurrency <= max_queue_length")


class RequestError(Exception):
    """A refusal with a wire error code; raised before streaming starts."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_code_for(exc: BaseException) -> ErrorCode:
    if isinstance(exc, RequestError):
        return exc.code
    if isinstance(exc, ContextOverflowError):
        return ErrorCode.CONTEXT_OVERFLOW
    if isinstance(exc, LlavaError):
        return ErrorCode.BAD_REQUEST
    return ErrorCode.INTERNAL


def error_response(code: ErrorCode, message: str) -> Response:
    """One framed chunk, so clients that ignore the HTTP status still read the message."""
    return Response(encode_chunk(message, code), status_code=HTTP_STATUS[code], media_type="application/json")


_DONE = object()


def usage_of(delta: Delta) -> Usage:
    return Usage(
        prompt_tokens=delta.prompt_tokens, completion_tokens=delta.output_tokens, finish_reason=delta.finish_reason
    )


class Mailbox:
    """A generation thread's output for the serving loop, handed over without waking the loop from the thread.

    The loop looks every `interval` seconds instead. This was chosen when waking the loop once per token
    measured 54-60 ms a token on an H200 machine against 3.6-5.1 with the loop looking, but in that comparison
    the waking variant ran each answer on a new thread and the looking one reused its thread, and a new thread
    alone explains the gap (see `ModelWorker.pool`); through the real worker, looking every 5 or 50 ms, uvloop
    or asyncio's loop and GIL switch intervals of 0.5 or 50 ms all gave the same 40-55 ms on new threads. So
    looking is kept as harmless (on CPU both ways measured the same), not as proven faster. Deltas are
    cumulative, so when several wait only the newest is passed on; errors and the end are never skipped.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._items: deque = deque()  # append and popleft are atomic: no lock between the two threads

    def put(self, item: object) -> None:
        self._items.append(item)

    async def get(self) -> object:
        while not self._items:
            await asyncio.sleep(self.interval)
        item = self._items.popleft()
        while isinstance(item, Delta) and self._items and isinstance(self._items[0], Delta):
            item = self._items.popleft()
        return item


class ModelWorker:
    """One loaded checkpoint plus admission control: a bounded number of generations run at once."""

    def __init__(self, settings: WorkerSettings, loaded: LoadedModel) -> None:
        self.settings = settings
        self.loaded = loaded
        self.template = settings.conv_template or loaded.template or template_for_model(settings.model_name)
        self.running = 0
        self.waiting = 0
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop
        # Generations run on a fixed set of threads that live as long as the worker, never on a thread made for
        # the request: on CUDA the first answer on a new thread decoded at 37-50 ms a token on an H200 machine
        # and the next ones on the same thread at 3.2, as fast as the main thread (so every request paid the
        # slow first answer). The admission slots keep the running generations to the number of threads.
        self.pool = ThreadPoolExecutor(settings.limit_model_concurrency, thread_name_prefix="generate")

    def warm_up(self, max_new_tokens: int = 32) -> float:
        """One short answer about a blank picture on each of `pool`'s threads at once, so that no request is the
        first answer on its thread (on CUDA that one decoded ~12x slower); the seconds it took."""
        n = self.settings.limit_model_concurrency
        takes_images = getattr(self.loaded.model.config, "vision_config", None) is not None
        conv = conv_templates[self.template].copy()
        conv.append_message(conv.roles[0], ("<image>\n" if takes_images else "") + "Describe the image.")
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        images = [Image.new("RGB", (64, 64), "white")] if takes_images else []
        params = GenerationParams(temperature=0, max_new_tokens=max_new_tokens, stop=(conv.stop_str,))
        together = threading.Barrier(n)

        def answer() -> None:
            together.wait(timeout=120)  # each answer holds its thread until all n have one: n threads, one each
            generate(self.loaded, prompt, images, params)

        start = time.perf_counter()
        for done in [self.pool.submit(answer) for _ in range(n)]:
            done.result()
        return time.perf_counter() - start

    @property
    def queue_length(self) -> int:
        return self.running + self.waiting

    def status(self) -> WorkerStatus:
        return WorkerStatus(model_names=[self.settings.model_name], speed=1, queue_length=self.queue_length)

    def details(self) -> ModelDetails:
        cfg = self.loaded.model.config
        vision = getattr(cfg, "vision_config", None)
        image_tokens = getattr(cfg, "image_seq_length", 0) or 0
        if not image_tokens and vision is not None:
            image_tokens = (vision.image_size // vision.patch_size) ** 2
        return ModelDetails(
            model_name=self.settings.model_name,
            context_length=self.loaded.context_len,
            conv_template=self.template,
            takes_images=vision is not None,
            image_tokens=image_tokens,
        )

    async def acquire(self) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.limit_model_concurrency)
        if self.queue_length >= self.settings.max_queue_length:
            raise RequestError(
                ErrorCode.OVERLOADED,
                f"worker {self.settings.worker_address} is busy ({self.queue_length} requests queued); try again",
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        assert self._slots is not None
        self._slots.release()

    def params_for(self, req: GenerateRequest) -> GenerationParams:
        stop = tuple(req.stop) or (conv_templates[self.template].stop_str,)
        return GenerationParams(req.temperature, req.top_p, req.max_new_tokens, stop, req.seed)

    def run(
        self,
        req: GenerateRequest,
        images: list,
        out: Mailbox,
        cancel: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Generate on one of `pool`'s threads, pushing Deltas (or the exception) to `out`; stops when cancelled."""
        last: Delta | None = None
        outcome = "ok"
        code = ErrorCode.OK
        stream = stream_generate(self.loaded, req.prompt, images, self.params_for(req))
        try:
            for last in stream:
                if cancel.is_set():
                    outcome = "client went away"
                    break
                out.put(last)
        except Exception as e:
            code = error_code_for(e)
            outcome = "refused" if code != ErrorCode.INTERNAL else "failed"
            if code == ErrorCode.INTERNAL:
                log.exception("generation failed for a %d-char prompt with %d image(s)", len(req.prompt), len(images))
            out.put(e)
        finally:
            stream.close()
            out.put(_DONE)
            loop.call_soon_threadsafe(self.release)  # once a request: the one wake-up left
            t = last.timings if last else {}
            log.info(
                "request model=%s prompt_tokens=%d output_tokens=%d ttft=%.3fs total=%.3fs error_code=%d %s",
                self.settings.model_name,
                last.prompt_tokens if last else 0,
                last.output_tokens if last else 0,
                t.get("first_token_s", 0.0),
                t.get("total_s", 0.0),
                code,
                outcome,
            )


async def parse_request(request: Request, worker: ModelWorker) -> tuple[GenerateRequest, list]:
    try:
        req = GenerateRequest.model_validate(await request.json())
    except json.JSONDecodeError as e:
        raise RequestError(ErrorCode.BAD_REQUEST, f"the request body is not valid JSON: {e}") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise RequestError(ErrorCode.BAD_REQUEST, f"invalid request: {problems}") from e
    if req.model and req.model != worker.settings.model_name:
        raise RequestError(
            ErrorCode.BAD_REQUEST, f"this worker serves {worker.settings.model_name!r}, not {req.model!r}"
        )
    source = ImageSource(worker.settings.allow_image_urls, worker.settings.allow_image_paths)
    try:
        images = await asyncio.to_thread(resolve_images, req.images, source)
    except LlavaError as e:
        raise RequestError(ErrorCode.BAD_REQUEST, str(e)) from e
    return req, images


async def start_generation(request: Request, worker: ModelWorker):
    """Admit, start and wait for the first piece of output; refusals surface here, before any streaming."""
    req, images = await parse_request(request, worker)
    await worker.acquire()
    out = Mailbox()
    cancel = threading.Event()
    loop = asyncio.get_running_loop()
    worker.pool.submit(worker.run, req, images, out, cancel, loop)
    try:
        first = await out.get()
    except BaseException:
        cancel.set()
        raise
    if isinstance(first, Exception):
        cancel.set()
        raise RequestError(
            error_code_for(first),
            str(first) if error_code_for(first) != ErrorCode.INTERNAL else "the worker failed to generate; see its log",
        )
    return req, first, out, cancel


def create_app(worker: ModelWorker, heartbeat: Heartbeat | None = None) -> FastAPI:
    app = FastAPI(title=f"LLaVA worker: {worker.settings.model_name}")

    @app.post("/worker_generate_stream")
    async def worker_generate_stream(request: Request) -> Response:
        try:
            req, first, out, cancel = await start_generation(request, worker)
        except RequestError as e:
            return error_response(e.code, str(e))

        async def body():
            item = first
            try:
                while item is not _DONE:
                    if isinstance(item, Exception):
                        code = error_code_for(item)
                        yield encode_chunk(str(item) if code != ErrorCode.INTERNAL else "generation failed", code)
                    else:
                        yield encode_chunk(req.prompt + item.text, usage=usage_of(item))
                    item = await out.get()
            finally:
                cancel.set()  # the client went away or we are done: either way the thread stops

        return StreamingResponse(body(), media_type="application/octet-stream")

    @app.post("/worker_generate")
    async def worker_generate(request: Request) -> Response:
        try:
            req, item, out, cancel = await start_generation(request, worker)
        except RequestError as e:
            return error_response(e.code, str(e))
        last = item
        try:
            while item is not _DONE:
                if isinstance(item, Exception):
                    return error_response(error_code_for(item), "generation failed")
                last = item
                item = await out.get()
        finally:
            cancel.set()
        usage = usage_of(last)
        return Response(
            GenerateResponse(text=req.prompt + last.text, usage=usage).model_dump_json(), media_type="application/json"
        )

    @app.post("/worker_get_status")
    async def worker_get_status() -> WorkerStatus:
        return worker.status()

    @app.post("/model_details")
    @app.get("/model_details")
    async def model_details() -> ModelDetails:
        return worker.details()

    @app.get("/health")
    @app.post("/health")
    async def health() -> WorkerHealth:
        return WorkerHealth(model_name=worker.settings.model_name, queue_length=worker.queue_length)

    return app


def parse_args(argv: list[str] | None = None) -> tuple[WorkerSettings, str, bool]:
    p = argparse.ArgumentParser(prog="python -m serve.model_worker", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=21002)
    p.add_argument("--worker-address", default="", help="URL the controller and clients use (default http://HOST:PORT)")
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--model-path", required=True, help="Hugging Face-format LLaVA checkpoint folder")
    p.add_argument("--model-name", default="", help="default: the folder's name")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--conv-template", default="", help="override the checkpoint's conversation template")
    p.add_argument("--limit-model-concurrency", type=int, default=5)
    p.add_argument("--max-queue-length", type=int, default=64)
    p.add_argument("--heart-beat-interval", type=float, default=15.0, help="seconds")
    p.add_argument("--no-register", action="store_true", help="do not register with a controller")
    p.add_argument("--allow-image-urls", action="store_true", help="let requests name http(s) image URLs")
    p.add_argument("--allow-image-paths", action="store_true", help="let requests name files on this machine")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--no-warm-up", action="store_true", help="on CUDA, skip the short answer each generation thread gives at start"
    )
    a = p.parse_args(argv)
    settings = WorkerSettings(
        model_path=a.model_path,
        host=a.host,
        port=a.port,
        worker_address=a.worker_address,
        controller_address=a.controller_address.rstrip("/"),
        model_name=a.model_name,
        device=a.device,
        dtype=a.dtype,
        conv_template=a.conv_template,
        limit_model_concurrency=a.limit_model_concurrency,
        max_queue_length=a.max_queue_length,
        heart_beat_interval=a.heart_beat_interval,
        register=not a.no_register,
        allow_image_urls=a.allow_image_urls,
        allow_image_paths=a.allow_image_paths,
    )
    return settings, a.log_level, not a.no_warm_up


def main(argv: list[str] | None = None) -> None:
    settings, log_level, warm_up = parse_args(argv)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise
    if settings.conv_template and settings.conv_template not in conv_templates:
        raise SystemExit(f"unknown --conv-template {settings.conv_template!r}; choose one of {sorted(conv_templates)}")
    try:
        loaded = load_pretrained(settings.model_path, device=settings.device, dtype=settings.dtype)
    except LlavaError as e:
        raise SystemExit(f"model_worker: {e}") from e
    worker = ModelWorker(settings, loaded)
    if warm_up and str(loaded.model.device).startswith("cuda"):
        seconds = worker.warm_up()
        log.info("warmed up %d generation threads in %.1f s", settings.limit_model_concurrency, seconds)
    log.info(
        "serving %s (template %s, context %d) at %s",
        settings.model_name,
        worker.template,
        loaded.context_len,
        settings.worker_address,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(worker), host=settings.host, port=settings.port, log_level="warning")
    )
    heartbeat = None
    if settings.register:
        heartbeat = Heartbeat(
            settings.controller_address,
            settings.worker_address,
            settings.heart_beat_interval,
            worker.status,
            ready=lambda: server.started,
        )
        heartbeat.start()
    try:
        server.run()
    finally:
        if heartbeat:
            heartbeat.stop()
        worker.pool.shutdown(wait=False, cancel_futures=True)


if __name__ == "__main__":
    main()
