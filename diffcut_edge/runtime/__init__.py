"""The lean runtime: numpy on the CPU, cupy on the GPU, no torch.

Names resolve lazily, so ``import diffcut_edge.runtime`` loads nothing heavy.
"""

from __future__ import annotations

import importlib

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


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
