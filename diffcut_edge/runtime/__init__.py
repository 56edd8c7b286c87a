"""The inference core: numpy on the CPU, cupy on the GPU, no torch.

Preprocessing, encoder backends, recursive NCut, concept assignment, PAMR, the array
helpers, ``Segmenter`` and the model-folder format (manifest). Drawing, I/O and video
live in ``diffcut_edge.apps``; datasets, metrics and bench in ``diffcut_edge.eval``.
Names resolve lazily, so ``import diffcut_edge.runtime`` loads nothing heavy.
"""

from __future__ import annotations

from diffcut_edge.lazy import lazy_getattr

_LAZY = {
    "segment_features": "assign",
    "assign_concepts": "assign",
    "recursive_ncut": "ncut",
    "NCutResult": "ncut",
    "pamr_refine": "pamr",
    "pamr_soft": "pamr",
    # Segmenter, inference backends, preprocessing
    "Segmenter": "segmenter",
    "SegmenterOptions": "options",
    "SegmenterSpec": "spec",
    "SegmentationResult": "postprocess",
    "Postprocessor": "postprocess",
    "Backend": "backends",
    "OnnxRuntimeBackend": "backends",
    "TensorRTBackend": "backends",
    "open_backend": "backends",
    "preprocess": "preprocess",
    "image_to_rgb_float": "preprocess",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
