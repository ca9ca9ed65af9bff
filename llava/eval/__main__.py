"""Score checkpoints: `python -m llava.eval chat|sqa ...`.

    python -m llava.eval chat --model checkpoints/llava-shapes-chat [--pictures 200] [--renderer primary alt]
    python -m llava.eval sqa  --model checkpoints/llava-shapes-sqa  [--problems 300] [--renderer primary alt]
    python -m llava.eval sqa  --problems-file problems.json --predictions answers.jsonl [--split test]
    python -m llava.eval sqa  --model M --problems-file problems.json --image-folder images/ --split test \\
                              [--save-predictions answers.jsonl]
    python -m llava.eval look --model checkpoints/llava-shapes-chat [--pictures 150]
    python -m llava.eval compare --a NEW.primary.jsonl NEW.alt.jsonl --b OLD.primary.jsonl OLD.alt.jsonl

The first two draw fresh held-out pictures; the next two read real ScienceQA files (LLaVA's answer
files are JSON Lines of `{"question_id", "text"}`). `look` shows where the model attends when it answers
about one object, and how its counting head counts (see `llava.eval.look`). `compare` pairs two models' saved
answers to the same draw (`chat --save-answers`, `sqa --save-predictions`) question by question. Tables go to
stdout, `--json` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llava.errors import LlavaError  # noqa: E402
from llava.model import DTYPES  # noqa: E402

RENDERERS = ("primary", "alt")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llava.eval", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="task", required=True)
    chat = sub.add_parser("chat", help="canonical questions about held-out pictures")
    chat.add_argument("--model", required=True)
    chat.add_argument("--pictures", type=int, default=200, help="pictures per renderer")
    chat.add_argument("--seed", type=int, default=1234)
    chat.add_argument(
        "--save-answers",
        type=Path,
        help="write every question, answer and score as .jsonl (one file a renderer, NAME.<renderer>.jsonl)",
    )
    sqa = sub.add_parser("sqa", help="ScienceQA table: held-out world problems, or real problems.json files")
    sqa.add_argument("--model", help="checkpoint to run (not needed when scoring --predictions)")
    sqa.add_argument("--problems", type=int, default=300, help="world problems per renderer")
    sqa.add_argument("--seed", type=int, default=4321)
    sqa.add_argument("--problems-file", type=Path, help="a real ScienceQA problems.json")
    sqa.add_argument("--predictions", type=Path, help="answers to score (.jsonl question_id/text, or {pid: text})")
    sqa.add_argument("--image-folder", type=Path, help="ScienceQA images: <folder>/<split>/<pid>/image.png")
    sqa.add_argument("--split", default=None, help="keep only problems of this split (e.g. test)")
    sqa.add_argument(
        "--save-predictions",
        type=Path,
        help="write the model's answers as LLaVA's .jsonl (world problems: one file a renderer, NAME.<renderer>.jsonl)",
    )
    look = sub.add_parser("look", help="attention on the object a question names, per layer and head")
    look.add_argument("--model", required=True)
    look.add_argument("--pictures", type=int, default=150, help="pictures per look-up")
    look.add_argument("--seed", type=int, default=77)
    look.add_argument("--renderer", choices=RENDERERS, default="primary")
    compare = sub.add_parser("compare", help="two models' saved answers to one draw, question by question")
    compare.add_argument("--a", nargs="+", type=Path, required=True, help="answer files of model A")
    compare.add_argument("--b", nargs="+", type=Path, required=True, help="model B's, in the same order")
    compare.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=KIND,KIND",
        help="a row pooling these kinds (chat answers get `targets`: the five kinds of the 95%% target)",
    )
    compare.add_argument("--labels", nargs=2, default=("A", "B"), metavar=("A", "B"), help="the columns' names")
    compare.add_argument("--json", type=Path, help="also write the results here")
    for sp in (chat, sqa):
        sp.add_argument("--renderer", nargs="+", choices=RENDERERS, default=list(RENDERERS))
    for sp in (chat, sqa, look):
        sp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        sp.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: float32 on CPU, bfloat16 on CUDA")
        sp.add_argument("--json", type=Path, help="also write the results here")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def run_chat(args: argparse.Namespace) -> dict:
    from llava.eval.chat import evaluate_chat, write_answers
    from llava.model.loader import load_pretrained
    from llava.train.card import by_objects_table, chat_table, count_answers_table, where_bands_table

    loaded = load_pretrained(args.model, device=args.device, dtype=args.dtype)
    results = {}
    for renderer in args.renderer:
        result = evaluate_chat(loaded, args.pictures, renderer, args.seed, not args.quiet)
        results[renderer] = result.to_json()
        if args.save_answers:
            path = per_renderer(args.save_answers, renderer, args.renderer)
            write_answers(path, result)
            print(f"{renderer} renderer's answers: {path}", file=sys.stderr)
    print(f"\n{args.model}: accuracy (%) per question kind, {args.pictures} held-out pictures per renderer\n")
    print(chat_table(results))
    print(f"\nAccuracy (%) by the number of objects in the picture:\n\n{by_objects_table(results)}")
    for axis in ("column", "row"):
        print(f"\n`where` answers by the object's {axis} (questions):\n\n{where_bands_table(results, axis)}")
    print(f'\n"How many shapes?" by the objects and their colours (questions):\n\n{count_answers_table(results)}')
    return results


def run_sqa(args: argparse.Namespace) -> dict:
    from llava.data.scienceqa import load_problems
    from llava.eval.sqa import (
        image_folder_loader,
        load_predictions,
        markdown,
        predict,
        score_predictions,
        world_problems,
        write_answers,
    )

    if args.problems_file:
        problems = load_problems(args.problems_file, args.split)
        if not problems:
            raise LlavaError(f"{args.problems_file}: no problems" + (f" in split {args.split!r}" if args.split else ""))
        if args.predictions:
            predictions = load_predictions(args.predictions)
            problems = {pid: p for pid, p in problems.items() if pid in predictions}
            if not problems:
                raise LlavaError(f"{args.predictions}: none of its question ids is in {args.problems_file}")
        else:
            if not args.model:
                raise LlavaError("give --predictions to score, or --model to answer the problems")
            from llava.model.loader import load_pretrained

            loaded = load_pretrained(args.model, device=args.device, dtype=args.dtype)
            folder = args.image_folder or args.problems_file.parent / "images"
            loader = image_folder_loader(folder, args.split or "test", problems)
            predictions = predict(loaded, problems, loader, not args.quiet)
            if args.save_predictions:
                write_answers(args.save_predictions, problems, predictions)
        table = score_predictions(problems, predictions)
        print(markdown(table, f"{args.problems_file}: accuracy (%)"))
        return {"file": table.to_json()}
    if not args.model:
        raise LlavaError("give --model (world problems) or --problems-file (real ScienceQA)")
    from llava.model.loader import load_pretrained
    from llava.train.card import sqa_table

    loaded = load_pretrained(args.model, device=args.device, dtype=args.dtype)
    results = {}
    for renderer in args.renderer:
        problems, images = world_problems(args.problems, renderer, args.seed)
        predictions = predict(loaded, problems, images.get, not args.quiet)
        results[renderer] = score_predictions(problems, predictions).to_json()
        if args.save_predictions:  # the same problem ids under every renderer: a file each
            path = per_renderer(args.save_predictions, renderer, args.renderer)
            write_answers(path, problems, predictions)
            print(f"{renderer} renderer's answers: {path}", file=sys.stderr)
    print(f"\n{args.model}: ScienceQA-format accuracy (%), {args.problems} held-out problems per renderer\n")
    print(sqa_table(results))
    return results


def per_renderer(path: Path, renderer: str, renderers: list[str]) -> Path:
    """`path` for one renderer's answers: NAME.<renderer>.jsonl when several renderers share the run."""
    return path.with_name(f"{path.stem}.{renderer}{path.suffix}") if len(renderers) > 1 else path


def run_compare(args: argparse.Namespace) -> dict:
    from llava.eval.compare import compare, markdown
    from llava.eval.questions import TARGET_KINDS

    groups = {"targets": TARGET_KINDS}
    for spec in args.group:
        name, _, kinds = spec.partition("=")
        if not name or not kinds:
            raise LlavaError(f"--group {spec!r}: expected NAME=KIND,KIND")
        groups[name] = tuple(k.strip() for k in kinds.split(","))
    pairs, unmatched = compare(args.a, args.b, groups)
    a, b = args.labels
    print(f"\n{a} against {b}, question by question ({len(args.a)} pair(s) of answer files)\n")
    print(markdown(pairs, (a, b)))
    if unmatched:
        print(f"\n{unmatched} question(s) answered in one file only were left out", file=sys.stderr)
    return pairs.to_json()


def run_look(args: argparse.Namespace) -> dict:
    from llava.eval.look import COUNT_QUESTION, LOOKUPS, count_look, count_markdown, has_head, look, markdown
    from llava.model.loader import load_pretrained
    from llava.train.ground import COUNT_HEAD

    loaded = load_pretrained(args.model, device=args.device, dtype=args.dtype)
    looks = [look(loaded, args.pictures, key, args.renderer, args.seed) for key in LOOKUPS]
    print(f"\n{args.model}: where the model attends when a question names one object ({args.renderer} renderer)\n")
    print(markdown(looks))
    result = {lk.key: lk.to_json() for lk in looks}
    if has_head(loaded.model, COUNT_HEAD):
        counted = count_look(loaded, args.pictures, args.renderer, args.seed)
        print(f'\n"{COUNT_QUESTION}" teacher-forced to "There are", and the counting head at "shapes"\n')
        print(count_markdown(counted))
        result["count"] = counted.to_json()
    else:
        print(f"\nno counting head {COUNT_HEAD} in this model: the count probe is left out")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outputs = (args.json, getattr(args, "save_predictions", None), getattr(args, "save_answers", None))
    try:
        for out in outputs:  # before minutes of answering, not after
            if out is not None and not out.parent.is_dir():
                raise LlavaError(f"{out}: its folder {out.parent} does not exist")
        if args.task != "compare":  # reads files only: no torch
            import torch

            torch.set_num_threads(min(2, torch.get_num_threads()))
        tasks = {"chat": run_chat, "sqa": run_sqa, "look": run_look, "compare": run_compare}
        results = tasks[args.task](args)
    except LlavaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
