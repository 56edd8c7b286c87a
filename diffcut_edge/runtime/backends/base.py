"""The one inference interface: ``infer(feed: dict) -> dict``, ``close()``, ``with``.

Like Polygraphy's runners: the public :meth:`Backend.infer` checks state and the feed
against the manifest, subclasses implement only :meth:`Backend._infer_impl` and
:meth:`Backend._close_impl`. ONNX Runtime and native TensorRT swap freely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.manifest import Manifest


def check_image_batch(
    array: Any, manifest: Manifest, batch_range: tuple[int, int | None] = (1, None), name: str | None = None
) -> None:
    """Raise a DiffCutError unless ``array`` is a (B, 3, R, R) float32 batch the model accepts.

    ``batch_range`` is (min, max) batch of the backend (max None = unbounded); ``array``
    may be numpy or cupy (only ``shape``/``dtype``/``ndim`` are read).
    """
    name = name or manifest.input_name
    r = manifest.resolution
    expected = f"(B, 3, {r}, {r}) float32"
    shape = tuple(getattr(array, "shape", ()))
    dtype = getattr(array, "dtype", None)
    if dtype is None or np.dtype(dtype) != np.float32:
        raise DiffCutError(
            f"input '{name}': expected {expected}, got dtype {dtype} "
            f"(use diffcut_edge.runtime.preprocess to build the batch)"
        )
    if len(shape) != 4 or shape[1:] != (3, r, r):
        raise DiffCutError(
            f"input '{name}': expected shape {expected}, got {shape}; this model folder was exported at resolution {r}"
        )
    low, high = batch_range
    batch = shape[0]
    if batch < low or (high is not None and batch > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise DiffCutError(
            f"input '{name}': batch {batch} is outside what the backend accepts "
            f"({allowed}); split the frames into smaller batches"
        )


class Backend:
    """Base class: an opened encoder that maps an image batch to features.

    Attributes:
        manifest: the model folder's manifest.
        input_name / output_name: tensor names (from the manifest).
        device: ``"cpu"`` or ``"cuda"`` — where the encoder runs.
        batch_range: (min, max) batch accepted; max None = unbounded.
        outputs_on_device: whether :meth:`infer` returns cupy arrays (GPU-resident).
    """

    device: str = "cpu"
    outputs_on_device: bool = False

    def __init__(self, manifest: Manifest, batch_range: tuple[int, int | None] = (1, None)) -> None:
        self.manifest = manifest
        self.input_name = manifest.input_name
        self.output_name = manifest.output_name
        self.batch_range = batch_range
        self._closed = False

    @property
    def description(self) -> str:
        """What runs the encoder, for reports (the class; a provider-backed one adds its provider)."""
        return type(self).__name__

    @property
    def max_batch(self) -> int | None:
        return self.batch_range[1]

    def infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        """Run the encoder: ``{input_name: (B,3,R,R) float32}`` -> ``{output_name: (B,N,C)}``."""
        if self._closed:
            raise DiffCutError(f"{type(self).__name__} is closed; open a new backend")
        if not isinstance(feed, Mapping) or set(feed) != {self.input_name}:
            got = sorted(feed) if isinstance(feed, Mapping) else type(feed).__name__
            raise DiffCutError(
                f"{type(self).__name__}.infer: expected a dict with the one input '{self.input_name}', got {got}"
            )
        array = feed[self.input_name]
        check_image_batch(array, self.manifest, self.batch_range, self.input_name)
        return self._infer_impl(array)

    def close(self) -> None:
        """Release the session/engine; idempotent."""
        if not self._closed:
            self._closed = True
            self._close_impl()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.manifest.model_id!r}, device={self.device!r}, "
            f"R={self.manifest.resolution}, batch={self.batch_range})"
        )

    # Subclasses implement these two.
    def _infer_impl(self, images: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _close_impl(self) -> None:
        pass
