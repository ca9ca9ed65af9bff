"""One assistant turn: pick a worker, render the prompt under its template, stream the answer into a pane, log it.

Shared by Chat (one pane) and Side by side (two panes streamed at once by `merge`, each at its own pace).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from pydantic import ValidationError

from demo.conv_log import ConvLogger, ConvSnapshot
from demo.session import ChatSession
from demo.worker_client import ServiceError, WorkerClient
from serve.protocol import GenerateRequest

log = logging.getLogger("demo.turn")

# Every event that streams answers shares this Gradio concurrency group, so --concurrency-count bounds them all
# together (Gradio's own limits are per event).
ANSWERS = "answers"


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512


@dataclass(frozen=True, slots=True)
class Services:
    """What every handler needs from the app: the way to the workers and the conversation log."""

    client: WorkerClient
    logger: ConvLogger


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a turn comes from, for the log: the UI tab, Gradio's session hash, the browser's address."""

    tab: str
    session: str | None = None
    ip: str | None = None

    @classmethod
    def of(cls, request: object | None, tab: str) -> Origin:
        """From a `gr.Request` (None when a handler is called directly)."""
        client = getattr(request, "client", None)
        return cls(tab, getattr(request, "session_hash", None), getattr(client, "host", None))


async def stream_turn(pane: ChatSession, services: Services, sampling: Sampling, origin: Origin) -> AsyncIterator[None]:
    """Answer the pane's last human message with `pane.model`; yields after every change to the pane.

    Failures end up in the pane as a readable error, never as an exception; a cancellation (Stop) keeps the
    partial answer and propagates. Every turn, whatever its outcome, is logged.
    """
    start = time.time()
    first_token: float | None = None
    outcome, error, worker, prompt = "error", None, None, None
    pane.begin_answer()
    try:
        worker = await services.client.find_worker(pane.model)
        pane.use_template(worker.template)
        prompt, images = await asyncio.to_thread(lambda: (pane.prompt(), pane.images()))
        try:
            request = GenerateRequest(model=worker.model, prompt=prompt, images=images, stop=[pane.conv.stop_str],
                                      **asdict(sampling))  # fmt: skip
        except ValidationError as e:
            bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
            raise ServiceError(f"Invalid generation parameters ({bad}).") from e
        yield
        async for text in services.client.stream(worker, request):
            if first_token is None:
                first_token = time.time()
            pane.set_answer(text)
            yield
        outcome = "ok"
    except ServiceError as e:
        error = str(e)
    except (asyncio.CancelledError, GeneratorExit):  # Stop pressed, or the page went away
        outcome = "stopped"
        raise
    except Exception as e:  # a bug of ours: say so in the chat, keep the details in our log
        log.exception("turn for %s failed", pane.model)
        error = f"The web UI failed while answering ({type(e).__name__}); the operator can find details in its log."
    finally:
        if outcome == "stopped":
            pane.stop()
        else:
            pane.end_answer(error)
            if error is None and pane.error:  # an empty answer
                outcome, error = "error", pane.error
        services.logger.log(
            {
                "type": "chat",
                "tab": origin.tab,
                "session": origin.session,
                "ip": origin.ip,
                "conversation": pane.conversation_id,
                "model": pane.model,
                "worker": worker.address if worker else None,
                "template": pane.conv.name,
                "params": asdict(sampling),
                "start": round(start, 4),
                "finish": round(time.time(), 4),
                "first_token_s": round(first_token - start, 4) if first_token else None,
                "outcome": outcome,
                "error": error,
                "prompt": prompt,
            },
            {"state": ConvSnapshot.of(pane.conv)},
        )
    yield


_DONE = object()


async def merge(*streams: AsyncIterator[None]) -> AsyncIterator[None]:
    """Run several turn streams at once; yields whenever any of them changed (bursts are coalesced)."""
    changes: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[None]) -> None:
        try:
            async for _ in stream:
                changes.put_nowait(None)
        finally:
            changes.put_nowait(_DONE)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    running = len(tasks)
    try:
        while running:
            items = [await changes.get()]
            while not changes.empty():
                items.append(changes.get_nowait())
            running -= sum(item is _DONE for item in items)
            yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
