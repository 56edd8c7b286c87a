"""Run one memory-heavy stage in a fresh process, so its memory is the operating system's again after.

onnxruntime sessions over a large model do not give their memory back when they close: in one
process, SSD-1B at 1024 px kept ~4.6 GB after its INT8 session closed (glibc's heap; ``malloc_trim``
returned 0.7 GB), so stages run one after another add up (18 GB for calibrate -> quantize -> verify,
against ~10 GB for the largest stage alone). A stage run here starts from a clean interpreter
(``spawn``), returns its (pickled) result or raises its exception, and its memory is gone when it
returns. Costs an interpreter start and the stage's imports (~1-2 s): for big models only.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from diffcut_edge.errors import DiffCutError

T = TypeVar("T")


def call_isolated(what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a fresh process (``fn`` and its arguments must pickle: a module-level
    function and plain values). ``what`` names the stage in the error when the process dies."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool as e:
            raise DiffCutError(
                f"the {what} process died without an answer (killed for memory? see `dmesg`); "
                "close other programs or use a machine with more memory"
            ) from e


def run_stage(isolate: bool, what: str, fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` in a fresh process when ``isolate`` (see :func:`call_isolated`), else here."""
    return call_isolated(what, fn, *args) if isolate else fn(*args)
