"""The one optimisation loop every stage uses: AdamW, warmup + cosine decay, clipping, bf16 autocast."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm


def fast_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX), so that autocasting to bf16 speeds a step.

    Not oneDNN's own test (`torch.ops.mkldnn._is_mkldnn_bf16_supported`): that says yes on any AVX-512 CPU, where
    oneDNN emulates bf16. On 2 cores of an Ice Lake Xeon (AVX-512, no BF16) a 1024x1024 matmul ran at 57 GFLOP/s
    under bf16 autocast against 136 in float32, so training there autocast to the slower precision."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: oneDNN's test, the closest it has
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    """What a plain `size` x `size` matmul reaches with torch's threads, autocast as training is (bf16 where the
    CPU does it natively, else float32): the bar for a step. Its own random generator: torch's stays untouched."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16()):
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return repeats * 2 * size**3 / (time.perf_counter() - start)


@dataclass(slots=True)
class OptimConfig:
    steps: int  # optimiser steps (one batch each)
    lr: float  # peak learning rate
    warmup: int = 50  # linear warmup steps
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    # autocast matmuls to bfloat16, weights staying float32; None: only where the CPU has bf16 instructions
    # (AMX, AVX-512 BF16; `fast_bf16`): elsewhere it is emulated, about 100x slower than float32 on AVX2, 2.4x on
    # plain AVX-512. A whole run under bf16 (AVX-512 BF16 EPYC, 7ca9015) gave a chat model as good on the target
    # kinds but with `where` 37 against 79% of the float32-trained shipped weights, its chat stage again in float32
    # 47%: see the README ("native bfloat16")
    bf16: bool | None = None
    # the stage's transformer layers under torch.compile (llava.train.compiled): the full run's stages, not smoke
    # (half a minute of compiling a stage)
    compile: bool = False

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = fast_bf16()
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"steps must be >= 1 and lr > 0, got steps={self.steps} lr={self.lr}")

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)


@dataclass(slots=True)
class History:
    """What a run did: loss and lr per step, wall time, optional evaluation points."""

    name: str
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> [(step, value)]
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"name": self.name, "losses": self.losses, "lrs": self.lrs, "evals": self.evals, "seconds": self.seconds}

    @classmethod
    def from_json(cls, raw: dict) -> History:
        evals = {k: [tuple(point) for point in v] for k, v in raw["evals"].items()}
        return cls(raw["name"], list(raw["losses"]), list(raw["lrs"]), evals, float(raw["seconds"]))


def train(
    params: Iterable[torch.nn.Parameter],
    loss_fn: Callable[[int], torch.Tensor],
    cfg: OptimConfig,
    name: str,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    eval_every: int = 0,
    progress: bool = True,
    on_step: Callable[[], None] | None = None,
) -> History:
    """Run `cfg.steps` steps of `loss_fn(step)` (a scalar loss for one batch) and return the history;
    `on_step()` runs before each step, on this thread (`llava.train.share` widens the thread pool there)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    history = History(name)
    start = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=name, unit="step", disable=not progress, mininterval=2.0)
    for step in bar:
        if on_step is not None:
            on_step()
        lr = cfg.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = loss_fn(step)
        value = float(loss.detach())
        if not math.isfinite(value):  # before the step: the weights stay as they were
            raise FloatingPointError(f"{name}: loss became {value} at step {step}; lower the learning rate")
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.losses.append(value)
        history.lrs.append(lr)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{value:.3f}")
        if evaluate and eval_every and ((step + 1) % eval_every == 0 or step + 1 == cfg.steps):
            for metric, v in evaluate(step + 1).items():
                history.evals.setdefault(metric, []).append((step + 1, v))
    history.seconds = time.perf_counter() - start
    return history
