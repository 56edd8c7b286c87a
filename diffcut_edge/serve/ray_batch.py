"""``segment --engine ray``: label many images with Ray Data, resumably.

A Ray Dataset of (image, output stem) rows goes through a class-based ``map_batches``: each actor
of the pool (``concurrency=workers``) opens one :class:`~diffcut_edge.runtime.Segmenter` and
writes each image's outputs itself, with the same writer as the local engine
(``apps.batch.write_outputs``: atomic files, so an output that exists is complete). The driver
appends one line per image to ``OUT/results.jsonl`` (segments, timings, or the error).

- Resumable: images whose outputs all exist and whose line says success are not sent again; a
  stopped job (SIGTERM, a killed worker, a lost node) re-run does the rest (and the few images a
  kill caught in flight). A line cut short by a kill is dropped on the next run; failed images are
  retried, and the last line of an image is its state.
- A bad image fails its row only (``error`` in results.jsonl and the summary), never the job.
- Inputs: local files, folders and globs (``runtime.images`` rules), and URIs pyarrow's filesystems read
  (``s3://bucket/prefix/``, ``gs://...``, ``file:///...``): each actor reads its images through pyarrow.
  OUT must be a folder every worker can write (local disk for a one-machine cluster; a shared
  mount on a real cluster), used by one job at a time: a run first deletes the temporary files a
  killed run left (Ray kills its workers outright, mid-write).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.apps.batch import RESULTS_NAME  # the same file the local engine writes
from diffcut_edge.errors import DiffCutError, missing_extra

log = logging.getLogger("diffcut_edge.ray")


@dataclass(frozen=True)
class Item:
    """One input: where it is (a local path or a URI) and the stem of its outputs."""

    source: str
    stem: str


@dataclass
class RayReport:
    images: int  # all inputs
    skipped: int  # complete from an earlier run
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return (self.done + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise missing_extra("ray", "ray", "segment --engine ray") from e
    return ray


# ------------------------------------------------------------------ inputs
def is_uri(text: str) -> bool:
    return "://" in str(text)


def list_uri(uri: str) -> list[str]:
    """Image files under a URI (a prefix, recursively) or the URI itself, via pyarrow's filesystems."""
    from pyarrow import fs

    from diffcut_edge.runtime.images import is_image_path

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            found = [path]
        elif info.type == fs.FileType.Directory:
            found = sorted(
                i.path
                for i in filesystem.get_file_info(fs.FileSelector(path, recursive=True))
                if i.type == fs.FileType.File and is_image_path(i.path)
            )
        else:
            raise DiffCutError(f"{uri} does not exist")
    except (OSError, ValueError) as e:
        raise DiffCutError(f"cannot list {uri}: {e}") from e
    scheme = uri.split("://", 1)[0]
    return [f"{scheme}://{p}" if not p.startswith(f"{scheme}://") else p for p in found]


def collect_items(inputs: Sequence[str], out: Path | None = None) -> list[Item]:
    """All inputs as items, with the same output stems as the local engine; with ``out``, less the
    outputs an earlier run wrote there (a re-run does not segment them)."""
    from diffcut_edge.apps.batch import drop_own_outputs, output_stems
    from diffcut_edge.runtime.images import collect_image_paths

    sources: list[str] = []
    local = [i for i in inputs if not is_uri(i)]
    if local:
        sources += [str(p) for p in collect_image_paths(local)[0]]
    for uri in (i for i in inputs if is_uri(i)):
        sources += list_uri(uri)
    if not sources:
        raise DiffCutError(f"no images found in {' '.join(inputs)}")
    stems = output_stems([Path(s.split("://", 1)[-1]) for s in sources])
    items = [Item(s, stem) for s, stem in zip(sources, stems)]
    if out is None:
        return items
    ours = {str(p) for p in drop_own_outputs([Path(s) for s in sources if not is_uri(s)], Path(out))[1]}
    return [i for i in items if i.source not in ours]


def pending(items: Sequence[Item], out: Path, output: Any, done_stems: set[str] | None = None) -> list[Item]:
    """Items still to do: not all outputs there (atomic writes: a file that exists is complete), or
    no successful line in results.jsonl (an image a kill caught between its outputs and its line is
    done again, so every image ends with exactly one successful line). Failed images are retried."""
    if done_stems is None:
        done_stems = {r.get("stem") for r in read_results(out / RESULTS_NAME) if not r.get("error")}
    from diffcut_edge.apps.batch import output_paths

    return [
        i
        for i in items
        if i.stem not in done_stems or not all(p.is_file() for p in output_paths(out, i.stem, output).values())
    ]


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.jsonl rows; a line cut short by a kill, or damaged (not a JSON object with a string
    ``stem``), is dropped with a warning and the file rewritten without it (its image is done again)."""
    if not path.is_file():
        return []
    rows, damaged = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if isinstance(row, dict) and isinstance(row.get("stem"), str):
            rows.append(row)
        elif line.strip():
            damaged += 1
    if damaged:
        from diffcut_edge import atomic

        log.warning(f"diffcut-edge: {path}: {damaged} damaged line(s) skipped (their images are done again)")
        atomic.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def remove_stale_temporaries(out: Path) -> int:
    """Delete our own temporary files a killed job left in ``out`` (Ray kills its workers outright
    when the driver stops, mid-write). Only names ``atomic`` makes; one job per OUT at a time."""
    from diffcut_edge.atomic import TEMP_MARK

    removed = 0
    for path in out.glob(f".*{TEMP_MARK}*"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


# ------------------------------------------------------------------ the workers
def read_source(source: str) -> np.ndarray:
    """BGR uint8 image from a local path (runtime.images rules) or a URI (pyarrow)."""
    from diffcut_edge.runtime.images import read_image, to_bgr_uint8

    if not is_uri(source):
        return read_image(source)
    import cv2
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(source)
        with filesystem.open_input_stream(path) as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise DiffCutError(f"{source}: cannot read ({e})") from e
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise DiffCutError(f"{source}: not an image OpenCV can decode")
    return to_bgr_uint8(decoded, source)


class SegmentActor:
    """One Segmenter per actor; ``__call__`` segments a batch of rows and writes their outputs."""

    def __init__(self, spec: dict[str, Any], out: str, output: dict[str, Any]) -> None:
        from diffcut_edge.apps.batch import OutputOptions
        from diffcut_edge.runtime.spec import SegmenterSpec

        self.segmenter = SegmenterSpec.from_dict(spec).open()  # the driver's spec, as plain data
        self.out = Path(out)
        self.output = OutputOptions(**output)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from diffcut_edge.apps.batch import write_outputs

        rows: dict[str, list] = {"source": [], "stem": [], "num_segments": [], "timings": [], "error": []}
        for source, stem in zip(batch["source"], batch["stem"]):
            source, stem = str(source), str(stem)
            try:
                frame = read_source(source)
                result = self.segmenter(frame)
                write_outputs(self.out, stem, frame, result, self.output)
                k, timings, error = int(result.num_segments), json.dumps(result.timings), ""
            except Exception as e:  # one bad image fails its row, never the job
                message = str(e) if isinstance(e, DiffCutError) else f"{source}: {type(e).__name__}: {e}"
                k, timings, error = -1, "{}", message
            for key, value in (
                ("source", source),
                ("stem", stem),
                ("num_segments", k),
                ("timings", timings),
                ("error", error),
            ):
                rows[key].append(value)
        return rows


# ------------------------------------------------------------------ the job
# Ray's lines that are not the user's business: its INFO chatter, that token authentication is on
# (good news) and that progress bars are off (ours are on). Not silenced: the core worker's
# error-level note on Ray Data's own actors (ray-project/ray#53727), C++ output that only turning
# off actor restarts would avoid.
_QUIET_RAY_LOGGERS = {
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    "ray.data._internal.progress": logging.ERROR,
}


def quiet_ray_logs() -> None:
    """Ray's lines that are not the user's off the terminal (the command prints its own progress and summary)."""
    for name, level in _QUIET_RAY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def run(
    items: Sequence[Item],
    segmenter: Any,
    out: str | os.PathLike,
    *,
    output: Any = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    batch_size: int = 4,
    address: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    on_plan: Callable[[RayReport], None] | None = None,
) -> RayReport:
    """Segment ``items`` into ``out`` on Ray (a local instance unless ``address``); see the module doc.

    ``segmenter``: the :class:`~diffcut_edge.runtime.spec.SegmenterSpec` every actor opens (a model
    folder's path stands for its defaults). ``on_plan(report)`` is called once what is left to do is
    known (``images - skipped``), before Ray starts; ``on_row(record)`` for each line written to
    results.jsonl."""
    from dataclasses import asdict

    from diffcut_edge.apps.batch import OutputOptions
    from diffcut_edge.runtime.spec import SegmenterSpec

    output = output or OutputOptions()
    spec = SegmenterSpec.of(segmenter)
    if spec.threads is None and not gpus_per_worker:
        spec = spec.replace(threads=1)  # one CPU per actor (num_cpus=1 below)
    out = Path(out)
    for name, value, low in (("workers", workers, 1), ("batch_size", batch_size, 1)):
        if int(value) < low:
            raise DiffCutError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if float(gpus_per_worker) < 0:
        raise DiffCutError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    from diffcut_edge import atomic

    atomic.make_dirs(out)
    remove_stale_temporaries(out)
    results_path = out / RESULTS_NAME
    done_stems = {r.get("stem") for r in read_results(results_path) if not r.get("error")}  # drops a cut line
    todo = pending(items, out, output, done_stems)
    report = RayReport(images=len(items), skipped=len(items) - len(todo))
    if on_plan is not None:
        on_plan(report)
    if not todo:
        return report
    ray = _ray()
    started_here = not ray.is_initialized()
    quiet_ray_logs()
    if started_here:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **({} if address else {"num_cpus": max(int(workers), os.cpu_count() or 1)}),
        )
    start = time.perf_counter()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"source": i.source, "stem": i.stem} for i in todo])
        ds = ds.map_batches(
            SegmentActor,
            batch_size=int(batch_size),
            compute=ray.data.ActorPoolStrategy(size=int(workers)),
            num_gpus=float(gpus_per_worker) or None,
            num_cpus=1,
            fn_constructor_kwargs={"spec": spec.to_dict(), "out": str(out), "output": asdict(output)},
        )
        with open(results_path, "a", encoding="utf-8") as results:
            for row in ds.iter_rows():
                record = {
                    "image": row["source"],
                    "stem": row["stem"],
                    "num_segments": row["num_segments"],
                    "timings": json.loads(row["timings"]),
                    "error": row["error"] or None,
                }
                results.write(json.dumps(record) + "\n")
                results.flush()
                if record["error"]:
                    report.failed.append((record["image"], record["error"]))
                else:
                    report.done += 1
                if on_row is not None:
                    on_row(record)
            os.fsync(results.fileno())
    finally:
        report.seconds = time.perf_counter() - start
        if started_here:
            ray.shutdown()
    return report
