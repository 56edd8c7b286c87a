"""Sources, damaged files, reconnection and atomic video output (the frame loop: test_pipeline.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffcut_edge.apps.video import (
    AtomicVideoWriter,
    FrameReader,
    SourceSpec,
    open_capture,
    parse_source,
)
from diffcut_edge.errors import DiffCutError
from helpers.fake_segmenter import make_video
from helpers.video import corrupt_frame


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    return path, make_video(path, n=10)


def test_parse_source():
    assert parse_source(0) == SourceSpec(0, live=True)
    assert parse_source("2") == SourceSpec(2, live=True)
    assert parse_source("rtsp://cam.local/stream").live
    with pytest.raises(DiffCutError, match="does not exist"):
        parse_source("no/such/video.mp4")


def test_open_failures_are_one_line_errors(tmp_path):
    with pytest.raises(DiffCutError, match="cannot open camera 99") as err:
        open_capture(99)
    assert "\n" not in str(err.value)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(DiffCutError, match="cannot open video"):
        open_capture(text)


def test_reader_reads_every_frame_with_the_header_geometry(clip):
    path, frames = clip
    with FrameReader(path) as reader:
        got = list(reader)
    assert reader.info.fps == pytest.approx(10.0) and (reader.info.width, reader.info.height) == (128, 96)
    assert len(got) == len(frames) and reader.stats.broken == 0 and not reader.stats.ended_early
    # MJPG is lossy: compare loosely with what was written.
    assert np.abs(got[3].astype(int) - frames[3]).mean() < 6


def test_consecutive_broken_frames_are_one_warning(clip, tmp_path):
    first, bad = tmp_path / "one.avi", tmp_path / "bad.avi"
    corrupt_frame(clip[0], first, 3)
    corrupt_frame(first, bad, 3)  # frame 3 lost its marker: the 4th one left is frame 4
    warnings: list[str] = []
    reader = FrameReader(bad, warn=warnings.append)
    assert len(list(reader)) == 8 and reader.stats.broken == 2
    assert warnings == [f"{bad}: frames 3-4 are unreadable, skipped"]


def test_broken_frame_is_skipped_with_a_warning(clip, tmp_path):
    bad = tmp_path / "bad.avi"
    corrupt_frame(clip[0], bad, 4)
    warnings: list[str] = []
    got = list(FrameReader(bad, warn=warnings.append))
    assert len(got) == 9
    assert len(warnings) == 1 and "frame 4 is unreadable" in warnings[0]


def test_video_ending_before_its_header_says(clip, tmp_path):
    short = tmp_path / "short.avi"
    data = clip[0].read_bytes()
    short.write_bytes(data[: len(data) * 6 // 10])
    warnings: list[str] = []
    reader = FrameReader(short, warn=warnings.append)
    got = list(reader)
    assert 0 < len(got) < 10 and reader.stats.ended_early and reader.stats.broken == 0
    assert len(warnings) == 1 and "ends after" in warnings[0]  # the end is not reported as broken frames


class _ScriptedCapture:
    """A live capture that delivers ``n`` frames then drops."""

    def __init__(self, n: int) -> None:
        self.left = n

    def isOpened(self) -> bool:
        return True

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((4, 4, 3), np.uint8)

    def get(self, prop) -> float:
        return 0.0

    def release(self) -> None:
        pass


def test_live_source_reconnects_with_exponential_backoff_then_gives_up():
    script = iter([_ScriptedCapture(3), DiffCutError("down"), _ScriptedCapture(2)])

    def opener(spec):
        item = next(script, DiffCutError("still down"))
        if isinstance(item, Exception):
            raise item
        return item

    sleeps: list[float] = []
    reader = FrameReader(
        SourceSpec("rtsp://cam", live=True),
        retries=3,
        backoff_s=0.5,
        opener=opener,
        sleep=sleeps.append,
        warn=lambda m: None,
    )
    frames = []
    with pytest.raises(DiffCutError, match="3 reconnection attempts failed"):
        for frame in reader:
            frames.append(frame)
    assert len(frames) == 5 and reader.stats.reconnects == 1
    assert sleeps == [0.5, 1.0, 0.5, 1.0, 2.0]  # doubles per attempt, restarts after a success


def test_atomic_writer_commits_on_success_and_keeps_the_old_file_on_error(tmp_path, clip):
    out = tmp_path / "out.avi"
    frames = clip[1]
    with AtomicVideoWriter(out, 10.0, codec="MJPG") as writer:
        for f in frames[:4]:
            writer.write(f)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    cap.release()
    before = out.read_bytes()
    with pytest.raises(DiffCutError, match="frame of"):
        with AtomicVideoWriter(out, 10.0, codec="MJPG") as writer:
            writer.write(frames[0])
            writer.write(np.zeros((10, 10, 3), np.uint8))  # wrong size: the run fails
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.avi"]
    with pytest.raises(DiffCutError, match="FourCC"):
        AtomicVideoWriter(out, 10.0, codec="h264x")


def test_an_http_video_file_ends_instead_of_reconnecting():
    class FileOverHttp(_ScriptedCapture):
        def get(self, prop) -> float:
            return 3.0 if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0

    opened = []

    def opener(spec):
        opened.append(spec)
        return FileOverHttp(3)

    reader = FrameReader("https://example.com/clip.mp4", opener=opener, sleep=lambda s: None)
    assert len(list(reader)) == 3 and len(opened) == 1 and not reader.spec.live


def test_first_connection_to_a_stream_backs_off_like_a_reconnection():
    # A camera server that is still starting: refused twice, then up. Files and cameras fail at once.
    calls, sleeps, warnings = [], [], []

    class Capture:
        def get(self, prop):
            return 0.0

        def release(self):
            pass

    def opener(spec):
        calls.append(spec)
        if len(calls) < 3:
            raise DiffCutError(f"cannot connect to {spec.target}: connection refused by cam:554")
        return Capture()

    reader = FrameReader("rtsp://cam:554/live", retries=3, opener=opener, sleep=sleeps.append, warn=warnings.append)
    assert len(calls) == 3 and sleeps == [0.5, 1.0] and reader.spec.live
    assert "connection refused" in warnings[0]

    def always_refused(spec):
        raise DiffCutError("connection refused")

    with pytest.raises(DiffCutError, match="could not connect in 3 attempts"):
        FrameReader("rtsp://cam:554/live", retries=2, opener=always_refused, sleep=sleeps.append, warn=warnings.append)


def test_jetson_sources_become_the_pipelines_jetson_boards_use():
    from diffcut_edge.apps.video import csi_pipeline

    csi = parse_source("csi://1?width=1920&height=1080&fps=60&flip=2")
    assert csi.live and csi.api == "gstreamer"
    assert csi.target == csi_pipeline(1, 1920, 1080, 60, 2)
    assert csi.target.startswith(
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1920, height=1080, framerate=60/1"
    )
    assert "nvvidconv flip-method=2" in csi.target and csi.target.endswith("appsink drop=true max-buffers=1")
    assert parse_source("csi://0").target == csi_pipeline(0, 1280, 720, 30, 0)
    assert parse_source("v4l2:///dev/video2") == SourceSpec("/dev/video2", live=True, api="v4l2")
    raw = "videotestsrc ! videoconvert ! appsink"
    assert parse_source(raw) == SourceSpec(raw, live=True, api="gstreamer")
    for bad, message in [
        ("csi://0?exposure=3", "unknown CSI camera setting"),
        ("csi://0?fps=0", "fps must be"),
        ("csi://0?flip=9", "from 0 to 7"),
        ("csi://left", "sensor number"),
        ("v4l2://video0", "v4l2:///dev/videoN"),
    ]:
        with pytest.raises(DiffCutError, match=message):
            parse_source(bad)


def test_a_pipeline_without_gstreamer_in_opencv_says_what_to_install(monkeypatch):
    import diffcut_edge.apps.video as video

    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  Video I/O:\n    GStreamer:                   NO\n")
    assert "JetPack's OpenCV" in video.gstreamer_problem()
    with pytest.raises(DiffCutError, match="built without GStreamer.*JetPack") as err:
        open_capture("csi://0")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "    GStreamer:                   YES (1.20.3)\n")
    assert video.gstreamer_problem() is None
