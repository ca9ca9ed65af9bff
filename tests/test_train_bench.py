"""The grounding benchmark runs at the full sizes and prints both variants."""

from __future__ import annotations

import pytest

from llava.train.bench import main


def test_bench_prints_seconds_per_step_for_both_variants(capsys):
    assert main(["--pictures", "40", "--steps", "1", "--no-compile"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].strip().startswith("no grounding:") and "(+0.0%)" in lines[0]
    assert lines[1].strip().startswith("grounding:") and float(lines[1].split()[1]) > 0
    gflops = [float(line.split("GFLOP/step")[0].split()[-1]) for line in lines[:2]]
    assert 0 < gflops[0] < gflops[1]  # the grounding loss adds matmuls
    assert lines[2].startswith("grounding adds") and lines[2].endswith(" chat steps")
    assert lines[3].startswith("a 1024x1024 ") and float(lines[3].split()[4]) > 0
    assert lines[4].startswith("rows of ")
    assert lines[5].startswith("plain layers, attention in float32; the 2 warm-up steps before the timed ones: ")


@pytest.mark.slow
def test_bench_times_compiled_layers_after_their_warm_up(capsys):
    # the full run compiles its layers: by default so does the bench, and the compilation is not a step's time
    assert main(["--pictures", "12", "--steps", "2", "--warmup", "1", "--batch", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    warm = {part.rsplit(" ", 2)[0]: float(part.split()[-2]) for part in lines[5].split(": ", 1)[1].split(", ")}
    assert lines[5].startswith("compiled layers, attention in float32; the 1 warm-up steps")
    assert set(warm) == {"no grounding", "grounding"}
    step = float(lines[0].split()[2])
    assert warm["no grounding"] > step  # compiling the first step's graphs took longer than a step


def test_bench_counts_trained_tokens_of_packed_rows(capsys):
    per_gflop = {}
    for per_picture, pack, batch in (("1", "--no-pack", "6"), ("3", "--pack", "2")):
        args = ["--pictures", "12", "--steps", "1", "--per-picture", per_picture, pack, "--batch", batch]
        assert main([*args, "--no-compile"]) == 0
        lines = capsys.readouterr().out.splitlines()
        gflop = float(lines[0].split("GFLOP/step")[0].split()[-1])
        trained = float(lines[0].split("trained tokens/step")[0].split()[-1])
        per_gflop[pack] = trained / gflop
        packed = ", packed" if pack == "--pack" else ""
        assert lines[4] == f"rows of {per_picture} record(s) a picture{packed}, {batch} a step"
    # a packed row of three records trains far more tokens per FLOP than three rows of one
    assert per_gflop["--pack"] > 1.5 * per_gflop["--no-pack"], per_gflop


def test_bench_refuses_an_empty_run(capsys):
    with pytest.raises(SystemExit):
        main(["--pictures", "0"])
    assert "at least 1" in capsys.readouterr().err
