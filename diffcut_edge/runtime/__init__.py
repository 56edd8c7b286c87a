"""The lean runtime: numpy on the CPU, cupy on the GPU, no torch.

Names resolve lazily, so ``import diffcut_edge.runtime`` loads nothing heavy.
"""

from __future__ import annotations

from diffcut_edge._lazy import lazy_getattr

_LAZY = {
    "segment_features": "assign",
    "assign_concepts": "assign",
    "recursive_ncut": "ncut",
    "NCutResult": "ncut",
    "pamr_refine": "pamr",
    "pamr_soft": "pamr",
    # Segmenter, inference backends, preprocessing, overlays
    "Segmenter": "segmenter",
    "SegmenterOptions": "segmenter",
    "SegmentationResult": "segmenter",
    "Backend": "backends",
    "OnnxRuntimeBackend": "backends",
    "TensorRTBackend": "backends",
    "open_backend": "backends",
    "preprocess": "preprocess",
    "image_to_rgb_float": "preprocess",
    "draw_overlay": "overlay",
    "draw_boundaries": "overlay",
    "palette_color": "overlay",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
