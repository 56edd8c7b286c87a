"""The paper's evaluation protocol: unsupervised mIoU with per-image Hungarian matching.

The loop reproduces the official ``eval_diffcut.py`` step by step:

1. each image is centre-cropped to a square of side ``min(H, W) - 1`` and resized
   bilinearly to R; its labels are cropped likewise and brought to 128x128 with the
   official two nearest steps (``diffcut_edge.eval.datasets``);
2. the segmenter predicts a 128x128 map (NCut + concept assignment, *no* PAMR yet);
3. VOC, Context and COCO-Object: segments the Hungarian matching on the foreground
   classes leaves unmatched merge into one background segment;
4. with refinement, PAMR runs on the merged map, with the R x R image resized
   bilinearly to 128x128 (the official order: merge first, then PAMR);
5. a final Hungarian matching against all classes accumulates TP / FP / FN; mIoU is
   the nan-mean of TP / (TP + FP + FN) and pixel accuracy sum(TP) / scored pixels.

Scoring uses ``diffcut_edge.metrics`` (numpy + scipy only). The default
predictor is the exported engine through the runtime ``Segmenter``; ``--reference``
swaps in the PyTorch reference (``diffcut_ref``), importing torch only then.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diffcut_edge import atomic, defaults, metrics
from diffcut_edge.errors import DiffCutError
from diffcut_edge.eval import datasets
from diffcut_edge.eval.bench import describe_backend
from diffcut_edge.eval.datasets import DatasetSpec, Sample
from diffcut_edge.runtime.xp import to_host


# ---------------------------------------------------------------------- predictors
@dataclass
class ProtocolInput:
    """One image as the protocol feeds it."""

    name: str
    crop_bgr: np.ndarray  # the centre crop, BGR uint8 (what the engine's preprocess takes)
    image_rgb: np.ndarray  # (R, R, 3) float32 in [0, 1], the official network input
    labels: np.ndarray  # (M, M) int32 classes (open vocabulary: vocabulary indices), -1 = ignored


class Predictor(Protocol):
    """Turns a batch of protocol inputs into unrefined (128, 128) segment maps."""

    resolution: int
    description: dict[str, Any]

    def predict(self, batch: Sequence[ProtocolInput]) -> list[np.ndarray]: ...

    def refine(self, image_small: np.ndarray, labels: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


class EnginePredictor:
    """The exported encoder + runtime NCut/assignment, through a ``Segmenter``.

    The Segmenter must run with ``refine=False``: PAMR comes after the background merge.
    """

    pamr_iterations: int = defaults.PAMR_ITERATIONS
    pamr_dilations: tuple[int, ...] = defaults.PAMR_DILATIONS

    def __init__(self, segmenter, backend_name: str = "auto") -> None:
        self.segmenter = segmenter
        self.resolution = int(segmenter.manifest.resolution)
        manifest = asdict(segmenter.manifest)
        manifest.pop("files_sha256", None)
        name, device = describe_backend(segmenter)
        self.device = device
        self.description = {
            "predictor": "engine",
            "backend": f"{name} ({device}; requested {backend_name})",
            "model": manifest,
        }

    def predict(self, batch: Sequence[ProtocolInput]) -> list[np.ndarray]:
        crops = [item.crop_bgr for item in batch]
        features = self.segmenter.encode(crops)
        out = []
        for i, crop in enumerate(crops):
            result = self.segmenter.postprocess(crop, features[i])
            out.append(_host_int(result.mask_labels))
        return out

    def refine(self, image_small: np.ndarray, labels: np.ndarray) -> np.ndarray:
        from diffcut_edge.runtime.pamr import pamr_refine

        if self.device == "cuda":  # PAMR where the Segmenter post-processes
            from diffcut_edge.lazy import cupy

            image_small, labels = cupy.asarray(image_small), cupy.asarray(labels)
        return _host_int(pamr_refine(image_small, labels, self.pamr_iterations, self.pamr_dilations))

    def close(self) -> None:
        self.segmenter.close()


class ReferencePredictor:
    """The PyTorch reference: full UNet with a hook, reference NCut and PAMR."""

    pamr_iterations: int = defaults.PAMR_ITERATIONS
    pamr_dilations: tuple[int, ...] = defaults.PAMR_DILATIONS

    def __init__(
        self,
        pipeline,
        model: str,
        resolution: int,
        *,
        tau: float,
        alpha: float,
        timestep: int = defaults.TIMESTEP,
        noise_seed: int = defaults.NOISE_SEED,
        mask_size: tuple[int, int] = defaults.MASK_SIZE,
    ) -> None:
        self.pipeline = pipeline
        self.resolution = int(resolution)
        self.tau, self.alpha, self.timestep, self.noise_seed = tau, alpha, timestep, noise_seed
        self.mask_size = mask_size
        self.description = {
            "predictor": "reference",
            "backend": "reference",
            "model": {
                "model_id": str(model),
                "resolution": self.resolution,
                "timestep": timestep,
                "noise_seed": noise_seed,
            },
        }

    def predict(self, batch: Sequence[ProtocolInput]) -> list[np.ndarray]:
        from diffcut_edge.diffcut_ref import extract_features, segment_features

        images = np.stack([item.image_rgb for item in batch])  # (B, R, R, 3): its resize to R is the identity
        features = extract_features(
            self.pipeline, images, resolution=self.resolution, timestep=self.timestep, noise_seed=self.noise_seed
        )
        grid = (self.resolution // 32, self.resolution // 32)
        return [
            _host_int(segment_features(f, grid, tau=self.tau, alpha=self.alpha, mask_size=self.mask_size))
            for f in features
        ]

    def refine(self, image_small: np.ndarray, labels: np.ndarray) -> np.ndarray:
        from diffcut_edge.diffcut_ref import pamr_refine

        return _host_int(pamr_refine(image_small, labels, self.pamr_iterations, self.pamr_dilations))

    def close(self) -> None:
        """Nothing to release: the pipeline goes with the predictor."""


def _host_int(labels: Any) -> np.ndarray:
    labels = to_host(labels).astype(np.int64)  # numpy, cupy, or a torch tensor from the reference
    return labels.reshape(labels.shape[-2:])  # drop leading batch/channel axes of size 1


# ------------------------------------------------------------------------- scoring
def small_image(image_rgb: np.ndarray, mask_size: tuple[int, int] = defaults.MASK_SIZE) -> np.ndarray:
    """The R x R network input resized bilinearly to the mask size (PAMR's guide image)."""
    from diffcut_edge.runtime.preprocess import resize_bilinear

    return resize_bilinear(image_rgb, mask_size)


def protocol_prediction(
    pred: np.ndarray,
    labels: np.ndarray,
    spec: DatasetSpec,
    *,
    refine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    image_small: np.ndarray | None = None,
) -> np.ndarray:
    """The prediction that gets scored: background merge (if the dataset has one), then PAMR."""
    pred = np.asarray(pred, dtype=np.int64)
    if spec.background is not None:
        # Our labels already hold the background class explicitly (and -1 only for pixels
        # that are ignored), so the merged labels merge_background returns are not needed.
        pred, _ = metrics.merge_background(pred, labels, spec.num_classes)
    if refine is not None:
        if image_small is None:
            raise DiffCutError("refinement needs the image at the mask size")
        pred = refine(image_small, pred)
    return pred


@dataclass
class EvalResult:
    """What ``diffcut-edge eval`` writes to results.json."""

    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float | None]
    num_images: int
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    dataset_miou: float | None = None  # open vocabulary: mIoU of the accumulated confusion
    per_image: dict[str, float | None] | None = None  # open vocabulary: each image's Jaccard index

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic.write_text(
            path, json.dumps(self.to_dict(), indent=2, allow_nan=False, default=_json_default) + "\n"
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def load_inputs(
    sample: Sample,
    spec: DatasetSpec,
    resolution: int,
    mask_size: tuple[int, int] = defaults.MASK_SIZE,
    *,
    exact_mask: bool = False,
) -> ProtocolInput:
    """Read one pair and apply the protocol transforms (``exact_mask``: the labels' second resize
    nearest-exact, as the open-vocabulary protocol)."""
    image = datasets.read_sample_image(sample.image)
    raw = datasets.read_label(sample.label)
    if raw.shape[:2] != image.shape[:2]:
        raise DiffCutError(
            f"{sample.label} is {raw.shape[1]}x{raw.shape[0]} but its image {sample.image} "
            f"is {image.shape[1]}x{image.shape[0]}; they must match"
        )
    labels = spec.map_labels(datasets.protocol_labels(raw, resolution, mask_size, exact_mask=exact_mask))
    return ProtocolInput(
        sample.name, datasets.center_crop(image), datasets.protocol_image(image, resolution), labels.astype(np.int32)
    )


def evaluate(
    predictor: Predictor,
    spec: DatasetSpec,
    samples: Sequence[Sample],
    *,
    refine: bool = False,
    batch: int = 1,
    mask_size: tuple[int, int] = defaults.MASK_SIZE,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run the protocol over ``samples`` and return the accumulated scores."""
    from tqdm import tqdm

    if batch < 1:
        raise DiffCutError(f"batch must be >= 1, got {batch}")
    if not samples:
        raise DiffCutError("no samples to evaluate")
    accumulator = metrics.MiouAccumulator(spec.num_classes)
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc=f"eval {spec.name}", unit="img", disable=not progress)
    for first in range(0, len(samples), batch):
        inputs = [load_inputs(s, spec, predictor.resolution, mask_size) for s in samples[first : first + batch]]
        for item, pred in zip(inputs, predictor.predict(inputs)):
            scored = protocol_prediction(
                pred,
                item.labels,
                spec,
                refine=predictor.refine if refine else None,
                image_small=small_image(item.image_rgb, mask_size) if refine else None,
            )
            accumulator.update(scored, item.labels)
        bar.update(len(inputs))
        bar.set_postfix(miou=f"{accumulator.miou:.4f}")
    bar.close()
    iou = np.asarray(accumulator.per_class_iou, dtype=np.float64)
    names = spec.class_names or tuple(str(k) for k in range(spec.num_classes))
    return EvalResult(
        miou=float(accumulator.miou),
        pixel_accuracy=float(accumulator.pixel_accuracy),
        per_class_iou={name: _finite_or_none(v) for name, v in zip(names, iou)},
        num_images=len(samples),
        settings=dict(settings or {}),
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------ entry points
def engine_predictor(segmenter: Any, *, name_segments: bool | None = None) -> EnginePredictor:
    """The engine predictor of a :class:`~diffcut_edge.runtime.spec.SegmenterSpec` (or a model
    folder's path, with the default options): opened with ``refine=False``, PAMR comes after the
    protocol's background merge."""
    from diffcut_edge.runtime.spec import SegmenterSpec

    spec = SegmenterSpec.of(segmenter).replace(refine=False)
    if name_segments is not None:
        spec = spec.replace(name_segments=name_segments)
    return EnginePredictor(spec.open(), backend_name=spec.backend)


def reference_predictor(
    model: str | os.PathLike,
    *,
    resolution: int | None = None,
    tau: float = defaults.TAU,
    alpha: float = defaults.ALPHA,
    device: str | None = None,
    mask_size: tuple[int, int] = defaults.MASK_SIZE,
) -> ReferencePredictor:
    """The PyTorch reference on a pipeline (hub id or folder); imports torch/diffusers here only."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise DiffCutError(
            "--reference runs the PyTorch reference and needs the export extra: pip install 'diffcut-edge[export]'"
        ) from e
    from diffcut_edge import models

    pipeline = models.load_pipeline(model, device=device)
    if resolution is None:
        recipe = models.get_recipe(str(model))
        resolution = recipe.resolution if recipe is not None else 1024
    return ReferencePredictor(pipeline, str(model), resolution, tau=tau, alpha=alpha, mask_size=mask_size)


def run_eval(
    dataset: str,
    root: str | os.PathLike,
    predictor: Predictor,
    *,
    limit: int | None = None,
    refine: bool = False,
    batch: int = 1,
    tau: float = 0.5,
    alpha: float = 10.0,
    file_list: str | os.PathLike | None = None,
    label_map: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvalResult:
    """List the dataset, evaluate, and record the settings the numbers depend on."""
    root = Path(root)
    layout = datasets.detect_layout(dataset, root)
    spec = (
        datasets.spec_from_file(label_map, dataset)
        if label_map is not None
        else datasets.get_spec(dataset, layout=layout)
    )
    samples = datasets.list_samples(dataset, root, file_list=file_list, limit=limit)
    settings = {
        "dataset": dataset,
        "layout": layout,
        "root": str(root),
        "limit": limit,
        "tau": tau,
        "alpha": alpha,
        "refine": refine,
        "batch": batch,
        "num_classes": spec.num_classes,
        "background_merge": spec.background is not None,
        "mask_size": list(defaults.MASK_SIZE),
        "resolution": predictor.resolution,
        "label_note": spec.note,
        "file_list": None if file_list is None else str(file_list),
        **predictor.description,
    }
    return evaluate(predictor, spec, samples, refine=refine, batch=batch, settings=settings, progress=progress)
