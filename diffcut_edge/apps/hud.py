"""What a live view shows besides the overlay: frames per second, the HUD line, the window.

Used by ``diffcut-edge webcam`` and by OpenCV apps (examples/opencv_app.py).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Weight of the newest frame in the smoothed frame rate: ~10 frames of memory.
FPS_SMOOTHING = 0.1


@dataclass
class FpsMeter:
    """Smoothed frames per second of a loop: call :meth:`tick` once per shown frame."""

    fps: float = 0.0
    _last: float = field(default_factory=time.perf_counter, repr=False)

    def tick(self) -> float:
        now = time.perf_counter()
        rate = 1.0 / max(now - self._last, 1e-6)
        self._last = now
        self.fps = rate if self.fps == 0.0 else (1.0 - FPS_SMOOTHING) * self.fps + FPS_SMOOTHING * rate
        return self.fps


def hud_text(fps: float, timings: dict, num_segments: int, refine: bool, frame: Any = None) -> str:
    """``12.3 fps  81 ms  6 seg  refine on``; with ``frame`` (a SegmentedFrame) also what its labels
    are: ``key`` or their age (``age 4f/130ms``) and the encoder's rate when it runs in a worker."""
    text = f"{fps:.1f} fps  {timings.get('total', 0):.0f} ms  {num_segments} seg  refine {'on' if refine else 'off'}"
    if frame is not None:
        text += "  key" if frame.keyframe else f"  age {frame.age_frames}f/{frame.age_ms:.0f}ms"
        if frame.encoder_fps:
            text += f"  enc {frame.encoder_fps:.2f} fps"
    return text


def frame_status(frame: Any) -> dict[str, Any]:
    """What a SegmentedFrame's labels are, as plain data (the live view's ``labels`` in /stats)."""
    return {
        "keyframe": bool(frame.keyframe),
        "key_index": int(frame.key_index),
        "age_frames": int(frame.age_frames),
        "age_ms": round(float(frame.age_ms), 1),
        "confidence": None if frame.confidence is None else round(float(frame.confidence), 3),
        "encoder_fps": None if frame.encoder_fps is None else round(float(frame.encoder_fps), 3),
    }


def draw_hud(image: np.ndarray, text: str) -> np.ndarray:
    """Draw one status line in the top-left corner of a BGR uint8 image, in place; returns it."""
    from diffcut_edge.apps.overlay import draw_outlined_text

    return draw_outlined_text(image, text, (8, 20), 0.5, 1)


def gui_problem() -> str | None:
    """Why ``cv2.imshow`` cannot work here (a one-line reason), or None when it can."""
    import cv2

    gui = [
        line.split(":", 1)[1].strip()
        for line in cv2.getBuildInformation().splitlines()
        if line.strip().startswith("GUI:")
    ]
    if gui and gui[0].upper() == "NONE":
        return (
            "this OpenCV build has no GUI (opencv-python-headless): run with --headless "
            "[--record out.mp4]; for a window replace the headless wheel: pip uninstall -y "
            "opencv-python-headless && pip install opencv-python"
        )
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set): run with --headless [--record out.mp4]"
    return None
