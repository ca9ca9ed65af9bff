"""HTTP to the controller and the workers: model lists, worker addresses, streamed answers, readable errors.

The UI's only way to the serving processes (DESIGN.md: demo/ talks to serve/ over HTTP and shares nothing but
`serve/protocol.py`). Every failure on the way to an answer becomes a `ServiceError` whose message says what
happened and what the user can do about it, instead of one generic "network error".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from pydantic import ValidationError

from llava.conversation import conv_templates, template_for_model
from serve.protocol import (
    ErrorCode,
    GenerateRequest,
    GetWorkerAddressResponse,
    ListModelsResponse,
    ModelDetails,
    iter_chunks,
    iter_chunks_async,
)

log = logging.getLogger("demo.worker_client")


class ServiceError(Exception):
    """No answer could be had; `str(e)` is the message shown in the chat, `code` the wire error code."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker chosen for one model, with what the UI needs to render prompts for it."""

    model: str
    address: str
    template: str  # llava.conversation template name
    context_length: int


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0  # seconds to open a connection to the controller or a worker
    controller: float = 10.0  # seconds for a controller answer
    stream_read: float = 120.0  # seconds to wait for the next chunk of a stream (a busy worker queues)


def describe_worker_error(code: int, text: str, model: str) -> str:
    """The chat message for a non-zero `error_code` chunk from a worker."""
    detail = text.strip() or "no details given"
    if code == ErrorCode.CONTEXT_OVERFLOW:
        return (
            f"The conversation is too long for {model}: {detail}. Press Clear to start over, or ask a shorter question."
        )
    if code == ErrorCode.BAD_REQUEST:
        return f"{model} refused the request: {detail}."
    if code == ErrorCode.OVERLOADED:
        return f"{model} is busy right now ({detail}). Wait a few seconds and press Regenerate."
    if code == ErrorCode.NO_WORKER:
        return f"No worker serves {model} right now: {detail}."
    if code == ErrorCode.WORKER_TIMEOUT:
        return f"{model} did not answer in time: {detail}."
    return f"{model} failed while answering (error {code}: {detail}). Press Regenerate to try again."


class WorkerClient:
    """Asks the controller where a model lives, then streams answers straight from that worker."""

    def __init__(self, controller_url: str, timeouts: Timeouts | None = None) -> None:
        self.controller_url = controller_url.rstrip("/")
        self.timeouts = timeouts or Timeouts()
        self._details: dict[tuple[str, str], ModelDetails] = {}  # (address, model) -> details

    # ---- controller --------------------------------------------------------------------------
    def _http(self, read: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=httpx.Timeout(read, connect=self.timeouts.connect))

    async def _controller(self, path: str, payload: dict | None = None) -> dict:
        url = f"{self.controller_url}{path}"
        try:
            async with self._http(self.timeouts.controller) as http:
                r = await http.post(url, json=payload or {})
                r.raise_for_status()
                return r.json()
        except httpx.TimeoutException as e:
            raise ServiceError(
                f"The controller at {self.controller_url} did not answer in time; it may be overloaded. Try again.",
                ErrorCode.WORKER_TIMEOUT,
            ) from e
        except httpx.HTTPStatusError as e:
            raise ServiceError(
                f"The controller at {self.controller_url} answered {path} with HTTP {e.response.status_code}.",
            ) from e
        except (httpx.HTTPError, ValueError) as e:
            raise ServiceError(
                f"Cannot reach the controller at {self.controller_url} ({type(e).__name__}); is it running?",
                ErrorCode.NO_WORKER,
            ) from e

    async def list_models(self, refresh: bool = True) -> list[str]:
        """Models served right now; `refresh` first asks the controller to re-check every worker."""
        data = await self._controller("/refresh_all_workers" if refresh else "/list_models")
        if "models" not in data:  # an older controller answers the refresh without the list
            data = await self._controller("/list_models")
        return sorted(ListModelsResponse.model_validate(data).models)

    async def _address(self, model: str) -> str:
        data = await self._controller("/get_worker_address", {"model": model})
        return GetWorkerAddressResponse.model_validate(data).address.rstrip("/")

    async def find_worker(self, model: str) -> Worker:
        """The worker the controller picks for `model`, with its template; ServiceError when there is none."""
        if not model:
            raise ServiceError(
                "No model is selected. Pick one in the model list (press Refresh if it is empty).",
                ErrorCode.BAD_REQUEST,
            )
        address = await self._address(model)
        if not address:
            models = await self.list_models(refresh=False)
            served = ", ".join(models) if models else "none"
            raise ServiceError(
                f"No worker serves {model} right now (models being served: {served}). "
                "Pick another model, or start a worker for it and press Refresh.",
                ErrorCode.NO_WORKER,
            )
        return await self._worker(model, address)

    async def _worker(self, model: str, address: str) -> Worker:
        details = self._details.get((address, model))
        if details is None:
            try:
                async with self._http(self.timeouts.controller) as http:
                    r = await http.post(f"{address}/model_details")
                    r.raise_for_status()
                    details = ModelDetails.model_validate(r.json())
                self._details[(address, model)] = details
            except httpx.TransportError as e:
                raise self._unreachable(model, address, e) from e
            except (httpx.HTTPStatusError, ValueError, ValidationError) as e:
                # An older worker without /model_details: fall back to choosing by name, as the original demo did.
                log.warning("worker %s gave no usable /model_details (%s); choosing the template by name", address, e)
                return Worker(model, address, template_for_model(model), 0)
        template = details.conv_template if details.conv_template in conv_templates else template_for_model(model)
        return Worker(model, address, template, details.context_length)

    @staticmethod
    def _unreachable(model: str, address: str, e: Exception) -> ServiceError:
        return ServiceError(
            f"The worker serving {model} at {address} is not answering ({type(e).__name__}); it may have stopped. "
            "Press Regenerate in a few seconds, or pick another model.",
            ErrorCode.INTERNAL,
        )

    # ---- worker ------------------------------------------------------------------------------
    async def stream(self, worker: Worker, request: GenerateRequest) -> AsyncIterator[str]:
        """Yield the answer generated so far (without the prompt) as the worker streams it.

        When the worker cannot be reached at all, the controller is asked to drop dead workers and the request
        goes once to another worker of the same model, if there is one.
        """
        try:
            async for text in self._stream_once(worker, request):
                yield text
            return
        except _Unreachable as e:
            first_error = e.__cause__ or e
        await self._controller("/refresh_all_workers")
        address = await self._address(worker.model)
        if not address or address == worker.address:
            raise self._unreachable(worker.model, worker.address, first_error)
        log.info("worker %s is unreachable; retrying %s at %s", worker.address, worker.model, address)
        try:
            async for text in self._stream_once(
                Worker(worker.model, address, worker.template, worker.context_length), request
            ):
                yield text
        except _Unreachable as e:
            raise self._unreachable(worker.model, address, e.__cause__ or e) from e

    async def _stream_once(self, worker: Worker, request: GenerateRequest) -> AsyncIterator[str]:
        payload = request.model_dump(exclude_none=True)
        prompt = request.prompt
        received = False
        try:
            async with (
                self._http(self.timeouts.stream_read) as http,
                http.stream("POST", f"{worker.address}/worker_generate_stream", json=payload) as r,
            ):
                if r.status_code != 200:
                    raise refusal(worker.model, r.status_code, await r.aread())
                async for chunk in iter_chunks_async(r.aiter_bytes()):
                    code = int(chunk.get("error_code", 0))
                    text = str(chunk.get("text", ""))
                    if code != ErrorCode.OK:
                        raise ServiceError(describe_worker_error(code, text, worker.model), _as_code(code))
                    received = True
                    yield (text[len(prompt) :] if text.startswith(prompt) else text).strip()
        except httpx.ConnectError as e:
            raise _Unreachable() from e
        except httpx.TimeoutException as e:
            raise ServiceError(
                f"{worker.model} at {worker.address} did not answer within {self.timeouts.stream_read:.0f} s; "
                "it may be overloaded. Press Regenerate to try again.",
                ErrorCode.WORKER_TIMEOUT,
            ) from e
        except httpx.TransportError as e:  # the connection broke: the worker died or was restarted mid-answer
            where = "in the middle of the answer" if received else "before answering"
            raise ServiceError(
                f"The worker serving {worker.model} at {worker.address} stopped {where} ({type(e).__name__}); "
                "it may have crashed. Press Regenerate to try again, or pick another model.",
                ErrorCode.INTERNAL,
            ) from e
        except ValueError as e:  # a chunk that is not JSON: not one of our workers, or a corrupted stream
            raise ServiceError(f"The worker serving {worker.model} sent a malformed reply ({e}).") from e


def refusal(model: str, status: int, body: bytes) -> ServiceError:
    """The error for a non-200 answer: the worker's own framed message when it sent one (it does for 4xx)."""
    try:
        chunk = next(iter(iter_chunks(iter([body]))), None)
    except ValueError:
        chunk = None
    if isinstance(chunk, dict) and int(chunk.get("error_code", 0) or 0) != ErrorCode.OK:
        return ServiceError(describe_worker_error(int(chunk["error_code"]), str(chunk.get("text", "")), model),
                            _as_code(int(chunk["error_code"])))  # fmt: skip
    detail = body[:200].decode("utf-8", "replace").strip() or "no message"
    return ServiceError(f"The worker serving {model} answered HTTP {status} ({detail}). Press Regenerate to try "
                        "again, or pick another model.")  # fmt: skip


class _Unreachable(Exception):
    """Internal: no connection could be opened (nothing was sent), so the request may go elsewhere."""


def _as_code(value: int) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.INTERNAL
