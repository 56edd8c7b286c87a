"""Hungarian-matched mIoU (diffcut_ref.metrics) on small examples worked out by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.metrics import (
    MiouAccumulator,
    hungarian_match,
    hungarian_miou,
    merge_background,
)

# Two classes, three predicted segments.
#   label  0 0 0      pred  0 0 1
#          1 1 1            1 1 2
# hist[class, segment] = [[2, 1, 0], [0, 2, 1]]; best matching: class 0 -> 0, class 1 -> 1.
PRED = np.array([[0, 0, 1], [1, 1, 2]])
LABEL = np.array([[0, 0, 0], [1, 1, 1]])


def test_match_by_hand():
    m = hungarian_match(PRED, LABEL, 2)
    np.testing.assert_array_equal(m.hist, [[2, 1, 0], [0, 2, 1]])
    np.testing.assert_array_equal(m.segment_of_class, [0, 1])
    np.testing.assert_array_equal(m.tp, [2, 2])
    np.testing.assert_array_equal(m.fn, [1, 1])  # one pixel of each class outside its segment
    np.testing.assert_array_equal(m.fp, [0, 1])  # segment 1 holds one class-0 pixel; segment 2 is unmatched
    assert m.total == 6


def test_miou_and_accuracy_by_hand():
    acc = MiouAccumulator(2)
    acc.update(PRED, LABEL)
    np.testing.assert_allclose(acc.per_class_iou, [2 / 3, 2 / 4])
    assert acc.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert acc.pixel_accuracy == pytest.approx(4 / 6)
    assert hungarian_miou([PRED], [LABEL], 2) == pytest.approx(acc.miou)


def test_accumulates_over_images_and_batches():
    # Second image: perfect on class 0 only (4 px); class 1 absent, matched to an empty segment.
    pred2 = np.zeros((2, 2), dtype=np.int64)
    label2 = np.zeros((2, 2), dtype=np.int64)
    acc = MiouAccumulator(2)
    acc.update(np.stack([PRED[:, :2], pred2]), np.stack([LABEL[:, :2], label2]))
    # Image 1 cropped: label [[0,0],[1,1]], pred [[0,0],[1,1]] -> perfect, 4 px.
    np.testing.assert_array_equal(acc.tp, [2 + 4, 2])
    np.testing.assert_array_equal(acc.fp + acc.fn, [0, 0])
    assert acc.total == 8 and acc.miou == 1.0


def test_labels_outside_the_classes_are_ignored():
    label = np.array([[0, -1, 255], [1, 1, 1]])
    m = hungarian_match(PRED, label, 2)
    np.testing.assert_array_equal(m.hist, [[1, 0, 0], [0, 2, 1]])
    assert m.total == 4


def test_class_never_seen_is_nan_and_left_out_of_the_mean():
    acc = MiouAccumulator(3)
    acc.update(np.array([[0, 1]]), np.array([[0, 1]]))
    assert np.isnan(acc.per_class_iou[2])
    assert acc.miou == 1.0


def test_merge_background_by_hand():
    # Objects: classes 0 and 1 (n_classes = 3 with background); background labelled -1.
    label = np.array([[-1, -1, 0, 0], [-1, -1, 1, 1]])
    pred = np.array([[5, 6, 1, 1], [5, 6, 2, 2]])
    merged_pred, merged_label = merge_background(pred, label, 3)
    # Segments 5 and 6 match no object: one background id, pred.max() + 1 = 7.
    np.testing.assert_array_equal(merged_pred, [[7, 7, 1, 1], [7, 7, 2, 2]])
    np.testing.assert_array_equal(merged_label, [[2, 2, 0, 0], [2, 2, 1, 1]])
    np.testing.assert_array_equal(pred, [[5, 6, 1, 1], [5, 6, 2, 2]])  # inputs untouched
    assert hungarian_miou([pred], [label], 3, merge_bg=True) == 1.0


def test_merge_background_with_an_absent_object_class():
    # Class 1 is absent: it is matched to segment 1 with no overlap, so segment 1 is background.
    merged_pred, merged_label = merge_background(np.array([[0, 0, 1, 1]]), np.array([[0, 0, -1, -1]]), 3)
    np.testing.assert_array_equal(merged_pred, [[0, 0, 2, 2]])
    np.testing.assert_array_equal(merged_label, [[0, 0, 2, 2]])


def test_bad_inputs_are_rejected():
    with pytest.raises(DiffCutError, match="shape"):
        hungarian_match(PRED, LABEL[:, :2], 2)
    with pytest.raises(DiffCutError, match="non-negative"):
        hungarian_match(PRED - 1, LABEL, 2)
    with pytest.raises(DiffCutError, match="integer"):
        hungarian_match(PRED.astype(float), LABEL, 2)
    with pytest.raises(DiffCutError, match="n_classes"):
        MiouAccumulator(0)


def test_metrics_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from diffcut_edge.metrics import hungarian_miou\n"
        "import numpy as np\n"
        "print(hungarian_miou([np.array([[0, 1]])], [np.array([[1, 0]])], 2))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1.0"
