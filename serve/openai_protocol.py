"""Wire schemas of the OpenAI-compatible API: the subset of OpenAI's chat completions that LLaVA can honour.

Fields OpenAI clients send that change nothing here (`user`, `presence_penalty`, ...) are accepted and ignored;
fields whose meaning we cannot honour (`n` > 1, `tools`, `logprobs`) are refused with a message, not ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from serve.protocol import ErrorCode


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# ---- requests --------------------------------------------------------------------------------


class ImageURL(_Model):
    url: str = Field(min_length=1, description="a data: URL (base64), or an http(s) URL if the worker allows them")
    detail: str | None = None  # OpenAI's resolution hint; a LLaVA worker always sees the picture at its own size


class ContentPart(_Model):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None

    @model_validator(mode="after")
    def _has_its_payload(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs `text`")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs `image_url`: {'url': 'data:image/png;base64,...'}")
        return self

    @field_validator("image_url", mode="before")
    @classmethod
    def _bare_url(cls, value: object) -> object:
        # Some clients send the URL itself rather than {"url": ...}.
        return {"url": value} if isinstance(value, str) else value


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def parts(self) -> list[ContentPart]:
        if self.content is None:
            return []
        if isinstance(self.content, str):
            return [ContentPart(type="text", text=self.content)]
        return self.content


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    # None means OpenAI's default; clients send explicit nulls
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=8192)  # the newer name of max_tokens
    stop: list[str] = Field(default_factory=list)  # one string or up to 4
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    tools: list | None = None
    logprobs: bool | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else (value or [])

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stops: list[str]) -> list[str]:
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @model_validator(mode="after")
    def _only_what_we_honour(self) -> ChatCompletionRequest:
        if self.n not in (None, 1):
            raise ValueError("n must be 1: this server returns one choice per request")
        if self.tools:
            raise ValueError("tools are not supported: LLaVA checkpoints are not trained to call functions")
        if self.logprobs:
            raise ValueError("logprobs are not supported")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---- responses -------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class CompletionUsage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Model):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(_Model):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(_Model):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class Delta(_Model):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Model):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None

    @field_serializer("delta")
    def _only_what_changed(self, delta: Delta) -> dict:
        # as OpenAI sends them: the role in the first chunk only, no null content
        return delta.model_dump(exclude_none=True)


class ChatCompletionChunk(_Model):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None


class ModelCard(_Model):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llava-serve"


class ModelList(_Model):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(_Model):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Model):
    error: ErrorBody


class ApiError(Exception):
    """A failure the client gets as OpenAI's error object, with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code = status, kind, code

    def body(self) -> dict:
        return ErrorResponse(error=ErrorBody(message=str(self), type=self.kind, code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# a worker's error code -> (HTTP status, OpenAI error type, OpenAI error code)
WORKER_ERRORS: dict[int, tuple[int, str, str | None]] = {
    ErrorCode.BAD_REQUEST: (400, "invalid_request_error", None),
    ErrorCode.CONTEXT_OVERFLOW: (400, "invalid_request_error", "context_length_exceeded"),
    ErrorCode.OVERLOADED: (429, "rate_limit_error", "worker_overloaded"),
    ErrorCode.NO_WORKER: (503, "server_error", "model_not_available"),
    ErrorCode.WORKER_TIMEOUT: (504, "server_error", "timeout"),
}


def worker_error(code: int, text: str) -> ApiError:
    status, kind, name = WORKER_ERRORS.get(code, (500, "server_error", None))
    return ApiError(status, text.strip() or f"the worker failed (error {code})", kind, name)
