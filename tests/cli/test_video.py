"""``diffcut-edge video``: geometry and fps kept, --keyframes / --every, --realtime, damaged inputs, atomic output."""

from __future__ import annotations

import pytest

from diffcut_edge import cli
from diffcut_edge.apps import pipeline
from helpers.fake_segmenter import FakeSegmenter, export_available, make_video, run_cli
from helpers.video import corrupt_frame, run_fresh_process, video_geometry


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "in.avi"
    make_video(path, n=10)
    return path


def test_writes_the_overlay_video_at_input_fps_and_size(cli_fake_segmenter, clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli(["video", str(clip), str(out), "--model-dir", "m"], capsys)
    assert code == 0, err
    frames, fps, size = video_geometry(out)
    assert (frames, size) == (10, (128, 96)) and fps == pytest.approx(10.0)
    assert stdout.startswith(f"wrote {out}") and "10 frames" in stdout and "ms/frame" in stdout
    assert err == "" and cli_fake_segmenter.encode_calls == 10


def test_every_and_max_frames(cli_fake_segmenter, clip, tmp_path, capsys):
    out = tmp_path / "out.avi"
    code, _, err = run_cli(
        [
            "video",
            str(clip),
            str(out),
            "--model-dir",
            "m",
            "--every",
            "3",
            "--max-frames",
            "7",
            "--codec",
            "MJPG",
            "--no-track",
            "--no-pipeline",
        ],
        capsys,
    )
    assert code == 0, err
    assert video_geometry(out)[0] == 7 and cli_fake_segmenter.encode_calls == 3


def test_keyframes_option_its_alias_and_their_errors(cli_fake_segmenter, clip, tmp_path, capsys):
    out = tmp_path / "out.avi"
    code, stdout, err = run_cli(
        ["video", str(clip), str(out), "--model-dir", "m", "--keyframes", "every:4", "--codec", "MJPG"], capsys
    )
    assert code == 0, err
    assert video_geometry(out)[0] == 10 and cli_fake_segmenter.encode_calls == 3  # frames 0, 4, 8
    assert "10 frames (3 keyframes)" in stdout and "flow=" in stdout and "propagate=" in stdout
    code, _, err = run_cli(
        ["video", str(clip), str(out), "--model-dir", "m", "--keyframes", "auto", "--every", "2"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "give one of them" in err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["video", str(clip), str(out), "--model-dir", "m", "--keyframes", "often"])
    assert exit_.value.code == 2 and "expected 'every:N' (N >= 1) or 'auto'" in capsys.readouterr().err


def test_realtime_plays_the_file_at_its_rate(cli_fake_segmenter, clip, tmp_path, capsys):
    import time

    out = tmp_path / "out.avi"
    start = time.perf_counter()
    code, stdout, err = run_cli(
        ["video", str(clip), str(out), "--model-dir", "m", "--realtime", "--keyframes", "every:5", "--codec", "MJPG"],
        capsys,
    )
    assert code == 0, err
    assert time.perf_counter() - start >= 0.8  # 10 frames at 10 fps
    assert video_geometry(out)[0] == 10 and "10 frames" in stdout


def test_broken_frame_warns_once_and_finishes(clip, tmp_path):
    bad = tmp_path / "bad.avi"
    corrupt_frame(clip, bad, 6)
    out = tmp_path / "out.mp4"
    proc = run_fresh_process(["video", str(bad), str(out), "--model-dir", "m"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # One line: our warning, and no FFmpeg decoder chatter.
    assert proc.stderr.count("\n") == 1 and "warning" in proc.stderr and "frame 6 is unreadable" in proc.stderr
    assert video_geometry(out)[0] == 9 and "1 broken frame(s) skipped" in proc.stdout


def test_video_that_ends_early_keeps_what_was_read(cli_fake_segmenter, clip, tmp_path, capsys):
    short = tmp_path / "short.avi"
    data = clip.read_bytes()
    short.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli(["video", str(short), str(out), "--model-dir", "m"], capsys)
    assert code == 0 and "ends after" in err and "ended early" in stdout
    assert 0 < video_geometry(out)[0] < 10


def test_failure_mid_run_keeps_the_previous_output_and_leaves_no_temporary(monkeypatch, clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous good result")
    monkeypatch.setattr(pipeline, "open_segmenter", lambda spec, **kwargs: FakeSegmenter(fail_on_frame=3))
    code, _, err = run_cli(["video", str(clip), str(out), "--model-dir", "m"], capsys)
    assert code != 0 and err.count("\n") == 1 and "encoder exploded" in err
    assert out.read_bytes() == b"previous good result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


@pytest.mark.parametrize("case", ["missing-input", "missing-folder", "not-a-video", "same-file"])
def test_bad_paths_are_one_line_errors(cli_fake_segmenter, clip, tmp_path, capsys, case):
    src, dst = str(clip), str(tmp_path / "o.mp4")
    if case == "missing-input":
        src = str(tmp_path / "nope.mp4")
    elif case == "missing-folder":
        dst = str(tmp_path / "no" / "o.mp4")
    elif case == "not-a-video":
        src = str(tmp_path / "text.mp4")
        (tmp_path / "text.mp4").write_text("hello")
    else:
        dst = src
    code, _, err = run_cli(["video", src, dst, "--model-dir", "m"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("diffcut-edge video: error:")


@pytest.mark.slow
@pytest.mark.skipif(not export_available(), reason="export stage not available (needs the [export] extra)")
def test_end_to_end_on_a_tiny_exported_model(tiny_model_dir, clip, tmp_path, capsys):
    model = tiny_model_dir("sdxl", 256)
    out = tmp_path / "out.mp4"
    code, stdout, err = run_cli(
        [
            "video",
            str(clip),
            str(out),
            "--model-dir",
            str(model),
            "--backend",
            "ort-cpu",
            "--max-frames",
            "4",
            "--every",
            "2",
        ],
        capsys,
    )
    assert code == 0, err
    assert video_geometry(out)[:1] == (4,) and "4 frames" in stdout


def test_save_frames_writes_each_frames_labels_and_segments_with_track_ids(cli_fake_segmenter, clip, tmp_path, capsys):
    import json

    import numpy as np

    from diffcut_edge.runtime.images import read_labels_png

    frames = tmp_path / "frames"
    code, _, err = run_cli(
        [
            "video",
            str(clip),
            str(tmp_path / "out.avi"),
            "--codec",
            "MJPG",
            "--model-dir",
            "m",
            "--every",
            "2",
            "--save-frames",
            str(frames),
        ],
        capsys,
    )
    assert code == 0, err
    names = sorted(p.name for p in frames.iterdir())
    assert len(names) == 20 and names[:2] == ["frame_000000_labels.png", "frame_000000_segments.json"]
    for i in range(10):
        labels = read_labels_png(frames / f"frame_{i:06d}_labels.png")
        doc = json.loads((frames / f"frame_{i:06d}_segments.json").read_text())
        assert doc["frame"] == i and doc["labels"]["keyframe"] == (i % 2 == 0)
        assert [s["id"] for s in doc["segments"]] == np.unique(labels).tolist()
        assert sum(s["area"] for s in doc["segments"]) == labels.size


def test_save_frames_into_a_file_is_refused_before_the_model_opens(monkeypatch, clip, tmp_path, capsys):
    opened = []
    monkeypatch.setattr(pipeline, "open_segmenter", lambda spec, **kwargs: opened.append(spec))
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(
        [
            "video",
            str(clip),
            str(tmp_path / "out.avi"),
            "--codec",
            "MJPG",
            "--model-dir",
            "m",
            "--save-frames",
            str(tmp_path / "file"),
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "--save-frames" in err and opened == []
