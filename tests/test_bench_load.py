"""The load benchmark against a real controller and worker (tiny random checkpoint): its figures hold together."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serve.bench_load import Sample, percentile, summarize
from tests.procs import ENV, ROOT, start_controller, start_worker

pytestmark = pytest.mark.slow


def test_bench_load_reports_every_level(tiny_ckpt, tmp_path):
    procs = []
    try:
        controller, url = start_controller(tmp_path)
        procs.append(controller)
        procs.append(start_worker(tmp_path, url, tiny_ckpt)[0])
        out, png = tmp_path / "load.json", tmp_path / "load.png"
        cmd = [sys.executable, "-m", "serve.bench_load", "--controller-address", url, "--model", "llava-tiny",
               "--concurrency", "1", "3", "--requests", "6", "--max-new-tokens", "8", "--json", str(out),
               "--plot", str(png)]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=240)
        assert run.returncode == 0, run.stderr
        missing = subprocess.run(cmd[:6] + ["nope"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    finally:
        for p in procs:
            p.stop()
    assert "1 worker(s)" in run.stdout and "tokens/s" in run.stdout
    report = json.loads(out.read_text())
    assert [lv["clients"] for lv in report["levels"]] == [1, 3]
    for lv in report["levels"]:
        assert lv["requests"] == 6 and lv["errors"] == {}
        assert 1 <= lv["tokens_per_request"] <= 8  # counted by the worker, capped by --max-new-tokens
        assert lv["tokens_per_s"] > 0 and lv["requests_per_s"] > 0
        assert 0 < lv["ttft_p50_s"] <= lv["ttft_p95_s"] and lv["ttft_p50_s"] <= lv["latency_p50_s"]
        assert lv["latency_p50_s"] <= lv["latency_p95_s"] <= lv["wall_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert missing.returncode == 2 and "no worker serves 'nope' (served: llava-tiny)" in missing.stderr


def test_summary_counts_errors_apart_and_uses_nearest_rank():
    samples = [Sample(1.0, 0.1, 10), Sample(2.0, 0.2, 20), Sample(0.5, None, 0, "42903"), Sample(3.0, 0.3, 30)]
    level = summarize(4, samples, wall_s=3.0)
    assert level.requests == 4 and level.errors == {"42903": 1}
    assert level.requests_per_s == 1.0 and level.tokens_per_s == 20.0 and level.tokens_per_request == 20.0
    assert level.latency_p50_s == 2.0 and level.latency_p95_s == 3.0 and level.ttft_p50_s == 0.2
    assert percentile([], 50) != percentile([], 50)  # NaN
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 95) == 5.0 and percentile([5.0, 1.0], 50) == 1.0
