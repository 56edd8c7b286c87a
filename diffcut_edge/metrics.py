"""Hungarian-matched mIoU, as DiffCut's evaluation (numpy + scipy only; no torch).

Faithful to ``tools/utils.py`` (``_fast_hist``, ``hungarian_matching``) and the background
merge of ``eval_diffcut.py``:

- per image, a histogram ``hist[class, segment]`` over the pixels whose label is in
  ``[0, n_classes)`` (others are ignored), and a one-to-one matching of classes to predicted
  segments maximising the matched pixels (``linear_sum_assignment(maximize=True)``);
- TP = matched pixels; FN = pixels of the class outside its matched segment; FP = pixels of
  the matched segment in other classes (pixels of unmatched segments are not FP, as in the
  official code); accumulated over images; mIoU = nanmean(TP / (TP + FP + FN)).

Ignore labels: the caller maps the dataset's "void" id (255) to -1 before calling, as the
official loader does; every label outside ``[0, n_classes)`` is ignored. Predictions must be
non-negative integer segment ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from diffcut_edge.errors import DiffCutError


@dataclass(frozen=True)
class Match:
    """One image's matching.

    ``hist``: (n_classes, n_segments) pixel counts, n_segments = max(n_classes, pred.max()+1).
    ``segment_of_class``: (n_classes,) the predicted id matched to each class (official ``col_ind``).
    ``tp``, ``fp``, ``fn``: (n_classes,) counts; ``total``: counted (non-ignored) pixels.
    """

    hist: np.ndarray
    segment_of_class: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    total: int


def _check_pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise DiffCutError(f"prediction shape {pred.shape} != label shape {label.shape}; resize one to the other")
    if pred.size and not np.issubdtype(pred.dtype, np.integer):
        raise DiffCutError(f"predictions must be integer segment ids, got dtype {pred.dtype}")
    if pred.size and pred.min() < 0:
        raise DiffCutError(f"predictions must be non-negative segment ids, got min {pred.min()}")
    if not np.issubdtype(label.dtype, np.integer):
        raise DiffCutError(f"labels must be integer class ids (void mapped to -1), got dtype {label.dtype}")
    return pred.astype(np.int64).ravel(), label.astype(np.int64).ravel()


def _fast_hist(label: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, max(n_classes, pred.max()+1)) counts over the labels in [0, n_classes)."""
    n_segments = max(n_classes, int(pred.max()) + 1 if pred.size else 0)
    keep = (label >= 0) & (label < n_classes)
    codes = n_segments * label[keep] + pred[keep]
    return np.bincount(codes, minlength=n_classes * n_segments).reshape(n_classes, n_segments)


def hungarian_match(pred, label, n_classes: int) -> Match:
    """Match one image's predicted segments to classes (the official ``hungarian_matching``, B=1).

    Args:
        pred: (H, W) non-negative integer segment ids.
        label: (H, W) integer class ids; ids outside [0, n_classes) are ignored.
        n_classes: number of classes.
    """
    if int(n_classes) < 1:
        raise DiffCutError(f"n_classes must be >= 1, got {n_classes}")
    n_classes = int(n_classes)
    p, lab = _check_pair(pred, label)
    hist = _fast_hist(lab, p, n_classes)
    rows, cols = linear_sum_assignment(hist, maximize=True)
    tp = hist[rows, cols].astype(np.float64)
    fn = hist.sum(1) - tp
    matched = hist[:, cols]
    fp = matched.sum(0) - np.diag(matched)
    return Match(
        hist=hist,
        segment_of_class=cols,
        tp=tp,
        fp=fp.astype(np.float64),
        fn=fn.astype(np.float64),
        total=int(hist.sum()),
    )


def merge_background(pred, label, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The VOC / Context / COCO-Object rule of the official evaluation.

    Match with the ``n_classes - 1`` object classes (background labelled -1 is ignored);
    every predicted segment not matched to a class with pixels under a matched segment
    becomes one background segment (id ``pred.max() + 1``); background labels -1 become
    class ``n_classes - 1``.

    Note (official quirk): a class counts as matched when ANY matched segment overlaps it
    (``hist[:, col_ind].max(axis=1) > 0``), not only its own.

    Returns:
        (pred, label): new int64 arrays; the inputs are not modified.
    """
    if int(n_classes) < 2:
        raise DiffCutError(f"merge_background needs n_classes >= 2 (objects + background), got {n_classes}")
    n_classes = int(n_classes)
    pred = np.array(pred, dtype=np.int64, copy=True)
    label = np.array(label, dtype=np.int64, copy=True)
    m = hungarian_match(pred, label, n_classes - 1)
    matched = m.hist[:, m.segment_of_class]
    assigned = {int(m.segment_of_class[i]) for i in np.flatnonzero(matched.max(axis=1) > 0)}
    background = sorted(set(np.unique(pred).tolist()) - assigned)
    bg_id = int(pred.max()) + 1
    pred[np.isin(pred, background)] = bg_id
    label[label == -1] = n_classes - 1
    return pred, label


@dataclass
class MiouAccumulator:
    """Accumulated TP / FP / FN over images, as the official evaluation loop."""

    n_classes: int
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    total: int = 0

    def __post_init__(self) -> None:
        if int(self.n_classes) < 1:
            raise DiffCutError(f"n_classes must be >= 1, got {self.n_classes}")
        self.n_classes = int(self.n_classes)
        self.tp = np.zeros(self.n_classes)
        self.fp = np.zeros(self.n_classes)
        self.fn = np.zeros(self.n_classes)

    def update(self, pred, label) -> Match | list[Match]:
        """Add one image (H, W) or a batch (B, H, W) (matched image by image)."""
        pred = np.asarray(pred)
        if pred.ndim == 3:
            return [self.update(p, lab) for p, lab in zip(pred, np.asarray(label), strict=True)]
        m = hungarian_match(pred, label, self.n_classes)
        self.tp += m.tp
        self.fp += m.fp
        self.fn += m.fn
        self.total += m.total
        return m

    @property
    def per_class_iou(self) -> np.ndarray:
        """(n_classes,) TP / (TP + FP + FN); NaN for a class never seen nor predicted."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.tp / (self.tp + self.fp + self.fn)

    @property
    def miou(self) -> float:
        iou = self.per_class_iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        return float(self.tp.sum() / self.total) if self.total else float("nan")


def hungarian_miou(preds, labels, n_classes: int, *, merge_bg: bool = False) -> float:
    """mIoU over a sequence of (pred, label) pairs; ``merge_bg`` applies :func:`merge_background` first.

    ``preds`` / ``labels``: sequences (or (B, H, W) arrays) of (H, W) maps; a single (H, W) map
    is taken as one image.
    """
    acc = MiouAccumulator(n_classes)
    if isinstance(preds, np.ndarray) and preds.ndim == 2:
        preds, labels = [preds], [labels]
    for pred, label in zip(preds, labels, strict=True):
        if merge_bg:
            pred, label = merge_background(pred, label, n_classes)
        acc.update(pred, label)
    return acc.miou


def matched_agreement(a, b) -> float:
    """Share of pixels on which two label maps agree after the best one-to-one matching of their
    ids (Hungarian): agreement of the partitions, blind to how the segments are numbered.

    Two segmentations that differ by one cut early in the NCut recursion number every later
    segment differently; plain ``mean(a == b)`` then reads near 0 although most pixels are
    grouped alike.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise DiffCutError(f"label maps of different shapes {a.shape} and {b.shape} cannot be compared")
    ia = np.unique(a, return_inverse=True)[1].reshape(-1)
    ib = np.unique(b, return_inverse=True)[1].reshape(-1)
    hist = np.zeros((int(ia.max()) + 1, int(ib.max()) + 1), np.int64)
    np.add.at(hist, (ia, ib), 1)
    rows, cols = linear_sum_assignment(hist, maximize=True)
    return float(hist[rows, cols].sum() / ia.size)


# ------------------------------------------------------- video (keyframes and propagation)
def majority_class_iou(pred, label, n_classes: int) -> float:
    """mIoU of a segmentation against ground-truth classes with each segment mapped to the class
    most of its pixels have (several segments may map to one class: over-segmentation is not
    penalised, merging two classes is). The mean is over the classes present in ``label``."""
    pred, label = _check_pair(pred, label)
    ids, inverse = np.unique(pred, return_inverse=True)
    counts = np.zeros((len(ids), n_classes), np.int64)
    np.add.at(counts, (inverse.reshape(-1), label.reshape(-1)), 1)
    painted = counts.argmax(axis=1)[inverse.reshape(label.shape)]
    confmat = confusion_matrix(painted, label, n_classes)
    present = confmat.sum(axis=1) > 0
    return float(class_iou(confmat)[present].mean())


def carried_agreement(carried, labels) -> float:
    """Temporal consistency: :func:`matched_agreement` of the previous frame's labels carried to this
    frame by the flow (``-1`` where nothing could be carried, left out) and this frame's labels."""
    carried, labels = np.asarray(carried), np.asarray(labels)
    if carried.shape != labels.shape:
        raise DiffCutError(f"label maps of different shapes {carried.shape} and {labels.shape} cannot be compared")
    known = carried >= 0
    return matched_agreement(carried[known], labels[known]) if known.any() else float("nan")


# ------------------------------------------------------- named classes (open vocabulary)
def confusion_matrix(pred, label, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 pixel counts ``[label class, predicted class]``; labels
    outside ``[0, n_classes)`` are ignored. Predictions are class indices, not segment ids."""
    pred, label = _check_pair(pred, label)
    if pred.size and pred.max() >= n_classes:
        raise DiffCutError(f"predicted class {int(pred.max())} is outside the {n_classes} classes")
    keep = (label >= 0) & (label < n_classes)
    codes = n_classes * label[keep] + pred[keep]
    return np.bincount(codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_iou(confmat: np.ndarray) -> np.ndarray:
    """(n_classes,) TP / (TP + FP + FN) of a confusion matrix; NaN for a class neither labelled
    nor predicted."""
    confmat = np.asarray(confmat, dtype=np.float64)
    tp = np.diag(confmat)
    union = confmat.sum(0) + confmat.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def present_class_miou(confmat: np.ndarray) -> float:
    """Mean IoU over the classes present in the labels or the prediction: torchmetrics 1.x
    ``JaccardIndex(task="multiclass", average="macro")`` (absent classes get weight 0), which the
    official open-vocabulary evaluation calls once per image. NaN when no pixel counts."""
    iou = class_iou(confmat)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


@dataclass
class JaccardAccumulator:
    """Per-image macro Jaccard averaged over images (the official open-vocabulary mIoU), and the
    dataset-level confusion matrix for per-class IoU and pixel accuracy."""

    n_classes: int
    confmat: np.ndarray = field(init=False)
    image_scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.n_classes) < 1:
            raise DiffCutError(f"n_classes must be >= 1, got {self.n_classes}")
        self.n_classes = int(self.n_classes)
        self.confmat = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)

    def update(self, pred, label) -> float:
        """Add one image's class map and labels; returns its Jaccard index."""
        confmat = confusion_matrix(pred, label, self.n_classes)
        self.confmat += confmat
        score = present_class_miou(confmat)
        self.image_scores.append(score)
        return score

    @property
    def miou(self) -> float:
        """Mean over images of the per-image macro Jaccard (images without a scored pixel skipped)."""
        scores = np.asarray(self.image_scores, dtype=np.float64)
        return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")

    @property
    def per_class_iou(self) -> np.ndarray:
        return class_iou(self.confmat)

    @property
    def dataset_miou(self) -> float:
        """Mean IoU of the accumulated confusion (the usual supervised mIoU), for comparison."""
        return present_class_miou(self.confmat)

    @property
    def pixel_accuracy(self) -> float:
        total = self.confmat.sum()
        return float(np.trace(self.confmat) / total) if total else float("nan")
