"""The frame loop: keyframes through DiffCut, every other frame carried there by optical flow.

:func:`iter_segmented` yields one :class:`SegmentedFrame` per frame read, in order. Which
frames run the encoder is a :class:`~diffcut_edge.apps.propagation.KeyframePolicy`:

- ``every:1`` (the default for files): DiffCut on every frame, exactly as a single image;
  with ``pipelined`` the encoder of frame t+1 runs in a worker thread while frame t is
  post-processed (onnxruntime, TensorRT and most numpy kernels release the GIL).
- ``every:N``: frames 0, N, 2N, ... are keyframes; the frames between carry the last result
  along the flow (:mod:`~diffcut_edge.apps.propagation`), refined on their own pixels.
- ``auto``: a keyframe on a scene cut, when the flow's confidence drops, or when the labels
  grow old.
- ``realtime=True`` (live sources, ``video --realtime``): the encoder never holds the loop.
  It works in its own thread on the newest frame it was handed; every frame is carried by
  flow and shown at once; when a keyframe's result arrives it is moved forward along the
  flows of the frames captured since (latency compensation) and becomes the new key. A file
  is paced at its frame rate and frames are dropped, never queued, when the loop falls behind.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from diffcut_edge.apps.propagation import (
    REFINE_DILATIONS,
    REFINE_ITERATIONS,
    KeyframePolicy,
    Motion,
    MotionEstimator,
    fill_unlabelled,
    refine_labels,
    warp_labels,
)
from diffcut_edge.apps.video import FrameReader
from diffcut_edge.defaults import TIMING_KEYS
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.segmenter import FrameSegmenter

HISTORY_FRAMES = 512  # flows kept for latency compensation (an encoder slower than this many frames is not compensated)
PROPAGATION_KEYS = ("flow", "propagate")  # the timings of a carried frame
NICE = 2  # the keyframe worker process's niceness (best effort)
LATE_S = 0.25  # a paced file drops the frames the loop is later than this for (a hiccup is not a drop)


@dataclass
class SegmentedFrame:
    """One frame through the loop: the frame, its result, and what the result is.

    keyframe: the encoder ran on this very frame (False: carried from ``key_index`` by flow).
    age_frames / age_ms: how old the labels are: frames and capture milliseconds since the
        keyframe they come from (0 for a keyframe).
    confidence: the share of pixels whose flow from the previous frame is consistent (None when
        no flow was computed, as on keyframes of ``every:1``).
    """

    index: int
    frame: np.ndarray  # BGR uint8, as read
    result: Any  # SegmentationResult
    keyframe: bool = True
    key_index: int = 0
    age_frames: int = 0
    age_ms: float = 0.0
    confidence: float | None = None
    encoder_fps: float | None = None  # (realtime) keyframes per second the encoder sustains

    @property
    def reused_features(self) -> bool:
        """The encoder did not run on this frame (the name the API had before propagation)."""
        return not self.keyframe


@dataclass
class _Encoded:
    index: int
    frame: np.ndarray
    encoded: Any = None  # EncodedFrame (stage 1 done), None: not a keyframe


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _frames_of(source) -> Iterable[np.ndarray]:
    """A frame iterable from a FrameReader, a cv2.VideoCapture, a source spec or any iterable of frames."""
    if isinstance(source, FrameReader) or (hasattr(source, "__iter__") and not isinstance(source, (str, bytes))):
        return source
    if hasattr(source, "read") and hasattr(source, "isOpened"):

        def read_all() -> Iterator[np.ndarray]:
            while True:
                ok, frame = source.read()
                if not ok:
                    return
                yield frame

        return read_all()
    return FrameReader(source)


# ------------------------------------------------------------------ the two stages of a keyframe
def segment_keyframe(segmenter: FrameSegmenter, frame: np.ndarray) -> Any:
    """DiffCut on one frame through the two stages the loop uses: ``encode_frame``, then ``finish``."""
    return segmenter.finish(segmenter.encode_frame(frame))


# ------------------------------------------------------------------ carrying a result by flow
@dataclass
class LabelCarrier:
    """The last keyframe's segmentation, carried from frame to frame along the flow.

    Ids stay the keyframe's (so segment embeddings, tracking and names follow their segments);
    ``mask_labels`` is the carried map at mask resolution.
    """

    refine_iterations: int = REFINE_ITERATIONS
    refine_dilations: tuple[int, ...] = REFINE_DILATIONS
    key: Any = None
    key_index: int = -1
    key_time: float = 0.0
    mask_labels: np.ndarray | None = None
    novelty: float = 0.0  # the share of the frame that could not be carried, summed since the key

    def start(self, result, index: int, captured: float, mask_labels: np.ndarray | None = None) -> None:
        """Make ``result`` (of frame ``index``, captured at ``captured``) the key; ``mask_labels`` when
        it was already carried forward (latency compensation)."""
        self.key, self.key_index, self.key_time = result, index, captured
        self.mask_labels = np.asarray(result.mask_labels if mask_labels is None else mask_labels, np.int32)
        self.novelty = 0.0

    def carry(self, frame: np.ndarray, motions: Iterable[Motion]) -> Any:
        """This frame's result: the labels moved along ``motions`` (oldest first), refined on ``frame``."""
        from diffcut_edge.runtime.postprocess import SegmentationResult
        from diffcut_edge.runtime.preprocess import image_to_rgb_float, resize_nearest

        start = time.perf_counter()
        labels = self.mask_labels
        for motion in motions:
            labels = warp_labels(labels, motion)
            self.novelty += float((labels < 0).mean())
        image = image_to_rgb_float(frame, size=labels.shape)
        labels = fill_unlabelled(refine_labels(image, labels, self.refine_iterations, self.refine_dilations))
        self.mask_labels = labels
        propagate_ms = _ms(start)
        full = resize_nearest(labels, frame.shape[:2]).astype(np.int32)
        result = SegmentationResult(
            labels=full,
            mask_labels=labels,
            coarse_labels=np.asarray(self.key.coarse_labels),
            num_segments=int(self.key.num_segments),
            embeddings=np.asarray(self.key.embeddings),
            timings={k: 0.0 for k in TIMING_KEYS},
            segments=_carried_segments(self.key.segments, full),
            vocabulary=self.key.vocabulary,
            class_names=self.key.class_names,
        )
        result.timings["propagate"] = propagate_ms
        if result.segments is not None:
            result.timings["label"] = 0.0  # names follow their segments: CLIP did not run on this frame
        return result


def _carried_segments(segments: list | None, labels: np.ndarray) -> list | None:
    """The keyframe's named segments that are still in the carried ``labels``, with this frame's area
    and box (the class and score are the keyframe's: CLIP runs on keyframes only)."""
    if segments is None:
        return None
    from diffcut_edge.runtime.labeling import segment_stats

    ids, areas, boxes = segment_stats(labels)
    stats = {int(i): (int(a), tuple(int(v) for v in b)) for i, a, b in zip(ids, areas, boxes)}
    return [replace(s, area=stats[s.id][0], bbox=stats[s.id][1]) for s in segments if s.id in stats]


# ------------------------------------------------------------------ the encoder in a worker
def _encode_worker(stream: Iterator[_Encoded], out: queue.Queue, stop: threading.Event) -> None:
    """Thread body: push encoded frames into ``out`` until the stream ends, fails or ``stop`` is set."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in stream:
            if not put(item):
                return
        put(_END)
    except BaseException as e:  # handed to the consumer, which re-raises it in its own thread
        put(_Failed(e))


def _pipelined(stream: Iterator[_Encoded], depth: int) -> Iterator[_Encoded]:
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    worker = threading.Thread(target=_encode_worker, args=(stream, out, stop), name="diffcut-encoder", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=30.0)


def _encode_stream(frames: Iterable[np.ndarray], segmenter, is_key: Callable[[int], bool]) -> Iterator[_Encoded]:
    """Encoder stage ahead of the loop: features of the keyframes, None for the others."""
    for index, frame in enumerate(frames):
        yield _Encoded(index, frame, segmenter.encode_frame(frame) if is_key(index) else None)


@dataclass
class KeyframeWorker:
    """The whole DiffCut of one frame at a time in its own thread, on the newest frame handed over.

    ``submit`` never blocks: it is refused (False) while a frame is in work. ``poll`` returns the
    finished ``(index, captured, result, encoder_ms)`` once, else None; an error in the worker is
    raised there, in the caller's thread.
    """

    segmenter: Any
    _job: tuple | None = None
    _done: tuple | None = None
    _error: BaseException | None = None
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _stop: bool = False
    _thread: threading.Thread | None = None
    finished: int = 0
    busy_s: float = 0.0

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="diffcut-keyframes", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._job is None and self._done is None

    def submit(self, index: int, frame: np.ndarray, captured: float) -> bool:
        with self._lock:
            if self._job is not None or self._done is not None or self._stop:
                return False
            self._job = (index, frame, captured)
            self._lock.notify_all()
            return True

    def poll(self, wait_s: float = 0.0) -> tuple | None:
        with self._lock:
            if self._done is None and self._error is None and wait_s > 0:
                self._lock.wait_for(lambda: self._done is not None or self._error is not None, timeout=wait_s)
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            done, self._done = self._done, None
            return done

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._job is not None or self._stop)
                if self._stop:
                    return
                index, frame, captured = self._job
            start = time.perf_counter()
            try:
                result = segment_keyframe(self.segmenter, frame)
            except BaseException as e:
                with self._lock:
                    self._error, self._job = e, None
                    self._lock.notify_all()
                return
            with self._lock:
                self.busy_s += time.perf_counter() - start
                self.finished += 1
                self._done, self._job = (index, captured, result, _ms(start)), None
                self._lock.notify_all()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking frames; wait for a frame in work (an encoder call cannot be interrupted)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def fps(self) -> float:
        """Keyframes per second of encoder work (what the encoder alone sustains)."""
        return self.finished / self.busy_s if self.busy_s > 0 else 0.0


class RemoteSegmenter:
    """A segmenter that lives in the realtime keyframe worker's process, seen from the loop's.

    The loop's process loads no model: :func:`iter_segmented` opens ``spec`` in a worker process.
    ``options`` / ``update_options`` work as on a Segmenter; the changes reach the worker with the
    next keyframe.
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.options = spec.options

    def update_options(self, **changes: Any) -> Any:
        import dataclasses

        self.options = dataclasses.replace(self.options, **changes)
        return self.options

    @property
    def manifest(self) -> Any:
        from diffcut_edge.runtime.manifest import read_manifest

        return read_manifest(self.spec.model_dir)

    def close(self) -> None:
        pass

    def __enter__(self) -> RemoteSegmenter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_segmenter(spec: Any, *, in_worker: bool = False, warn: Callable[[str], None] | None = None) -> Any:
    """The segmenter a loop runs from a :class:`~diffcut_edge.runtime.spec.SegmenterSpec`: opened
    here, or with ``in_worker`` a :class:`RemoteSegmenter` whose model opens only in the realtime
    keyframe worker's process (not twice). ``warn`` is told when the folder (INT8, tiny VAE) was
    never verified against full precision."""
    segmenter = RemoteSegmenter(spec) if in_worker else spec.open()
    if warn is not None and (note := segmenter.manifest.verification_note(spec.model_dir)):
        warn(note)
    return segmenter


def _portable(error: BaseException) -> BaseException:
    """An exception that survives pickling to the parent (DiffCutError does; others become RuntimeError)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _keyframe_process(conn: Any) -> None:
    """The worker process: receive the spec, open the segmenter, then DiffCut one frame per job."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's Ctrl-C stops the parent, which stops us
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)  # the frame loop comes first: on few cores the encoder takes what is left
    from diffcut_edge.runtime.spec import SegmenterSpec

    try:
        segmenter = SegmenterSpec.from_dict(conn.recv()).open()
    except BaseException as e:
        conn.send(("error", _portable(e)))
        return
    conn.send(("ready", None))
    with segmenter:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                return
            if job is None:
                return
            index, frame, captured, options = job
            if options != segmenter.options:
                segmenter.options = options
            start = time.perf_counter()
            try:
                result = segment_keyframe(segmenter, frame)
            except BaseException as e:
                conn.send(("error", _portable(e)))
                return
            conn.send(("done", (index, captured, result, _ms(start))))


class ProcessKeyframeWorker:
    """:class:`KeyframeWorker`'s contract with DiffCut in a process of its own.

    A thread is not enough for a realtime loop in Python: NCut's eigen-solvers and bookkeeping hold
    the interpreter lock for long stretches, and the loop's own numpy work then waits on them
    (measured: ~8 ms a carried frame alone, 200-500 ms beside a keyframe's NCut in a thread). The
    process (``python -m diffcut_edge.apps.pipeline``, so the caller's script is never re-run, as
    multiprocessing's spawn would) opens the segmenter from its spec (the loop's process needs no
    model of its own), gets each frame with the options of the moment, and sends the result back
    over a socket pair.
    """

    def __init__(self, spec: Any, options: Callable[[], Any] | None = None, start_timeout_s: float = 900.0) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "diffcut_edge.apps.pipeline", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._options = options or (lambda: spec.options)
        self._busy_since: float | None = None
        self.finished, self.busy_s = 0, 0.0
        self._conn.send(spec.to_dict())
        kind, payload = self._receive(start_timeout_s, "open the model folder")
        if kind == "error":
            self.close()
            raise payload

    def _receive(self, timeout_s: float, what: str) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                try:
                    return self._conn.recv()
                except EOFError:
                    pass
            if self._process.poll() is not None:
                raise DiffCutError(
                    f"the keyframe worker process ended (exit status {self._process.returncode}) "
                    f"before it could {what}; run with --keyframes every:1 to see the error here"
                )
            if time.monotonic() >= deadline:
                raise DiffCutError(f"the keyframe worker process did not {what} within {timeout_s:.0f} s")

    @property
    def idle(self) -> bool:
        return self._busy_since is None

    def submit(self, index: int, frame: np.ndarray, captured: float) -> bool:
        if self._busy_since is not None:
            return False
        self._conn.send((index, np.ascontiguousarray(frame), captured, self._options()))
        self._busy_since = time.perf_counter()
        return True

    def poll(self, wait_s: float = 0.0) -> tuple | None:
        if self._busy_since is None:
            return None
        if not self._conn.poll(wait_s) and self._process.poll() is None:
            return None
        kind, payload = self._receive(0.0, "segment a keyframe")
        self.busy_s += time.perf_counter() - self._busy_since
        self._busy_since = None
        if kind == "error":
            raise payload
        self.finished += 1
        return payload

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the process to stop after the frame in work; end it if it does not."""
        import subprocess

        with contextlib.suppress(OSError, ValueError):
            self._conn.send(None)
        deadline = time.monotonic() + timeout_s
        # Drain while waiting: a result in flight would otherwise block the worker's send (and its exit).
        while self._process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, EOFError, ValueError):
                if self._conn.poll(0.1):
                    self._conn.recv()
        if self._process.poll() is None:
            self._process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(5.0)
        self._conn.close()

    @property
    def fps(self) -> float:
        return self.finished / self.busy_s if self.busy_s > 0 else 0.0


def _keyframe_worker(segmenter: Any) -> Any:
    """A process for a Segmenter that can be reopened from its spec (or a RemoteSegmenter); a thread
    for anything else (a custom segmenter object)."""
    from diffcut_edge.runtime.segmenter import Segmenter

    if isinstance(segmenter, (RemoteSegmenter, Segmenter)) and segmenter.spec is not None:
        spec = segmenter.spec
        if spec.threads is None:  # one core stays with the frame loop (capture, flow, overlay, display)
            spec = spec.replace(threads=max(1, (os.cpu_count() or 2) - 1))
        return ProcessKeyframeWorker(spec, lambda: segmenter.options)
    return KeyframeWorker(segmenter)


# ------------------------------------------------------------------ the loop
def iter_segmented(
    source,
    segmenter,
    *,
    keyframes: str | KeyframePolicy = "every:1",
    realtime: bool = False,
    pipelined: bool = True,
    every: int | None = None,
    max_frames: int | None = None,
    depth: int = 2,
    pace_fps: float | None = None,
    flow_width: int | None = None,
) -> Iterator[SegmentedFrame]:
    """Segment a stream of frames, yielding :class:`SegmentedFrame` in order.

    Args:
        source: a :class:`FrameReader`, an opened ``cv2.VideoCapture``, a camera index /
            path / URL, or any iterable of BGR uint8 frames.
        segmenter: a :class:`~diffcut_edge.runtime.Segmenter` (any
            :class:`~diffcut_edge.runtime.segmenter.FrameSegmenter`), or a :class:`RemoteSegmenter`.
        keyframes: ``"every:N"``, ``"auto"`` or a :class:`KeyframePolicy`: which frames run DiffCut.
        realtime: the encoder in its own worker, never holding the loop (see the module).
        pipelined: (not realtime) encode keyframes in a worker thread ahead of post-processing.
        every: the old spelling of ``keyframes="every:N"``.
        max_frames: stop after this many frames.
        depth: encoded frames the pipelined worker may hold ahead (memory vs smoothing).
        pace_fps: (realtime) release frames at this rate, dropping those the loop is too late
            for: a video file played as a camera would deliver it. None = as they come.
        flow_width: the optical flow's frame width (default :data:`~propagation.FLOW_WIDTH`).

    Timings: ``result.timings`` has the Segmenter's stages on keyframes; a carried frame has
    ``flow`` and ``propagate`` and zero for the encoder stages. ``total`` is the work spent on
    that frame in the loop's thread.
    """
    policy = KeyframePolicy.parse(f"every:{every}" if every is not None else keyframes)
    if max_frames is not None and max_frames < 1:
        raise DiffCutError(f"max_frames must be >= 1, got {max_frames}")
    if pace_fps is not None and not pace_fps > 0:
        raise DiffCutError(f"pace_fps must be > 0, got {pace_fps}")
    frames = _frames_of(source)
    owned = frames if isinstance(frames, FrameReader) and frames is not source else None
    if max_frames is not None:
        frames = itertools.islice(frames, max_frames)
    motion = MotionEstimator(**({} if flow_width is None else {"width": flow_width}))
    local = None
    if not realtime and isinstance(segmenter, RemoteSegmenter):  # no worker process: open it here
        segmenter = local = segmenter.spec.replace(options=segmenter.options).open()
    try:
        if realtime:
            yield from _realtime(frames, segmenter, policy, motion, pace_fps)
        else:
            yield from _in_order(frames, segmenter, policy, motion, pipelined, depth)
    finally:
        if local is not None:
            local.close()
        if owned is not None:  # a reader opened here from a path / index / URL
            owned.close()


def _carried(
    item_index: int, frame: np.ndarray, carrier: LabelCarrier, motions: list[Motion], flow_ms: float, captured: float
) -> SegmentedFrame:
    result = carrier.carry(frame, motions)
    result.timings["flow"] = flow_ms
    result.timings["total"] = flow_ms + result.timings["propagate"]
    confidence = motions[-1].confidence if motions else None
    return SegmentedFrame(
        item_index,
        frame,
        result,
        keyframe=False,
        key_index=carrier.key_index,
        age_frames=item_index - carrier.key_index,
        age_ms=(captured - carrier.key_time) * 1e3,
        confidence=confidence,
    )


def _in_order(
    frames, segmenter, policy: KeyframePolicy, motion: MotionEstimator, pipelined: bool, depth: int
) -> Iterator[SegmentedFrame]:
    """Every frame waits for its own result: files, where there is no deadline."""
    carrier = LabelCarrier()
    fixed = policy.mode == "every"
    stream: Iterator[_Encoded] = (
        _encode_stream(frames, segmenter, lambda i: i % policy.interval == 0)
        if fixed
        else (_Encoded(i, f, None) for i, f in enumerate(frames))
    )
    if pipelined and fixed:
        stream = _pipelined(stream, depth)
    try:
        for item in stream:
            captured = time.perf_counter()
            start = time.perf_counter()
            step = None if policy.per_frame else motion(item.frame)
            flow_ms = _ms(start)
            if fixed:
                is_key = item.encoded is not None
            else:
                is_key = carrier.key is None or policy.due(
                    item.index, item.index - carrier.key_index, step, carrier.novelty
                )
                if is_key:
                    item = replace(item, encoded=segmenter.encode_frame(item.frame))
            if is_key:
                result = segmenter.finish(item.encoded)
                carrier.start(result, item.index, captured)
                yield SegmentedFrame(
                    item.index,
                    item.frame,
                    result,
                    keyframe=True,
                    key_index=item.index,
                    confidence=None if step is None else step.confidence,
                )
            else:
                yield _carried(item.index, item.frame, carrier, [step] if step is not None else [], flow_ms, captured)
    finally:
        stream.close()  # stops a pipelined worker now when the caller breaks out early


@dataclass
class _Pacer:
    """(index, frame, capture time) of ``frames``; with ``fps``, each frame released at its time and
    the frames the loop is more than :data:`LATE_S` (or a frame) late for dropped, as a camera would
    have moved on: the lag stays bounded, nothing queues."""

    frames: Iterable[np.ndarray]
    fps: float | None
    _origin: float = field(default_factory=time.perf_counter)

    def restart_after(self, index: int) -> None:
        """Frame ``index + 1`` is due now (after a start-up wait that no frame should be dropped for)."""
        if self.fps is not None:
            self._origin = time.perf_counter() - (index + 1) / self.fps

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, float]]:
        self._origin = time.perf_counter()
        for index, frame in enumerate(self.frames):
            if self.fps is not None:
                due = self._origin + index / self.fps
                now = time.perf_counter()
                if now > due + max(1.0 / self.fps, LATE_S):
                    continue
                if now < due:
                    time.sleep(due - now)
            yield index, frame, time.perf_counter()


def _realtime(
    frames, segmenter, policy: KeyframePolicy, motion: MotionEstimator, pace_fps: float | None
) -> Iterator[SegmentedFrame]:
    """The encoder in its own worker; every frame carried along the flow and released at once."""
    carrier = LabelCarrier()
    worker = _keyframe_worker(segmenter)
    history: collections.deque = collections.deque(maxlen=HISTORY_FRAMES)  # (index, Motion) since the last submit
    submitted = -1
    try:
        pacer = _Pacer(frames, pace_fps)
        for index, frame, captured in pacer:
            start = time.perf_counter()
            step = motion(frame)
            flow_ms = _ms(start)
            if step is None:  # the first frame, or the size changed: no flow to carry along
                history.clear()
            if carrier.key is None:  # nothing to show yet: the first keyframe is waited for
                if worker.submit(index, frame, captured):
                    submitted = index
                done = worker.poll(wait_s=3600.0)
                _adopt(carrier, done, history)
                history.clear()
                pacer.restart_after(index)
                yield SegmentedFrame(index, frame, done[2], keyframe=True, key_index=index, encoder_fps=worker.fps)
                continue
            if (done := worker.poll()) is not None:
                _adopt(carrier, done, history)  # carried up to the previous frame; this one follows below
            item = _carried(index, frame, carrier, [step] if step is not None else [], flow_ms, captured)
            item.encoder_fps = worker.fps
            if step is not None:
                history.append((index, step))
            if _wants_keyframe(policy, index, submitted) and worker.submit(index, frame, captured):
                submitted = index
                history.clear()  # the flows before this frame will never be needed again
            yield item
    finally:
        worker.close()


def _wants_keyframe(policy: KeyframePolicy, index: int, submitted: int) -> bool:
    """Whether to hand frame ``index`` to the encoder if it is free."""
    if policy.mode == "every":
        return index - submitted >= policy.interval
    return True  # auto: as soon as the encoder is free (a scene cut included)


def _adopt(carrier: LabelCarrier, done: tuple, history: collections.deque) -> None:
    """A keyframe's result for frame k becomes the key, moved forward along the flows since k
    (``history``: the flows of the frames after the one handed to the encoder, up to the previous)."""
    index, captured, result, _ = done
    flows = [m for i, m in history if i > index]
    labels = np.asarray(result.mask_labels, np.int32)
    for m in flows:
        labels = warp_labels(labels, m)
    if flows:
        labels = fill_unlabelled(labels)
    carrier.start(result, index, captured, labels)


# ------------------------------------------------------------------------ throughput
@dataclass
class Throughput:
    """Running per-stage means and frames per second for a final summary line.

    The rate counts from the first frame on (model loading and the first keyframe's wait are
    start-up, not throughput): ``(frames - 1) / (last - first)``.
    """

    frames: int = 0
    keyframes: int = 0
    first: float | None = None
    last: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    _keys: set = field(default_factory=set, repr=False)

    def add(self, timings: dict[str, float], key_index: int | None = None) -> None:
        """One frame's timings; ``key_index``: the frame its labels come from (None: its own)."""
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        self.frames += 1
        if key_index is None or key_index not in self._keys:
            self.keyframes += 1
            if key_index is not None:
                self._keys.add(key_index)
        for key, value in timings.items():
            self.stage_ms[key] = self.stage_ms.get(key, 0.0) + float(value)

    @property
    def fps(self) -> float:
        if self.first is None or self.frames < 2 or self.last <= self.first:
            return 0.0
        return (self.frames - 1) / (self.last - self.first)

    def summary(self) -> str:
        order = (*TIMING_KEYS[:-1], "label", *PROPAGATION_KEYS, TIMING_KEYS[-1])
        means = {k: v / max(self.frames, 1) for k, v in self.stage_ms.items()}
        stages = " ".join(f"{k}={means[k]:.1f}" for k in order if k in means)
        keys = f" ({self.keyframes} keyframes)" if self.keyframes != self.frames else ""  # DiffCut ran on these
        return f"{self.frames} frames{keys}, {self.fps:.2f} fps; ms/frame: {stages}"


if __name__ == "__main__":  # the realtime keyframe worker process (ProcessKeyframeWorker)
    import sys
    from multiprocessing.connection import Connection

    _keyframe_process(Connection(int(sys.argv[1])))
