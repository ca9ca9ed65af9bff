"""The paper's way: a text-only LLM behind any OpenAI-compatible endpoint writes the instruction data.

Each request is the paper's prompt: the system message of the response type, few-shot examples (a context
and the answer we want for it), then the picture's context (captions + boxes). The reply is parsed back into
question/answer pairs, so it plugs into the same records as the rule-based teacher.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import httpx

from llava.data import teacher as rules
from llava.data.world import Scene, SceneContext, SceneObject, scene_context
from llava.errors import LlavaError

_BOXES_NOTE = (
    "In addition, specific object locations within the image are given, along with detailed coordinates. "
    "These coordinates are in the form of bounding boxes, represented as (x1, y1, x2, y2) with floating numbers "
    "ranging from 0 to 1. These values correspond to the top left x, top left y, bottom right x, and bottom right y."
)
SYSTEM_MESSAGES = {
    "conversation": (
        "You are an AI visual assistant, and you are seeing a single image. What you see are provided with five "
        "sentences, describing the same image you are looking at. Answer all questions as you are seeing the image.\n\n"
        "Design a conversation between you and a person asking about this photo. The answers should be in a tone "
        "that a visual AI assistant is seeing the image and answering the question. Ask diverse questions and give "
        "corresponding answers.\n\nInclude questions asking about the visual content of the image, including the "
        "object types, counting the objects, object locations, relative positions between objects, etc. Only "
        "include questions that have definite answers:\n(1) one can see the content in the image that the question "
        "asks about and can answer confidently;\n(2) one can determine confidently from the image that it is not in "
        "the image.\nDo not ask any question that cannot be answered confidently.\n\nWrite each question as "
        "'Question:' and each answer as 'Answer:' on their own lines, separated by '==='."
    ),
    "detail": (
        "You are an AI visual assistant that can analyze a single image. You receive five sentences, each describing "
        f"the same image you are observing. {_BOXES_NOTE}\n\nUsing the provided caption and bounding box "
        "information, describe the scene in a detailed manner. Name every object with its size, color and shape, "
        "and where it is. Instead of directly mentioning the bounding box coordinates, utilize this data to explain "
        "the scene using natural language. When using the information from the caption and coordinates, directly "
        "explain the scene, and do not mention that the information source is the caption or the bounding box. "
        "Always answer as if you are directly looking at the image."
    ),
    "complex_reasoning": (
        "You are an AI visual assistant that can analyze a single image. You receive five sentences, each describing "
        f"the same image you are observing. {_BOXES_NOTE}\n\nThe task is to use the provided caption and bounding "
        "box information, create a plausible question about the image, and provide the answer in detail.\n\n"
        "Create complex questions beyond describing the scene: counting, comparisons, relative positions, which "
        "object is largest, what the objects have in common. Make the question challenging by not including the "
        "visual content details in the question so that the user needs to reason about that first.\n\nInstead of "
        "directly mentioning the bounding box coordinates, utilize this data to explain the scene using natural "
        "language. Always answer as if you are directly looking at the image.\n\nWrite the question as 'Question:' "
        "and the answer as 'Answer:' on their own lines, separated by '==='."
    ),
}
SEPARATOR = "==="


class TeacherError(LlavaError):
    """The endpoint failed or answered in a form that cannot be parsed."""


@dataclass(slots=True)
class LLMTeacherConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1 (the part before /chat/completions)
    model: str = "gpt-4"
    api_key: str | None = None  # default: $OPENAI_API_KEY, or none for local servers
    temperature: float = 0.7
    max_tokens: int = 1024
    timeout_s: float = 60.0
    retries: int = 3  # extra tries on connection errors, 429 and 5xx
    n_examples: int = 2  # few-shot examples per request

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.api_key is None:
            self.api_key = os.environ.get("OPENAI_API_KEY")


def _example_scenes() -> list[Scene]:
    """Hand-picked pictures for the few-shot examples."""
    return [
        Scene((
            SceneObject("circle", "red", "large", (0.08, 0.35, 0.40, 0.67)),
            SceneObject("square", "blue", "small", (0.70, 0.10, 0.86, 0.26)),
            SceneObject("square", "blue", "small", (0.72, 0.70, 0.88, 0.86)),
        )),
        Scene((
            SceneObject("triangle", "yellow", "small", (0.42, 0.40, 0.58, 0.56)),
            SceneObject("circle", "green", "large", (0.05, 0.05, 0.37, 0.37)),
        )),
    ]  # fmt: skip


def format_response(qas: list[rules.QA], response_type: str) -> str:
    """A response as the model should write it (what the few-shot examples show)."""
    if response_type == "detail":
        return qas[0][1]
    return f"\n{SEPARATOR}\n".join(f"Question:\n{q}\n{SEPARATOR}\nAnswer:\n{a}" for q, a in qas)


def parse_response(text: str, response_type: str) -> list[rules.QA]:
    """Question/answer pairs from a reply; a detail reply becomes one pair with a detail instruction."""
    text = text.strip()
    if not text:
        raise TeacherError("the teacher's reply is empty")
    if response_type == "detail":
        return [(rules.DETAIL_QUESTIONS[0], text)]
    blocks = [b.strip() for b in text.split(SEPARATOR) if b.strip()]
    qas: list[rules.QA] = []
    question: str | None = None
    for block in blocks:
        head, _, body = block.partition(":")
        body = body.strip()
        if head.strip() == "Question" and body:
            question = body
        elif head.strip() == "Answer" and body and question is not None:
            qas.append((question, body))
            question = None
        else:
            raise TeacherError(f"cannot parse the teacher's reply near {block[:60]!r}; expected 'Question:'/'Answer:'")
    if not qas:
        raise TeacherError("the teacher's reply holds no question/answer pair")
    return qas


def build_messages(context: SceneContext, response_type: str, n_examples: int = 2) -> list[dict[str, str]]:
    """The paper's prompt: system message, few-shot (context, response) pairs, then the query context."""
    if response_type not in SYSTEM_MESSAGES:
        raise ValueError(f"unknown response type {response_type!r}; use one of {sorted(SYSTEM_MESSAGES)}")
    messages = [{"role": "system", "content": SYSTEM_MESSAGES[response_type]}]
    rng = random.Random(0)  # the same examples in every request
    for scene in _example_scenes()[:n_examples]:
        example = scene_context(scene)
        qas = rules.teach(example, response_type, rng)
        messages.append({"role": "user", "content": example.to_text()})
        messages.append({"role": "assistant", "content": format_response(qas, response_type)})
    messages.append({"role": "user", "content": context.to_text()})
    return messages


class LLMTeacher:
    """Sends the paper's prompt to an OpenAI-compatible `/chat/completions` and parses the reply."""

    def __init__(self, config: LLMTeacherConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self.client = client or httpx.Client(
            base_url=config.base_url.rstrip("/"), headers=headers, timeout=config.timeout_s
        )

    def complete(self, messages: list[dict[str, str]]) -> str:
        body = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        last_error = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2**attempt))
            try:
                reply = self.client.post("/chat/completions", json=body)
            except httpx.HTTPError as e:
                last_error = f"cannot reach {self.config.base_url}: {e}"
                continue
            if reply.status_code == 429 or reply.status_code >= 500:
                last_error = f"{self.config.base_url} answered {reply.status_code}: {reply.text[:200]}"
                continue
            if reply.status_code != 200:
                raise TeacherError(f"{self.config.base_url} answered {reply.status_code}: {reply.text[:200]}")
            try:
                return reply.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise TeacherError(f"{self.config.base_url} sent no chat completion: {reply.text[:200]}") from e
        raise TeacherError(f"teacher request failed after {self.config.retries + 1} tries: {last_error}")

    def teach(self, context: SceneContext, response_type: str, rng: random.Random | None = None) -> list[rules.QA]:
        """Question/answer pairs of one response type (same contract as the rule-based `teach`)."""
        messages = build_messages(context, response_type, self.config.n_examples)
        return parse_response(self.complete(messages), response_type)

    def close(self) -> None:
        self.client.close()
