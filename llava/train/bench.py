"""Seconds and FLOPs per stage-2 chat step at the full run's sizes, with and without the grounding losses.

    python -m llava.train.bench --pictures 1500 --steps 15
    python -m llava.train.bench --per-picture 1 --no-pack --batch 32   # another layout of the same data
    python -m llava.train.bench --no-compile                           # plain layers (the full run compiles)

Seconds per 1000 trained tokens (answers and their stops) compare layouts: packing a picture's records into
one row (`llava.train.sequences.pack`) trains more of them per second than one record a row.

Random weights: the time of a step does not depend on what the model knows, so no earlier stage is needed.
The sequences, batch size and grounding targets are the full run's (`PipelineConfig`); "grounding" is the
attention targets and the place read-out (`place_weight`) as the full run has them, "no grounding" neither. The
FLOPs are torch's count of the same steps' matrix products (forward and backward; the optimiser's elementwise work is
not counted), so FLOP/s against a plain matmul's, in the precision the steps train in, says how near the
CPU's limit a step runs. Steps train as the full run's do: attention in float32, the layers compiled unless
`--no-compile`; the first `--warmup` steps (compilation, first allocations) are timed apart.
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlavaForConditionalGeneration
from transformers.utils import logging as hf_logging

from llava.data.build import instruct_records, make_pictures
from llava.model.tiny import build_config, build_processor, train_tokenizer
from llava.train.config import PipelineConfig
from llava.train.corpus import build_corpus
from llava.train.loop import OptimConfig, fast_bf16, matmul_flops_per_second
from llava.train.pipeline import _centers, _encode, _features
from llava.train.sequences import IGNORE, pack_by_picture
from llava.train.stages import run_stage, stage_targets


@dataclass(frozen=True, slots=True)
class StepCost:
    seconds: float  # mean wall time of a step after the warm-up
    flops: float  # mean counted FLOPs of a step
    trained: float  # mean tokens with a loss in a step's batch (answers and their stops)
    warmup: float = 0.0  # wall time of the warm-up steps together (compiling the layers, if they are)


def step_costs(
    pictures: int, steps: int, seed: int = 0, cfg: PipelineConfig | None = None, warmup: int = 2
) -> dict[str, StepCost]:
    """Mean cost per step of the chat stage, {"no grounding": ..., "grounding": ...}: the same `warmup` + `steps`
    batches are run twice, once counting FLOPs on plain layers (slower; compiled code runs past the counter, and
    compiling fuses elementwise work, not matmuls) and once timed, compiled if the stage is."""
    cfg = cfg or PipelineConfig()
    sizes = cfg.sizes
    tokenizer = train_tokenizer(build_corpus(500, 100, seed, 500), sizes.vocab_size)
    processor = build_processor(tokenizer, sizes.image_size, sizes.patch_size)
    config = build_config(tokenizer, **sizes.llava_kwargs())
    rng = random.Random(seed)
    chosen = make_pictures(rng, pictures, "bench")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    feats, index = _features(model, chosen, processor)
    records = instruct_records(chosen, rng, per_picture=cfg.chat_per_picture)
    examples = _encode(records, tokenizer, config.image_seq_length, sizes.max_position_embeddings)
    if cfg.stage2.pack:
        examples = pack_by_picture(examples)
    trained = cfg.stage2.batch_size * sum(sum(t != IGNORE for t in e.labels) for e in examples) / len(examples)
    scenes = {p.name: p.scene for p in chosen}
    ground = stage_targets(cfg.stage2, examples, scenes, tokenizer, config)
    centers = _centers(cfg.stage2, chosen, config)
    out = {}
    compile = cfg.stage2.optim.compile
    for name, on in (("no grounding", False), ("grounding", True)):
        weight, place = (cfg.stage2.ground_weight, cfg.stage2.place_weight) if on else (0.0, 0.0)
        counter = FlopCounterMode(display=False)
        for mode in (counter, nullcontext()):  # counting slows a step down: the second run is the timed one
            optim = OptimConfig(steps=warmup + steps, lr=1e-4, warmup=1, compile=compile and mode is not counter)
            stage = replace(cfg.stage2, name=name, optim=optim, ground_weight=weight, place_weight=place)
            model.load_state_dict(start_state)
            stamps: list[float] = []  # before each step
            with mode:
                run_stage(
                    model, examples, feats, index, stage, progress=False, ground=ground if weight else None,
                    on_step=_stamper(stamps), centers=centers if place else None,
                )  # fmt: skip
            stamps.append(time.perf_counter())
        seconds = (stamps[-1] - stamps[warmup]) / steps
        flops = counter.get_total_flops() / (warmup + steps)
        out[name] = StepCost(seconds, flops, trained, stamps[warmup] - stamps[0])
    return out


def _stamper(stamps: list[float]):
    """An `on_step` hook that notes when each step starts."""
    return lambda: stamps.append(time.perf_counter())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.train.bench", description=__doc__.splitlines()[0])
    p.add_argument("--pictures", type=int, default=1500, help="chat pictures to draw batches from")
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-picture", type=int, help="records a picture (default: the full run's)")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, help="a picture's records in one row")
    p.add_argument("--batch", type=int, help="rows a step (default: the full run's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="compiled layers (default: the full run's)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the timed ones (compiling, if the layers are)")
    args = p.parse_args(argv)
    if args.pictures < 1 or args.steps < 1 or min(args.per_picture or 1, args.batch or 1) < 1 or args.warmup < 0:
        p.error("--pictures, --steps, --per-picture and --batch must be at least 1, --warmup at least 0")
    cfg = PipelineConfig()
    cfg.chat_per_picture = args.per_picture or cfg.chat_per_picture
    cfg.stage2.pack = cfg.stage2.pack if args.pack is None else args.pack
    cfg.stage2.batch_size = args.batch or cfg.stage2.batch_size
    cfg.stage2.optim.compile = cfg.stage2.optim.compile if args.compile is None else args.compile
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    before = matmul_flops_per_second()  # a shared machine's speed drifts: the bar is taken on both sides
    costs = step_costs(args.pictures, args.steps, cfg=cfg, warmup=args.warmup)
    after = matmul_flops_per_second()
    peak = max(before, after)
    base = costs["no grounding"].seconds
    for name, cost in costs.items():
        rate = cost.flops / cost.seconds
        print(
            f"{name:>13}: {cost.seconds:.3f} s/step  ({100 * (cost.seconds / base - 1):+.1f}%)  "
            f"{cost.flops / 1e9:.1f} GFLOP/step  {rate / 1e9:.0f} GFLOP/s = {100 * rate / peak:.0f}% of a matmul's  "
            f"{cost.trained:.0f} trained tokens/step = {1000 * cost.seconds / cost.trained:.2f} s per 1000"
        )
    steps = cfg.stage2.optim.steps
    print(f"grounding adds {(costs['grounding'].seconds - base) * steps / 60:.1f} min to {steps} chat steps")
    print(
        f"a 1024x1024 {'bfloat16' if fast_bf16() else 'float32'} matmul: {before / 1e9:.0f} GFLOP/s before, "
        f"{after / 1e9:.0f} after, "
        f"on {torch.get_num_threads()} threads"
    )
    print(
        f"rows of {cfg.chat_per_picture} record(s) a picture{', packed' if cfg.stage2.pack else ''}, "
        f"{cfg.stage2.batch_size} a step"
    )
    warm = ", ".join(f"{name} {cost.warmup:.1f} s" for name, cost in costs.items())
    layers = "compiled layers" if cfg.stage2.optim.compile else "plain layers"
    print(f"{layers}, attention in float32; the {args.warmup} warm-up steps before the timed ones: {warm}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
