"""Video in, video out: sources that fail clearly, frames that tolerate damage, a pipelined segmenter.

- :func:`parse_source` / :func:`open_capture`: a camera index, a file or a stream URL,
  opened with a one-line :class:`DiffCutError` when it cannot be.
- :class:`FrameReader`: iterates BGR uint8 frames. A file with a broken frame skips it
  with a warning; a file that ends before its header says warns and stops; a live
  source that drops is reopened with bounded exponential back-off.
- :class:`AtomicVideoWriter`: writes at the input's fps and size to a temporary file
  renamed over the target on success (never a half-written output in its place).

The frame loop itself (keyframes, optical-flow propagation, the encoder worker) is
:mod:`diffcut_edge.apps.pipeline`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge import atomic
from diffcut_edge.errors import DiffCutError

log = logging.getLogger("diffcut_edge.video")

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_FPS = 30.0  # used when a container reports no frame rate (webcams, some streams)
STREAM_TIMEOUT_MS = 5000  # open/read timeout for network streams, so a dead URL fails fast


def quiet_opencv_logs() -> None:
    """Silence OpenCV/FFmpeg's own stderr chatter; our warnings say what happened in one line.

    Must run before the first capture is opened (FFmpeg reads its level once).
    """
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    try:
        # SILENT, not ERROR: imgcodecs reports a truncated BMP/TIFF as "[ERROR:0@...]" lines
        # although imread just returns None, which read_image turns into one message.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # very old builds without the logging module
        pass


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class SourceSpec:
    """Where frames come from: a camera index, a stream URL, a file path, a V4L2 device or a
    GStreamer pipeline (``api``: which OpenCV capture backend opens it)."""

    target: int | str
    live: bool  # camera or network stream: reconnect on drop; a file just ends
    api: str = "any"  # "any" (OpenCV picks; FFmpeg for URLs) | "v4l2" | "gstreamer"

    def __str__(self) -> str:
        if isinstance(self.target, int):
            return f"camera {self.target}"
        return f"GStreamer pipeline {self.target!r}" if self.api == "gstreamer" else str(self.target)


CSI_DEFAULTS = {"width": 1280, "height": 720, "fps": 30, "flip": 0}


def csi_pipeline(sensor: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline a Jetson board reads a CSI camera with (``nvarguscamerasrc``, NVMM
    buffers converted by ``nvvidconv``), ending in an appsink that keeps only the newest frame."""
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
        f"framerate={fps}/1, format=NV12 ! nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! "
        f"videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
    )


def _parse_csi(text: str) -> SourceSpec:
    """``csi://N?width=W&height=H&fps=F&flip=M`` -> the nvarguscamerasrc pipeline."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(text)
    sensor = parts.netloc or "0"
    settings = dict(CSI_DEFAULTS)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in settings:
            raise DiffCutError(f"{text}: unknown CSI camera setting {key!r} (settings: {', '.join(settings)})")
        if not value.isdigit() or (key != "flip" and int(value) == 0) or (key == "flip" and int(value) > 7):
            raise DiffCutError(f"{text}: {key} must be a whole number" + (" from 0 to 7" if key == "flip" else " > 0"))
        settings[key] = int(value)
    if not sensor.isdigit():
        raise DiffCutError(f"{text}: expected csi://SENSOR with a sensor number such as 0")
    return SourceSpec(csi_pipeline(int(sensor), **settings), live=True, api="gstreamer")


def gstreamer_problem() -> str | None:
    """Why this OpenCV cannot open GStreamer pipelines (a one-line reason), or None when it can."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            if "YES" in line:
                return None
            break
    return (
        f"this OpenCV ({cv2.__version__}, the PyPI wheel) was built without GStreamer, which csi:// cameras "
        f"and pipeline sources need: on a Jetson use JetPack's OpenCV (`sudo apt install python3-opencv`, "
        f"then `pip uninstall opencv-python-headless`); docs/jetson.md"
    )


def parse_source(source: int | str | os.PathLike) -> SourceSpec:
    """``0`` / ``"0"`` → camera 0; ``rtsp://…`` / ``http://…`` → live stream; ``csi://0`` → a Jetson
    CSI camera; ``v4l2:///dev/video0`` → that V4L2 device; a string with ``!`` and ``appsink`` → a
    GStreamer pipeline; anything else → a file."""
    if isinstance(source, (int, np.integer)):
        return SourceSpec(int(source), live=True)
    text = os.fspath(source)
    if text.isdigit():
        return SourceSpec(int(text), live=True)
    lowered = text.lower()
    if lowered.startswith(LIVE_SCHEMES):
        return SourceSpec(text, live=True)
    if lowered.startswith("csi://"):
        return _parse_csi(text)
    if lowered.startswith("v4l2://"):
        device = text[len("v4l2://") :]
        if not device.startswith("/dev/"):
            raise DiffCutError(f"{text}: expected v4l2:///dev/videoN (a device path)")
        return SourceSpec(device, live=True, api="v4l2")
    if " ! " in text and "appsink" in lowered:
        return SourceSpec(text, live=True, api="gstreamer")
    if not Path(text).is_file():
        raise DiffCutError(
            f"video source {text} does not exist (expected a file, a camera index "
            f"such as 0, an rtsp:// / http:// URL, csi://0, v4l2:///dev/video0 or a GStreamer "
            f"pipeline ending in appsink)"
        )
    return SourceSpec(text, live=False)


def _refused(url: str) -> str | None:
    """ "connection refused" / "unknown host" when a TCP stream's server plainly is not there, else None.

    OpenCV only says that opening failed; one short TCP connect tells an instant refusal from
    a slow network (UDP sources are not probed: they have no connection).
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    default_ports = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443, "srt": None, "tcp": None}
    try:
        port = parts.port or default_ports.get(parts.scheme.lower())
    except ValueError:
        return "invalid port in the URL"
    if parts.scheme.lower() in ("udp", "srt") or not parts.hostname or not port:
        return None
    try:
        with socket.create_connection((parts.hostname, port), timeout=STREAM_TIMEOUT_MS / 1000):
            return None
    except ConnectionRefusedError:
        return f"connection refused by {parts.hostname}:{port} (is the server running?)"
    except socket.gaierror:
        return f"unknown host {parts.hostname!r}"
    except OSError:
        return None


def open_capture(source: SourceSpec | int | str | os.PathLike):
    """Open a ``cv2.VideoCapture`` or raise a one-line :class:`DiffCutError` saying why not."""
    import cv2

    spec = source if isinstance(source, SourceSpec) else parse_source(source)
    quiet_opencv_logs()
    if spec.api == "gstreamer":
        if problem := gstreamer_problem():
            raise DiffCutError(problem)
        cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        if cap.isOpened():
            return cap
        cap.release()
        raise DiffCutError(
            f"cannot open the {spec}: GStreamer refused it (run it with gst-launch-1.0, "
            f"replacing appsink by fakesink, to see why)"
        )
    if spec.api == "v4l2":
        cap = cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            return cap
        cap.release()
        raise DiffCutError(f"cannot open {spec.target} with V4L2: no such device, or it is busy (check ls /dev/video*)")
    if isinstance(spec.target, str) and spec.live:
        cap = cv2.VideoCapture(
            spec.target,
            cv2.CAP_FFMPEG,
            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS],
        )
    else:
        cap = cv2.VideoCapture(spec.target)
    if cap.isOpened():
        if isinstance(spec.target, int):
            # A camera queues frames while we compute: keep the queue short so what is shown is
            # the latest picture, not one from several inference-times ago (best effort).
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap
    cap.release()
    if isinstance(spec.target, int):
        raise DiffCutError(
            f"cannot open camera {spec.target}: no such device, or it is busy "
            f"(check ls /dev/video*; use --source PATH|URL for a file or stream)"
        )
    if spec.live:
        reason = _refused(str(spec.target))
        if reason:
            raise DiffCutError(f"cannot connect to {spec.target}: {reason}")
        raise DiffCutError(
            f"cannot open the stream {spec.target} within {STREAM_TIMEOUT_MS / 1000:.0f} s "
            f"(check the URL, credentials and network)"
        )
    raise DiffCutError(
        f"cannot open video {spec.target}: OpenCV cannot decode it (corrupt file or unsupported container/codec)"
    )


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    width: int
    height: int
    frame_count: int | None  # None when the container does not say (streams, cameras)


def probe(cap) -> VideoInfo:
    """Frame rate, size and (if known) frame count of an opened capture."""
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    # Webcams report 0 and some containers nonsense (1000 fps): fall back to a sane default.
    fps = fps if 0.5 <= fps <= 240.0 else DEFAULT_FPS
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return VideoInfo(
        fps=fps,
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        frame_count=count if count > 0 else None,
    )


@dataclass
class ReadStats:
    """What a :class:`FrameReader` went through, for the final summary."""

    frames: int = 0  # frames delivered
    broken: int = 0  # unreadable frames skipped
    reconnects: int = 0
    ended_early: bool = False  # a file stopped before its header's frame count


@dataclass
class FrameReader:
    """Iterate BGR uint8 frames from a source, surviving broken frames and dropped streams.

    Args:
        source: camera index, file path, URL or :class:`SourceSpec`.
        retries: reconnection attempts for a live source before giving up.
        backoff_s: first wait before a reconnection; doubles each attempt up to ``max_backoff_s``.
        max_bad_frames: consecutive unreadable frames tolerated in a file before it is
            considered to end there.
        warn: called with one-line warnings (default: the ``diffcut_edge.video`` logger).
        opener / sleep: injection points for tests (default :func:`open_capture`, ``time.sleep``).
    """

    source: Any
    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_bad_frames: int = 25
    warn: Callable[[str], None] = log.warning
    opener: Callable[[SourceSpec], Any] = open_capture
    sleep: Callable[[float], None] = time.sleep
    stats: ReadStats = field(default_factory=ReadStats)
    spec: SourceSpec = field(init=False)
    info: VideoInfo = field(init=False)
    _cap: Any = field(init=False, default=None, repr=False)
    _last_error: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        self.spec = self.source if isinstance(self.source, SourceSpec) else parse_source(self.source)
        self._cap = self._open_first()
        self.info = probe(self._cap)
        if self.spec.live and isinstance(self.spec.target, str) and self.info.frame_count:
            # An http(s) URL of a video *file* has a frame count: it ends, it does not drop.
            self.spec = SourceSpec(self.spec.target, live=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        attempted = 0  # frame slots consumed, good or not (files)
        failed_run = 0  # consecutive failed reads: broken frames if a good one follows, else the end
        while self._cap is not None:
            ok, frame = self._cap.read()
            if ok and frame is not None and frame.size:
                attempted += 1
                if failed_run:
                    self._skipped(attempted - 1 - failed_run, failed_run)
                    failed_run = 0
                self.stats.frames += 1
                yield frame
                continue
            if self.spec.live:
                self._reconnect()
                continue
            attempted += 1
            failed_run += 1
            expected = self.info.frame_count
            if expected is not None and attempted < expected and failed_run <= self.max_bad_frames:
                continue  # maybe a broken frame: look further
            if expected is not None and self.stats.frames + self.stats.broken < expected:
                self.stats.ended_early = True
                self.warn(
                    f"{self.spec}: the video ends after {self.stats.frames} readable frames "
                    f"although its header says {expected}; keeping what was read"
                )
            return

    def _skipped(self, first: int, count: int) -> None:
        self.stats.broken += count
        which = f"frame {first} is" if count == 1 else f"frames {first}-{first + count - 1} are"
        self.warn(f"{self.spec}: {which} unreadable, skipped")

    def _open_first(self) -> Any:
        """Open the source; a live one gets the same back-off as a reconnection (a camera or
        server that is still starting up), a file fails at once."""
        try:
            return self.opener(self.spec)
        except DiffCutError as e:
            # Cameras are there or not; a stream server may be starting up (or restarting).
            # (A CSI camera, a V4L2 device or a pipeline is local hardware: it fails at once too.)
            if (
                not (self.spec.live and isinstance(self.spec.target, str) and self.spec.api == "any")
                or self.retries == 0
            ):
                raise
            self.warn(f"{e}; retrying")
        cap = self._with_backoff("not reachable; connecting")
        if cap is None:
            raise DiffCutError(
                f"{self.spec}: could not connect in {self.retries + 1} attempts "
                f"({self._last_error}); check the source (or raise --retries)"
            )
        return cap

    def _with_backoff(self, what: str) -> Any:
        """Up to ``retries`` opens with exponential back-off; the capture, or None."""
        delay = self.backoff_s
        self._last_error = ""
        for attempt in range(1, self.retries + 1):
            self.warn(f"{self.spec}: {what} in {delay:.1f} s (attempt {attempt}/{self.retries})")
            self.sleep(delay)
            try:
                return self.opener(self.spec)
            except DiffCutError as e:
                self._last_error = str(e)
                delay = min(delay * 2.0, self.max_backoff_s)
        return None

    def _reconnect(self) -> None:
        """Reopen a live source with exponential back-off; DiffCutError once the retries are spent."""
        self._release()
        cap = self._with_backoff("stream dropped; reconnecting")
        if cap is None:
            raise DiffCutError(
                f"{self.spec}: the stream dropped and {self.retries} reconnection attempts "
                f"failed; check the source (or raise --retries)"
            )
        self._cap = cap
        self.stats.reconnects += 1

    def _release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def close(self) -> None:
        self._release()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- writer
class AtomicVideoWriter:
    """``cv2.VideoWriter`` to a temporary file in the target's folder, renamed over it on :meth:`commit`.

    Opened lazily on the first frame when ``size`` is None (then the first frame's size
    is used). Used as a context manager it commits on success and on Ctrl-C / SIGTERM (like
    ffmpeg: what was encoded is kept) and discards the file on any other error, unless
    ``keep_on_error`` (a live recording is worth keeping when the stream finally drops).
    Some encoders store only even sizes: :attr:`written_size` is what the file holds, and
    :meth:`size_note` says so when it differs from the frames.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        size: tuple[int, int] | None = None,
        codec: str = "mp4v",
        keep_on_error: bool = False,
    ) -> None:
        self.path = self.check_target(path, codec)
        self.fps, self.size, self.codec = float(fps), size, codec
        self.keep_on_error = keep_on_error
        self.frames = 0
        self.written_size: tuple[int, int] | None = None
        self._writer = None
        self._file: atomic.AtomicFile | None = None

    @staticmethod
    def check_target(path: str | os.PathLike, codec: str = "mp4v") -> Path:
        """Refuse, before any work, a codec that is no FourCC or a target that cannot be written."""
        if len(codec) != 4:
            raise DiffCutError(f"codec must be a FourCC of 4 characters (mp4v, MJPG, XVID, avc1), got {codec!r}")
        path = Path(path)
        if not path.suffix:
            raise DiffCutError(f"{path}: give the output an extension (.mp4, .avi) so the container is known")
        if path.is_dir():
            raise DiffCutError(f"{path} is a folder; give a video file name")
        if not path.parent.is_dir():
            raise DiffCutError(f"cannot write {path}: folder {path.parent} does not exist")
        atomic.check_writable_dir(path.parent, what="the folder of")
        return path

    def _open(self, size: tuple[int, int]) -> None:
        import cv2

        self._file = atomic.AtomicFile(self.path)
        writer = cv2.VideoWriter(str(self._file.tmp), cv2.VideoWriter_fourcc(*self.codec), self.fps, size)
        if not writer.isOpened():
            self._discard()
            raise DiffCutError(
                f"cannot write {self.path} with codec {self.codec!r}: this OpenCV build "
                f"has no such encoder for {self.path.suffix} (try --codec mp4v with .mp4 "
                f"or --codec MJPG with .avi)"
            )
        self._writer, self.size = writer, size

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame of the writer's size."""
        height, width = frame.shape[:2]
        if self._writer is None:
            self._open(self.size or (width, height))
        if (width, height) != tuple(self.size):
            raise DiffCutError(f"frame of {width}x{height} written to a {self.size[0]}x{self.size[1]} video")
        self._writer.write(frame)
        self.frames += 1

    def commit(self) -> Path | None:
        """Finish the file and move it into place; None when no frame was written."""
        if self._writer is None:
            self._discard()
            return None
        self._writer.release()
        self._writer = None
        self.written_size = _stored_size(self._file.tmp) or tuple(self.size)
        self._file.commit()
        return self.path

    def size_note(self) -> str:
        """'' or what the encoder changed: "stored as 127x95 (the mp4v encoder needs even sizes)"."""
        if self.written_size is None or tuple(self.written_size) == tuple(self.size or ()):
            return ""
        w, h = self.written_size
        return f"frames of {self.size[0]}x{self.size[1]} stored as {w}x{h} (the {self.codec} encoder needs even sizes)"

    def _discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._file is not None:
            self._file.discard()

    def __enter__(self) -> AtomicVideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt) or self.keep_on_error:
            self.commit()
        else:
            self._discard()


def _stored_size(path: Path) -> tuple[int, int] | None:
    """(width, height) a written video file reports, or None when it cannot be read back."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
