"""Real processes on free loopback ports for the multi-process tests, cleaned up even on failure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A `python -m MODULE ...` child with its output in a log file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=ENV,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)
        self.popen.wait(timeout=15)

    def stop(self) -> None:
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
        self._log.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str, procs: list[Proc] = ()) -> float:
    """Poll `check` until true; returns the seconds it took. Fails with the children's logs on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if check():
                return time.monotonic() - start
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        for p in procs:
            if not p.alive():
                raise AssertionError(f"{p.args[0]} died while waiting for {what}:\n{p.log()[-3000:]}")
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.args[0]}\n{p.log()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def start_controller(tmp: Path, port: int | None = None, expiration: float = 30.0, **extra: str) -> tuple[Proc, str]:
    port = port or free_port()
    args = ["serve.controller", "--port", str(port), "--heart-beat-expiration", str(expiration)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    proc = Proc(args, tmp / f"controller-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 60, "controller health", [proc])
    return proc, url


def start_worker(
    tmp: Path, controller: str, model_path: Path, *extra: str, port: int | None = None, wait_registered: bool = True
) -> tuple[Proc, str]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["serve.model_worker", "--port", str(port), "--worker-address", url, "--controller-address", controller,
            "--model-path", str(model_path), *extra]  # fmt: skip
    proc = Proc(args, tmp / f"worker-{port}.log")
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 120, f"worker {url} health", [proc])
    if wait_registered and "--no-register" not in extra:
        wait_for(lambda: url in registered_workers(controller), 30, f"{url} registered", [proc])
    return proc, url


def registered_workers(controller: str) -> list[str]:
    return [w["worker_name"] for w in httpx.post(f"{controller}/list_workers").json()["workers"]]


def start_openai_api(tmp: Path, controller: str, *extra: str) -> tuple[Proc, str]:
    """serve.openai_api in front of `controller`; returns the process and its base URL (ending in /v1)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(["serve.openai_api", "--port", str(port), "--controller-address", controller, *extra],
                tmp / f"openai-{port}.log")  # fmt: skip
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 60, "OpenAI API health", [proc])
    return proc, f"{url}/v1"
