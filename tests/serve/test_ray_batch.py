"""``segment --engine ray`` on a local Ray started by the test (CPU, 2 workers), with the tiny SDXL
export: the same outputs as the local engine, resume after a stop, a bad image in the set, URIs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.apps.batch import OutputOptions, output_paths
from diffcut_edge.runtime.spec import SegmenterSpec
from diffcut_edge.serve import ray_batch as rb

ray = pytest.importorskip("ray", reason="segment --engine ray needs the [ray] extra (ray[data])")
R = 256


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module; the engine leaves a Ray it did not start running."""
    rb.quiet_ray_logs()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(photo_dir) -> Path:
    return photo_dir


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("sdxl", R, "fp32")


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / rb.RESULTS_NAME).read_text().splitlines()]


def test_ray_outputs_equal_the_local_engine(local_ray, photos, model_dir, tmp_path, capsys):
    local, distributed = tmp_path / "local", tmp_path / "ray"
    assert (
        cli.main(
            ["segment", str(photos), "--model-dir", str(model_dir), "--out", str(local), "-q", "--backend", "ort-cpu"]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "segment",
                str(photos),
                "--model-dir",
                str(model_dir),
                "--out",
                str(distributed),
                "-q",
                "--backend",
                "ort-cpu",
                "--engine",
                "ray",
                "--workers",
                "2",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "segmented 4 image(s)" in out and "with Ray (2 worker(s))" in out and "images/s" in out
    names = sorted(p.name for p in local.iterdir())
    assert sorted(p.name for p in distributed.iterdir()) == names and rb.RESULTS_NAME in names  # both write it
    for name in names:
        if name.endswith("_labels.png"):
            a = cv2.imread(str(local / name), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(distributed / name), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(a, b)
    rows = _results(distributed)
    assert sorted(r["stem"] for r in rows) == ["p0", "p1", "p2", "p3"]
    assert all(r["error"] is None and r["num_segments"] >= 1 and r["timings"]["total"] > 0 for r in rows)


def test_a_folder_with_a_vocabulary_gets_its_segments_json(local_ray, photos, vocab_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    items = rb.collect_items([str(photos)])
    output = OutputOptions(overlay_format="none", segments_json=True)
    report = rb.run(items, SegmenterSpec(vocab_model_dir, backend="ort-cpu"), out, output=output)
    assert (report.done, report.failed) == (4, [])
    for stem in ("p0", "p1", "p2", "p3"):
        doc = json.loads((out / f"{stem}_segments.json").read_text())
        labels = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert doc["vocabulary"] == "voc" and [s["id"] for s in doc["segments"]] == sorted(np.unique(labels))
    (out / "p2_segments.json").unlink()  # an incomplete image: resumed
    assert [i.stem for i in rb.pending(items, out, output)] == ["p2"]


def test_a_stopped_job_resumes_without_redoing_or_corrupting(local_ray, photos, model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    items = rb.collect_items([str(photos)])
    output = OutputOptions()
    first = rb.run(items, SegmenterSpec(model_dir, backend="ort-cpu"), out, output=output)
    assert (first.done, first.skipped) == (4, 0)
    # What a kill leaves: two images without outputs (never reached), the last line cut in half (an
    # image whose outputs were written but whose line was not: it is done again).
    for stem in ("p1", "p3"):
        for path in output_paths(out, stem, output).values():
            path.unlink()
    lines = [
        line
        for line in (out / rb.RESULTS_NAME).read_text().splitlines()
        if json.loads(line)["stem"] not in ("p1", "p3")
    ]  # never reached: no outputs, no line
    cut = json.loads(lines[-1])["stem"]
    (out / rb.RESULTS_NAME).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    redo = {"p1", "p3", cut}
    kept = {
        p.name: p.stat().st_mtime_ns
        for p in out.iterdir()
        if p.name.split("_")[0] not in redo and p.name != rb.RESULTS_NAME
    }
    plans = []
    second = rb.run(
        items,
        SegmenterSpec(model_dir, backend="ort-cpu"),
        out,
        output=output,
        on_plan=lambda r: plans.append((r.images, r.skipped, r.done)),
    )
    assert plans == [(4, 4 - len(redo), 0)]  # told before any work, once
    assert (second.done, second.skipped, second.failed) == (len(redo), 4 - len(redo), [])
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # the finished ones were not redone
    rows = _results(out)  # every line parses: the cut one was dropped
    assert sorted(r["stem"] for r in rows) == ["p0", "p1", "p2", "p3"]  # one line per image
    assert rb.pending(items, out, output) == []


def test_sigterm_mid_job_then_a_rerun_finishes_the_rest(photos, model_dir, tmp_path):
    # A real stop: the CLI in its own process (its own local Ray), SIGTERM after the first result.
    inputs = tmp_path / "many"
    inputs.mkdir()
    for i in range(12):
        shutil.copy(photos / f"p{i % 4}.png", inputs / f"img{i:02d}.png")
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "diffcut_edge.cli",
        "segment",
        str(inputs),
        "--model-dir",
        str(model_dir),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--workers",
        "1",
        "--batch-size",
        "1",
        "-q",
        "--backend",
        "ort-cpu",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (out / rb.RESULTS_NAME).is_file() and (out / rb.RESULTS_NAME).read_text().count("\n") >= 1
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    done_before = len(_results(out)) if (out / rb.RESULTS_NAME).is_file() else 0
    assert 1 <= done_before < 12
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "complete from an earlier run" in rerun.stdout
    # Ray's own notes (token authentication on, progress bars off) stay off the user's terminal.
    assert "Token authentication" not in rerun.stderr and "Progress bars disabled" not in rerun.stderr
    rows = _results(out)
    assert sorted({r["stem"] for r in rows}) == [f"img{i:02d}" for i in range(12)]
    assert all(r["error"] is None for r in rows)
    # Ray kills its workers mid-write when the driver stops; the rerun removed what they left.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_bad_image_fails_its_row_only(local_ray, photos, model_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(photos, inputs)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "out"
    code = cli.main(
        [
            "segment",
            str(inputs),
            "--model-dir",
            str(model_dir),
            "--out",
            str(out),
            "-q",
            "--backend",
            "ort-cpu",
            "--engine",
            "ray",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and "1 of 5 image(s) failed" in captured.err
    rows = {r["stem"]: r for r in _results(out)}
    assert rows["broken"]["error"] and rows["broken"]["num_segments"] == -1
    assert all(rows[f"p{i}"]["error"] is None for i in range(4))
    assert (out / "p0_labels.png").is_file() and not (out / "broken_labels.png").exists()


def test_uri_inputs_are_read_through_pyarrow(local_ray, photos, model_dir, tmp_path):
    uri = photos.resolve().as_uri()  # file:///...: the same code path as s3:// and gs://
    items = rb.collect_items([uri])
    assert [i.stem for i in items] == ["p0", "p1", "p2", "p3"] and all(i.source.startswith("file://") for i in items)
    report = rb.run(items, SegmenterSpec(model_dir, backend="ort-cpu"), tmp_path / "out")
    assert report.done == 4 and (tmp_path / "out" / "p2_labels.png").is_file()


def test_bad_settings_are_refused_before_ray_starts(photos, model_dir, tmp_path):
    items = rb.collect_items([str(photos)])
    from diffcut_edge.errors import DiffCutError

    with pytest.raises(DiffCutError, match="--workers"):
        rb.run(items, model_dir, tmp_path, workers=0)
    with pytest.raises(DiffCutError, match="--gpus-per-worker"):
        rb.run(items, model_dir, tmp_path, gpus_per_worker=-1)
    with pytest.raises(DiffCutError, match="does not exist"):
        rb.collect_items([(tmp_path / "nothing").as_uri()])


def test_damaged_result_lines_are_skipped_with_a_warning(tmp_path, caplog):
    good = {"stem": "p0", "source": "p0.png", "error": None}
    path = tmp_path / rb.RESULTS_NAME
    path.write_text(
        "\n".join([json.dumps(good), "[1, 2]", '"a string"', '{"stem": 5}', "[" * 5000, '{"stem": "p1", "err']) + "\n"
    )
    with caplog.at_level("WARNING", logger="diffcut_edge.ray"):
        rows = rb.read_results(path)
    assert rows == [good]
    assert "5 damaged line(s) skipped" in caplog.text
    assert [json.loads(line) for line in path.read_text().splitlines()] == [good]  # rewritten clean
