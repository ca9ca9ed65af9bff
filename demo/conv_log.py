"""Conversation logs: one JSON line per event (chat turn, vote, flag) in `LOG_DIR/YYYY-MM-DD-conv.jsonl`.

Pictures are saved once each, as `LOG_DIR/images/<md5>.png` (`llava.images.image_hash`), and lines name them by
hash. Writing happens on a background thread fed by a bounded queue: the chat path only enqueues, so a slow or
full disk, a permission error or a bad event can never block or break a chat; such failures are logged and the
event is dropped.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from llava.conversation import Conversation
from llava.images import decode_base64, image_hash

log = logging.getLogger("demo.conv_log")

_STOP = object()


def log_file(log_dir: Path, when: float) -> Path:
    return log_dir / f"{datetime.fromtimestamp(when).strftime('%Y-%m-%d')}-conv.jsonl"


@dataclass(slots=True)
class ConvSnapshot:
    """A conversation as it was when the event happened; cheap to take (images are shared, not copied)."""

    template: str
    system: str
    roles: tuple[str, str]
    messages: list[list[Any]]  # [role, str | (text, PIL image | base64, process mode) | None]
    offset: int

    @classmethod
    def of(cls, conv: Conversation) -> ConvSnapshot:
        # PIL images are never modified in place by the UI, so sharing them with the writer thread is safe.
        return cls(conv.name, conv.system, conv.roles, [[r, m] for r, m in conv.messages], conv.offset)

    def images(self) -> list[Image.Image | str]:
        return [m[1] for _, m in self.messages if isinstance(m, tuple)]


class ConvLogger:
    """Append events to the day's JSONL file from a background thread; `log` never blocks or raises."""

    def __init__(self, log_dir: str | Path | None, max_pending: int = 1000) -> None:
        self.log_dir = Path(log_dir) if log_dir else None
        self.dropped = 0  # events lost to a full queue or a write error
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._saved: set[str] = set()  # image hashes known to be on disk
        self._thread: threading.Thread | None = None
        if self.log_dir is not None:
            self._thread = threading.Thread(target=self._run, name="conv-log", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def log(self, event: dict[str, Any], states: dict[str, ConvSnapshot] | None = None) -> None:
        """Queue `event` (JSON-able) with conversation snapshots to be written as `event[key] = state`."""
        if not self.enabled:
            return
        event.setdefault("tstamp", round(time.time(), 4))
        try:
            self._queue.put_nowait((event, states or {}))
        except queue.Full:
            self.dropped += 1
            log.warning("conversation log queue is full; dropped a %s event", event.get("type"))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to `timeout` seconds), then stop the thread."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (for tests and shutdown); False on timeout."""
        done = threading.Event()
        if not self.enabled:
            return True
        try:
            self._queue.put((None, done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    # ---- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            event, states = item
            if event is None:  # a flush marker
                states.set()
                continue
            try:
                self._write(event, states)
            except Exception:  # noqa: BLE001 - nothing may escape the writer: log it and keep serving
                self.dropped += 1
                log.exception(
                    "could not write a %s event to the conversation log in %s", event.get("type"), self.log_dir
                )

    def _write(self, event: dict[str, Any], states: dict[str, ConvSnapshot]) -> None:
        assert self.log_dir is not None
        hashes: list[str] = []
        for key, snap in states.items():
            event[key] = self._state_json(snap, hashes)
        if hashes:
            event["images"] = list(dict.fromkeys(hashes))
        line = json.dumps(event, ensure_ascii=False, default=str)
        path = log_file(self.log_dir, event["tstamp"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _state_json(self, snap: ConvSnapshot, hashes: list[str]) -> dict[str, Any]:
        messages = []
        for role, message in snap.messages:
            if isinstance(message, tuple):
                text, image, mode = message
                digest = self._save_image(image)
                hashes.append(digest)
                message = {"text": text, "image": digest, "process_mode": mode}
            messages.append([role, message])
        return {"template": snap.template, "system": snap.system, "roles": list(snap.roles),
                "messages": messages, "offset": snap.offset}  # fmt: skip

    def _save_image(self, image: Image.Image | str) -> str:
        if isinstance(image, str):
            image = decode_base64(image)
        digest = image_hash(image)
        if digest not in self._saved:
            assert self.log_dir is not None
            path = self.log_dir / "images" / f"{digest}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                image.save(tmp, format="PNG")
                tmp.replace(path)  # never leave a half-written picture under its final name
            self._saved.add(digest)
        return digest
