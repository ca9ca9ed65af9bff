"""The controller: a registry of model workers that tells clients which worker serves a model.

It is not in the data path: clients ask it for an address, then stream from the worker directly.
`python -m serve.controller --host 127.0.0.1 --port 21001 --dispatch-method shortest_queue`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI, Request

from serve.protocol import (
    ControllerHealth,
    GetWorkerAddressRequest,
    GetWorkerAddressResponse,
    HeartBeatRequest,
    HeartBeatResponse,
    ListModelsResponse,
    ListWorkersResponse,
    RegisterWorkerRequest,
    RegisterWorkerResponse,
    WorkerEntry,
    WorkerStatus,
)

log = logging.getLogger("serve.controller")

DispatchMethod = Literal["shortest_queue", "lottery"]


@dataclass(slots=True)
class ControllerSettings:
    host: str = "127.0.0.1"
    port: int = 21001
    dispatch_method: DispatchMethod = "shortest_queue"
    heart_beat_expiration: float = 30.0  # seconds without a heartbeat before a worker is dropped
    status_timeout: float = 5.0  # seconds to wait for a worker's /worker_get_status

    def __post_init__(self) -> None:
        if self.dispatch_method not in ("shortest_queue", "lottery"):
            raise ValueError(f"unknown dispatch method {self.dispatch_method!r}; use shortest_queue or lottery")
        if self.heart_beat_expiration <= 0:
            raise ValueError("heart_beat_expiration must be positive")


@dataclass(slots=True)
class WorkerInfo:
    model_names: list[str]
    speed: int
    queue_length: int
    check_heart_beat: bool
    last_heart_beat: float = field(default_factory=time.monotonic)


class Controller:
    """Worker registry and dispatch. All methods run on the event loop, so no lock is needed."""

    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.workers: dict[str, WorkerInfo] = {}
        self.http = httpx.AsyncClient(timeout=settings.status_timeout)

    async def fetch_status(self, worker_name: str) -> WorkerStatus | None:
        try:
            r = await self.http.post(f"{worker_name}/worker_get_status")
            r.raise_for_status()
            return WorkerStatus.model_validate(r.json())
        except (httpx.HTTPError, ValueError) as e:
            log.warning("worker %s did not answer /worker_get_status: %s", worker_name, e)
            return None

    async def register(self, req: RegisterWorkerRequest) -> bool:
        status = req.worker_status or await self.fetch_status(req.worker_name)
        if status is None:
            return False
        known = req.worker_name in self.workers
        self.workers[req.worker_name] = WorkerInfo(
            status.model_names, status.speed, status.queue_length, req.check_heart_beat
        )
        log.info(
            "%s worker %s serving %s", "re-registered" if known else "registered", req.worker_name, status.model_names
        )
        return True

    def heart_beat(self, req: HeartBeatRequest) -> bool:
        info = self.workers.get(req.worker_name)
        if info is None:
            log.info("heartbeat from unknown worker %s; asking it to register", req.worker_name)
            return False
        info.queue_length = req.queue_length
        info.last_heart_beat = time.monotonic()
        log.debug("heartbeat %s queue_length=%d", req.worker_name, req.queue_length)
        return True

    def is_alive(self, info: WorkerInfo, now: float) -> bool:
        return not info.check_heart_beat or now - info.last_heart_beat <= self.settings.heart_beat_expiration

    def remove_stale(self) -> None:
        now = time.monotonic()
        for name in [n for n, info in self.workers.items() if not self.is_alive(info, now)]:
            log.info("dropping worker %s: no heartbeat for %.0f s", name, now - self.workers[name].last_heart_beat)
            del self.workers[name]

    async def refresh_all(self) -> None:
        """Ask every worker for its status again; drop those that do not answer."""
        for name in list(self.workers):
            status = await self.fetch_status(name)
            if status is None:
                log.info("dropping unreachable worker %s", name)
                self.workers.pop(name, None)
            elif name in self.workers:
                info = self.workers[name]
                info.model_names, info.speed, info.queue_length = status.model_names, status.speed, status.queue_length

    def live_workers(self) -> dict[str, WorkerInfo]:
        now = time.monotonic()
        return {n: info for n, info in self.workers.items() if self.is_alive(info, now)}

    def models(self) -> list[str]:
        return sorted({m for info in self.live_workers().values() for m in info.model_names})

    def dispatch(self, model: str) -> str:
        candidates = [(n, info) for n, info in self.live_workers().items() if model in info.model_names]
        if not candidates:
            return ""
        if self.settings.dispatch_method == "lottery":
            names, infos = zip(*candidates, strict=True)
            return random.choices(names, weights=[max(i.speed, 1) for i in infos])[0]
        name, info = min(candidates, key=lambda c: c[1].queue_length / max(c[1].speed, 1))
        info.queue_length += 1  # count the request now; the next heartbeat brings the true value
        return name

    def status(self) -> WorkerStatus:
        live = self.live_workers().values()
        return WorkerStatus(
            model_names=self.models(),
            speed=sum(i.speed for i in live),
            queue_length=sum(i.queue_length for i in live),
        )


def create_app(settings: ControllerSettings) -> FastAPI:
    controller = Controller(settings)

    async def sweep() -> None:
        period = min(settings.heart_beat_expiration / 3, 5.0)
        while True:
            await asyncio.sleep(period)
            controller.remove_stale()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(sweep())
        yield
        task.cancel()
        await controller.http.aclose()

    app = FastAPI(title="LLaVA controller", lifespan=lifespan)
    app.state.controller = controller

    @app.post("/register_worker")
    async def register_worker(req: RegisterWorkerRequest) -> RegisterWorkerResponse:
        return RegisterWorkerResponse(registered=await controller.register(req))

    @app.post("/receive_heart_beat")
    async def receive_heart_beat(req: HeartBeatRequest) -> HeartBeatResponse:
        return HeartBeatResponse(exist=controller.heart_beat(req))

    @app.post("/refresh_all_workers")
    async def refresh_all_workers() -> ListModelsResponse:
        await controller.refresh_all()
        return ListModelsResponse(models=controller.models())

    @app.post("/list_models")
    async def list_models() -> ListModelsResponse:
        return ListModelsResponse(models=controller.models())

    @app.post("/list_workers")
    async def list_workers() -> ListWorkersResponse:
        now = time.monotonic()
        entries = [
            WorkerEntry(worker_name=name, model_names=info.model_names, speed=info.speed,
                        queue_length=info.queue_length, seconds_since_heart_beat=round(now - info.last_heart_beat, 3))
            for name, info in sorted(controller.live_workers().items())
        ]  # fmt: skip
        return ListWorkersResponse(workers=entries)

    @app.post("/get_worker_address")
    async def get_worker_address(req: GetWorkerAddressRequest) -> GetWorkerAddressResponse:
        address = controller.dispatch(req.model)
        log.info("model %s -> %s", req.model, address or "(no worker)")
        return GetWorkerAddressResponse(address=address)

    @app.post("/worker_get_status")
    async def worker_get_status() -> WorkerStatus:
        return controller.status()

    @app.get("/health")
    @app.post("/health")
    async def health(request: Request) -> ControllerHealth:
        return ControllerHealth(workers=len(controller.live_workers()), models=controller.models())

    return app


def parse_args(argv: list[str] | None = None) -> ControllerSettings:
    p = argparse.ArgumentParser(prog="python -m serve.controller", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=21001)
    p.add_argument("--dispatch-method", choices=["shortest_queue", "lottery"], default="shortest_queue")
    p.add_argument("--heart-beat-expiration", type=float, default=30.0, help="seconds")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return ControllerSettings(args.host, args.port, args.dispatch_method, args.heart_beat_expiration)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
