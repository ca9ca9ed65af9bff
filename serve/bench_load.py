"""Load benchmark: many chats at once through the controller and the workers, sent the way the web UI sends them.

    python -m serve.launch --no-ui &        # or any running controller with workers
    python -m serve.bench_load --model llava-shapes-chat --concurrency 1 2 4 8 --requests 16 \\
        [--max-new-tokens 64] [--json F.json] [--plot F.png]

At each concurrency level, that many clients send requests back to back until `--requests` have been answered;
each request asks the controller for a worker and streams the answer from it. The prompts are the example
gallery's questions on their pictures, greedy. Printed per level: requests/s and generated tokens/s over all
clients, time to first token and whole-answer latency (median and 95th percentile), errors by kind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from llava.conversation import conv_templates, template_for_model
from serve.protocol import ErrorCode, ListModelsResponse, ModelDetails, iter_chunks, iter_chunks_async

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "examples.json"


@dataclass(frozen=True, slots=True)
class Job:
    prompt: str
    image: str  # base64


@dataclass(slots=True)
class Sample:
    """One request as a client saw it."""

    total_s: float
    first_token_s: float | None = None  # None when no text came
    tokens: int = 0  # generated, as the worker counted them
    error: str | None = None  # None, a wire error code, "timeout" or "connection"


@dataclass(slots=True)
class Level:
    clients: int
    requests: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    tokens_per_request: float
    ttft_p50_s: float
    ttft_p95_s: float
    latency_p50_s: float
    latency_p95_s: float
    errors: dict[str, int] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(clients: int, samples: list[Sample], wall_s: float) -> Level:
    ok = [s for s in samples if s.error is None]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            errors[s.error] = errors.get(s.error, 0) + 1
    tokens = sum(s.tokens for s in ok)
    ttft = [s.first_token_s for s in ok if s.first_token_s is not None]
    latency = [s.total_s for s in ok]
    return Level(
        clients=clients,
        requests=len(samples),
        wall_s=wall_s,
        requests_per_s=len(ok) / wall_s,
        tokens_per_s=tokens / wall_s,
        tokens_per_request=tokens / len(ok) if ok else math.nan,
        ttft_p50_s=percentile(ttft, 50),
        ttft_p95_s=percentile(ttft, 95),
        latency_p50_s=percentile(latency, 50),
        latency_p95_s=percentile(latency, 95),
        errors=errors,
    )


def gallery_jobs(template: str, kind: str | None = None) -> list[Job]:
    """The example gallery's prompts on their pictures, under `template`."""
    examples = json.loads(EXAMPLES.read_text())["examples"]
    jobs = []
    for ex in examples:
        if kind and ex["kind"] != kind:
            continue
        conv = conv_templates[template].copy()
        conv.append_message(conv.roles[0], f"<image>\n{ex['prompt']}")
        conv.append_message(conv.roles[1], None)
        image = base64.b64encode((EXAMPLES.parent / ex["image"]).read_bytes()).decode()
        jobs.append(Job(conv.get_prompt(), image))
    return jobs


class Bench:
    def __init__(self, controller: str, model: str, max_new_tokens: int, timeout: float) -> None:
        self.controller = controller.rstrip("/")
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=5.0), limits=httpx.Limits(max_connections=None)
        )

    async def address(self) -> str:
        r = await self.http.post(f"{self.controller}/get_worker_address", json={"model": self.model})
        return r.json()["address"].rstrip("/")

    async def request(self, job: Job) -> Sample:
        start = time.perf_counter()
        sample = Sample(0.0)
        payload = {"model": self.model, "prompt": job.prompt, "images": [job.image], "temperature": 0,
                   "max_new_tokens": self.max_new_tokens}  # fmt: skip
        try:
            address = await self.address()
            if not address:
                sample.error = str(int(ErrorCode.NO_WORKER))
            else:
                async with self.http.stream("POST", f"{address}/worker_generate_stream", json=payload) as r:
                    if r.status_code != 200:
                        chunk = next(iter_chunks(iter([await r.aread()])), {})
                        sample.error = str(chunk.get("error_code") or f"HTTP {r.status_code}")
                    else:
                        async for chunk in iter_chunks_async(r.aiter_bytes()):
                            if chunk.get("error_code"):
                                sample.error = str(chunk["error_code"])
                                break
                            if sample.first_token_s is None and len(chunk["text"]) > len(job.prompt):
                                sample.first_token_s = time.perf_counter() - start
                            sample.tokens = chunk.get("usage", {}).get("completion_tokens", sample.tokens)
        except httpx.TimeoutException:
            sample.error = "timeout"
        except (httpx.TransportError, ValueError):
            sample.error = "connection"
        sample.total_s = time.perf_counter() - start
        return sample

    async def level(self, clients: int, requests: int, jobs: list[Job]) -> Level:
        """`clients` clients sending back to back until `requests` are answered; job i is jobs[i % len]."""
        queue = iter(range(requests))
        samples: list[Sample] = []

        async def client() -> None:
            for i in queue:  # shared: each index is taken by one client
                samples.append(await self.request(jobs[i % len(jobs)]))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return summarize(clients, samples, time.perf_counter() - start)

    async def details(self) -> tuple[ModelDetails, int]:
        """The model's details from one of its workers, and how many workers the controller knows."""
        models = ListModelsResponse.model_validate((await self.http.post(f"{self.controller}/list_models")).json())
        if self.model not in models.models:
            served = ", ".join(models.models) or "none"
            raise LookupError(f"no worker serves {self.model!r} (served: {served})")
        workers = (await self.http.post(f"{self.controller}/list_workers")).json()["workers"]
        count = sum(self.model in w["model_names"] for w in workers)
        r = await self.http.post(f"{await self.address()}/model_details")
        return ModelDetails.model_validate(r.json()), count


def table(levels: list[Level]) -> str:
    head = (f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'tokens/s':>9} {'tok/req':>7} "
            f"{'ttft p50':>9} {'ttft p95':>9} {'lat p50':>8} {'lat p95':>8}")  # fmt: skip
    rows = [head]
    for lv in levels:
        rows.append(
            f"{lv.clients:>7} {lv.requests:>8} {sum(lv.errors.values()):>6} {lv.requests_per_s:>7.2f} "
            f"{lv.tokens_per_s:>9.1f} {lv.tokens_per_request:>7.1f} {lv.ttft_p50_s:>8.3f}s {lv.ttft_p95_s:>8.3f}s "
            f"{lv.latency_p50_s:>7.2f}s {lv.latency_p95_s:>7.2f}s"
        )
    return "\n".join(rows)


def plot(levels: list[Level], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [lv.clients for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [lv.tokens_per_s for lv in levels], marker="o")
    left.set(xlabel="concurrent clients", ylabel="generated tokens/s (all clients)", title="throughput")
    for name, key in (("latency p50", "latency_p50_s"), ("latency p95", "latency_p95_s"),
                      ("first token p50", "ttft_p50_s"), ("first token p95", "ttft_p95_s")):  # fmt: skip
        right.plot(clients, [getattr(lv, key) for lv in levels], marker="o", label=name)
    right.set(xlabel="concurrent clients", ylabel="seconds", title="per request")
    right.legend()
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run(args: argparse.Namespace) -> int:
    bench = Bench(args.controller_address, args.model, args.max_new_tokens, args.timeout)
    try:
        try:
            details, workers = await bench.details()
        except httpx.HTTPError as e:
            print(f"error: cannot reach the controller at {bench.controller} ({type(e).__name__}); is it running?",
                  file=sys.stderr)  # fmt: skip
            return 2
        except LookupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        template = details.conv_template if details.conv_template in conv_templates else template_for_model(args.model)
        jobs = gallery_jobs(template, args.kind)
        if not jobs:
            print(f"error: the example gallery has no {args.kind!r} prompts", file=sys.stderr)
            return 2
        title = (f"{args.model}: {workers} worker(s) behind {bench.controller}; {len(jobs)} gallery prompts, "
                 f"greedy, at most {args.max_new_tokens} new tokens")  # fmt: skip
        print(title, flush=True)
        for job in jobs[: args.warmup]:  # first requests pay for allocations and kernel choice
            await bench.request(job)
        levels = []
        for clients in args.concurrency:
            levels.append(await bench.level(clients, args.requests, jobs))
            print(table(levels).splitlines()[-1] if len(levels) > 1 else table(levels), flush=True)
    finally:
        await bench.http.aclose()
    errors = {k: v for lv in levels for k, v in lv.errors.items()}
    if errors:
        print(f"errors by kind (wire codes as in serve/protocol.py): {errors}")
    if args.json:
        args.json.write_text(json.dumps({"title": title, "model": args.model, "workers": workers,
                                         "max_new_tokens": args.max_new_tokens,
                                         "levels": [asdict(lv) for lv in levels]}, indent=2) + "\n")  # fmt: skip
    if args.plot:
        plot(levels, args.plot, title)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve.bench_load", description=__doc__.splitlines()[0])
    p.add_argument("--controller-address", default="http://127.0.0.1:21001")
    p.add_argument("--model", default="llava-shapes-chat")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8], help="clients at once, per level")
    p.add_argument("--requests", type=int, default=16, help="requests per level")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--kind", choices=["chat", "sqa"], help="only the gallery's prompts of this kind")
    p.add_argument("--warmup", type=int, default=1, help="requests sent before measuring")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a worker")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--plot", type=Path, help="write throughput and latency against clients here (PNG)")
    args = p.parse_args(argv)
    if min(args.concurrency) < 1 or args.requests < 1 or args.max_new_tokens < 1:
        p.error("--concurrency, --requests and --max-new-tokens must be at least 1")
    for out in (args.json, args.plot):
        if out is not None and not out.parent.is_dir():
            p.error(f"{out}: the folder {out.parent} does not exist")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
