"""Run one memory-heavy stage in a fresh process, so its memory is the operating system's again after.

onnxruntime sessions over a large model do not give their memory back when they close: in one
process, SSD-1B at 1024 px kept ~4.6 GB after its INT8 session closed (glibc's heap; ``malloc_trim``
returned 0.7 GB), so stages run one after another add up (18 GB for calibrate -> quantize -> verify,
against ~10 GB for the largest stage alone). A stage run here starts from a clean interpreter
(``spawn``), returns its (pickled) result or raises its exception, and its memory is gone when it
returns. Costs an interpreter start and the stage's imports (~1-2 s): for big models only.

If the caller is interrupted (Ctrl-C, SIGTERM) the stage's process is terminated with it, not left
to run to its end; if the stage's process dies (the OOM killer), that is one clear error.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

from diffcut_edge.errors import DiffCutError

T = TypeVar("T")


def _child(conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        outcome: tuple[str, Any] = ("ok", fn(*args, **kwargs))
    except BaseException as e:  # the caller re-raises it: the stage's own error, with its message
        outcome = ("error", e)
    try:
        conn.send(outcome)
    except Exception:  # a value that does not pickle: its words still reach the caller
        conn.send(("error", DiffCutError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
    finally:
        conn.close()


def call_isolated(what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a fresh process (``fn`` and its arguments must pickle: a module-level
    function and plain values). ``what`` names the stage in the error when the process dies."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args, kwargs), name=f"diffcut-edge {what}")
    process.start()
    send.close()  # only the child writes: a dead child then reads as end-of-file, not a hang
    try:
        wait([receive, process.sentinel])
        try:
            status, value = receive.recv()
        except EOFError:
            process.join()
            raise DiffCutError(
                f"the {what} process died without an answer (exit code {process.exitcode}; killed for "
                "memory? see `dmesg`); close other programs or use a machine with more memory"
            ) from None
        process.join()
        if status == "error":
            raise value
        return value
    finally:
        if process.is_alive():  # interrupted: the stage stops with its caller
            process.terminate()
            process.join()
        receive.close()


def run_stage(isolate: bool, what: str, fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` in a fresh process when ``isolate`` (see :func:`call_isolated`), else here."""
    return call_isolated(what, fn, *args) if isolate else fn(*args)
