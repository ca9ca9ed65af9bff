"""Two independent stages at once, each on its share of the CPU's threads.

At the pipeline's sizes a training step on two threads runs about 1.6 times as fast as on one, while two
one-thread processes side by side each keep one thread's speed (`python -m llava.train.bench --threads 1`,
two at once, 2 cores of an AMD EPYC with AVX-512 BF16: 1.20 and 1.22 s a chat step, against 1.19 alone and
0.73 on two threads). So the stages that do not need each other train side by side: CLIP beside the language
model, the ScienceQA fine-tune beside the chat one. Whichever side finishes first hands its threads to the
other, which takes them before its next step (`torch.set_num_threads` holds for the thread that calls it,
so the training thread itself must call it: `on_step`).

    with Beside(fn, *args) as side:   # fn(*args, on_step=...) runs in a fresh process, on half the threads
        mine = train_here(on_step=side.on_step)
        theirs = side.result()        # waits; fn's return value, or its error as SideError
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import traceback
from collections.abc import Callable
from typing import Any

import torch

_POLL_S = 2.0  # how often a waiting parent looks whether the other process died without a word


class SideError(RuntimeError):
    """The process beside this one failed; the message carries its traceback."""


class Widen:
    """`on_step` hook: once `done` (the other side finished) is set, this process takes all `total` threads."""

    def __init__(self, done, total: int) -> None:
        self.done, self.total, self.wide = done, total, False

    def __call__(self) -> None:
        if not self.wide and self.done.is_set():
            torch.set_num_threads(self.total)
            self.wide = True


class Orphaned:
    """The child's `on_step` hook: `Widen`, and an end to the child once its parent is gone. A daemon process
    dies with a parent that exits, not with one killed (a signal, or the machine's memory killer): such a child
    trained on alone for the rest of its stage, holding a core and writing into the parent's log."""

    def __init__(self, widen: Widen, parent: int) -> None:
        self.widen, self.parent = widen, parent

    def __call__(self) -> None:
        if os.getppid() != self.parent:
            os._exit(1)  # nobody is left to take a result
        self.widen()


def _side(
    fn: Callable[..., Any], args: tuple, threads: int, total: int, parent: int, parent_done, side_done, results
) -> None:
    """The child process: `fn(*args, on_step=...)` on `threads` threads, its result (or error) put on `results`."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    try:
        # plain pickle, as bytes: the queue's own pickler would hand tensors over as shared memory that dies
        # with this process, which may end before the parent reads them
        results.put(("ok", pickle.dumps(fn(*args, on_step=Orphaned(Widen(parent_done, total), parent)))))
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which raises it
        results.put(("error", traceback.format_exc()))
    finally:
        side_done.set()


class Beside:
    """Runs `fn(*args, on_step=hook)` in a spawned process on half of this process's threads (rounded down)
    while this one keeps the rest; `fn`, its arguments and its result must pickle. `on_step` is this side's hook.
    Leaving the block early (an error here) stops the other process; every thread is this process's again after."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.total = torch.get_num_threads()
        if self.total < 2:
            raise ValueError("running two stages side by side needs at least 2 threads (--threads)")
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-flight
        self._parent_done, self._side_done = ctx.Event(), ctx.Event()
        self._results = ctx.Queue()
        self._process = ctx.Process(
            target=_side,
            args=(
                fn,
                args,
                self.total // 2,
                self.total,
                os.getpid(),
                self._parent_done,
                self._side_done,
                self._results,
            ),
            name=f"beside-{getattr(fn, '__name__', 'fn')}",
            daemon=True,
        )
        self.on_step = Widen(self._side_done, self.total)

    def __enter__(self) -> Beside:
        self._process.start()
        torch.set_num_threads(self.total - self.total // 2)
        return self

    def result(self) -> Any:
        """Hand this side's threads over, wait for the other side and return what `fn` returned."""
        self._parent_done.set()
        while True:
            try:
                status, value = self._results.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    raise SideError(f"{self._process.name} died (exit code {code}) without a result") from None
        self._process.join()
        torch.set_num_threads(self.total)
        if status == "error":
            raise SideError(f"{self._process.name} failed:\n{value}")
        return pickle.loads(value)

    def __exit__(self, *exc) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        torch.set_num_threads(self.total)
