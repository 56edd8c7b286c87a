"""Progress of the export stage's long commands (export, quantize): a stage bar with the time of
each stage, and per-item bars inside a stage (calibration images, report layers). stderr only, via
tqdm; nothing when ``progress`` is False."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator


class Stages:
    """A bar over the named stages of ``task`` ("export: truncate"); times each stage."""

    def __init__(self, task: str, names: list[str], progress: bool):
        self.task, self.names, self.seconds, self._bar = task, names, {}, None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=len(names),
                desc=task,
                unit="stage",
                bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}",
            )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.set_description(f"{self.task}: {name}")
            self._bar.refresh()
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_description(f"{self.task}: done")
            self._bar.close()


@contextlib.contextmanager
def item_bar(total: int, shown: bool, desc: str, unit: str) -> Iterator[Callable[[], None]]:
    """A tick per ``unit``; the bar opens on the first (no bar for a run that fails before)."""
    bar = None

    def tick() -> None:
        nonlocal bar
        if shown and bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
        if bar is not None:
            bar.update(1)

    try:
        yield tick
    finally:
        if bar is not None:
            bar.close()
