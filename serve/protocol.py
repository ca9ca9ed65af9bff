"""Wire schemas: every request and response between UI, controller and workers, and the error-code table.

Compatible with the original LLaVA / FastChat serving protocol: a streamed reply is a sequence of JSON
objects `{"text": ..., "error_code": 0}`, each followed by a NUL byte, where `text` is the prompt plus all
text generated so far. As in FastChat, a worker's chunks also carry `usage` (token counts so far, and the
`finish_reason` on the last one); the original clients ignore it. This module is the only code the web UI shares with the serving processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from enum import IntEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

DELIMITER = b"\0"


class ErrorCode(IntEnum):
    """Non-zero codes carry a readable message in `text` (numbers follow FastChat's table)."""

    OK = 0
    BAD_REQUEST = 40001  # malformed JSON, bad parameter, bad image, image/<image> count mismatch
    CONTEXT_OVERFLOW = 40303  # prompt (image tokens included) leaves no room in the context
    OVERLOADED = 42903  # the worker's queue is full; try again later or another worker
    INTERNAL = 50001  # our fault; details are in the worker's log
    NO_WORKER = 50005  # no worker serves the requested model
    WORKER_TIMEOUT = 50006  # a worker did not answer in time (used by clients)


HTTP_STATUS = {
    ErrorCode.OK: 200,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.CONTEXT_OVERFLOW: 400,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NO_WORKER: 503,
    ErrorCode.WORKER_TIMEOUT: 504,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# ---- controller ------------------------------------------------------------------------------


class WorkerStatus(_Model):
    model_names: list[str]
    speed: int = 1
    queue_length: int = 0


class RegisterWorkerRequest(_Model):
    worker_name: str = Field(min_length=1, description="the worker's base URL, e.g. http://127.0.0.1:21002")
    check_heart_beat: bool = True
    worker_status: WorkerStatus | None = None


class RegisterWorkerResponse(_Model):
    registered: bool


class HeartBeatRequest(_Model):
    worker_name: str
    queue_length: int = 0


class HeartBeatResponse(_Model):
    exist: bool


class ListModelsResponse(_Model):
    models: list[str]


class GetWorkerAddressRequest(_Model):
    model: str


class GetWorkerAddressResponse(_Model):
    address: str  # "" when no worker serves the model


class WorkerEntry(_Model):
    worker_name: str
    model_names: list[str]
    speed: int
    queue_length: int
    seconds_since_heart_beat: float


class ListWorkersResponse(_Model):
    workers: list[WorkerEntry]


class ControllerHealth(_Model):
    status: str = "ok"
    workers: int
    models: list[str]


# ---- worker ----------------------------------------------------------------------------------


class GenerateRequest(_Model):
    model: str | None = None
    prompt: str
    images: list[str] = Field(default_factory=list, description="base64-encoded pictures, one per <image>")
    temperature: float = Field(default=0.2, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=256, ge=1, le=8192)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("images", mode="before")
    @classmethod
    def _images_list(cls, value: object) -> object:
        # The original clients omit images or send null for text-only prompts.
        return [] if value is None else value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        # The original clients send one stop string; OpenAI-style clients send a list.
        if value is None:
            return []
        return [value] if isinstance(value, str) else value


class GenerateChunk(_Model):
    text: str
    error_code: int = ErrorCode.OK


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


class GenerateResponse(GenerateChunk):
    usage: Usage | None = None


class ModelDetails(_Model):
    model_name: str
    context_length: int
    conv_template: str
    takes_images: bool
    image_tokens: int  # tokens one picture takes in the context


class WorkerHealth(_Model):
    status: str = "ok"
    model_name: str
    queue_length: int


# ---- framing ---------------------------------------------------------------------------------


def encode_chunk(text: str, error_code: int = ErrorCode.OK, usage: Usage | None = None) -> bytes:
    chunk: dict = {"text": text, "error_code": int(error_code)}
    if usage is not None:
        chunk["usage"] = usage.model_dump()
    return json.dumps(chunk).encode() + DELIMITER


def _split(buffer: bytes, piece: bytes) -> tuple[list[dict], bytes]:
    """The complete objects in `buffer + piece`, and the bytes left over after the last NUL."""
    *complete, rest = (buffer + piece).split(DELIMITER)
    return [json.loads(raw) for raw in complete if raw.strip()], rest


def iter_chunks(byte_chunks: Iterator[bytes]) -> Iterator[dict]:
    """Decode a NUL-delimited stream of JSON objects from arbitrary byte pieces."""
    buffer = b""
    for piece in byte_chunks:
        chunks, buffer = _split(buffer, piece)
        yield from chunks
    yield from _split(buffer, DELIMITER)[0]  # a last object without its NUL


async def iter_chunks_async(pieces: AsyncIterator[bytes]) -> AsyncIterator[dict]:
    """`iter_chunks` for an async byte stream."""
    buffer = b""
    async for piece in pieces:
        chunks, buffer = _split(buffer, piece)
        for chunk in chunks:
            yield chunk
    for chunk in _split(buffer, DELIMITER)[0]:
        yield chunk
