"""What the CLI prints besides results: warnings, progress bars, per-item and timing lines (stderr)."""

from __future__ import annotations

import sys
from typing import Any

from diffcut_edge.defaults import STAGES

EXIT_ERROR = 2  # a DiffCutError: bad input, wrong folder, missing extra; a check that failed
EXIT_INTERNAL = 1  # an unexpected exception (a bug): one line, --debug for the traceback
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report it
EXIT_TERMINATED = 143  # SIGTERM


def info(verb: str, message: str) -> None:
    """A line about what the command is doing (stderr, so stdout keeps only results; above a progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"diffcut-edge {verb}: {message}", file=sys.stderr)


def warn(verb: str, message: str) -> None:
    info(verb, f"warning: {message}")


def note_verification(verb: str, manifest: Any, model_dir: str) -> None:
    """Say (once, on stderr) when a faster folder was never verified against full precision."""
    if note := manifest.verification_note(model_dir):
        warn(verb, note)


def stage_line(timings: dict) -> str:
    parts = [f"{k} {timings[k]:.0f}" for k in (*STAGES, "label") if k in timings]
    total = f" = {timings['total']:.0f} ms" if "total" in timings else " ms"
    return " + ".join(parts) + total


def progress(iterable=None, *, total=None, quiet: bool, unit: str):
    from tqdm import tqdm

    # On stderr, so stdout keeps only results; off with --quiet or when stderr is not a terminal.
    return tqdm(
        iterable,
        total=total,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(),
        leave=False,
    )


def say_progress(verb: str, quiet: bool):
    """A ``progress(message)`` callback for long library work: one stderr line each, or nothing."""
    if quiet:
        return lambda message: None
    return lambda message: print(f"{verb}: {message}", file=sys.stderr, flush=True)


class ImageLines:
    """segment's progress: a bar, one line per image (its segments, names, size, stage times), and
    the failures of a multi-image run as warnings."""

    def __init__(self, total: int, *, quiet: bool, verb: str = "segment") -> None:
        self.bar = progress(quiet=quiet, unit="img", total=total)
        self.quiet, self.verb, self.total = quiet, verb, total

    def result(self, path: Any, result: Any) -> None:
        self.bar.update(1)
        if self.quiet:
            return
        k = result.num_segments
        named = f" ({', '.join(sorted({s.class_name for s in result.segments}))})" if result.segments else ""
        self.bar.write(
            f"{path}: {k} segment{'s' if k != 1 else ''}{named}, {result.labels.shape[1]}x"
            f"{result.labels.shape[0]}, {stage_line(result.timings)}"
        )

    def failure(self, path: Any, message: str) -> None:
        self.bar.update(1)
        if self.total > 1:
            warn(self.verb, message)

    def __enter__(self) -> ImageLines:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


class RayLines:
    """segment --engine ray's progress: a bar sized once Ray's plan is known, failures as warnings."""

    def __init__(self, *, quiet: bool) -> None:
        self.bar = progress(quiet=quiet, unit="img")

    def plan(self, report: Any) -> None:
        self.bar.total = report.images - report.skipped
        self.bar.refresh()

    def row(self, record: dict) -> None:
        self.bar.update(1)
        if record["error"]:
            warn("segment", record["error"])

    def __enter__(self) -> RayLines:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)


def video_notes(read_stats: Any, writer: Any) -> str:
    """`` [2 broken frame(s) skipped; the input ended early]``, or nothing."""
    notes = [f"{read_stats.broken} broken frame(s) skipped"] if read_stats.broken else []
    notes += ["the input ended early"] if read_stats.ended_early else []
    notes += [note] if (note := writer.size_note()) else []
    return f" [{'; '.join(notes)}]" if notes else ""


def live_summary(summary: Any, max_frames: int | None, record: str | None, writer: Any) -> str:
    """webcam's last line: why it ended, its throughput, the recording."""
    if summary.quit:
        return f"stopped: {summary.stats.summary()}"
    ended = "stopped at --max-frames" if max_frames and summary.stats.frames >= max_frames else "source ended"
    recorded = ""
    if writer is not None:
        note = writer.size_note()
        recorded = f"; recorded {record}" + (f" ({note})" if note else "")
    return f"{ended}: {summary.stats.summary()}{recorded}"
