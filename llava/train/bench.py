"""Seconds per stage-2 chat step at the full run's sizes, with and without the grounding loss.

    python -m llava.train.bench --pictures 1500 --steps 15

Random weights: the time of a step does not depend on what the model knows, so no earlier stage is needed.
The sequences, batch size and grounding targets are the full run's (`PipelineConfig`).
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from transformers import LlavaForConditionalGeneration
from transformers.utils import logging as hf_logging

from llava.data.build import instruct_records, make_pictures
from llava.model.tiny import build_config, build_processor, train_tokenizer
from llava.train.config import PipelineConfig
from llava.train.corpus import build_corpus
from llava.train.ground import grounding_targets
from llava.train.loop import OptimConfig
from llava.train.pipeline import _encode, _features
from llava.train.stages import StageConfig, run_stage


def step_seconds(pictures: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Mean seconds per step of the chat stage: {"no grounding": s, "grounding": s}."""
    cfg = PipelineConfig()
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
    examples = _encode(instruct_records(chosen, rng), tokenizer, config.image_seq_length, sizes.max_position_embeddings)
    scenes = {p.name: p.scene for p in chosen}
    ground = grounding_targets(examples, scenes, tokenizer, config.image_token_id, config.image_seq_length)
    out = {}
    for name, weight in (("no grounding", 0.0), ("grounding", cfg.stage2.ground_weight)):
        model.load_state_dict(start_state)
        stage = StageConfig(
            name, cfg.stage2.batch_size, OptimConfig(steps=steps, lr=1e-4, warmup=1), True, seed, weight
        )
        start = time.perf_counter()
        run_stage(model, examples, feats, index, stage, progress=False, ground=ground if weight else None)
        out[name] = (time.perf_counter() - start) / steps
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.train.bench", description=__doc__.splitlines()[0])
    p.add_argument("--pictures", type=int, default=1500, help="chat pictures to draw batches from")
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.pictures < 1 or args.steps < 1:
        p.error("--pictures and --steps must be at least 1")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    times = step_seconds(args.pictures, args.steps)
    base = times["no grounding"]
    for name, seconds in times.items():
        print(f"{name:>13}: {seconds:.3f} s/step  ({100 * (seconds / base - 1):+.1f}%)")
    steps = PipelineConfig().stage2.optim.steps
    print(f"grounding adds {(times['grounding'] - base) * steps / 60:.1f} min to {steps} chat steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
