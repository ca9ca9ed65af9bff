"""`python -m llava.bench` on a tiny random checkpoint: it runs and prints every figure it promises."""

import re

from llava.bench import main


def test_bench_prints_latency_and_speed(tiny_ckpt, capsys):
    assert main(["--model", str(tiny_ckpt), "--device", "cpu", "--runs", "2", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "on cpu (torch.float32)" in out
    for label in ("time to first token", "decoding", "model forward alone", "around it"):
        assert re.search(rf"{label}\s+-?\d+\.\d+ ms", out), (label, out)
    for i in (1, 2):
        assert re.search(
            rf"a new thread, answer {i}: +\d+\.\d+ ms/token; steps: median +(?:[\d.]+|nan) ms, slowest", out
        ), out


def test_bench_refuses_a_missing_model_clearly(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
