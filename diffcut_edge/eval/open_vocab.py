"""The official open-vocabulary protocol (``eval_diffcut_openvoc.py``) on VOC20, Context and COCO-Object.

Per image, as the official loop (no Hungarian matching: CLIP names the segments):

1. centre crop of side ``min(H, W) - 1``; the image bilinear to R; the labels nearest-exact to
   R, then nearest-exact to the mask size M (official: 1024 for both), and mapped to the
   vocabulary's indices: background 0, dataset class c -> c + 1 (the official ``label_map += 1``
   after 255 -> -1);
2. DiffCut masks at M (recursive NCut + concept assignment);
3. with refinement (the official script always refines: its ``--refinement`` defaults to True),
   PAMR at the open-vocabulary settings -- 15 iterations, dilations (1, 2, 4, 8, 12, 24, 32, 64),
   then the 3x3 median -- guided by the R image (resized to M when M != R);
4. each segment pooled from CLIP's dense features of the R image (COCO-Object: upsampled
   bilinearly to 2048 first) and painted with its class index (``associate_label``);
5. per image, torchmetrics 1.x ``JaccardIndex(task="multiclass")``: the mean IoU over the classes
   present in the class map or the labels; the reported mIoU is the mean over images.

Recorded beside it: the dataset-level mIoU of the accumulated confusion matrix, per-class IoU
and pixel accuracy. The engine path needs the model folder's CLIP (``export-vocab``); when its
text bank is another vocabulary than the dataset's, the dataset's is embedded with the folder's
text tower (no torch). ``--reference`` runs diffusers + open_clip with the official math.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from diffcut_edge import defaults, metrics
from diffcut_edge.errors import DiffCutError
from diffcut_edge.eval import datasets
from diffcut_edge.eval.datasets import DatasetSpec, Sample
from diffcut_edge.eval.protocol import (
    EnginePredictor,
    EvalResult,
    ProtocolInput,
    ReferencePredictor,
    _finite_or_none,
    engine_predictor,
    load_inputs,
    reference_predictor,
    small_image,
)
from diffcut_edge.runtime.labeling import paint_classes
from diffcut_edge.runtime.vocabulary import Vocabulary, load_vocabulary

OPEN_VOCAB_DATASETS = ("voc", "context", "coco-object")
# The official upsamples COCO-Object images to 2048 x 2048 before CLIP (its small objects).
CLIP_RESOLUTION = {"coco-object": 2048}


def vocabulary_targets(labels: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Protocol classes (background = ``spec.background``) -> vocabulary indices (background 0,
    class c -> c + 1); ignored pixels stay -1."""
    if spec.background is None:
        raise DiffCutError(
            f"{spec.name} has no background class; the open-vocabulary protocol covers {', '.join(OPEN_VOCAB_DATASETS)}"
        )
    labels = np.asarray(labels)
    return np.where(labels < 0, -1, np.where(labels == spec.background, 0, labels + 1)).astype(np.int32)


def load_open_vocab_input(
    sample: Sample, spec: DatasetSpec, resolution: int, mask_size: tuple[int, int]
) -> ProtocolInput:
    """One pair through the protocol's transforms (labels nearest-exact to R, then to the mask
    size), its labels as vocabulary indices (:func:`vocabulary_targets`)."""
    item = load_inputs(sample, spec, resolution, mask_size, exact_mask=True)
    return dataclasses.replace(item, labels=vocabulary_targets(item.labels, spec))


def clip_pixels(image_rgb: np.ndarray, resolution: int | None = None) -> np.ndarray:
    """(R, R, 3) [0, 1] -> CLIP's input (1, 3, S, S), bilinear to ``resolution`` S when given
    (F.interpolate's default, align_corners=False), no CLIP normalisation (the official)."""
    from diffcut_edge.runtime.preprocess import resize_bilinear

    if resolution is not None and image_rgb.shape[:2] != (resolution, resolution):
        image_rgb = resize_bilinear(image_rgb, (resolution, resolution))
    return np.ascontiguousarray(np.transpose(image_rgb, (2, 0, 1))[None], dtype=np.float32)


# ---------------------------------------------------------------------- predictors
class OpenVocabPredictor(Protocol):
    """Segments (``predict``, ``refine`` of the eval protocol) and names them (``name``)."""

    resolution: int
    description: dict[str, Any]
    class_names: tuple[str, ...]

    def predict(self, batch: Sequence[Any]) -> list[np.ndarray]: ...

    def refine(self, image_small: np.ndarray, labels: np.ndarray) -> np.ndarray: ...

    def name(self, pixels: np.ndarray, labels: np.ndarray) -> np.ndarray: ...


def _open_vocab_pamr(predictor: Any) -> Any:
    predictor.pamr_iterations = defaults.OPEN_VOCAB_PAMR_ITERATIONS
    predictor.pamr_dilations = defaults.OPEN_VOCAB_PAMR_DILATIONS
    return predictor


class EngineOpenVocab(EnginePredictor):
    """The exported encoder and runtime post-processing; segments named by the folder's ONNX CLIP."""

    def __init__(self, segmenter, vocabulary: Vocabulary, backend_name: str = "auto") -> None:
        super().__init__(segmenter, backend_name)
        _open_vocab_pamr(self)
        labeler = segmenter.labeler
        if labeler is None:
            raise DiffCutError(
                "the open-vocabulary evaluation needs the model folder's CLIP: run "
                "diffcut-edge export-vocab --model-dir ... first"
            )
        source = "exported text bank"
        if labeler.bank.vocabulary.classes != vocabulary.classes:
            labeler.bank = labeler.text_bank(vocabulary)  # the folder's text tower, no torch
            source = "embedded now with the folder's text tower"
        self.labeler = labeler
        self.class_names = labeler.class_names
        self.description["clip"] = labeler.record.get("clip")
        self.description["text_bank"] = source

    def name(self, pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
        segments = self.labeler.label(pixels, labels)
        return paint_classes(labels, {s.id: s.class_index for s in segments})


class ReferenceOpenVocab(ReferencePredictor):
    """The PyTorch reference: diffusers features, reference NCut/PAMR, open_clip ``associate_label``."""

    def __init__(
        self,
        pipeline: Any,
        model: str,
        resolution: int,
        *,
        clip: Any,
        classifier: Any,
        vocabulary: Vocabulary,
        clip_spec: str,
        tau: float = defaults.TAU,
        alpha: float = defaults.ALPHA,
        mask_size: tuple[int, int] = defaults.OPEN_VOCAB_MASK_SIZE,
    ) -> None:
        super().__init__(pipeline, model, resolution, tau=tau, alpha=alpha, mask_size=mask_size)
        _open_vocab_pamr(self)
        self.clip, self.classifier, self.vocabulary = clip, classifier, vocabulary
        self.class_names = vocabulary.class_names
        self.description = {**self.description, "clip": clip_spec, "text_bank": "reference (open_clip)"}

    def name(self, pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
        import torch

        from diffcut_edge.diffcut_ref.clip_labels import associate_labels

        named = associate_labels(
            self.clip,
            torch.from_numpy(pixels),
            torch.from_numpy(np.asarray(labels)),
            self.classifier,
            self.vocabulary.synonym_counts,
        )
        return paint_classes(labels, {d["id"]: d["class_index"] for d in named})


def engine_open_vocab(segmenter: Any, vocabulary: Vocabulary) -> EngineOpenVocab:
    """The engine on a :class:`~diffcut_edge.runtime.spec.SegmenterSpec` (or a model folder's path,
    at the protocol's mask size) with ``export-vocab``'s CLIP (else the error says to run it)."""
    from diffcut_edge.runtime.spec import SegmenterSpec

    spec = (
        segmenter
        if isinstance(segmenter, SegmenterSpec)
        else SegmenterSpec(segmenter).replace(mask_size=defaults.OPEN_VOCAB_MASK_SIZE)
    )
    base = engine_predictor(spec, name_segments=True)
    try:
        return EngineOpenVocab(base.segmenter, vocabulary, spec.backend)
    except BaseException:
        base.segmenter.close()
        raise


def reference_open_vocab(
    model: str | Path,
    clip_spec: str,
    vocabulary: Vocabulary,
    *,
    resolution: int | None = None,
    tau: float = defaults.TAU,
    alpha: float = defaults.ALPHA,
    mask_size: tuple[int, int] = defaults.OPEN_VOCAB_MASK_SIZE,
) -> ReferenceOpenVocab:
    """The reference on a pipeline and an open_clip CLIP (``MODEL:TAG`` or ``local-dir:DIR``)."""
    base = reference_predictor(model, resolution=resolution, tau=tau, alpha=alpha, mask_size=mask_size)
    from diffcut_edge.diffcut_ref.clip_labels import text_classifier
    from diffcut_edge.models.clip import import_open_clip, load_clip, parse_clip_spec

    clip = load_clip(clip_spec)
    tokenizer = import_open_clip().get_tokenizer(parse_clip_spec(clip_spec)[0])
    return ReferenceOpenVocab(
        base.pipeline,
        str(model),
        base.resolution,
        clip=clip,
        classifier=text_classifier(clip, tokenizer, vocabulary),
        vocabulary=vocabulary,
        clip_spec=clip_spec,
        tau=tau,
        alpha=alpha,
        mask_size=mask_size,
    )


# ------------------------------------------------------------------------- protocol
def check_dataset(dataset: str) -> None:
    """The open-vocabulary protocol covers the three datasets of the official script."""
    if dataset not in OPEN_VOCAB_DATASETS:
        raise DiffCutError(
            f"--open-vocab covers {', '.join(OPEN_VOCAB_DATASETS)} (the official protocol), not {dataset}"
        )


def dataset_vocabulary(dataset: str, spec: DatasetSpec, vocab: str | None = None) -> Vocabulary:
    """The vocabulary scored on ``dataset`` (its built-in one unless ``vocab`` names another or a
    file); it must have one class per protocol class, background first."""
    vocabulary = load_vocabulary(vocab or dataset)
    if len(vocabulary) != spec.num_classes:
        raise DiffCutError(
            f"vocabulary {vocabulary.name!r} has {len(vocabulary)} classes; {dataset} scores "
            f"{spec.num_classes} (background first, then the dataset's classes in order)"
        )
    return vocabulary


def evaluate_open_vocab(
    predictor: OpenVocabPredictor,
    spec: DatasetSpec,
    samples: Sequence[Sample],
    *,
    mask_size: tuple[int, int] = defaults.OPEN_VOCAB_MASK_SIZE,
    refine: bool = True,
    clip_resolution: int | None = None,
    batch: int = 1,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run the open-vocabulary protocol over ``samples``."""
    from tqdm import tqdm

    if batch < 1:
        raise DiffCutError(f"batch must be >= 1, got {batch}")
    if not samples:
        raise DiffCutError("no samples to evaluate")
    names = tuple(predictor.class_names)
    if len(names) != spec.num_classes:
        raise DiffCutError(f"the predictor names {len(names)} classes; {spec.name} scores {spec.num_classes}")
    accumulator = metrics.JaccardAccumulator(spec.num_classes)
    per_image: dict[str, float | None] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(samples), desc=f"eval {spec.name} (open vocabulary)", unit="img", disable=not progress)
    for first in range(0, len(samples), batch):
        inputs = [
            load_open_vocab_input(s, spec, predictor.resolution, mask_size) for s in samples[first : first + batch]
        ]
        for item, segments in zip(inputs, predictor.predict(inputs)):
            if refine:
                segments = predictor.refine(small_image(item.image_rgb, mask_size), segments)
            classes = predictor.name(clip_pixels(item.image_rgb, clip_resolution), segments)
            per_image[item.name] = _finite_or_none(accumulator.update(classes, item.labels))
        bar.update(len(inputs))
        bar.set_postfix(miou=f"{accumulator.miou:.4f}")
    bar.close()
    return EvalResult(
        miou=float(accumulator.miou),
        pixel_accuracy=float(accumulator.pixel_accuracy),
        per_class_iou={n: _finite_or_none(v) for n, v in zip(names, accumulator.per_class_iou)},
        num_images=len(samples),
        settings=dict(settings or {}),
        seconds=time.perf_counter() - start,
        dataset_miou=_finite_or_none(accumulator.dataset_miou),
        per_image=per_image,
    )


def run_open_vocab_eval(
    dataset: str,
    root: str | Path,
    predictor: OpenVocabPredictor,
    *,
    mask_size: tuple[int, int] = defaults.OPEN_VOCAB_MASK_SIZE,
    refine: bool = True,
    clip_resolution: int | None = None,
    limit: int | None = None,
    batch: int = 1,
    tau: float = defaults.TAU,
    alpha: float = defaults.ALPHA,
    file_list: str | Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """List the dataset, evaluate with the open-vocabulary protocol, record the settings."""
    check_dataset(dataset)
    root = Path(root)
    layout = datasets.detect_layout(dataset, root)
    spec = datasets.get_spec(dataset, layout=layout)
    samples = datasets.list_samples(dataset, root, file_list=file_list, limit=limit)
    if clip_resolution is None:
        clip_resolution = CLIP_RESOLUTION.get(dataset, predictor.resolution)
    settings = {
        "dataset": dataset,
        "layout": layout,
        "root": str(root),
        "limit": limit,
        "protocol": "open-vocabulary",
        "metric": "per-image macro Jaccard over the classes present (torchmetrics 1.x JaccardIndex), "
        "averaged over images",
        "tau": tau,
        "alpha": alpha,
        "refine": refine,
        "pamr": {
            "iterations": defaults.OPEN_VOCAB_PAMR_ITERATIONS,
            "dilations": list(defaults.OPEN_VOCAB_PAMR_DILATIONS),
        }
        if refine
        else None,
        "batch": batch,
        "num_classes": spec.num_classes,
        "mask_size": list(mask_size),
        "resolution": predictor.resolution,
        "clip_resolution": clip_resolution,
        "label_note": spec.note,
        "file_list": None if file_list is None else str(file_list),
        **predictor.description,
    }
    return evaluate_open_vocab(
        predictor,
        spec,
        samples,
        mask_size=mask_size,
        refine=refine,
        clip_resolution=clip_resolution,
        batch=batch,
        settings=settings,
        progress=progress,
    )
