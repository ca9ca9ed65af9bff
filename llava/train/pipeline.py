"""The whole recipe, from nothing to the two shipped checkpoints.

    python -m llava.train.pipeline --out /tmp/run                # the full run: 53.9 min on 2 AVX-512 BF16 cores
                                                                 # (stages side by side, layers compiled, CLIP in
                                                                 # float32, evaluation included; near the hour on a
                                                                 # slow day; ~120 on AVX2 one at a time, uncompiled)
    python -m llava.train.export --src /tmp/run --out checkpoints/   # bfloat16 weights, scored again
    python -m llava.train.pipeline --out /tmp/smoke --smoke      # every stage, tiny, for the tests
    python -m llava.train.pipeline --out /tmp/try --from-stage1 /tmp/run/stage1 --only chat   # a stage-2 recipe
                                                                 # (/tmp/run made with --keep-stage1)

1. corpus + BPE tokenizer   2. CLIP pre-training (contrastive: captions, object regions, patches)   3. LM pre-training (text)
4. stage 1: projector only, picture/caption pairs
5. stage 2: projector + LM on instruction data, plus the grounding loss (llava.train.ground) -> chat
6. from stage 1 again: projector + LM on ScienceQA-format data, grounding + option look-ups -> sqa
7. held-out evaluation on both renderers, model cards and training curves written into each checkpoint folder.
With 2 threads or more, 2 and 3 train side by side, as do 5 and 6, each in a process on half the threads
(`llava.train.share`; `--one-at-a-time` turns it off); each of 5 and 6 is scored as soon as it is saved, the chat
model beside the rest of the ScienceQA fine-tune.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoProcessor, CLIPModel, LlamaForCausalLM, LlavaForConditionalGeneration
from transformers.utils import logging as hf_logging

from llava.data.build import RENDERERS, Picture, instruct_records, make_pictures, sqa_pictures
from llava.data.scienceqa import to_instruct
from llava.data.sqa_world import check_maker_weights, check_shares, make_problems
from llava.model.tiny import build_config, build_processor, save_checkpoint, train_tokenizer
from llava.train.clip import build_clip, object_centers, pretrain_clip
from llava.train.config import PipelineConfig
from llava.train.corpus import build_corpus, lookup_record
from llava.train.features import vision_features
from llava.train.ground import Target
from llava.train.loop import History, fast_bf16, matmul_flops_per_second
from llava.train.pixels import normalize, to_uint8
from llava.train.sequences import Example, encode_record, encode_text, pack_by_picture
from llava.train.share import Beside
from llava.train.stages import StageConfig, pretrain_lm, run_stage, stage_targets

CHAT_NAME, SQA_NAME = "llava-shapes-chat", "llava-shapes-sqa"
REPORT_FILE = "training_report.json"


@dataclass(slots=True)
class Report:
    """Everything a model card needs: what ran, how long, how it went."""

    config: dict
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    histories: dict[str, History] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)  # what each stage trained on
    evals: dict[str, dict] = field(default_factory=dict)  # checkpoint -> renderer -> results

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        print(f"[pipeline] {name} ...", flush=True)
        yield
        self.timings[name] = time.perf_counter() - start
        print(f"[pipeline] {name} done in {self.timings[name]:.1f} s", flush=True)

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "timings_s": self.timings,
            "params": self.params,
            "data": self.data,
            "evals": self.evals,
            "histories": {k: h.to_json() for k, h in self.histories.items()},
        }

    def add(self, other: Report) -> None:
        """What `other` (a copy of this report that a stage beside this one filled in) has and this has not."""
        for part in ("timings", "histories", "params", "data", "evals"):
            mine = getattr(self, part)
            for key, value in getattr(other, part).items():
                mine.setdefault(key, value)

    def beside(self, first: str, second: str) -> None:
        """Note that stages `first` and `second` trained at the same time, sharing the threads: their minutes
        overlap (the card says so; `total` is the wall time)."""
        self.config.setdefault("side_by_side", []).append([first, second])

    @classmethod
    def from_json(cls, raw: dict) -> Report:
        """The inverse of `to_json` (a run's `training_report.json`)."""
        histories = {k: History.from_json(h) for k, h in raw["histories"].items()}
        return cls(raw["config"], raw["timings_s"], histories, raw["params"], raw["data"], raw["evals"])


def _pixels(pictures: list[Picture], processor) -> torch.Tensor:
    return to_uint8([p.image() for p in pictures], processor.image_processor)


def _encode(records: list[dict], tokenizer, n_image_tokens: int, max_len: int) -> list[Example]:
    examples = [encode_record(r, tokenizer, n_image_tokens) for r in records]
    longest = max(len(e.input_ids) for e in examples)
    if longest > max_len:
        raise ValueError(f"a training sequence has {longest} tokens; the context holds {max_len}")
    return examples


def _centers(stage: StageConfig, pictures: list[Picture], config) -> torch.Tensor | None:
    """Each picture's patches' object centres for the stage's place read-out (`object_centers`, objects covering
    a quarter of a patch or more); None when the stage has none."""
    if not stage.place_weight:
        return None
    vision = config.vision_config
    return object_centers([p.scene for p in pictures], vision.image_size // vision.patch_size, 0.25)


def _features(model, pictures: list[Picture], processor) -> tuple[torch.Tensor, dict[str, int]]:
    pixels = _pixels(pictures, processor)
    feats = vision_features(model, pixels, lambda x: normalize(x, processor.image_processor))
    return feats, {p.name: i for i, p in enumerate(pictures)}


def _grounding(
    stage: StageConfig, examples: list[Example], pictures: list[Picture], tokenizer, config, report: Report, name: str
) -> list[list[Target]] | None:
    """The stage's grounding targets (None when its loss is off); their count goes into the report."""
    if not stage.ground_weight:
        return None
    scenes = {p.name: p.scene for p in pictures}
    ground = stage_targets(stage, examples, scenes, tokenizer, config)
    report.data[f"{name}_grounded_positions"] = sum(map(len, ground))
    return ground


def machine() -> str:
    """The CPU this run trains on, for the model card: timings only compare on the same kind."""
    name = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")), "a CPU"
    )
    return f"{torch.get_num_threads()} threads of {name} ({torch.backends.cpu.get_cpu_capability()})"


def host_speed(probes: int = 3) -> float:
    """GFLOP/s of a 1024x1024 matmul on one thread, autocast as training is (the median of `probes`): the host's
    speed, taken at the start and the end of a run. A shared machine drifts (the same code's fine-tune loops ran
    1.16 and 1.32 s a step in two runs), and the card's minutes only compare at like speeds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates = sorted(matmul_flops_per_second() for _ in range(probes))
    finally:
        torch.set_num_threads(threads)
    return round(rates[len(rates) // 2] / 1e9, 1)


def code_version() -> str:
    """The commit this run's code is at ("+ changes" when tracked files differ from it), for the model card:
    the same command on other code trains on other data. "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + changes" if changed else "")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


PRETRAINING = ("corpus+tokenizer", "clip", "lm", "stage1")  # what `--from-stage1` takes from an earlier run
FINETUNES = {"chat": CHAT_NAME, "sqa": SQA_NAME}
# the settings of the stages after stage 1: a run resumed from stage 1 takes them from its own configuration
FINETUNE_SETTINGS = (
    *("chat_pictures", "chat_count_weights", "chat_per_picture", "stage2"),
    *("sqa_problems", "sqa_count_weights", "sqa_maker_weights", "sqa_fact_share", "sqa_per_picture"),
    *("sqa_lookups", "sqa"),
    *("eval_pictures", "eval_problems", "eval_max_new_tokens", "seed"),
)


class ResumeError(ValueError):
    """A `--from-stage1` folder this run cannot start from."""


def stage_rng(seed: int, stage: str) -> random.Random:
    """Each stage draws its data from a stream of its own, so a run resumed from stage 1 trains on the same
    data as the full run with that seed."""
    return random.Random(f"{seed}/{stage}")


def train_all(
    cfg: PipelineConfig,
    out: Path,
    keep_stage1: bool = False,
    from_stage1: Path | None = None,
    only: tuple[str, ...] = tuple(FINETUNES),
    side_by_side: bool | None = None,
    evaluate: bool = False,
) -> Report:
    """Run stages 1-6 (or load 1-4 from `from_stage1`, a folder `keep_stage1` wrote); the checkpoints of the
    fine-tunes in `only` are saved under `out`, and the stage-1 model under `out/stage1` if `keep_stage1`, to try
    stage-2 recipes from without the hour before it. `side_by_side` (default: with 2 threads or more) trains
    CLIP beside the LM and the ScienceQA fine-tune beside the chat one (`llava.train.share`); the same data,
    seeds and steps as one at a time. With `evaluate`, fine-tunes trained side by side are scored each as soon
    as it is saved (`finetune_both`); `evaluate_all` scores what is left."""
    check_maker_weights(cfg.sqa_maker_weights)  # now, not after the hour of pre-training
    check_shares(cfg.sqa_fact_share)
    if side_by_side is None:
        side_by_side = torch.get_num_threads() >= 2
    if from_stage1 is None:
        model, processor, report = pretrain(cfg, out / "stage1" if keep_stage1 else None, side_by_side)
    else:
        model, processor, report = load_stage1(cfg, from_stage1)
    both = "chat" in only and "sqa" in only
    if both and side_by_side:
        saved = from_stage1 or (out / "stage1" if keep_stage1 else None)
        finetune_both(cfg, model, processor, report, out, saved, evaluate)
        return report
    after_stage1 = {k: v.clone() for k, v in model.state_dict().items()} if both else None
    if "chat" in only:
        finetune_chat(cfg, model, processor, report, out)
    if "sqa" in only:
        if after_stage1 is not None:
            model.load_state_dict(after_stage1)
        finetune_sqa(cfg, model, processor, report, out)
    return report


def finetune_both(
    cfg: PipelineConfig, model, processor, report: Report, out: Path, saved: Path | None, evaluate: bool = False
) -> None:
    """The chat fine-tune here and the ScienceQA one beside it, in a process of its own that starts from stage 1
    as saved on disk (`saved`, else a copy written under `out` for the time it takes). With `evaluate`, each
    side scores its checkpoint once saved: the chat fine-tune ends first, and its scoring runs beside the rest
    of the ScienceQA one (on its own thread still) instead of after it."""
    folder = saved if saved is not None else out / ".stage1-for-sqa"
    if saved is None:
        save_checkpoint(model, processor, folder)
    try:
        with Beside(_finetune_sqa_from, cfg, folder, report, out, evaluate) as side:
            finetune_chat(cfg, model, processor, report, out, on_step=side.on_step)
            if evaluate:
                with report.timed("eval-chat"):
                    report.evals[CHAT_NAME] = _score_chat(cfg, out / CHAT_NAME)
            report.add(side.result())
    finally:
        if saved is None:
            shutil.rmtree(folder, ignore_errors=True)
    report.beside("stage2-chat", "stage2-sqa")
    if evaluate:
        report.beside("eval-chat", "stage2-sqa")
    save_report(out / CHAT_NAME, report)
    save_report(out / SQA_NAME, report)


def _finetune_sqa_from(
    cfg: PipelineConfig,
    folder: Path,
    report: Report,
    out: Path,
    evaluate: bool = False,
    on_step: Callable[[], None] | None = None,
) -> Report:
    """In the process beside the chat fine-tune: the ScienceQA fine-tune from the stage-1 model in `folder`,
    then (`evaluate`) its scores."""
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    finetune_sqa(cfg, model, processor, report, out, on_step=on_step)
    if evaluate:
        del model  # the scores are the saved checkpoint's, loaded as a worker loads it
        with report.timed("eval-sqa"):
            report.evals[SQA_NAME] = _score_sqa(cfg, out / SQA_NAME)
    return report


def _pretrain_lm(
    text_config, texts: list[Example], cfg: PipelineConfig, on_step: Callable[[], None] | None = None
) -> tuple[dict[str, torch.Tensor], History, float]:
    """Stage 3, the language model from its own seed: its weights, history and seconds (here or beside CLIP)."""
    start = time.perf_counter()
    torch.manual_seed(stage_rng(cfg.seed, "lm init").getrandbits(63))
    lm = LlamaForCausalLM(text_config)
    history = pretrain_lm(lm, texts, cfg.lm_batch, cfg.lm_optim, cfg.seed, cfg.progress, on_step)
    return lm.state_dict(), history, time.perf_counter() - start


def pretrain(
    cfg: PipelineConfig, stage1_dir: Path | None, side_by_side: bool = False
) -> tuple[LlavaForConditionalGeneration, object, Report]:
    """Stages 1-4: tokenizer, CLIP, LM (beside CLIP if `side_by_side`), then stage 1 (the projector). Saved with
    its report if `stage1_dir`."""
    torch.manual_seed(cfg.seed)
    report = Report(config=asdict(cfg) | {"machine": machine(), "code": code_version()})
    sizes = cfg.sizes

    with report.timed("corpus+tokenizer"):
        corpus = build_corpus(cfg.corpus_scenes, cfg.corpus_problems, cfg.seed, cfg.corpus_lookups)
        tokenizer = train_tokenizer(corpus, sizes.vocab_size)
        tokenizer.model_max_length = sizes.max_position_embeddings
        processor = build_processor(tokenizer, sizes.image_size, sizes.patch_size)
        config = build_config(tokenizer, **sizes.llava_kwargs())
        report.data["corpus_texts"] = len(corpus)
    norm = lambda x: normalize(x, processor.image_processor)  # noqa: E731

    def train_clip(on_step: Callable[[], None] | None = None) -> CLIPModel:
        with report.timed("clip"):
            pictures = make_pictures(stage_rng(cfg.seed, "clip"), cfg.clip_pictures, "clip")
            holdout = make_pictures(random.Random(cfg.seed + 1), cfg.holdout_pictures, "holdout")
            clip = build_clip(config.vision_config, tokenizer, cfg.clip)
            report.histories["clip"] = pretrain_clip(
                clip, tokenizer, _pixels(pictures, processor), [p.scene for p in pictures], cfg.clip, norm,
                seed=cfg.seed, holdout=(_pixels(holdout, processor), [p.scene for p in holdout]),
                progress=cfg.progress, on_step=on_step,
            )  # fmt: skip
            report.data["clip_pairs"] = len(pictures)
            report.params["clip_text_tower"] = count_params(clip.text_model) + count_params(clip.text_projection)
        return clip

    texts = [encode_text(t, tokenizer, sizes.max_position_embeddings) for t in corpus]
    if side_by_side:
        print("[pipeline] lm ... (beside clip)", flush=True)
        with Beside(_pretrain_lm, config.text_config, texts, cfg) as side:
            clip = train_clip(side.on_step)
            lm_state, report.histories["lm"], report.timings["lm"] = side.result()
        print(f"[pipeline] lm done in {report.timings['lm']:.1f} s (beside clip)", flush=True)
        report.beside("clip", "lm")
    else:
        clip = train_clip()
        with report.timed("lm"):
            lm_state, report.histories["lm"], _ = _pretrain_lm(config.text_config, texts, cfg)

    torch.manual_seed(stage_rng(cfg.seed, "projector init").getrandbits(63))
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    model.model.language_model.load_state_dict({k.removeprefix("model."): v for k, v in lm_state.items()
                                                if k.startswith("model.")})  # fmt: skip
    model.lm_head.load_state_dict({"weight": lm_state["lm_head.weight"]})
    del clip, lm_state
    report.params |= {
        "vision_tower": count_params(model.model.vision_tower),
        "projector": count_params(model.model.multi_modal_projector),
        "language_model": count_params(model.model.language_model) + count_params(model.lm_head),
    }

    with report.timed("stage1"):
        rng = stage_rng(cfg.seed, "stage1")
        pictures = make_pictures(rng, cfg.stage1_pictures, "stage1")
        feats, index = _features(model, pictures, processor)
        records = instruct_records(pictures, rng, mix={"brief": 1.0})
        examples = _encode(records, tokenizer, config.image_seq_length, sizes.max_position_embeddings)
        report.histories["stage1"] = run_stage(model, examples, feats, index, cfg.stage1, progress=cfg.progress)
        report.data["stage1_pairs"] = len(records)
    if stage1_dir is not None:
        save_checkpoint(model, processor, stage1_dir)
        (stage1_dir / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=1))
    return model, processor, report


def load_stage1(cfg: PipelineConfig, folder: Path) -> tuple[LlavaForConditionalGeneration, object, Report]:
    """The stage-1 model and the report of the stages that made it, as `--keep-stage1` saved them. The report
    keeps the settings those stages ran with; the fine-tunes' settings are this run's."""
    path = folder / REPORT_FILE
    if not path.is_file():
        raise ResumeError(f"{path}: no report of the stages before; save stage 1 with --keep-stage1")
    try:
        report = Report.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ResumeError(f"{path}: not a pipeline report ({e!r})") from e
    if report.config.get("sizes") != asdict(cfg.sizes):
        raise ResumeError(f"{path}: stage 1 has other model sizes than this run (--smoke on one of the two?)")
    missing = [stage for stage in PRETRAINING if stage not in report.timings]
    if missing:
        raise ResumeError(f"{path}: no timing of {', '.join(missing)}; is this a stage-1 folder?")
    here = machine()
    if report.config.get("machine") != here:
        report.config["machine"] = f"{here}; stages up to stage 1 on {report.config.get('machine', 'another machine')}"
    code = code_version()
    if report.config.get("code") != code:
        report.config["code"] = f"{code}; stages up to stage 1 at {report.config.get('code', 'unknown')}"
    mine = asdict(cfg)
    report.config |= {key: mine[key] for key in FINETUNE_SETTINGS} | {"stage1_from": str(folder)}
    processor = AutoProcessor.from_pretrained(folder)
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    return model, processor, report


def finetune_chat(
    cfg: PipelineConfig, model, processor, report: Report, out: Path, on_step: Callable[[], None] | None = None
) -> None:
    """Stage 2, chat: projector + LM on the teacher's instruction data, with the grounding loss."""
    torch.manual_seed(cfg.seed)
    config, tokenizer = model.config, processor.tokenizer
    with report.timed("stage2-chat"):
        rng = stage_rng(cfg.seed, "chat")
        pictures = make_pictures(rng, cfg.chat_pictures, "chat", count_weights=cfg.chat_count_weights)
        feats, index = _features(model, pictures, processor)
        records = instruct_records(pictures, rng, per_picture=cfg.chat_per_picture)
        examples = _encode(records, tokenizer, config.image_seq_length, cfg.sizes.max_position_embeddings)
        if cfg.stage2.pack:
            examples = pack_by_picture(examples)
        report.data["chat_rows"] = len(examples)
        ground = _grounding(cfg.stage2, examples, pictures, tokenizer, config, report, "chat")
        centers = _centers(cfg.stage2, pictures, config)
        report.histories["stage2-chat"] = run_stage(
            model,
            examples,
            feats,
            index,
            cfg.stage2,
            progress=cfg.progress,
            ground=ground,
            on_step=on_step,
            centers=centers,
        )
        report.data["chat_records"] = len(records)
        report.data["chat_turns"] = sum(len(r["conversations"]) // 2 for r in records)
        save_checkpoint(model, processor, out / CHAT_NAME)
    save_report(out / CHAT_NAME, report)


def finetune_sqa(
    cfg: PipelineConfig, model, processor, report: Report, out: Path, on_step: Callable[[], None] | None = None
) -> None:
    """From stage 1 again: projector + LM on ScienceQA-format problems and option look-ups, with grounding."""
    torch.manual_seed(cfg.seed)
    config, tokenizer = model.config, processor.tokenizer
    with report.timed("stage2-sqa"):
        rng = stage_rng(cfg.seed, "sqa")
        problems, scenes = make_problems(
            rng,
            cfg.sqa_problems,
            "train",
            count_weights=cfg.sqa_count_weights,
            per_scene=cfg.sqa_per_picture,
            maker_weights=cfg.sqa_maker_weights,
            fact_share=cfg.sqa_fact_share,
        )
        # problems about one scene share one drawing, named after the first of them
        drawn: dict[int, str] = {}
        for pid, scene in scenes.items():
            drawn.setdefault(id(scene), pid)
        pictures = list(sqa_pictures({pid: scenes[pid] for pid in drawn.values()}, rng).values())
        feats, index = _features(model, pictures, processor)
        records = [to_instruct(pid, p) for pid, p in problems.items()]
        for r in records:
            if "image" in r:
                r["image"] = f"{drawn[id(scenes[r['id']])]}/image.png"
        records += [lookup_record(rng, f"lookup-{k}") for k in range(cfg.sqa_lookups)]
        examples = _encode(records, tokenizer, config.image_seq_length, cfg.sizes.max_position_embeddings)
        if cfg.sqa.pack:
            examples = pack_by_picture(examples)
        report.data["sqa_rows"] = len(examples)
        ground = _grounding(cfg.sqa, examples, pictures, tokenizer, config, report, "sqa")
        report.histories["stage2-sqa"] = run_stage(
            model, examples, feats, index, cfg.sqa, progress=cfg.progress, ground=ground, on_step=on_step
        )
        report.data["sqa_problems"] = len(problems)
        report.data["sqa_lookups"] = cfg.sqa_lookups
        save_checkpoint(model, processor, out / SQA_NAME)
    save_report(out / SQA_NAME, report)


def save_report(folder: Path, report: Report) -> None:
    """The report so far, written beside a fine-tune as soon as it is saved, so a run stopped later (in the
    other fine-tune or the evaluation) can still be exported; the finished run writes it again, complete."""
    (folder / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=1))


def evaluate_all(
    cfg: PipelineConfig,
    out: Path,
    report: Report,
    only: tuple[str, ...] = tuple(FINETUNES),
    side_by_side: bool | None = None,
) -> None:
    """Score the checkpoints of `only` not scored yet (`train_all` with `evaluate` scores fine-tunes it trained side
    by side), loaded from disk as a worker loads them, on both renderers; the ScienceQA model in a process beside
    the chat model's scoring when both are scored and `side_by_side` (default: 2 threads or more): greedy
    decoding of one answer at a time hardly gains from a second thread."""
    if side_by_side is None:
        side_by_side = torch.get_num_threads() >= 2
    only = tuple(key for key in only if FINETUNES[key] not in report.evals)
    if not only:
        return
    with report.timed("eval"):
        if "chat" in only and "sqa" in only and side_by_side:
            with Beside(_score_sqa, cfg, out / SQA_NAME) as side:
                report.evals[CHAT_NAME] = _score_chat(cfg, out / CHAT_NAME)
                report.evals[SQA_NAME] = side.result()
            return
        if "chat" in only:
            report.evals[CHAT_NAME] = _score_chat(cfg, out / CHAT_NAME)
        if "sqa" in only:
            report.evals[SQA_NAME] = _score_sqa(cfg, out / SQA_NAME)


def _score_chat(cfg: PipelineConfig, folder: Path) -> dict[str, dict]:
    """The chat checkpoint in `folder` on the held-out pictures of each renderer."""
    from llava.eval.chat import evaluate_chat
    from llava.model.loader import load_pretrained

    model = load_pretrained(folder, device="cpu")
    return {
        renderer: evaluate_chat(
            model, cfg.eval_pictures, renderer, progress=cfg.progress, max_new_tokens=cfg.eval_max_new_tokens
        ).to_json()
        for renderer in RENDERERS
    }


def _score_sqa(cfg: PipelineConfig, folder: Path, on_step: Callable[[], None] | None = None) -> dict[str, dict]:
    """The ScienceQA checkpoint in `folder` on the held-out problems of each renderer (`on_step`: unused, as
    `llava.train.share.Beside` passes it)."""
    from llava.eval.sqa import evaluate_world_sqa
    from llava.model.loader import load_pretrained

    model = load_pretrained(folder, device="cpu")
    budget = cfg.eval_max_new_tokens or 128
    return {
        renderer: evaluate_world_sqa(
            model, cfg.eval_problems, renderer, progress=cfg.progress, max_new_tokens=budget
        ).to_json()
        for renderer in RENDERERS
    }


def write_outputs(cfg: PipelineConfig, out: Path, report: Report, only: tuple[str, ...] = tuple(FINETUNES)) -> None:
    from llava.train.card import write_card
    from llava.train.curves import plot_histories

    for key in only:
        name, stage = FINETUNES[key], f"stage2-{key}"
        folder = out / name
        stages = [report.histories[k] for k in ("clip", "lm", "stage1", stage)]
        plot_histories(stages, folder / "training_curves.png", f"{name}: training loss per stage")
        save_report(folder, report)
        write_card(folder, name, report, smoke=cfg.sizes.image_size < 48)


def run_setup(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`--threads` and `--quiet` added and parsed; offline, quiet transformers, torch on that many threads."""
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.train.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for llava-shapes-chat/ and llava-shapes-sqa/")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps: every stage in < 2 minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation and the tables in the cards")
    p.add_argument("--keep-stage1", action="store_true", help="also save the stage-1 model under OUT/stage1")
    p.add_argument(
        "--from-stage1", type=Path, metavar="DIR",
        help="start from the stage-1 model a --keep-stage1 run saved in DIR (same sizes; its stages' settings kept)",
    )  # fmt: skip
    p.add_argument("--only", choices=tuple(FINETUNES), help="train (and score) one of the two fine-tunes")
    p.add_argument(
        "--one-at-a-time", action="store_true",
        help="no stages side by side (by default CLIP trains beside the LM and the two fine-tunes beside each other, "
        "each on half the threads)",
    )  # fmt: skip
    args = run_setup(p, argv)
    cfg = (PipelineConfig.smoke() if args.smoke else PipelineConfig()).reseed(args.seed)
    cfg.progress = cfg.progress and not args.quiet
    only = (args.only,) if args.only else tuple(FINETUNES)
    speed = host_speed()
    start = time.perf_counter()
    try:
        report = train_all(
            cfg, args.out, keep_stage1=args.keep_stage1, from_stage1=args.from_stage1, only=only,
            side_by_side=False if args.one_at_a_time else None, evaluate=not args.no_eval,
        )  # fmt: skip
    except ResumeError as e:
        p.error(str(e))
    if not args.no_eval:
        evaluate_all(cfg, args.out, report, only, side_by_side=False if args.one_at_a_time else None)
    earlier = sum(report.timings[k] for k in PRETRAINING) if args.from_stage1 else 0.0
    report.timings["total"] = earlier + time.perf_counter() - start  # a resumed run counts the stages it took
    dtype = "bfloat16" if fast_bf16() else "float32"  # this process's probes, a resumed run's too
    end_speed = host_speed()
    report.config["host_matmul"] = {"dtype": dtype, "gflops_start": speed, "gflops_end": end_speed}
    write_outputs(cfg, args.out, report, only)
    for stage, seconds in report.timings.items():
        print(f"{stage:>18}: {seconds / 60:6.2f} min")
    print(f"{'host':>18}: {speed:g} -> {end_speed:g} GFLOP/s ({dtype} matmul, one thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
