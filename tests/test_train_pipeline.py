"""`python -m llava.train.pipeline --smoke`: every stage end to end, outputs loadable by plain transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava.train.config import PipelineConfig
from llava.train.loop import OptimConfig, fast_bf16, train
from llava.train.pipeline import code_version, host_speed, train_all

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, float, str]:
    out = tmp_path_factory.mktemp("pipeline")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "llava.train.pipeline", "--smoke", "--out", str(out), "--quiet", "--keep-stage1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, time.perf_counter() - start, proc.stdout


@pytest.mark.slow
def test_smoke_runs_every_stage_quickly(smoke):
    out, seconds, stdout = smoke
    # side by side, each fine-tune is scored as soon as it is saved: the chat model while the ScienceQA one trains
    stages = ("corpus+tokenizer", "clip", "lm", "stage1", "stage2-chat", "eval-chat", "stage2-sqa", "eval-sqa", "total")
    for stage in stages:
        assert f"{stage}:" in stdout
    assert "eval:" not in stdout  # nothing was left to score after training
    print(f"smoke pipeline: {seconds:.1f} s")
    assert seconds < 120


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llava-shapes-chat", "llava-shapes-sqa"])
def test_smoke_checkpoints_load_with_plain_transformers(smoke, name):
    out, _, _ = smoke
    folder = out / name
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["conv_template"] == "llava_v0"
    assert config["vision_feature_layer"] == -2
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    for file in ("README.md", "training_curves.png", "training_report.json"):
        assert (folder / file).stat().st_size > 0
    card = (folder / "README.md").read_text()
    assert "SMOKE RUN" in card and "| stage |" in card and "Evaluation" in card
    report = json.loads((folder / "training_report.json").read_text())
    timed = {"clip", "lm", "stage1", "stage2-chat", "stage2-sqa", "eval-chat", "eval-sqa", "total"}
    assert set(report["timings_s"]) >= timed
    assert {"primary", "alt"} == set(report["evals"][name])
    kind = name.removeprefix("llava-shapes-")
    assert report["data"][f"{kind}_grounded_positions"] > 0  # both stage-2 runs train with the grounding loss
    assert "grounding loss" in card and ("layer-2 head" in card) == (kind == "sqa")
    if kind == "chat":  # the chat fine-tune packs each picture's records into one row, as the full run does
        assert report["data"]["chat_rows"] == report["config"]["chat_pictures"] < report["data"]["chat_records"]
        assert f"packed into one row ({report['data']['chat_rows']:,} rows)" in card
    else:  # the smoke run also packs the ScienceQA problems asked about one picture
        records = report["data"]["sqa_problems"] + report["data"]["sqa_lookups"]
        assert report["data"]["sqa_rows"] < records and "up to 2 about each picture" in card
        assert f"packed into one row ({report['data']['sqa_rows']:,} rows)" in card
    # the card names the code it was made with: the same command on other code draws other data
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert report["config"]["code"] == code_version() and report["config"]["code"].startswith(commit or "unknown")
    assert f"code at {code_version()})" in card
    # and the host's speed at both ends of the run: the minutes compare only at like speeds
    host = report["config"]["host_matmul"]
    assert host["dtype"] == ("bfloat16" if fast_bf16() else "float32")
    assert host["gflops_start"] > 0 and host["gflops_end"] > 0
    assert f"matmul on one thread: {host['gflops_start']:g} GFLOP/s at the start of the run" in card


def test_host_speed_leaves_the_threads_and_the_random_state_alone():
    # taken before the first stage: torch's generator must stay where the seed put it, or the weights change
    torch.manual_seed(3)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    assert host_speed(probes=1) > 0
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


@pytest.mark.slow
def test_export_stores_bfloat16_and_scores_what_it_stores(smoke, tmp_path):
    src, _, _ = smoke
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "llava.train.export", "--src", str(src), "--out", str(tmp_path), "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MB in bfloat16" in proc.stdout and "| pictures |" in proc.stdout
    for name in ("llava-shapes-chat", "llava-shapes-sqa"):
        weights = load_file(tmp_path / name / "model.safetensors")
        before = load_file(src / name / "model.safetensors")
        assert set(weights) == set(before) and all(w.dtype == torch.bfloat16 for w in weights.values())
        assert all(torch.equal(weights[k], before[k].bfloat16()) for k in weights)
        card = (tmp_path / name / "README.md").read_text()
        assert "bfloat16 safetensors, exported" in card and "SMOKE RUN" in card
        report = json.loads((tmp_path / name / "training_report.json").read_text())
        trained = json.loads((src / name / "training_report.json").read_text())
        assert report["config"]["stored_dtype"] == "bfloat16" and report["timings_s"] == trained["timings_s"]
        assert {"primary", "alt"} == set(report["evals"][name]) and report["histories"] == trained["histories"]
        model = LlavaForConditionalGeneration.from_pretrained(tmp_path / name, dtype=torch.float32)
        assert model.config.conv_template == "llava_v0"
    bad = subprocess.run(
        [sys.executable, "-m", "llava.train.export", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "is not a pipeline report" in bad.stderr
    # --only chat stores and scores the chat checkpoint alone; the ScienceQA one already there stays as it was
    sqa_before = (tmp_path / "llava-shapes-sqa" / "model.safetensors").read_bytes()
    (tmp_path / "llava-shapes-chat" / "model.safetensors").unlink()
    one = subprocess.run(
        [sys.executable, "-m", "llava.train.export", "--src", str(src), "--out", str(tmp_path), "--quiet", "--only", "chat"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    assert "llava-shapes-chat:" in one.stdout and "llava-shapes-sqa:" not in one.stdout
    assert (tmp_path / "llava-shapes-chat" / "model.safetensors").exists()
    assert (tmp_path / "llava-shapes-sqa" / "model.safetensors").read_bytes() == sqa_before


@pytest.mark.slow
def test_stages_share_and_separate_the_right_weights(smoke):
    out, _, _ = smoke
    chat = load_file(out / "llava-shapes-chat" / "model.safetensors")
    sqa = load_file(out / "llava-shapes-sqa" / "model.safetensors")
    vision = [k for k in chat if "vision_tower" in k]
    lm = [k for k in chat if "language_model" in k]
    assert vision and lm
    assert all(torch.equal(chat[k], sqa[k]) for k in vision), "the vision tower is frozen after CLIP"
    assert not all(torch.equal(chat[k], sqa[k]) for k in lm), "the two stage-2 runs tune the LM apart"
    stage1 = load_file(out / "stage1" / "model.safetensors")  # --keep-stage1
    assert set(stage1) == set(chat) and all(torch.equal(chat[k], stage1[k]) for k in vision)
    assert not all(torch.equal(chat[k], stage1[k]) for k in lm), "stage 1 leaves the LM as pre-trained"


@pytest.mark.slow
def test_a_run_resumed_from_stage1_trains_what_the_full_run_trained(smoke, tmp_path):
    # --from-stage1 skips the pre-training: each stage draws its own data stream, so the same seed gives the
    # same fine-tune, weight for weight, and the report still covers the stages the resumed run took
    src, _, _ = smoke
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "llava.train.pipeline", "--smoke", "--quiet", "--only", "chat"]
    proc = subprocess.run(
        [*args, "--out", str(tmp_path), "--from-stage1", str(src / "stage1")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "clip ..." not in proc.stdout and "stage2-chat done" in proc.stdout and "stage2-sqa" not in proc.stdout
    assert not (tmp_path / "llava-shapes-sqa").exists()
    resumed = load_file(tmp_path / "llava-shapes-chat" / "model.safetensors")
    full = load_file(src / "llava-shapes-chat" / "model.safetensors")
    assert set(resumed) == set(full)
    # equal but for float reordering: a busy machine moves weights by ~1e-9 (one step of training moves them ~1e-3)
    assert [k for k in full if not torch.allclose(resumed[k], full[k], rtol=0, atol=1e-6)] == []
    report = json.loads((tmp_path / "llava-shapes-chat" / "training_report.json").read_text())
    earlier = json.loads((src / "stage1" / "training_report.json").read_text())
    assert report["config"]["stage1_from"] == str(src / "stage1")
    assert {k: report["timings_s"][k] for k in earlier["timings_s"]} == earlier["timings_s"]
    assert report["timings_s"]["total"] > sum(earlier["timings_s"].values())
    assert set(report["histories"]) == {"clip", "lm", "stage1", "stage2-chat"}
    trained = json.loads((src / "llava-shapes-chat" / "training_report.json").read_text())
    losses = trained["histories"]["stage2-chat"]["losses"]
    assert report["histories"]["stage2-chat"]["losses"] == pytest.approx(losses, rel=1e-5)
    assert all(
        report["data"][k] == trained["data"][k] for k in ("chat_records", "chat_turns", "chat_grounded_positions")
    )
    card = (tmp_path / "llava-shapes-chat" / "README.md").read_text()
    assert "| stage2-chat |" in card and "(this checkpoint alone, evaluation included)" in card
    assert "then `python -m llava.train.pipeline --out RUN --from-stage1 FIRST/stage1 --only chat`" in card
    assert "(both checkpoints, evaluation included)" in (src / "llava-shapes-chat" / "README.md").read_text()

    no_report = tmp_path / "bare"
    no_report.mkdir()
    bad = subprocess.run(
        [*args, "--out", str(tmp_path / "x"), "--from-stage1", str(no_report), "--no-eval"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "save stage 1 with --keep-stage1" in bad.stderr and "Traceback" not in bad.stderr
    (no_report / "training_report.json").write_text('{"config": {}}')
    broken = subprocess.run(
        [*args, "--out", str(tmp_path / "x"), "--from-stage1", str(no_report), "--no-eval"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert broken.returncode == 2 and "not a pipeline report" in broken.stderr
    full_size = subprocess.run(
        [*args[:3], "--quiet", "--out", str(tmp_path / "y"), "--from-stage1", str(src / "stage1"), "--no-eval"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert full_size.returncode != 0 and "other model sizes" in full_size.stderr


@pytest.mark.slow
def test_stages_side_by_side_train_what_one_at_a_time_trains(smoke, tmp_path):
    # by default CLIP trains beside the LM and the ScienceQA fine-tune beside the chat one, each in a process on
    # half the threads (llava.train.share): the same data, seeds and steps as --one-at-a-time, weight for weight
    src, _, _ = smoke
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "llava.train.pipeline", "--smoke", "--quiet", "--no-eval", "--one-at-a-time",
         "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(beside clip)" not in proc.stdout
    for name in ("llava-shapes-chat", "llava-shapes-sqa"):
        alone = load_file(tmp_path / name / "model.safetensors")
        beside = load_file(src / name / "model.safetensors")
        assert set(alone) == set(beside)
        # not bit for bit: where float32 matmuls sum in an order that depends on the thread count (2 cores of an
        # Ice Lake Xeon, AVX-512: the side that finishes first hands its thread to the other mid-stage), the smoke
        # weights differ by up to 2.6e-5 (1.8e-5 under MKL_CBWR=AUTO,STRICT); another seed moves them by 0.9
        assert [k for k in beside if not torch.allclose(alone[k], beside[k], rtol=0, atol=1e-4)] == [], name
        report = json.loads((src / name / "training_report.json").read_text())
        pairs = [["clip", "lm"], ["stage2-chat", "stage2-sqa"], ["eval-chat", "stage2-sqa"]]
        assert report["config"]["side_by_side"] == pairs
        assert set(report["histories"]) >= {"clip", "lm", "stage1", "stage2-chat", "stage2-sqa"}
        assert "Trained side by side" in (src / name / "README.md").read_text()
        assert "side_by_side" not in json.loads((tmp_path / name / "training_report.json").read_text())["config"]
    assert not (src / ".stage1-for-sqa").exists() and not (tmp_path / ".stage1-for-sqa").exists()


def test_a_seed_reaches_every_stage():
    # --seed 1 is a second sample of the recipe: before, the stages' batch order stayed at seed 0
    cfg = PipelineConfig().reseed(1)
    assert cfg.seed == 1 and [s.seed for s in (cfg.stage1, cfg.stage2, cfg.sqa)] == [1, 1, 1]
    assert PipelineConfig().stage2.seed == 0, "reseeding one configuration leaves the defaults alone"


def test_loop_schedule_and_divergence():
    cfg = OptimConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(99) == pytest.approx(0.1, abs=1e-3)
    assert cfg.lr_at(55) < cfg.lr_at(20)
    w = torch.nn.Parameter(torch.tensor([1.0]))
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train([w], lambda step: w.sum() * float("nan"), OptimConfig(steps=3, lr=0.1, warmup=1, bf16=False), "x",
              progress=False)  # fmt: skip
    assert float(w.detach()) == 1.0, "a non-finite loss is not stepped on"
    history = train([w], lambda step: (w - 3) ** 2, OptimConfig(steps=200, lr=0.1, warmup=1, bf16=False), "q",
                    progress=False)  # fmt: skip
    assert abs(float(w.detach()) - 3) < 0.1 and history.losses[-1] < history.losses[0]
    with pytest.raises(ValueError):
        OptimConfig(steps=0, lr=1e-3)


def test_bf16_autocast_only_where_the_cpu_does_it_natively():
    # an AVX2-only CPU runs bf16 matmuls ~100x slower than float32: the default follows the CPU, a choice stays
    assert OptimConfig(steps=1, lr=1.0).bf16 is fast_bf16()
    assert OptimConfig(steps=1, lr=1.0, bf16=True).bf16 is True
    assert OptimConfig(steps=1, lr=1.0, bf16=False).bf16 is False


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_native_bf16_means_the_cpu_has_bf16_instructions():
    # oneDNN's own test says yes on any AVX-512 CPU and emulates: on an Ice Lake Xeon (AVX-512, no BF16) a chat step
    # took 1.57 s under bf16 autocast against 0.62 in float32
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert fast_bf16() is bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.slow
def test_a_fine_tune_keeps_its_report_when_the_run_stops_later(smoke, tmp_path):
    # a run killed in the ScienceQA fine-tune (or its evaluation) used to leave the finished chat model without a
    # report, so it could not be exported: the report is written beside each fine-tune as soon as it is saved
    from llava.train.export import export
    from llava.train.pipeline import REPORT_FILE, train_all

    src, _, _ = smoke
    cfg = PipelineConfig.smoke()
    cfg.progress = False
    train_all(cfg, tmp_path / "run", from_stage1=src / "stage1", only=("chat",))  # no write_outputs: "killed"
    report = json.loads((tmp_path / "run" / "llava-shapes-chat" / REPORT_FILE).read_text())
    assert set(report["histories"]) == {"clip", "lm", "stage1", "stage2-chat"} and "stage2-chat" in report["timings_s"]
    export(tmp_path / "run", tmp_path / "stored", progress=False, only=("chat",))
    assert (tmp_path / "stored" / "llava-shapes-chat" / "training_curves.png").is_file()
    assert "stage2-chat" in (tmp_path / "stored" / "llava-shapes-chat" / "README.md").read_text()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [("sqa_maker_weights", {"extremes": 4.0}, "extremes"), ("sqa_fact_share", 1.5, "shares")],
)
def test_a_wrong_scienceqa_data_setting_stops_the_run_before_pre_training(tmp_path, setting, value, message):
    cfg = PipelineConfig.smoke()
    setattr(cfg, setting, value)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        train_all(cfg, tmp_path)
    assert time.perf_counter() - start < 5 and not any(tmp_path.iterdir())  # nothing trained, nothing written
