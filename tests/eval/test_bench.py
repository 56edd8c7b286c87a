"""bench: statistics, environment report and the timing loop (with a scripted segmenter)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.eval import bench


def test_stage_stats_are_median_and_p90():
    s = bench.StageStats.of([5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert s.median_ms == 5.5  # mean of 5 and 6
    assert s.p90_ms == pytest.approx(9.1)  # linear interpolation between 9 and 10 at rank 8.1
    assert s.min_ms == 1.0 and s.mean_ms == 5.5
    assert np.isnan(bench.StageStats.of([]).median_ms)


@dataclass
class _Result:
    num_segments: int
    timings: dict = field(default_factory=dict)


class ScriptedSegmenter:
    """Reports scripted stage timings: call i, frame j -> stage value 10 * i + j."""

    manifest = None
    device = "cpu"
    backend_description = "ScriptedBackend"

    def __init__(self):
        self.calls = 0
        self.batches = []

    def segment_batch(self, frames):
        self.batches.append(len(frames))
        base = 10.0 * self.calls
        self.calls += 1
        return [_Result(3, {k: base + j for k in bench.STAGES}) for j in range(len(frames))]


def test_bench_batch_warms_up_then_aggregates_per_frame_timings():
    seg = ScriptedSegmenter()
    result = bench.bench_batch(seg, bench.synthetic_image(32, 48), 2, iters=3, warmup=2)
    assert seg.batches == [2] * 5
    # Timed calls 2, 3, 4 -> per-frame values {20, 21, 30, 31, 40, 41}: median 30.5.
    assert result.stages["encoder"].median_ms == pytest.approx(30.5)
    assert result.stages["total"].min_ms == pytest.approx(20.0)
    assert result.num_segments == 3
    assert result.fps == pytest.approx(2e3 / result.batch_ms.median_ms)


def test_run_bench_report_is_json_ready_with_stage_keys():
    report = bench.run_bench(ScriptedSegmenter(), bench.synthetic_image(), batches=(1, 3), iters=2, warmup=0)
    data = json.loads(json.dumps(report.to_dict()))
    for stage in bench.STAGES:
        assert set(data[stage]) == {"median_ms", "p90_ms", "mean_ms", "min_ms"}
    assert [b["batch"] for b in data["batches"]] == [1, 3]
    assert {"numpy", "onnxruntime", "opencv", "diffcut-edge"} <= set(data["versions"])
    assert data["memory"]["host_peak_rss_mb"] > 0
    assert "cores" in data["device"]
    text = bench.format_report(report)
    assert all(stage in text for stage in bench.STAGES) and "frames/s" in text


def test_run_bench_rejects_bad_settings():
    with pytest.raises(DiffCutError, match="iters"):
        bench.run_bench(ScriptedSegmenter(), bench.synthetic_image(), iters=0)


def test_synthetic_image_is_deterministic_and_structured():
    a, b = bench.synthetic_image(), bench.synthetic_image()
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 100  # gradients, not a flat frame


def test_gpu_memory_is_none_without_cupy(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert bench.gpu_memory_mb() is None and bench.gpu_name() is None


def _cuda_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs cupy and an NVIDIA GPU")
def test_gpu_memory_reports_the_device():
    mem = bench.gpu_memory_mb()
    assert mem["device_total_mb"] > mem["device_used_mb"] > 0
    assert bench.gpu_name()
