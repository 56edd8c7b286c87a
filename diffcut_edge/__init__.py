"""diffcut-edge: DiffCut zero-shot segmentation, exported and deployable.

Sub-packages, in the order data flows through them:

- ``models``      model recipes, pipeline loading, tiny random-weight models
- ``diffcut_ref`` the faithful PyTorch reference (never imported by the runtime)
- ``export``      truncated encoder -> ONNX model folder -> TensorRT engine
- ``runtime``     the inference core: manifest, preprocessing, backends, NCut, PAMR, ``Segmenter``
- ``apps``        image/video I/O, overlays, tracking, HUD (what the commands use)
- ``eval``        dataset layouts, the paper's protocol, metrics, bench

Design: docs/design.md.

Importing this package imports nothing heavy.
"""

from diffcut_edge.errors import DiffCutError

__version__ = "0.1.0"
__all__ = ["DiffCutError", "__version__"]
