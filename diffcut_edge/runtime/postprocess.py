"""One frame's features -> its segmentation: NCut, concept assignment, PAMR, frame size.

:class:`Postprocessor` is the half of :class:`~diffcut_edge.runtime.segmenter.Segmenter` after
the encoder. It needs only the feature geometry (grid, tokens, channels), so a process that never
runs the encoder (Triton's post-processing model) does exactly what ``Segmenter`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffcut_edge.defaults import STAGES
from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import cupy as cp
from diffcut_edge.runtime import assign, ncut, pamr
from diffcut_edge.runtime.manifest import Manifest
from diffcut_edge.runtime.options import SegmenterOptions
from diffcut_edge.runtime.preprocess import check_frame, image_to_rgb_float, resize_nearest
from diffcut_edge.runtime.xp import to_host


@dataclass
class SegmentationResult:
    """One frame's segmentation (host numpy arrays).

    labels: (H, W) int32 at the frame's size (nearest resize of ``mask_labels``).
    mask_labels: (mask_h, mask_w) int32 after assignment (and PAMR when refining).
    coarse_labels: (h, w) int32 on the feature grid, from the NCut, ids 0..K-1.
    num_segments: K. Ids in ``labels`` are < K; an id may vanish after assignment/PAMR.
    embeddings: (K, C) float32, row k = mean normalised feature of coarse segment k
        (for matching segments across frames).
    timings: milliseconds per stage (keys :data:`~diffcut_edge.defaults.TIMING_KEYS`, plus "label" when
        segments are named); in a batch, preprocess and encoder are the batch's time divided by its size.
    segments: with a vocabulary (``export-vocab``, or ``classes``): one
        :class:`~diffcut_edge.runtime.labeling.SegmentLabel` per id of ``labels`` (class index, name,
        score, area, bbox); else None. vocabulary / class_names: the vocabulary they come from.
    """

    labels: np.ndarray
    mask_labels: np.ndarray
    coarse_labels: np.ndarray
    num_segments: int
    embeddings: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    segments: list[Any] | None = None
    vocabulary: str | None = None
    class_names: tuple[str, ...] | None = None

    def class_map(self) -> np.ndarray:
        """(H, W) int32 class index per pixel (each segment painted with its class, as the official
        open-vocabulary output); needs ``segments``."""
        from diffcut_edge.runtime.labeling import paint_classes

        if self.segments is None:
            raise DiffCutError("no segment names: open the Segmenter on a folder with a vocabulary or with classes")
        return paint_classes(self.labels, {s.id: s.class_index for s in self.segments})


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def _host_int32(array: Any) -> np.ndarray:
    return to_host(array).astype(np.int32, copy=False)


@dataclass
class Postprocessor:
    """Features of one frame -> :class:`SegmentationResult`.

    grid: (h, w) feature grid; num_tokens = h * w; channels: C.
    device: "cpu" (numpy) or "cuda" (cupy), where the post-processing runs.
    """

    grid: tuple[int, int]
    channels: int
    options: SegmenterOptions = field(default_factory=SegmenterOptions)
    device: str = "cpu"

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, options: SegmenterOptions | None = None, device: str = "cpu"
    ) -> Postprocessor:
        return cls(tuple(manifest.grid), int(manifest.channels), options or SegmenterOptions(), device)

    @property
    def num_tokens(self) -> int:
        return int(self.grid[0]) * int(self.grid[1])

    @property
    def xp(self) -> Any:
        return cp.load() if self.device == "cuda" else np

    def to_device(self, array: Any) -> Any:
        """Move an array to where post-processing runs (numpy on cpu, cupy on cuda)."""
        if self.device == "cuda":
            return cp.asarray(array)  # no copy when it already is a cupy array
        return to_host(array)

    def _sync(self) -> None:
        # GPU work is asynchronous: synchronise so the stage timings are honest.
        if self.device == "cuda":
            cp.cuda.get_current_stream().synchronize()

    def _check_memory(self, segments: int) -> None:
        """Assignment and PAMR hold a few float maps per segment at mask size, and PAMR its neighbour
        weights: refuse in one line before allocating what cannot fit (on the GPU the host figure is a
        lower bound of what the device needs, checked the same way)."""
        from diffcut_edge.runtime.memory import check_fits

        h, w = self.options.mask_size
        maps = 3 * segments + (8 * len(self.options.pamr_dilations) + 6 if self.options.refine else 0)
        check_fits(
            4 * h * w * maps,
            f"post-processing at mask size {h}x{w} with {segments} segments",
            "lower --mask-size or cap the segments with --max-segments",
        )

    def __call__(self, frame: Any, features: Any, timings: dict[str, float] | None = None) -> SegmentationResult:
        """``frame`` (BGR, as the encoder saw it) and its ``features`` (N, C) -> the segmentation.

        ``timings`` may carry the preprocess / encoder milliseconds already spent on the frame.
        """
        timings = {"preprocess": 0.0, "encoder": 0.0, **(timings or {})}
        opts, grid = self.options, tuple(self.grid)
        expected = (self.num_tokens, self.channels)
        if tuple(getattr(features, "shape", ())) != expected:
            raise DiffCutError(
                f"postprocess: expected features of shape {expected} for one frame "
                f"(grid {grid}), got {tuple(getattr(features, 'shape', ()))}"
            )
        check_frame(frame)
        features = self.to_device(features)

        start = time.perf_counter()
        tokens = ncut.unit_tokens(features, grid)  # checked and normalised once for every stage
        cut = ncut.recursive_ncut(
            tokens,
            grid,
            tau=opts.tau,
            alpha=opts.alpha,
            max_segments=opts.max_segments,
            min_segment_size=opts.min_segment_size,
        )
        coarse = cut.labels
        self._sync()
        timings["ncut"] = _ms(start)
        self._check_memory(int(cut.num_segments))

        start = time.perf_counter()
        embeddings = assign.segment_embeddings(tokens, coarse)
        mask_labels = assign.assign_concepts(tokens, grid, coarse, opts.mask_size, embeddings=embeddings)
        self._sync()
        timings["assign"] = _ms(start)

        start = time.perf_counter()
        if opts.refine:
            # As the paper: PAMR sees the frame resized (bilinear) to the mask size.
            image = image_to_rgb_float(self.to_device(frame), size=opts.mask_size)
            refined = pamr.pamr_refine(image, mask_labels, num_iter=opts.pamr_iterations, dilations=opts.pamr_dilations)
            # PAMR numbers its output by the sorted ids present; map back to segment ids so
            # labels keep indexing the embeddings when assignment left an id out.
            mask_labels = self.xp.unique(mask_labels)[refined]
        self._sync()
        timings["pamr"] = _ms(start)

        labels = resize_nearest(mask_labels, frame.shape[:2])
        timings["total"] = sum(timings[k] for k in STAGES)
        return SegmentationResult(
            labels=_host_int32(labels),
            mask_labels=_host_int32(mask_labels),
            coarse_labels=_host_int32(coarse),
            num_segments=int(cut.num_segments),
            embeddings=to_host(embeddings).astype(np.float32, copy=False),
            timings=timings,
        )
