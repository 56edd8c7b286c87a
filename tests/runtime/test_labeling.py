"""Segment pooling and statistics of the open-vocabulary labelling, on every array namespace, against
the reference's MaskPooling (torch) and brute force."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import labeling


def _label_map(seed: int, shape=(75, 101), k=5) -> np.ndarray:
    """Blobs: nearest of k random centres, plus a 2-pixel speck that covers no cell of a 3x4 grid."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (k, 2)) * np.array(shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    labels = np.argmin(d, axis=-1).astype(np.int32)
    labels[1, 1:3] = k + 3  # an id that vanishes on the grid; ids need not be contiguous
    return labels


def test_pooling_matches_the_reference_mask_pooling(ns):
    torch = pytest.importorskip("torch", reason="the reference needs torch")
    from diffcut_edge.diffcut_ref.clip_labels import mask_pool

    labels = _label_map(0)
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((16, 3, 4)).astype(np.float32)
    ids, _, _ = labeling.segment_stats(labels)
    pooled, pooling = labeling.pool_segments(ns.put(dense), ns.put(labels), ids)
    pooled = ns.get(pooled)
    masks = torch.from_numpy(np.stack([(labels == i) for i in ids]).astype(np.float32))[None]
    reference = mask_pool(torch.from_numpy(dense)[None], masks)[0].numpy()
    mask_rows = [k for k, p in enumerate(pooling) if p == "mask"]
    np.testing.assert_allclose(pooled[mask_rows], reference[mask_rows], rtol=1e-5, atol=1e-6)
    # the speck: the official pools it to zeros; here it is area-weighted, and flagged
    speck = int(np.flatnonzero(ids == 8)[0])
    assert pooling[speck] == "area" and np.allclose(reference[speck], 0)
    np.testing.assert_allclose(pooled[speck], dense[:, 0, 0], rtol=1e-5)  # it lies in cell (0, 0) only
    assert pooling.count("area") == 1


def test_area_weights_are_shares_of_cells():
    labels = np.zeros((4, 6), np.int32)
    labels[0, 0:3] = 1  # half of cell (0, 0) of a 2x2 grid (cells of 2x3 pixels), 3 of 6 pixels
    weights = labeling._area_weights(labels, np.array([1]), (2, 2))
    np.testing.assert_allclose(weights, [[1.0, 0, 0, 0]])


def test_segment_stats_against_brute_force():
    labels = _label_map(3)
    ids, areas, boxes = labeling.segment_stats(labels)
    assert list(ids) == sorted(np.unique(labels))
    for i, area, (x0, y0, x1, y1) in zip(ids, areas, boxes):
        ys, xs = np.nonzero(labels == i)
        assert area == len(xs) and (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_typed_classes_never_read_the_folder_bank_and_ort_cpu_keeps_clip_on_the_cpu(
    vocab_model_dir, tmp_path, monkeypatch
):
    import shutil

    from diffcut_edge.runtime import labeling

    folder = tmp_path / "model"
    shutil.copytree(vocab_model_dir, folder)
    (folder / labeling.BANK_NAME).write_bytes(b"not a bank")  # a damaged bank: only typed classes still work
    typed = labeling.SegmentLabeler.from_model_dir(folder, "cat, sofa", verify=False)
    assert typed.class_names == ("cat", "sofa")
    with pytest.raises(DiffCutError):
        labeling.SegmentLabeler.from_model_dir(folder, verify=False)
    assert labeling._providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu") == ["CPUExecutionProvider"]
    assert labeling._providers(["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"


def test_class_map_paints_each_segment_with_its_class():
    from diffcut_edge.runtime.postprocess import SegmentationResult

    labels = np.array([[0, 0, 3], [3, 7, 7]], np.int32)
    segments = [labeling.SegmentLabel(i, c, f"c{c}", 0.5, 1, (0, 0, 1, 1)) for i, c in ((0, 2), (3, 0), (7, 5))]
    result = SegmentationResult(labels, labels, labels, 8, np.zeros((8, 1), np.float32), segments=segments)
    np.testing.assert_array_equal(result.class_map(), [[2, 2, 0], [0, 5, 5]])
    with pytest.raises(DiffCutError, match="got no class"):
        labeling.paint_classes(labels, {0: 1, 3: 1})


def test_a_garbage_text_graph_is_one_line_not_an_onnxruntime_error(vocab_model_dir, tmp_path):
    import shutil

    from diffcut_edge.runtime import labeling

    folder = tmp_path / "model"
    shutil.copytree(vocab_model_dir, folder)
    (folder / labeling.TEXT_NAME).write_bytes(b"\x08\x07garbage, not a graph" * 100)
    with pytest.raises(DiffCutError, match=r"clip_text.onnx: onnxruntime cannot load it .* re-run export-vocab") as err:
        labeling.SegmentLabeler.from_model_dir(folder, "cat, sofa", verify=False)
    assert "\n" not in str(err.value)
    with pytest.raises(DiffCutError, match="does not match its manifest"):  # with verification: the hash says it
        labeling.SegmentLabeler.from_model_dir(folder, "cat, sofa")
