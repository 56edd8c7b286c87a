"""Per-stage latency of a :class:`~diffcut_edge.runtime.Segmenter` (no torch).

``run_bench`` warms the segmenter up, then times ``segment_batch`` on copies of one
frame for each batch size. Stage figures (preprocess, encoder, ncut, assign, pamr,
total) are the per-frame ``timings`` the Segmenter reports; ``batch_ms`` is the wall
time of the whole ``segment_batch`` call measured here, and frames per second is
``batch / median(batch_ms)``. Peak host memory is the process's ``ru_maxrss``
(everything the process ever held, model included); GPU memory is read from cupy's
pool and ``cudaMemGetInfo`` when the segmenter runs on CUDA.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from diffcut_edge import versions
from diffcut_edge.defaults import TIMING_KEYS
from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import cupy

STAGES = TIMING_KEYS  # the Segmenter's stages + total, defined once in defaults


@dataclass
class StageStats:
    """Latency of one stage over the timed iterations, in milliseconds."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> StageStats:
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            return cls(float("nan"), float("nan"), float("nan"), float("nan"))
        return cls(float(np.median(a)), float(np.percentile(a, 90)), float(a.mean()), float(a.min()))


@dataclass
class BatchResult:
    """Figures for one batch size."""

    batch: int
    iters: int
    stages: dict[str, StageStats]  # per frame, as the Segmenter reports them
    batch_ms: StageStats  # wall time of one segment_batch call
    fps: float  # frames per second from the median batch time
    num_segments: int  # of the first frame, a sanity figure


@dataclass
class BenchReport:
    device: str
    backend: str
    versions: dict[str, str]
    model: dict[str, Any]
    image: str
    refine: bool
    warmup: int
    batches: list[BatchResult] = field(default_factory=list)
    memory: dict[str, float | None] = field(default_factory=dict)
    load_average: tuple[float, float, float] | None = None  # 1/5/15 min, after the runs: other load skews timings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the stages of the first batch size are also top-level keys."""
        data = asdict(self)
        first = data["batches"][0]["stages"] if data["batches"] else {}
        for stage in STAGES:
            data[stage] = first.get(stage)
        return data


# ----------------------------------------------------------------------- environment
def bench_frame(image: str | None = None) -> tuple[np.ndarray, str]:
    """The frame bench times and how the report names it: ``image`` read from disk, else
    :func:`synthetic_image`."""
    if image:
        from diffcut_edge.runtime.images import read_image

        return read_image(image), str(image)
    frame = synthetic_image()
    return frame, f"synthetic {frame.shape[1]}x{frame.shape[0]}"


def synthetic_image(height: int = 480, width: int = 640) -> np.ndarray:
    """A deterministic BGR uint8 test frame: smooth gradients plus a few flat shapes,
    so NCut has several regions to find (no randomness, no data files)."""
    import cv2

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frame = np.stack(
        [255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 127 + 60 * np.sin(x / 40.0) * np.cos(y / 55.0)],
        axis=-1,
    )
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    cv2.circle(frame, (width // 3, height // 2), min(height, width) // 5, (30, 200, 40), -1)
    cv2.rectangle(frame, (width // 2, height // 6), (width - width // 8, height // 2), (200, 40, 160), -1)
    cv2.ellipse(frame, (2 * width // 3, 3 * height // 4), (width // 6, height // 10), 20, 0, 360, (20, 60, 220), -1)
    return frame


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo (Linux; "Hardware"/"Model" on ARM boards such as
    Jetson), else what ``platform`` says."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() not in fields:
                    fields[key.strip().lower()] = value.strip()
    except OSError:
        pass
    for key in ("model name", "hardware", "model"):
        if fields.get(key) and not fields[key].isdigit():
            return fields[key]
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    """Name of CUDA device 0 via cupy, or None when cupy or a GPU is missing."""
    if not cupy.available():
        return None
    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # no driver / no device: the bench still runs on the CPU
        return None


def device_description(device: str) -> str:
    import os

    cpu = f"{cpu_model()} ({os.cpu_count()} logical cores), {platform.system()} {platform.machine()}"
    gpu = gpu_name() if device == "cuda" else None
    return f"{gpu} + {cpu}" if gpu else cpu


def library_versions() -> dict[str, str]:
    """Versions of what the runtime runs on; optional packages only when installed."""
    return versions.library_versions(versions.RUNTIME_LIBRARIES, python=True)


def host_peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (``ru_maxrss``; KiB on Linux)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def gpu_memory_mb() -> dict[str, float] | None:
    """cupy pool usage and device-wide used memory in MiB, or None without a GPU."""
    if not cupy.available():
        return None
    try:
        pool = cupy.get_default_memory_pool()
        free, total = cupy.cuda.runtime.memGetInfo()
        return {
            "cupy_pool_used_mb": pool.used_bytes() / 2**20,
            "cupy_pool_total_mb": pool.total_bytes() / 2**20,
            "device_used_mb": (total - free) / 2**20,
            "device_total_mb": total / 2**20,
        }
    except Exception:
        return None


# ------------------------------------------------------------------------- the bench
def _time_batch(segmenter, frames: list[np.ndarray]) -> tuple[float, list]:
    start = time.perf_counter()
    results = segmenter.segment_batch(frames)
    return (time.perf_counter() - start) * 1e3, results


def bench_batch(segmenter, frame: np.ndarray, batch: int, *, iters: int, warmup: int) -> BatchResult:
    """Warm up, then time ``iters`` calls of ``segment_batch`` on ``batch`` copies of ``frame``."""
    from diffcut_edge.runtime.memory import check_fits

    # Each frame's result, and (a model folder's) encoder input and features, held at once for the batch.
    per_frame = 8 * frame.shape[0] * frame.shape[1]
    if (m := segmenter.manifest) is not None:
        per_frame += 4 * (3 * m.resolution**2 + m.num_tokens * m.channels)
    check_fits(batch * per_frame, f"a batch of {batch} frames", "lower --batch")
    frames = [frame] * batch
    for _ in range(warmup):
        segmenter.segment_batch(frames)
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    batch_ms: list[float] = []
    num_segments = 0
    for _ in range(iters):
        elapsed, results = _time_batch(segmenter, frames)
        batch_ms.append(elapsed)
        num_segments = int(results[0].num_segments)
        for result in results:
            for stage in STAGES:
                if stage in result.timings:
                    per_stage[stage].append(float(result.timings[stage]))
    stats = StageStats.of(batch_ms)
    return BatchResult(
        batch=batch,
        iters=iters,
        stages={s: StageStats.of(v) for s, v in per_stage.items()},
        batch_ms=stats,
        fps=batch * 1e3 / stats.median_ms,
        num_segments=num_segments,
    )


class Benchable(Protocol):
    """What bench times and reports: a Segmenter, or a test's scripted stand-in."""

    manifest: Any  # the model folder's Manifest (None: no folder)
    device: str  # where post-processing runs
    backend_description: str

    def segment_batch(self, frames: Sequence[np.ndarray]) -> list[Any]: ...


def describe_backend(segmenter: Benchable) -> tuple[str, str]:
    """(backend description, device) of a Segmenter, e.g. ("OnnxRuntimeBackend[CPUExecutionProvider]", "cpu")."""
    return segmenter.backend_description, segmenter.device


def _manifest_fields(segmenter: Benchable) -> dict[str, Any]:
    manifest = segmenter.manifest
    if manifest is None:
        return {}
    from diffcut_edge.runtime.manifest import REQUIRED_FIELDS

    keep = (*REQUIRED_FIELDS, "hook", "model_revision", "quantization", "verification")
    return {k: getattr(manifest, k) for k in keep if hasattr(manifest, k)}


def run_bench(
    segmenter,
    frame: np.ndarray,
    *,
    batches: Sequence[int] = (1,),
    iters: int = 10,
    warmup: int = 2,
    image: str = "synthetic",
    refine: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time a segmenter at each batch size and collect the environment it ran in."""
    if iters < 1 or warmup < 0 or not batches or min(batches) < 1:
        raise DiffCutError(
            f"bench needs iters >= 1, warmup >= 0 and batch sizes >= 1 "
            f"(got iters={iters}, warmup={warmup}, batches={list(batches)})"
        )
    backend, device = describe_backend(segmenter)
    report = BenchReport(
        device=device_description(device),
        backend=f"{backend} ({device})",
        versions=library_versions(),
        model=_manifest_fields(segmenter),
        image=image,
        refine=refine,
        warmup=warmup,
    )
    for batch in batches:
        if progress:
            progress(f"batch {batch}: {warmup} warm-up + {iters} timed runs")
        report.batches.append(bench_batch(segmenter, frame, batch, iters=iters, warmup=warmup))
    report.memory = {"host_peak_rss_mb": host_peak_rss_mb()}
    report.load_average = _load_average()
    gpu = gpu_memory_mb() if device == "cuda" else None
    if gpu:
        report.memory.update(gpu)
    return report


def _load_average() -> tuple[float, float, float] | None:
    import os

    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):  # not on Windows
        return None


def format_report(report: BenchReport) -> str:
    """The terminal table: one block per batch size, median and p90 per stage."""
    lines = [
        f"device   {report.device}",
        f"backend  {report.backend}",
        "versions " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
    ]
    if report.model:
        m = report.model
        lines.append(
            f"model    {m.get('model_id')} family={m.get('family')} R={m.get('resolution')} "
            f"grid={m.get('grid')} C={m.get('channels')} {m.get('precision')}"
        )
        if m.get("quantization"):
            v = m.get("verification")
            lines.append(
                "verified "
                + (
                    "never (diffcut-edge verify --model-dir ... --against FP32_DIR)"
                    if not v
                    else f"{'passed' if v.get('passed') else 'FAILED'} against {v.get('against')}: "
                    f"min cosine {v.get('min_cosine', float('nan')):.4f} on {v.get('images')} image(s)"
                )
            )
    lines.append(f"image    {report.image}; refine={report.refine}; warm-up {report.warmup}")
    for b in report.batches:
        lines.append("")
        lines.append(
            f"batch {b.batch} ({b.iters} runs): {b.fps:.2f} frames/s, "
            f"batch call median {b.batch_ms.median_ms:.1f} ms, p90 {b.batch_ms.p90_ms:.1f} ms, "
            f"{b.num_segments} segments"
        )
        lines.append(f"  {'stage':<11}{'median ms':>11}{'p90 ms':>10}")
        for stage in STAGES:
            s = b.stages[stage]
            lines.append(f"  {stage:<11}{s.median_ms:>11.2f}{s.p90_ms:>10.2f}")
    mem = ", ".join(f"{k} {v:.0f}" for k, v in report.memory.items() if v is not None)
    lines.append("")
    lines.append(f"memory   {mem or 'n/a'}")
    if report.load_average:
        lines.append(f"load     {report.load_average} (1/5/15 min; other processes skew the timings)")
    return "\n".join(lines)
