"""The PyTorch reference: faithful to the official DiffCut code, device-agnostic.

It is the yardstick every fast path is tested against, and it is never imported by
the runtime. Names are resolved lazily so ``import diffcut_edge.diffcut_ref`` is cheap.
The metrics (numpy only) live in ``diffcut_edge.metrics``.

Public API::

    extract_features(pipeline, images, resolution=1024, ...)       -> (B, (R/32)^2, C) float32
    segment_features(features, grid, tau=0.5, alpha=10, mask_size=(128, 128)) -> (H, W) int
    pamr_refine(image, labels, num_iter=10, dilations=(1, 2, 4, 8)) -> (H, W) int
    text_classifier(clip, tokenizer, vocabulary) -> (S, D); associate_labels(clip, image, labels, ...)
"""

from __future__ import annotations

from diffcut_edge.lazy import lazy_getattr

_LAZY = {
    "extract_features": "features",
    "segment_features": "ncut",
    "recursive_ncut": "ncut",
    "assemble_labels": "ncut",
    "assign_concepts": "ncut",
    "segment_embeddings": "ncut",
    "recursive_ncut_trace": "ncut",
    "NCutTrace": "ncut",
    "pamr_refine": "pamr",
    "pamr_soft": "pamr",
    "associate_labels": "clip_labels",
    "text_classifier": "clip_labels",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
