"""isolated.py: a stage in its own process returns, raises, dies or is interrupted cleanly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.isolated import call_isolated, run_stage


def _add(a: int, b: int) -> int:
    return a + b


def _pid_of_child() -> int:
    return os.getpid()


def _refuse(message: str) -> None:
    raise DiffCutError(message)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does


def _sleep_after_writing_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(60)


def test_a_stage_returns_its_value_from_another_process():
    assert call_isolated("sum", _add, 2, b=3) == 5
    assert call_isolated("pid", _pid_of_child) != os.getpid()
    assert run_stage(False, "pid", _pid_of_child) == os.getpid()  # not isolated: here


def test_a_stage_raises_its_own_error():
    with pytest.raises(DiffCutError, match="no images in the folder"):
        call_isolated("calibration", _refuse, "no images in the folder")


def test_a_stage_whose_process_dies_is_one_clear_error():
    with pytest.raises(DiffCutError, match="the calibration process died .*exit code -9"):
        call_isolated("calibration", _die)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_an_interrupted_caller_takes_the_stage_down_with_it(tmp_path):
    pid_file = tmp_path / "pid"

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 3.0)  # after the child has started (spawn takes ~1 s)
        with pytest.raises(KeyboardInterrupt):
            call_isolated("quantization", _sleep_after_writing_pid, str(pid_file))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped, not left sleeping for a minute
        os.kill(pid, 0)
