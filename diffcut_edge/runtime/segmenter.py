"""``Segmenter``: frames in, DiffCut segmentations out. It orchestrates only.

    preprocess (preprocess.py) -> encoder (backends/) -> recursive NCut (ncut.py)
    -> concept assignment at mask size (assign.py) -> PAMR (pamr.py) -> frame size
    (the part after the encoder is postprocess.Postprocessor)

On a GPU the features stay on the device from the engine through the cupy
post-processing; results always come back as host numpy arrays.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from diffcut_edge.defaults import DEVICES
from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import cupy as cp
from diffcut_edge.runtime.backends import Backend, open_backend
from diffcut_edge.runtime.manifest import Manifest, read_manifest
from diffcut_edge.runtime.options import SegmenterOptions
from diffcut_edge.runtime.postprocess import Postprocessor, SegmentationResult, _ms
from diffcut_edge.runtime.preprocess import check_frame, frame_list, preprocess
from diffcut_edge.runtime.spec import SegmenterSpec
from diffcut_edge.runtime.xp import get_xp, gpu_postprocessing_problem


def names_segments(manifest: Manifest, classes: Any = None, name_segments: bool | None = None) -> bool:
    """Whether a Segmenter opened with these arguments names its segments (the one rule, also for
    callers that decide outputs before any Segmenter opens, such as ``--engine ray``)."""
    if name_segments is not None:
        return bool(name_segments)
    return classes is not None or bool(manifest.vocabulary)


@dataclass
class EncodedFrame:
    """The first stage's output for one frame: what :meth:`Segmenter.finish` needs to complete it.

    frame: the frame as given. features: (N, C) on the post-processing device. pixels: the encoder's
    input (1, 3, R, R) (CLIP names segments on it: never preprocessed twice). timings: preprocess and
    encoder milliseconds.
    """

    frame: Any
    features: Any
    pixels: Any
    timings: dict[str, float]


@runtime_checkable
class FrameSegmenter(Protocol):
    """What the video loop, its workers and the live view use of a segmenter: two explicit stages
    and its options. :class:`Segmenter` is one; test fakes implement the same."""

    options: Any

    def encode_frame(self, frame: Any) -> EncodedFrame: ...

    def finish(self, encoded: EncodedFrame) -> Any: ...

    def update_options(self, **changes: Any) -> Any: ...


def _pad_batch(batch: Any, min_batch: int) -> Any:
    """``batch`` repeated along its last image up to ``min_batch`` images.

    An engine built with a batch profile whose minimum is above 1 (``--batch 2:2:4``) refuses
    smaller batches; the last chunk of a list and every single frame are padded instead, and
    the padding's features are dropped.
    """
    missing = int(min_batch) - int(batch.shape[0])
    if missing <= 0:
        return batch
    xp = get_xp(batch)
    return xp.concat([batch, xp.repeat(batch[-1:, ...], missing, axis=0)], axis=0)


def _chunks(items: Sequence[Any], size: int | None) -> Iterator[Sequence[Any]]:
    step = len(items) if size is None else max(1, int(size))
    for i in range(0, len(items), step):
        yield items[i : i + step]


class Segmenter:
    """DiffCut on an exported model folder.

    Example::

        frame = cv2.imread("photo.jpg")                  # BGR uint8
        with Segmenter.from_model_dir("ssd1b-1024") as seg:
            result = seg(frame)                           # result.labels: (H, W) int32
        cv2.imwrite("overlay.jpg", draw_overlay(frame, result.labels))

    Args:
        backend: an open :class:`~diffcut_edge.runtime.backends.Backend`.
        options: post-processing options.
        device: where post-processing runs: "cpu" (numpy) or "cuda" (cupy);
            None = "cuda" when the encoder runs on the GPU and cupy imports.
        owns_backend: close the backend with the segmenter.
        labeler: a :class:`~diffcut_edge.runtime.labeling.SegmentLabeler` that names the segments
            (``from_model_dir`` opens one when the folder has a vocabulary or ``classes`` are given).
    """

    def __init__(
        self,
        backend: Backend,
        options: SegmenterOptions | None = None,
        device: str | None = None,
        owns_backend: bool = True,
        labeler: Any = None,
        spec: SegmenterSpec | None = None,
    ) -> None:
        self.backend = backend
        self.labeler = labeler
        self.device = self._resolve_device(device, backend)
        self.post = Postprocessor.for_manifest(backend.manifest, options or SegmenterOptions(), self.device)
        self.owns_backend = owns_backend
        if self.device == "cpu":
            from diffcut_edge.runtime.xp import warm_up_host

            warm_up_host()  # at open, not inside the first frame's timings
        self._spec = spec  # how it was opened (None when built around a backend by hand)

    @classmethod
    def from_model_dir(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        device: str | None = None,
        *,
        options: SegmenterOptions | None = None,
        classes: Any = None,
        name_segments: bool | None = None,
        threads: int | None = None,
        verify: bool = True,
        **option_values: Any,
    ) -> Segmenter:
        """Open a model folder: the keyword spelling of ``SegmenterSpec(...).open()`` (the arguments
        are the spec's fields; see :class:`~diffcut_edge.runtime.spec.SegmenterSpec`).

        Post-processing options come as ``options`` or one by one (``tau=0.3, refine=False``).
        classes: name the segments with these classes (``"cat, sofa"``, a list, synonyms as inner
            lists), embedded now with the folder's CLIP text tower (needs ``export-vocab``).
        name_segments: None = when the folder has a vocabulary or ``classes`` are given.
        """
        spec = SegmenterSpec(
            path, backend, device, options or SegmenterOptions(), classes, name_segments, threads, verify
        )
        return cls.open_spec(spec.replace(**option_values) if option_values else spec)

    @classmethod
    def open_spec(cls, spec: SegmenterSpec) -> Segmenter:
        """The Segmenter a :class:`~diffcut_edge.runtime.spec.SegmenterSpec` describes (validated already)."""
        if spec.device == "cuda" and (problem := gpu_postprocessing_problem()):
            raise DiffCutError(f"--device cuda: {problem}")  # before the (slow) backend opens
        manifest = read_manifest(spec.model_dir)  # once, for the labeler and the backend
        labeler = None
        if names_segments(manifest, spec.classes, spec.name_segments):
            from diffcut_edge.runtime.labeling import SegmentLabeler

            # CLIP follows the encoder: --backend ort-cpu keeps it off the GPU too.
            labeler = SegmentLabeler.from_model_dir(
                spec.model_dir,
                spec.classes,
                manifest=manifest,
                verify=spec.verify,
                threads=spec.threads,
                device="cpu" if spec.backend == "ort-cpu" else None,
            )
        opened = open_backend(
            spec.model_dir,
            spec.backend,
            manifest,
            verify=spec.verify,
            keep_on_device=spec.device != "cpu",
            threads=spec.threads,
        )
        try:
            return cls(opened, spec.options, device=spec.device, labeler=labeler, spec=spec)
        except BaseException:
            opened.close()
            raise

    @property
    def spec(self) -> SegmenterSpec | None:
        """How to open this segmenter again (elsewhere, e.g. in a worker process), with its current
        options; None for a Segmenter built around a backend by hand."""
        return None if self._spec is None else dataclasses.replace(self._spec, options=self.options)

    @staticmethod
    def _resolve_device(device: str | None, backend: Backend) -> str:
        """cpu or cuda; "cuda" only where the whole cupy post-processing imports (checked now,
        not mid-NCut: cupy without its CUDA libraries imports and then fails in cupyx)."""
        if device is None:
            return "cuda" if backend.device == "cuda" and gpu_postprocessing_problem() is None else "cpu"
        if device not in DEVICES:
            raise DiffCutError(f"device must be one of {DEVICES} or None, got {device!r}")
        if device == "cuda" and (problem := gpu_postprocessing_problem()):
            raise DiffCutError(f"--device cuda: {problem}")
        return device

    @property
    def options(self) -> SegmenterOptions:
        return self.post.options

    @options.setter
    def options(self, value: SegmenterOptions) -> None:
        self.post.options = value

    @property
    def backend_description(self) -> str:
        """What runs the encoder, for reports (e.g. ``OnnxRuntimeBackend[CPUExecutionProvider]``)."""
        return self.backend.description

    @property
    def manifest(self) -> Manifest:
        return self.backend.manifest

    def update_options(self, **changes: Any) -> SegmenterOptions:
        """Change post-processing options between frames (validated; e.g. ``refine=False``).

        The encoder is untouched, so a live pipeline retunes without a restart.
        """
        self.options = dataclasses.replace(self.options, **changes)
        return self.options

    # ------------------------------------------------------------------ stages
    def encode_frame(self, frame: Any) -> EncodedFrame:
        """Stage 1 of one frame: preprocess and encode (what a video pipeline runs ahead in a worker)."""
        check_frame(frame)
        batch, features, t_pre, t_enc = self._encode_chunk([frame])
        return EncodedFrame(frame, features[0], batch[:1], {"preprocess": t_pre, "encoder": t_enc})

    def finish(self, encoded: EncodedFrame) -> SegmentationResult:
        """Stage 2: NCut, assignment, PAMR, the frame's size, and the segment names with a vocabulary."""
        result = self.post(encoded.frame, encoded.features, dict(encoded.timings))
        if self.labeler is not None:
            self.name_segments(result, encoded.pixels)
        return result

    def encode_timed(self, frames: Sequence[Any]) -> tuple[Any, float, float]:
        """Like :meth:`encode`, one chunk (at most the backend's max batch), with its
        (preprocess ms, encoder ms): what video pipelines report per stage."""
        _, features, t_pre, t_enc = self._encode_chunk(frames)
        return features, t_pre, t_enc

    def _encode_chunk(self, frames: Sequence[Any]) -> tuple[Any, Any, float, float]:
        """(encoder input batch, features, preprocess ms, encoder ms) of one chunk."""
        start = time.perf_counter()
        frames = list(frames)
        if self.post.device == "cuda" and self.backend.outputs_on_device:
            # Native TensorRT: upload the (small, uint8) frames and resize on the GPU, so
            # the float batch is born where the engine reads it.
            frames = [cp.asarray(f) for f in frames]
        batch = _pad_batch(preprocess(frames, self.manifest.resolution), self.backend.batch_range[0])
        t_pre = _ms(start)
        start = time.perf_counter()
        features = self.backend.infer({self.backend.input_name: batch})[self.backend.output_name]
        features = features[: len(frames)]  # drop the padding
        self._check_features(features, len(frames))
        t_enc = _ms(start)
        return batch, features, t_pre, t_enc

    def _check_features(self, features: Any, batch: int) -> None:
        expected = (batch, self.manifest.num_tokens, self.manifest.channels)
        if tuple(features.shape) != expected:
            raise DiffCutError(
                f"the encoder returned features of shape {tuple(features.shape)}, the manifest "
                f"promises {expected}; the model folder is inconsistent, re-export it"
            )

    def encode(self, frames: Any) -> Any:
        """Frames -> features (B, N, C) float32 (cupy when the backend keeps them on the GPU).

        Batches larger than the backend's maximum are run in chunks.
        """
        frames = frame_list(frames, allow_single=False)
        parts = [self.encode_timed(chunk)[0] for chunk in _chunks(frames, self.backend.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return get_xp(parts[0]).concat(parts, axis=0)

    def postprocess(self, frame: Any, features: Any) -> SegmentationResult:
        """One frame's features (N, C) -> its segmentation: NCut, assignment, PAMR, resize."""
        return self.post(frame, features)

    # ------------------------------------------------------------------ public calls
    def __call__(self, frame: Any) -> SegmentationResult:
        """Segment one frame (BGR uint8, or any type ``preprocess`` accepts)."""
        check_frame(frame)
        return self.segment_batch([frame])[0]

    def segment_batch(self, frames: Any) -> list[SegmentationResult]:
        """Segment several frames; encoder batches respect the backend's maximum batch."""
        frames = frame_list(frames, allow_single=False)
        results = []
        for chunk in _chunks(frames, self.backend.max_batch):
            batch, features, t_pre, t_enc = self._encode_chunk(chunk)
            share = {"preprocess": t_pre / len(chunk), "encoder": t_enc / len(chunk)}
            for i, (frame, feats) in enumerate(zip(chunk, features)):
                result = self.post(frame, feats, share)
                if self.labeler is not None:
                    self.name_segments(result, batch[i : i + 1])
                results.append(result)
        return results

    def name_segments(self, result: SegmentationResult, pixels: Any) -> SegmentationResult:
        """Fill ``result.segments`` from the encoder input ``pixels`` (1, 3, R, R) of its frame."""
        return self.labeler.name_result(result, pixels)

    def close(self) -> None:
        if self.labeler is not None:
            self.labeler.close()
        if self.owns_backend:
            self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Segmenter({self.backend!r}, device={self.device!r}, {self.options})"
