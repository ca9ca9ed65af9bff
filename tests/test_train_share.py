"""`llava.train.share.Beside`: a stage in a process beside this one, sharing the threads."""

from __future__ import annotations

import os
import time

import pytest
import torch

from llava.train.share import Beside, SideError

WAIT_S = 60.0


def _threads_until_widened(on_step) -> tuple[int, int]:
    """Beside: its threads at the start, then after calling `on_step` until it has them all."""
    start = torch.get_num_threads()
    deadline = time.monotonic() + WAIT_S
    while torch.get_num_threads() == start and time.monotonic() < deadline:
        on_step()
        time.sleep(0.05)
    return start, torch.get_num_threads()


def _weights(on_step) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return torch.nn.Linear(4, 3).state_dict()


def _fails(on_step) -> None:
    raise ValueError("the stage beside broke")


def _dies(on_step) -> None:
    os._exit(3)


def _sleeps(on_step) -> None:
    time.sleep(WAIT_S)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_each_side_gets_half_and_the_one_left_takes_all_threads(two_threads):
    with Beside(_threads_until_widened) as side:
        assert torch.get_num_threads() == 1
        assert side.result() == (1, 2)  # the side took both threads once this side was done
    assert torch.get_num_threads() == 2


def test_this_side_takes_the_threads_when_the_other_is_done(two_threads):
    with Beside(_weights) as side:
        deadline = time.monotonic() + WAIT_S
        while torch.get_num_threads() == 1 and time.monotonic() < deadline:
            side.on_step()
            time.sleep(0.05)
        assert torch.get_num_threads() == 2
        weights = side.result()
    # tensors come back whole after the process is gone
    assert torch.equal(weights["weight"], _weights(None)["weight"])


def test_an_error_beside_is_raised_here_with_its_traceback(two_threads):
    with pytest.raises(SideError, match="ValueError: the stage beside broke"), Beside(_fails) as side:
        side.result()
    with pytest.raises(SideError, match="exit code 3"), Beside(_dies) as side:
        side.result()
    assert torch.get_num_threads() == 2


def test_an_error_here_stops_the_process_beside(two_threads):
    start = time.monotonic()
    with pytest.raises(KeyError), Beside(_sleeps) as side:
        raise KeyError("here")
    assert not side._process.is_alive() and time.monotonic() - start < WAIT_S / 2
    assert torch.get_num_threads() == 2


def test_one_thread_cannot_be_shared():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(ValueError, match="at least 2 threads"):
            Beside(_weights)
    finally:
        torch.set_num_threads(before)


def _steps_until_stopped(on_step) -> None:
    """Beside: a stage that would train for a minute, calling `on_step` between its steps."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        on_step()
        time.sleep(0.05)


def _parent_of_a_side(pid_file: str) -> None:
    """A training process that starts a side, writes the side's pid and waits to be killed."""
    torch.set_num_threads(2)
    with Beside(_steps_until_stopped) as side:
        with open(pid_file, "w") as f:
            f.write(str(side._process.pid))
        side.result()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (an exited one that nobody reaped yet is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_side_ends_when_its_parent_is_killed(tmp_path):
    import multiprocessing
    import signal

    pid_file = tmp_path / "side.pid"
    parent = multiprocessing.get_context("spawn").Process(target=_parent_of_a_side, args=(str(pid_file),))
    parent.start()
    deadline = time.monotonic() + WAIT_S
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    side = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)  # no clean exit: daemon children are not stopped for it
    parent.join()
    deadline = time.monotonic() + WAIT_S / 2
    while time.monotonic() < deadline:
        if not _running(side):
            return  # gone: it noticed at its next step
        time.sleep(0.1)
    os.kill(side, signal.SIGKILL)
    pytest.fail("the side process trained on after its parent was killed")
