"""What the segment / video / webcam commands and OpenCV apps use around the runtime core.

Batch outputs, video sources and writer, the frame loop, overlays, segment tracking, the FPS meter and
HUD. numpy + OpenCV only: no torch, diffusers or transformers. Names resolve lazily.
"""

from __future__ import annotations

from diffcut_edge.lazy import lazy_getattr

_LAZY = {
    "draw_overlay": "overlay",
    "draw_boundaries": "overlay",
    "palette_color": "overlay",
    "SegmentTracker": "tracking",
    "TrackedOverlay": "tracking",
    "FrameReader": "video",
    "AtomicVideoWriter": "video",
    "iter_segmented": "pipeline",
    "KeyframePolicy": "propagation",
    "FpsMeter": "hud",
    "draw_hud": "hud",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
