"""``diffcut-edge webcam``: headless runs on a generated video, keys, and sources that fail."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.apps import hud, pipeline
from diffcut_edge.errors import DiffCutError
from helpers.fake_segmenter import FakeSegmenter, make_video, run_cli
from helpers.video import run_fresh_process, video_geometry


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("webcam") / "cam.avi"
    make_video(path, n=8)
    return path


def test_headless_file_source_records_and_ends_cleanly(cli_fake_segmenter, clip, tmp_path, capsys):
    record = tmp_path / "rec.mp4"
    code, stdout, err = run_cli(
        [
            "webcam",
            "--model-dir",
            "m",
            "--source",
            str(clip),
            "--headless",
            "--record",
            str(record),
            "--keyframes",
            "every:1",
        ],
        capsys,
    )
    assert code == 0 and err == ""
    assert stdout.startswith("source ended: 8 frames") and str(record) in stdout
    frames, fps, size = video_geometry(record)
    assert (frames, size) == (8, (128, 96)) and fps == pytest.approx(10.0)


def test_max_frames_stops_early(cli_fake_segmenter, clip, tmp_path, capsys):
    code, stdout, _ = run_cli(
        [
            "webcam",
            "--model-dir",
            "m",
            "--source",
            str(clip),
            "--headless",
            "--max-frames",
            "3",
            "--keyframes",
            "every:1",
        ],
        capsys,
    )
    assert code == 0 and stdout.startswith("stopped at --max-frames: 3 frames") and cli_fake_segmenter.encode_calls == 3


def test_window_keys_toggle_refine_freeze_and_quit(cli_fake_segmenter, clip, monkeypatch, capsys):
    shown: list[np.ndarray] = []
    keys = iter([ord("r"), ord("f"), -1, ord(" "), ord("q")])  # refine off; freeze; wait; unfreeze; quit
    monkeypatch.setattr(hud, "gui_problem", lambda: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, image: shown.append(image.copy()))
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(cv2, "destroyAllWindows", lambda: None)
    huds: list[str] = []
    draw_hud = hud.draw_hud
    monkeypatch.setattr(hud, "draw_hud", lambda image, text: (huds.append(text), draw_hud(image, text)))
    code, stdout, _ = run_cli(["webcam", "--model-dir", "m", "--source", str(clip), "--no-pipeline"], capsys)
    assert code == 0 and stdout.startswith("stopped: 3 frames")
    assert len(shown) == 3 and cli_fake_segmenter.refine is False  # frames 0, 1 (freeze/unfreeze), 2 (quit)
    assert ["refine on" in h for h in huds] == [True, False, False] and "fps" in huds[0]
    assert "key" in huds[0] and "age 1f/" in huds[1]  # what the labels are: the keyframe, then carried
    assert all(s.dtype == np.uint8 and s.shape == (96, 128, 3) for s in shown)


def test_without_a_display_tells_to_use_headless(cli_fake_segmenter, clip, capsys):
    if hud.gui_problem() is None:
        pytest.skip("this machine has an OpenCV GUI and a display")
    code, _, err = run_cli(["webcam", "--model-dir", "m", "--source", str(clip)], capsys)
    assert code == 2 and err.count("\n") == 1 and "--headless" in err


@pytest.mark.parametrize(
    "source, message",
    [("99", "cannot open camera 99"), ("rtsp://127.0.0.1:9/none", "connection refused by 127.0.0.1:9")],
)
def test_sources_that_cannot_open_fail_in_one_line(tmp_path, source, message):
    proc = run_fresh_process(
        ["webcam", "--model-dir", "m", "--source", source, "--headless", "--retries", "0"], tmp_path
    )
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # OpenCV/FFmpeg's own logs are silenced


def test_a_csi_camera_without_gstreamer_is_one_line_with_what_to_install(cli_fake_segmenter, capsys):
    import cv2

    if "YES" in next((line for line in cv2.getBuildInformation().splitlines() if "GStreamer:" in line), ""):
        pytest.skip("this OpenCV has GStreamer: the csi:// source would try a real camera")
    code, _, err = run_cli(
        ["webcam", "--model-dir", "m", "--source", "csi://0?width=640&height=480", "--headless"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "without GStreamer" in err and "JetPack" in err


def test_retries_option_is_validated(capsys):
    with pytest.raises(SystemExit):
        cli.main(["webcam", "--model-dir", "m", "--retries", "-1"])
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_recording_is_kept_when_the_run_fails(monkeypatch, clip, tmp_path, capsys):
    monkeypatch.setattr(pipeline, "open_segmenter", lambda spec, **kwargs: FakeSegmenter(fail_on_frame=5))
    record = tmp_path / "rec.avi"
    code, _, err = run_cli(
        [
            "webcam",
            "--model-dir",
            "m",
            "--source",
            str(clip),
            "--headless",
            "--record",
            str(record),
            "--codec",
            "MJPG",
            "--no-pipeline",
            "--keyframes",
            "every:1",
        ],
        capsys,
    )
    assert code != 0 and err.count("\n") == 1
    assert video_geometry(record)[0] == 5  # the frames before the failure
    # With the encoder in its worker (the default, auto), the failure surfaces a frame or two later,
    # and the recording made until then is kept too.
    monkeypatch.setattr(pipeline, "open_segmenter", lambda spec, **kwargs: FakeSegmenter(fail_on_frame=1))
    code, _, err = run_cli(
        ["webcam", "--model-dir", "m", "--source", str(clip), "--headless", "--record", str(record), "--codec", "MJPG"],
        capsys,
    )
    assert code != 0 and err.count("\n") == 1 and "encoder exploded" in err
    assert video_geometry(record)[0] >= 1


def test_refine_toggle_works_on_the_real_segmenter_options(tmp_path):
    from diffcut_edge.runtime.segmenter import Segmenter
    from helpers.toy_encoder import make_toy_model_dir

    with Segmenter.from_model_dir(
        make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16), backend="ort-cpu", tau=0.3
    ) as seg:
        seg.update_options(refine=not seg.options.refine)
        assert seg.options.refine is False and seg.options.tau == 0.3
        with pytest.raises(DiffCutError, match="tau must be"):
            seg.update_options(tau=-1)  # validated like the constructor; the options stay as they were
        assert seg.options.tau == 0.3


def test_record_onto_the_source_is_refused_before_anything_opens(cli_fake_segmenter, clip, capsys):
    before = clip.read_bytes()
    code, _, err = run_cli(
        ["webcam", "--model-dir", "m", "--source", str(clip), "--headless", "--record", str(clip)], capsys
    )
    assert code == 2 and err.count("\n") == 1 and "would overwrite it" in err
    assert clip.read_bytes() == before and cli_fake_segmenter.encode_calls == 0


def test_save_frames_follows_the_live_loop(cli_fake_segmenter, clip, tmp_path, capsys):
    frames = tmp_path / "frames"
    code, _, err = run_cli(
        [
            "webcam",
            "--model-dir",
            "m",
            "--source",
            str(clip),
            "--headless",
            "--max-frames",
            "4",
            "--keyframes",
            "every:1",
            "--save-frames",
            str(frames),
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in frames.glob("*_labels.png")) == [f"frame_{i:06d}_labels.png" for i in range(4)]
    assert len(list(frames.glob("*_segments.json"))) == 4
