"""The frame loop of ``diffcut-edge webcam`` and ``video``: frames → segmenter → overlay (and HUD) →
window, live view, recording, per-frame outputs.

:func:`run_live` takes a frame source and a segmenter and shows the result wherever
:class:`LiveOutputs` says: an OpenCV window (keys q/Esc quit, r toggles refinement, f/space
freezes), a :class:`~diffcut_edge.apps.live.LiveHub` that browsers watch and tune, an
:class:`~diffcut_edge.apps.video.AtomicVideoWriter` and a :class:`~diffcut_edge.apps.batch.FrameSaver`;
``video`` is the same loop writing a file without the HUD. Embedding apps call it as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcut_edge.apps import hud
from diffcut_edge.apps.pipeline import Throughput, iter_segmented
from diffcut_edge.apps.propagation import KeyframePolicy
from diffcut_edge.apps.tracking import TrackedOverlay
from diffcut_edge.errors import DiffCutError

KEY_ESC = 27
WINDOW_TITLE = "diffcut-edge (q quit, r refine, f freeze)"


class Window:
    """The OpenCV window and its keys; :meth:`check` says first (one line) when there is no display."""

    title: str = WINDOW_TITLE

    @staticmethod
    def check() -> None:
        if problem := hud.gui_problem():
            raise DiffCutError(problem)

    def show(self, image: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.title, image)

    @staticmethod
    def key(frozen: bool) -> int:
        """The key pressed (-1 = none); waits longer while frozen."""
        import cv2

        return cv2.waitKey(30 if frozen else 1) & 0xFF

    @staticmethod
    def close() -> None:
        import cv2

        cv2.destroyAllWindows()


@dataclass
class LiveOutputs:
    """Where the live loop shows its frames; each is optional (none: headless, stats only)."""

    window: Window | None = None
    hub: Any = None  # a LiveHub: publish frames, take the browser's control changes
    writer: Any = None  # an AtomicVideoWriter for the overlay video
    frames: Any = None  # a FrameSaver: each frame's label map and segments JSON
    hud: bool = True  # the status line on the overlay (fps, ms, segments, what the labels are)


@dataclass
class LiveSummary:
    """How a live run ended: its throughput and whether the user quit in the window."""

    stats: Throughput
    quit: bool = False


def _handle_keys(window: Window, segmenter: Any) -> bool:
    """React to the window's keys until the view is not frozen; True when the user quit."""
    frozen, key = False, window.key(False)
    while True:
        if key in (ord("q"), KEY_ESC):
            return True
        if key == ord("r"):
            segmenter.update_options(refine=not segmenter.options.refine)
        elif key in (ord("f"), ord(" ")):
            frozen = not frozen
        if not frozen:
            return False
        key = window.key(True)  # frozen: keep the window responsive, pull no frames


def _publish(hub: Any, vis: np.ndarray, draw: TrackedOverlay, item: Any, segmenter: Any, fps: float) -> None:
    options = segmenter.options
    hub.publish(
        vis,
        draw.last_labels,
        item.result.timings,
        fps=fps,
        options={"tau": options.tau, "alpha": options.alpha, "refine": options.refine, "opacity": draw.alpha},
        frame=hud.frame_status(item),
        names=draw.last_names,
    )


def run_live(
    frames: Iterable[np.ndarray],
    segmenter: Any,
    outputs: LiveOutputs | None = None,
    *,
    keyframes: str | KeyframePolicy = "auto",
    realtime: bool = True,
    pipelined: bool = True,
    max_frames: int | None = None,
    pace_fps: float | None = None,
    track: bool = True,
    style: Any = None,
    on_frame: Callable[[Any], None] | None = None,
) -> LiveSummary:
    """Segment ``frames`` live (see :func:`~diffcut_edge.apps.pipeline.iter_segmented` for the
    keyframe arguments), draw overlay and HUD, and show them on ``outputs``. Returns when the
    frames end, ``max_frames`` are shown or the user quits in the window. ``style``: an
    :class:`~diffcut_edge.apps.overlay.OverlayStyle` (or an opacity); ``on_frame(item)`` after each
    frame (a progress bar)."""
    from diffcut_edge.apps.live import apply_changes

    outputs = outputs or LiveOutputs()
    draw, stats, meter = TrackedOverlay(track, style), Throughput(), hud.FpsMeter()
    try:
        for item in iter_segmented(
            frames,
            segmenter,
            keyframes=keyframes,
            realtime=realtime,
            pipelined=pipelined,
            max_frames=max_frames,
            pace_fps=pace_fps,
        ):
            if outputs.hub is not None:
                apply_changes(outputs.hub.take_changes(), segmenter, draw)
            vis = draw(item.frame, item.result)
            stats.add(item.result.timings, item.key_index)
            fps = meter.tick()
            if outputs.hud:
                hud.draw_hud(
                    vis,
                    hud.hud_text(
                        fps, item.result.timings, item.result.num_segments, segmenter.options.refine, frame=item
                    ),
                )
            if outputs.hub is not None:
                _publish(outputs.hub, vis, draw, item, segmenter, fps)
            if outputs.writer is not None:
                outputs.writer.write(vis)
            if outputs.frames is not None:
                outputs.frames.save(item.index, draw.last_labels, draw.last_names, hud.frame_status(item))
            if on_frame is not None:
                on_frame(item)
            if outputs.window is not None:
                outputs.window.show(vis)
                if _handle_keys(outputs.window, segmenter):
                    return LiveSummary(stats, quit=True)
    finally:
        if outputs.window is not None:
            outputs.window.close()
    return LiveSummary(stats)


def replayed(reader: Iterable[np.ndarray], reopen: Callable[[], Any]) -> Iterator[np.ndarray]:
    """The frames of ``reader``, then those of ``reopen()`` (a new reader of the same file, used as
    a context manager) again and again: a video file played in a loop (``--loop``)."""
    yield from reader
    while True:
        with reopen() as again:
            count = 0
            for frame in again:
                count += 1
                yield frame
        if count == 0:
            return
