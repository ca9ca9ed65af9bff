"""Transformer layers compiled while a stage trains (`OptimConfig.compile`).

At our sizes a step is many small operations, and eager PyTorch runs each element-wise one (norms, rotary
embedding, SiLU, autocast's casts) as a pass over memory of its own; inductor fuses them into C++ loops. The
matrix products stay torch's. Each layer's `forward` is compiled with dynamic shapes (every batch has its own
length) and put back when the block ends, so generation and saving see the plain modules. The first steps of a
stage pay for the compilation (half a minute to a minute a process on a cold cache); inductor caches the kernels on disk.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


def compiler_found() -> bool:
    """Whether inductor has a C++ compiler to build its CPU kernels with."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@contextmanager
def compiled_layers(layers: Sequence[torch.nn.Module], enabled: bool = True) -> Iterator[None]:
    """Inside the block each of `layers` runs a compiled copy of its forward; afterwards the module's own.
    Without a C++ compiler, a warning and the plain layers."""
    if enabled and not compiler_found():
        warnings.warn("no C++ compiler (g++, c++, clang++) found: training runs the layers uncompiled", stacklevel=3)
        enabled = False
    if not enabled:
        yield
        return
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    # the layers share their class's code, and each is a graph of its own (its index is a constant in it), in
    # training and in evaluation: dynamo's default of 8 graphs a function ran the later ones eager
    limit = max(torch._dynamo.config.recompile_limit, 4 * len(layers))
    try:
        with torch._dynamo.config.patch(recompile_limit=limit):
            yield
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute: the class's forward again
