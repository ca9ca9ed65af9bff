"""A worker's link to the controller: register once the server is up, then heartbeat with the queue length.

Registers again whenever the controller answers that it does not know the worker (e.g. after a restart).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import httpx

from serve.protocol import HeartBeatResponse, RegisterWorkerRequest, RegisterWorkerResponse, WorkerStatus

log = logging.getLogger("serve.heartbeat")


class Heartbeat:
    def __init__(
        self,
        controller_address: str,
        worker_address: str,
        interval: float,
        status: Callable[[], WorkerStatus],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.controller = controller_address.rstrip("/")
        self.worker = worker_address
        self.interval = interval
        self.status = status
        self.ready = ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self.http = httpx.Client(timeout=5.0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.http.close()

    def register(self) -> bool:
        payload = RegisterWorkerRequest(worker_name=self.worker, check_heart_beat=True, worker_status=self.status())
        try:
            r = self.http.post(f"{self.controller}/register_worker", json=payload.model_dump())
            r.raise_for_status()
            ok = RegisterWorkerResponse.model_validate(r.json()).registered
        except (httpx.HTTPError, ValueError) as e:
            log.warning("cannot register with controller %s: %s; retrying in %.0f s", self.controller, e, self.interval)
            return False
        log.info("registered with controller %s as %s", self.controller, self.worker)
        return ok

    def beat(self) -> bool:
        """One heartbeat; False when the controller does not know us (or cannot be reached)."""
        payload = {"worker_name": self.worker, "queue_length": self.status().queue_length}
        try:
            r = self.http.post(f"{self.controller}/receive_heart_beat", json=payload)
            r.raise_for_status()
            exist = HeartBeatResponse.model_validate(r.json()).exist
        except (httpx.HTTPError, ValueError) as e:
            log.warning("heartbeat to %s failed: %s", self.controller, e)
            return False
        log.debug("heartbeat queue_length=%d exist=%s", payload["queue_length"], exist)
        return exist

    def _loop(self) -> None:
        while not self.ready():
            if self._stop.wait(0.05):
                return
        registered = self.register()
        while not self._stop.wait(self.interval):
            registered = self.beat() if registered else False
            if not registered:
                registered = self.register()
