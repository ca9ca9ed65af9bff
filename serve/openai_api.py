"""An OpenAI-compatible API in front of the controller: `/v1/models` and `/v1/chat/completions`, streamed or not.

Any OpenAI client (the `openai` SDK, curl) chats with the served LLaVA models, pictures included as
`image_url` content parts (data: URLs; http(s) URLs only where the worker allows them). Like the web UI, it asks the
controller which worker serves the model, renders the chat under that model's template and streams from the worker.
`python -m serve.openai_api --controller-address http://127.0.0.1:21001 --port 8000 [--api-key KEY]`
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from llava.conversation import conv_templates, template_for_model
from serve.openai_chat import Prompt, render_chat
from serve.openai_protocol import (
    ApiError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    ModelCard,
    ModelList,
    completion_id,
    now,
    worker_error,
)
from serve.protocol import (
    ErrorCode,
    GetWorkerAddressResponse,
    ListModelsResponse,
    ModelDetails,
    Usage,
    iter_chunks,
    iter_chunks_async,
)

log = logging.getLogger("serve.openai_api")


@dataclass(slots=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    controller_address: str = "http://127.0.0.1:21001"
    api_keys: list[str] = field(default_factory=list)  # empty: no key asked for
    default_max_tokens: int = 512  # when a request names no max_tokens
    worker_timeout: float = 300.0  # seconds to wait for a worker's answer (or its next streamed piece)

    def __post_init__(self) -> None:
        self.controller_address = self.controller_address.rstrip("/")
        if self.default_max_tokens < 1 or self.worker_timeout <= 0:
            raise ValueError("default_max_tokens and worker_timeout must be positive")


# ---- the serving processes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    address: str
    details: ModelDetails


class Upstream:
    """The controller and its workers, over one pooled HTTP client; every failure becomes an ApiError."""

    def __init__(self, settings: ApiSettings) -> None:
        self.s = settings
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(settings.worker_timeout, connect=5.0))
        self._details: dict[tuple[str, str], ModelDetails] = {}  # (worker address, model) -> its details

    async def _controller(self, path: str, payload: dict | None = None) -> dict:
        try:
            r = await self.http.post(f"{self.s.controller_address}{path}", json=payload or {}, timeout=10.0)
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise ApiError(
                503, f"the controller at {self.s.controller_address} is not answering ({type(e).__name__})",
                "server_error", "controller_unavailable",
            ) from e  # fmt: skip

    async def models(self) -> list[str]:
        return sorted(ListModelsResponse.model_validate(await self._controller("/list_models")).models)

    async def route(self, model: str, refresh: bool = False) -> Route:
        """The worker the controller picks for `model`, with its details (template, whether it sees pictures)."""
        if refresh:  # a worker did not answer: drop dead ones before asking again
            await self._controller("/refresh_all_workers")
            self._details.clear()
        data = await self._controller("/get_worker_address", {"model": model})
        address = GetWorkerAddressResponse.model_validate(data).address.rstrip("/")
        if not address:
            served = ", ".join(await self.models()) or "none"
            raise ApiError(404, f"the model {model!r} is not served here (served: {served})", code="model_not_found")
        if (address, model) in self._details:  # asked once per worker, not once per request
            return Route(address, self._details[address, model])
        try:
            r = await self.http.post(f"{address}/model_details", timeout=10.0)
            r.raise_for_status()
            details = self._details[address, model] = ModelDetails.model_validate(r.json())
            return Route(address, details)
        except httpx.TransportError as e:
            raise _Unreachable(address) from e
        except (httpx.HTTPStatusError, ValueError, ValidationError) as e:
            raise ApiError(502, f"the worker at {address} gave no usable /model_details ({e})", "server_error") from e

    async def open_stream(self, route: Route, payload: dict) -> httpx.Response:
        """The worker's streamed answer, opened; refusals (sent before any streaming) raised as ApiError."""
        request = self.http.build_request("POST", f"{route.address}/worker_generate_stream", json=payload)
        try:
            r = await self.http.send(request, stream=True)
        except httpx.ConnectError as e:
            raise _Unreachable(route.address) from e
        except httpx.TimeoutException as e:
            raise _timeout(route.address, self.s.worker_timeout) from e
        if r.status_code != 200:
            body = await r.aread()
            await r.aclose()
            raise refusal(r.status_code, body)
        return r


class _Unreachable(Exception):
    """No connection to a worker could be opened (nothing was sent), so the request may go to another one."""


def _timeout(address: str, seconds: float) -> ApiError:
    return ApiError(504, f"the worker at {address} did not answer within {seconds:.0f} s", "server_error", "timeout")


def refusal(status: int, body: bytes) -> ApiError:
    """A worker's non-200 answer: its own framed message when it sent one (it does for its refusals)."""
    try:
        chunk = next(iter_chunks(iter([body])), None)
    except ValueError:
        chunk = None
    if isinstance(chunk, dict) and chunk.get("error_code"):
        return worker_error(int(chunk["error_code"]), str(chunk.get("text", "")))
    detail = body[:200].decode("utf-8", "replace").strip() or "no message"
    return ApiError(502, f"the worker answered HTTP {status} ({detail})", "server_error")


# ---- the app -----------------------------------------------------------------------------------


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def completion_usage(usage: Usage | dict | None) -> CompletionUsage:
    u = Usage.model_validate(usage) if usage is not None else Usage(prompt_tokens=0, completion_tokens=0)
    return CompletionUsage(
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
    )  # fmt: skip


async def parse_chat_request(request: Request) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(await request.json())
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise ApiError(400, f"invalid request: {problems}") from e


def create_app(settings: ApiSettings) -> FastAPI:
    upstream = Upstream(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await upstream.http.aclose()

    app = FastAPI(title="LLaVA: OpenAI-compatible API", lifespan=lifespan)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if settings.api_keys and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not any(hmac.compare_digest(given, key) for key in settings.api_keys):
                return ApiError(
                    401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                    "authentication_error", "invalid_api_key",
                ).response()  # fmt: skip
        return await call_next(request)

    @app.get("/v1/models")
    async def list_models() -> Response:
        try:
            names = await upstream.models()
        except ApiError as e:
            return e.response()
        created = now()
        return JSONResponse(ModelList(data=[ModelCard(id=n, created=created) for n in names]).model_dump())

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Response:
        try:
            names = await upstream.models()
        except ApiError as e:
            return e.response()
        if model not in names:
            return ApiError(404, f"the model {model!r} is not served here", code="model_not_found").response()
        return JSONResponse(ModelCard(id=model, created=now()).model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            req = await parse_chat_request(request)
            route, prompt, stream = await start(req)
        except ApiError as e:
            log.info("refused: %s %s", e.status, e)
            return e.response()
        meta = {"id": completion_id(), "created": now(), "model": req.model}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                stream_events(stream, prompt, meta, include_usage, settings.worker_timeout, route.address),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            answer, usage = await collect(stream, prompt, settings.worker_timeout, route.address)
        except ApiError as e:
            return e.response()
        body = ChatCompletion(
            **meta,
            choices=[Choice(message=AssistantMessage(content=answer), finish_reason=usage.finish_reason or "stop")],
            usage=completion_usage(usage),
        )
        return JSONResponse(body.model_dump())

    async def start(req: ChatCompletionRequest) -> tuple[Route, Prompt, httpx.Response]:
        """Route, render and open the worker's stream; a worker that cannot be reached is retried once."""
        for attempt in range(2):
            try:
                route = await upstream.route(req.model, refresh=attempt > 0)
                prompt = prepare(req, route)
                payload = {
                    "model": req.model,
                    "prompt": prompt.text,
                    "images": prompt.images,
                    "stop": prompt.stop,
                    "temperature": 1.0 if req.temperature is None else req.temperature,
                    "top_p": 1.0 if req.top_p is None else req.top_p,
                    "max_new_tokens": req.token_limit or settings.default_max_tokens,
                    "seed": req.seed,
                }
                return route, prompt, await upstream.open_stream(route, payload)
            except _Unreachable as e:  # from /model_details or the stream: nothing was generated yet
                log.warning("worker %s is unreachable; asking the controller again", e)
                last = e
        raise ApiError(503, f"no worker for {req.model!r} is answering (last tried: {last})", "server_error")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "controller": settings.controller_address}

    return app


def prepare(req: ChatCompletionRequest, route: Route) -> Prompt:
    details = route.details
    template = details.conv_template if details.conv_template in conv_templates else template_for_model(req.model)
    prompt = render_chat(req.messages, template, req.stop)
    if prompt.images and not details.takes_images:
        raise ApiError(400, f"{req.model} does not take pictures; send text only", code="image_url")
    return prompt


async def answers(stream: httpx.Response, prompt: Prompt, timeout: float, address: str) -> AsyncIterator[tuple]:
    """(answer so far, usage so far) from an open worker stream; worker errors and broken streams as ApiError."""
    try:
        async for chunk in iter_chunks_async(stream.aiter_bytes()):
            code, text = int(chunk.get("error_code", 0)), str(chunk.get("text", ""))
            if code != ErrorCode.OK:
                raise worker_error(code, text)
            answer = text[len(prompt.text) :] if text.startswith(prompt.text) else text
            yield answer.lstrip(), chunk.get("usage")
    except httpx.TimeoutException as e:
        raise _timeout(address, timeout) from e
    except httpx.TransportError as e:
        raise ApiError(502, f"the worker at {address} stopped mid-answer ({type(e).__name__})", "server_error") from e
    except ValueError as e:
        raise ApiError(502, f"the worker at {address} sent a malformed reply ({e})", "server_error") from e
    finally:
        await stream.aclose()


async def collect(stream: httpx.Response, prompt: Prompt, timeout: float, address: str) -> tuple[str, Usage]:
    answer, usage = "", None
    async for piece in answers(stream, prompt, timeout, address):
        answer, usage = piece  # the last one is the whole answer
    return answer, Usage.model_validate(usage) if usage else Usage(prompt_tokens=0, completion_tokens=0)


async def stream_events(
    stream: httpx.Response, prompt: Prompt, meta: dict, include_usage: bool, timeout: float, address: str
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's order: the role, the text piece by piece, the finish reason, usage, [DONE]."""

    def chunk(delta: Delta, finish: str | None = None) -> bytes:
        return sse(ChatCompletionChunk(**meta, choices=[ChunkChoice(delta=delta, finish_reason=finish)]).model_dump())

    yield chunk(Delta(role="assistant", content=""))
    shown, usage = 0, None
    try:
        async for answer, counts in answers(stream, prompt, timeout, address):
            usage = counts
            if len(answer) > shown:
                yield chunk(Delta(content=answer[shown:]))
                shown = len(answer)
    except ApiError as e:  # the status line is sent already: the error goes in the stream, as OpenAI does
        log.warning("stream failed: %s", e)
        yield sse(e.body())
        return
    finish = Usage.model_validate(usage).finish_reason if usage else None
    yield chunk(Delta(), finish or "stop")
    if include_usage:
        yield sse(ChatCompletionChunk(**meta, choices=[], usage=completion_usage(usage)).model_dump())
    yield sse("[DONE]")


def parse_args(argv: list[str] | None = None) -> ApiSettings:
    p = argparse.ArgumentParser(prog="python -m serve.openai_api", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--api-key", action="append", default=[], dest="api_keys",
                   help="a key clients must send as 'Authorization: Bearer KEY' (repeat for several; none: open)")  # fmt: skip
    p.add_argument("--default-max-tokens", type=int, default=512, help="when a request names no max_tokens")
    p.add_argument("--worker-timeout", type=float, default=300.0, help="seconds to wait for a worker")
    a = p.parse_args(argv)
    try:
        return ApiSettings(a.host, a.port, a.controller_address, a.api_keys, a.default_max_tokens, a.worker_timeout)
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log.info("OpenAI-compatible API on http://%s:%d/v1 (controller %s)", settings.host, settings.port,
             settings.controller_address)  # fmt: skip
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
