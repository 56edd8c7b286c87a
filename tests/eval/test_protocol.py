"""The evaluation protocol on synthetic datasets: hand-checkable scores, background merge, ignore."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.eval import datasets
from diffcut_edge.eval import protocol as evaluation
from helpers.eval_fixtures import (
    IGNORE_ROWS,
    SPLITS,
    FragmentPredictor,
    OraclePredictor,
    ShiftedPredictor,
    write_dataset,
)


def _run(name, root, predictor, spec=None, **kw):
    spec = spec or datasets.get_spec(name)
    samples = datasets.list_samples(name, root)
    return evaluation.evaluate(predictor, spec, samples, progress=False, **kw)


@pytest.mark.parametrize("name", datasets.DATASETS)
def test_perfect_segments_score_one_in_every_layout(tmp_path, name):
    root = write_dataset(name, tmp_path / name, n_images=2)
    result = _run(name, root, OraclePredictor(), batch=2)
    assert result.miou == pytest.approx(1.0)
    assert result.pixel_accuracy == pytest.approx(1.0)
    assert result.num_images == 2
    scored = {k: v for k, v in result.per_class_iou.items() if v is not None}
    assert len(scored) == 2 and all(v == pytest.approx(1.0) for v in scored.values())


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "coco-stuff"])
def test_shifted_segments_give_the_hand_computed_iou(tmp_path, name):
    # Region 0 = columns < s, predicted segment 0 = columns < s + 8 (region 1: 128 - s columns).
    # Class 0: TP = s, FP = 8 per row; class 1: TP = 120 - s, FN = 8 per row; the ignored top
    # rows scale every count alike, so per-class IoU over the images is a ratio of column sums.
    root = write_dataset(name, tmp_path / name, n_images=3)
    result = _run(name, root, ShiftedPredictor(shift=8))
    s = np.array(SPLITS, dtype=float)
    iou0 = s.sum() / (s + 8).sum()
    iou1 = (120 - s).sum() / (128 - s).sum()
    assert result.miou == pytest.approx((iou0 + iou1) / 2, abs=1e-12)
    assert result.pixel_accuracy == pytest.approx(120 / 128, abs=1e-12)
    assert sorted(v for v in result.per_class_iou.values() if v is not None) == pytest.approx(sorted([iou0, iou1]))


def test_background_merge_joins_unmatched_segments(tmp_path):
    # VOC: region 0 = aeroplane, region 1 = background cut in two predicted segments.
    root = write_dataset("voc", tmp_path / "voc", n_images=1)
    merged = _run("voc", root, FragmentPredictor())
    assert merged.miou == pytest.approx(1.0)
    # Without the merge, background matches one half (IoU 1/2) and the other half is matched
    # to some absent class, all of it FP (IoU 0, not NaN): mIoU (1 + 1/2 + 0) / 3.
    spec = dataclasses.replace(datasets.get_spec("voc"), background=None)
    plain = _run("voc", root, FragmentPredictor(), spec=spec)
    assert plain.per_class_iou["background"] == pytest.approx(0.5)
    assert sorted(v for v in plain.per_class_iou.values() if v is not None) == pytest.approx([0.0, 0.5, 1.0])
    assert plain.miou == pytest.approx(0.5)


def test_voc_void_counts_as_background_unless_ignored(tmp_path):
    # 4 void columns just left of the split, inside the red (aeroplane) region of the image.
    root = write_dataset("voc", tmp_path / "voc", n_images=1, void_cols=4)
    s = SPLITS[0]
    official = _run("voc", root, OraclePredictor())
    assert official.per_class_iou["aeroplane"] == pytest.approx((s - 4) / s)
    assert official.per_class_iou["background"] == pytest.approx((128 - s) / (132 - s))
    ignored = _run("voc", root, OraclePredictor(), spec=datasets.get_spec("voc", ignore_void=True))
    assert ignored.miou == pytest.approx(1.0)


def test_refinement_runs_after_the_merge(tmp_path):
    root = write_dataset("context", tmp_path / "ctx", n_images=2)
    seen = []

    class Recording(FragmentPredictor):
        def refine(self, image_small, labels):
            seen.append((image_small.shape, np.unique(labels).size))
            return labels

    result = _run("context", root, Recording(), refine=True)
    # PAMR saw the merged map (2 segments, not 3) and the image at the mask size.
    assert seen == [((128, 128, 3), 2)] * 2
    assert result.miou == pytest.approx(1.0)


def test_ignored_pixels_do_not_count(tmp_path):
    root = write_dataset("ade20k", tmp_path / "ade", n_images=1)
    spec = datasets.get_spec("ade20k")
    item = evaluation.load_inputs(datasets.list_samples("ade20k", root)[0], spec, 128)
    assert (item.labels[:IGNORE_ROWS] == -1).all()
    from diffcut_edge.metrics import MiouAccumulator

    acc = MiouAccumulator(spec.num_classes)
    acc.update(OraclePredictor().segments(item.image_rgb), item.labels)
    assert acc.total == (128 - IGNORE_ROWS) * 128


def test_results_json_has_the_documented_keys(tmp_path):
    root = write_dataset("cityscapes", tmp_path / "cs", n_images=2)
    result = evaluation.run_eval("cityscapes", root, ShiftedPredictor(), limit=1, progress=False)
    path = result.write_json(tmp_path / "out" / "results.json")
    data = json.loads(path.read_text())
    assert {"miou", "pixel_accuracy", "per_class_iou", "settings", "num_images"} <= set(data)
    assert data["num_images"] == 1
    assert {"dataset", "root", "limit", "tau", "alpha", "refine", "model", "backend"} <= set(data["settings"])
    assert data["settings"]["limit"] == 1 and data["settings"]["backend"] == "fake"
    assert data["per_class_iou"]["road"] is not None and data["per_class_iou"]["sky"] is None


def test_mismatched_label_size_is_reported(tmp_path):
    import cv2

    root = write_dataset("ade20k", tmp_path / "ade", n_images=1)
    label = next((root / "annotations" / "validation").iterdir())
    cv2.imwrite(str(label), np.ones((50, 60), np.uint8))
    with pytest.raises(DiffCutError, match="must match"):
        _run("ade20k", root, OraclePredictor())


def test_reference_without_torch_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(DiffCutError, match=r"diffcut-edge\[export\]"):
        evaluation.reference_predictor("segmind/SSD-1B")
