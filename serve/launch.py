"""Start the whole demo with one command: controller, one worker per checkpoint, the web UI and the OpenAI API.

Each piece is its own process; this waits until every one is healthy, prints the URLs, and stops them
all on Ctrl-C or SIGTERM (or when one of them dies).
`python -m serve.launch [--model-path DIR ...] [--controller-port 21001] [--ui-port 7860] [--openai-port 8000]`
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llava.model import DTYPES

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("checkpoints/llava-shapes-chat", "checkpoints/llava-shapes-sqa")
TINY_DIR = ROOT / ".cache" / "tiny"


@dataclass(slots=True)
class LaunchSettings:
    model_paths: list[str] = field(default_factory=list)  # empty: the shipped checkpoints, else tiny ones
    host: str = "127.0.0.1"
    controller_port: int = 21001
    worker_port: int = 21002  # first worker; the next ones count up
    ui_port: int = 7860
    ui: bool = True
    openai_port: int = 8000
    openai_api: bool = True  # serve.openai_api: /v1/chat/completions for OpenAI clients
    device: str = "auto"
    dtype: str = "auto"
    heart_beat_interval: float = 15.0
    startup_timeout: float = 300.0


def default_model_paths() -> list[str]:
    """The shipped checkpoints when present; else two tiny random ones, built once under .cache/."""
    shipped = [str(ROOT / p) for p in SHIPPED if (ROOT / p / "config.json").is_file()]
    if shipped:
        return shipped
    from llava.model.tiny import build_tiny_checkpoint

    paths = []
    for seed, name in enumerate(("llava-tiny-chat", "llava-tiny-sqa")):
        out = TINY_DIR / name
        if not (out / "config.json").is_file():
            print(f"launch: no checkpoints under {ROOT / 'checkpoints'}; building a tiny random one at {out}")
            build_tiny_checkpoint(out, seed=seed)
        paths.append(str(out))
    return paths


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class Launcher:
    def __init__(self, settings: LaunchSettings) -> None:
        self.s = settings
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.http = httpx.Client(timeout=2.0)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
        # Own session: a Ctrl-C in the terminal reaches only us; we stop the children in order.
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def wait_until(self, what: str, check, deadline: float) -> None:
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} while waiting for {what}")
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {self.s.startup_timeout:.0f} s waiting for {what}")

    def start(self) -> dict[str, str]:
        s = self.s
        paths = s.model_paths or default_model_paths()
        # what -> (port, how to change it)
        ports = {"controller": (s.controller_port, "--controller-port")}
        ports |= {f"worker {i}": (s.worker_port + i, "--worker-port") for i in range(len(paths))}
        if s.ui:
            ports["web UI"] = (s.ui_port, "--ui-port, or leave it out with --no-ui")
        if s.openai_api:
            ports["OpenAI API"] = (s.openai_port, "--openai-port, or leave it out with --no-openai-api")
        for what, (port, flag) in ports.items():
            if not port_free(s.host, port):
                raise RuntimeError(
                    f"port {port} for the {what} is in use (is another demo running?); pick another with {flag}"
                )
        deadline = time.monotonic() + s.startup_timeout
        controller = f"http://{s.host}:{s.controller_port}"
        self.spawn("controller", ["serve.controller", "--host", s.host, "--port", str(s.controller_port)])
        self.wait_until("the controller", lambda: self.http.get(f"{controller}/health").status_code == 200, deadline)
        names = []
        for i, path in enumerate(paths):
            port = s.worker_port + i
            self.spawn(f"worker {Path(path).name}", [
                "serve.model_worker", "--host", s.host, "--port", str(port), "--controller-address", controller,
                "--worker-address", f"http://{s.host}:{port}", "--model-path", path, "--device", s.device, "--dtype", s.dtype,
                "--heart-beat-interval", str(s.heart_beat_interval),
            ])  # fmt: skip
            names.append(Path(path).name)

        def all_registered() -> bool:
            models = self.http.post(f"{controller}/list_models").json()["models"]
            return all(n in models for n in names)

        self.wait_until(f"workers {names} to register", all_registered, deadline)
        urls = {"controller": controller}
        if s.ui:
            if importlib.util.find_spec("demo.gradio_web_server") is None:
                print("launch: the web UI (demo.gradio_web_server) is not installed here; serving without it")
            else:
                ui = f"http://{s.host}:{s.ui_port}"
                self.spawn(
                    "web UI",
                    [
                        "demo.gradio_web_server",
                        "--controller-url",
                        controller,
                        "--host",
                        s.host,
                        "--port",
                        str(s.ui_port),
                    ],
                )
                self.wait_until("the web UI", lambda: self.http.get(ui).status_code == 200, deadline)
                urls["web UI"] = ui
        if s.openai_api:
            api = f"http://{s.host}:{s.openai_port}"
            self.spawn("OpenAI API", [
                "serve.openai_api", "--controller-address", controller, "--host", s.host, "--port", str(s.openai_port),
            ])  # fmt: skip
            self.wait_until("the OpenAI API", lambda: self.http.get(f"{api}/health").status_code == 200, deadline)
            urls["OpenAI API"] = f"{api}/v1"
        for i, name in enumerate(names):
            urls[name] = f"http://{s.host}:{s.worker_port + i}"
        return urls

    def stop(self) -> None:
        """SIGTERM every child (UI first, controller last), then SIGKILL what is left after 10 s."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def watch(self) -> int:
        """Block until a child dies (returns 1) or we are told to stop (returns 0)."""
        while True:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    print(f"launch: {name} exited with code {proc.returncode}; stopping everything", file=sys.stderr)
                    return 1
            time.sleep(0.5)


def parse_args(argv: list[str] | None = None) -> LaunchSettings:
    p = argparse.ArgumentParser(prog="python -m serve.launch", description=__doc__.splitlines()[0])
    p.add_argument("--model-path", action="append", default=[], help="checkpoint folder; repeat for more workers")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--controller-port", type=int, default=21001)
    p.add_argument("--worker-port", type=int, default=21002, help="port of the first worker; the rest count up")
    p.add_argument("--ui-port", type=int, default=7860)
    p.add_argument("--no-ui", action="store_true", help="do not start the web UI")
    p.add_argument("--openai-port", type=int, default=8000, help="port of the OpenAI-compatible API")
    p.add_argument("--no-openai-api", action="store_true", help="do not start the OpenAI-compatible API")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype", default="auto", choices=DTYPES, help="the workers' weights (auto: float32 on CPU, else bf16)"
    )
    p.add_argument("--heart-beat-interval", type=float, default=15.0)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    a = p.parse_args(argv)
    return LaunchSettings(
        a.model_path,
        a.host,
        a.controller_port,
        a.worker_port,
        a.ui_port,
        not a.no_ui,
        a.openai_port,
        not a.no_openai_api,
        a.device,
        a.dtype,
        a.heart_beat_interval,
        a.startup_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    launcher = Launcher(settings)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    start = time.perf_counter()
    code = 0
    try:
        urls = launcher.start()
        print(f"launch: everything is up in {time.perf_counter() - start:.1f} s", flush=True)
        for what, url in urls.items():
            print(f"  {what:<20} {url}", flush=True)
        print("launch: Ctrl-C stops all of them", flush=True)
        code = launcher.watch()
    except KeyboardInterrupt:
        print("launch: stopping", flush=True)
    except RuntimeError as e:
        print(f"launch: {e}", file=sys.stderr)
        code = 1
    finally:
        launcher.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
