"""The inference core: numpy on the CPU, cupy on the GPU, no torch.

Preprocessing, encoder backends, recursive NCut, concept assignment, PAMR, the array
helpers, ``Segmenter``, the model-folder format (manifest) and image files in and out
(``images``: what export, eval, apps and serve all read images with). Drawing, batch outputs and
video live in ``diffcut_edge.apps``; datasets and bench in ``diffcut_edge.eval``; the pure
scoring functions in ``diffcut_edge.metrics``.
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
    # image files in and out (every stage reads images through these)
    "read_image": "images",
    "collect_image_paths": "images",
    "write_image": "images",
    "write_labels_png": "images",
    "read_labels_png": "images",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
