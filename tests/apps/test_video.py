"""Sources, damaged files, reconnection, atomic video output and the pipelined frame loop."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from diffcut_edge.apps.video import (
    AtomicVideoWriter,
    FrameReader,
    SourceSpec,
    iter_segmented,
    open_capture,
    parse_source,
)
from diffcut_edge.errors import DiffCutError
from helpers.fake_segmenter import FakeSegmenter, make_video
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
    reader = FrameReader(SourceSpec("rtsp://cam", live=True), retries=3, backoff_s=0.5, opener=opener,
                         sleep=sleeps.append, warn=lambda m: None)
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


def _labels(items):
    return [np.asarray(i.result.labels) for i in items]


def test_pipelined_equals_sequential_and_encodes_in_a_worker(clip):
    frames = clip[1]
    seq_seg, pipe_seg = FakeSegmenter(), FakeSegmenter()
    seq = list(iter_segmented(frames, seq_seg, pipelined=False))
    pipe = list(iter_segmented(frames, pipe_seg, pipelined=True))
    assert [i.index for i in pipe] == list(range(10))
    assert all(np.array_equal(a, b) for a, b in zip(_labels(seq), _labels(pipe)))
    assert seq_seg.encode_threads == {threading.current_thread().name}
    assert pipe_seg.encode_threads == {"diffcut-encoder"}
    assert set(pipe[0].result.timings) >= {"preprocess", "encoder", "ncut", "assign", "pamr", "total"}


def test_every_n_reuses_features_but_postprocesses_each_frame(clip):
    frames = clip[1]
    seg = FakeSegmenter()
    items = list(iter_segmented(frames, seg, every=3, max_frames=8))
    assert len(items) == 8 and seg.encode_calls == 3  # frames 0, 3, 6
    assert [i.reused_features for i in items] == [False, True, True, False, True, True, False, True]
    assert items[1].result.timings["encoder"] == 0.0
    # Post-processing ran on each frame's own image: the label map has that frame's size.
    assert all(i.result.labels.shape == i.frame.shape[:2] for i in items)


def test_worker_errors_reach_the_caller_and_early_exit_stops_the_worker(clip):
    frames = clip[1]
    with pytest.raises(RuntimeError, match="encoder exploded"):
        list(iter_segmented(frames, FakeSegmenter(fail_on_frame=2)))
    stream = iter_segmented(iter(frames * 50), FakeSegmenter())
    next(stream)
    stream.close()
    time.sleep(0.3)
    assert not any(t.name == "diffcut-encoder" for t in threading.enumerate())


class _SlowSegmenter(FakeSegmenter):
    def encode(self, frames):
        time.sleep(0.03)
        return super().encode(frames)

    def postprocess(self, frame, features):
        time.sleep(0.03)
        return super().postprocess(frame, features)


def test_pipelining_overlaps_encoder_and_postprocessing(clip):
    frames = clip[1][:8]
    timed = {}
    for pipelined in (False, True):
        start = time.perf_counter()
        list(iter_segmented(frames, _SlowSegmenter(), pipelined=pipelined))
        timed[pipelined] = time.perf_counter() - start
    assert timed[True] < 0.75 * timed[False], timed  # ~ (n+1)·30 ms vs 2n·30 ms


def test_a_path_source_is_opened_and_closed_by_the_loop(clip, monkeypatch):
    closed = []
    monkeypatch.setattr(FrameReader, "close", lambda self: closed.append(self.spec))
    items = list(iter_segmented(str(clip[0]), FakeSegmenter(), max_frames=4))
    assert len(items) == 4 and closed == [parse_source(str(clip[0]))]


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
        FrameReader("rtsp://cam:554/live", retries=2, opener=always_refused, sleep=sleeps.append,
                    warn=warnings.append)
