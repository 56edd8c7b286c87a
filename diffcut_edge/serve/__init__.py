"""Scale out on existing engines.

- Triton Inference Server: ``triton_repo`` (a model repository: ensemble ``diffcut`` over python
  pre/post-processing models and the dynamically batched encoder), ``triton_server`` (run a real
  ``tritonserver`` on it), ``triton_models`` (the python-backend models), and the client
  :class:`TritonSegmenter` (``triton_client``), with the call shape of ``Segmenter``.
- Ray Data: ``ray_batch`` (``segment --engine ray``) for labelling large image sets.

Imports tritonclient and Ray only when used (the ``[triton]`` and ``[ray]`` extras).
"""

from __future__ import annotations

from diffcut_edge.lazy import lazy_getattr

_LAZY = {"TritonSegmenter": "triton_client", "ServedSegmentation": "triton_client"}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
