"""Evaluation and measurement: dataset layouts, the paper's protocol, metrics, bench.

numpy + scipy + OpenCV only (the reference predictor imports torch when asked for).
Names resolve lazily.
"""

from __future__ import annotations

from diffcut_edge.lazy import lazy_getattr

_LAZY = {
    "DATASETS": "datasets",
    "get_spec": "datasets",
    "run_eval": "protocol",
    "run_open_vocab_eval": "open_vocab",
    "engine_open_vocab": "open_vocab",
    "reference_open_vocab": "open_vocab",
    "JaccardAccumulator": "metrics",
    "engine_predictor": "protocol",
    "reference_predictor": "protocol",
    "hungarian_miou": "metrics",
    "hungarian_match": "metrics",
    "merge_background": "metrics",
    "MiouAccumulator": "metrics",
    "run_bench": "bench",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
