"""Store a training run's two checkpoints for shipping: bfloat16 weights, scored again as stored.

    python -m llava.train.export --src /tmp/run --out checkpoints/
    python -m llava.train.export --src /tmp/try --out checkpoints/ --only chat   # a run made with --only chat

SRC is a `llava.train.pipeline` output. Each checkpoint's weights are cast to bfloat16 (half the bytes of the
float32 the pipeline saves). The stored checkpoints are then loaded as a worker loads them and evaluated again
on both renderers, at the pipeline's sizes. Each model card and `training_report.json` is rewritten with those
figures, so the numbers a card shows are those of the weights next to it. The training timings are kept as the
run measured them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava.train.card import chat_table, sqa_table
from llava.train.config import ModelSizes, PipelineConfig
from llava.train.pipeline import CHAT_NAME, FINETUNES, SQA_NAME, Report, evaluate_all, run_setup, write_outputs

STORED_DTYPE = "bfloat16"


def read_report(folder: Path) -> Report:
    path = folder / "training_report.json"
    try:
        return Report.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"export: {path} is not a pipeline report: {e!r}") from e


def eval_config(report: Report) -> PipelineConfig:
    """The run's model sizes and evaluation sizes, as its report recorded them."""
    cfg = PipelineConfig(sizes=ModelSizes(**report.config["sizes"]))
    for key in ("eval_pictures", "eval_problems", "eval_max_new_tokens"):
        setattr(cfg, key, report.config[key])
    return cfg


def export(src: Path, out: Path, progress: bool = True, only: tuple[str, ...] = tuple(FINETUNES)) -> Report:
    """Store the checkpoints of the fine-tunes in `only` ("chat", "sqa"); others already in `out` stay."""
    if src.resolve() == out.resolve():
        raise SystemExit("export: --src and --out must differ (the float32 run is the source)")
    names = [FINETUNES[key] for key in only]
    report = read_report(src / names[0])
    for name in names:
        model = LlavaForConditionalGeneration.from_pretrained(src / name, dtype=torch.float32)
        model.to(getattr(torch, STORED_DTYPE)).save_pretrained(out / name, safe_serialization=True)
        AutoProcessor.from_pretrained(src / name).save_pretrained(out / name)
    report.config["stored_dtype"] = STORED_DTYPE
    cfg = eval_config(report)
    cfg.progress = progress
    trained = dict(report.timings)
    evaluate_all(cfg, out, report, only)
    report.timings = trained  # the card's timings are the training run's
    write_outputs(cfg, out, report, only)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.train.export", description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True, help="a pipeline output folder (float32 checkpoints)")
    p.add_argument("--out", type=Path, required=True, help="where the bfloat16 checkpoints go, e.g. checkpoints/")
    p.add_argument("--only", choices=tuple(FINETUNES), help="store one of the two (a run made with --only)")
    args = run_setup(p, argv)
    only = (args.only,) if args.only else tuple(FINETUNES)
    report = export(args.src, args.out, progress=not args.quiet, only=only)
    for name, table in ((CHAT_NAME, chat_table), (SQA_NAME, sqa_table)):
        if name not in {FINETUNES[key] for key in only}:
            continue
        mb = (args.out / name / "model.safetensors").stat().st_size / 1e6
        print(f"\n{name}: {mb:.1f} MB in {STORED_DTYPE} -> {args.out / name}\n{table(report.evals[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
