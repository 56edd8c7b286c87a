"""Runtime PAMR on every tested namespace: official outputs, soft-mask parity with diffcut_ref,
weights, label order, the median filter."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import pamr_refine, pamr_soft
from diffcut_edge.runtime.pamr import pamr_weights
from helpers.runtime_planted import planted_case, resize_nearest


@pytest.fixture(scope="module")
def ref():
    torch = pytest.importorskip("torch", reason="PAMR parity is checked against the PyTorch reference")
    torch.set_num_threads(1)
    from diffcut_edge import diffcut_ref

    return diffcut_ref


def test_official_pamr_is_reproduced(planted, ns):
    refined = ns.get(pamr_refine(ns.put(planted["image"]), ns.put(planted["official_labels"])))
    assert refined.dtype == np.int32
    np.testing.assert_array_equal(refined, planted["official_pamr"])


def test_soft_masks_match_reference_on_a_photo(ref, ns):
    from helpers.data import sample_photos

    image = sample_photos(128)[0]
    case = planted_case((16, 16), 6, 0.3, 0)
    labels = resize_nearest(case.regions, (128, 128))
    np.testing.assert_allclose(
        ns.get(pamr_soft(ns.put(image), ns.put(labels))), ref.pamr_soft(image, labels), atol=1e-5
    )


def test_small_labels_are_resized_like_the_reference(ref, ns):
    """Labels at another size go through bilinear align_corners=True first."""
    case = planted_case((16, 16), 5, 0.3, 1, image_size=(96, 80))
    labels = resize_nearest(case.regions, (24, 20)) * 3 + 1  # ids with gaps
    ours = ns.get(pamr_soft(ns.put(case.image), ns.put(labels), num_iter=4, dilations=(1, 3)))
    theirs = ref.pamr_soft(case.image, labels, num_iter=4, dilations=(1, 3))
    assert ours.shape == (np.unique(labels).size, 96, 80)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_array_equal(
        ns.get(pamr_refine(ns.put(case.image), ns.put(labels), 4, (1, 3))),
        ref.pamr_refine(case.image, labels, 4, (1, 3)),
    )


def test_weights_are_a_softmax_over_the_dilated_neighbours(ns):
    image = planted_case((8, 8), 3, 0.1, 2, image_size=(40, 30)).image
    w = ns.get(pamr_weights(ns.put(image), (1, 2, 4)))
    assert w.shape == (24, 40, 30) and w.dtype == np.float32
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-5)
    flat = ns.get(pamr_weights(ns.put(np.full((10, 10, 3), 0.5, np.float32))))
    np.testing.assert_allclose(flat, 1 / 32, atol=1e-7)  # no edges: uniform weights


def test_zero_iterations_return_the_one_hot_masks(ns):
    labels = np.array([[4, 4, 9], [2, 9, 9]])
    soft = ns.get(pamr_soft(ns.put(np.zeros((2, 3, 3), np.float32)), ns.put(labels), num_iter=0))
    np.testing.assert_array_equal(soft.argmax(axis=0), np.searchsorted([2, 4, 9], labels))
    np.testing.assert_array_equal(soft.sum(axis=0), 1.0)


def test_refined_ids_index_the_sorted_labels(ns):
    case = planted_case((8, 8), 3, 0.1, 3, image_size=(32, 32))
    labels = resize_nearest(case.regions, (32, 32))
    renamed = np.array([70, 5, 33])[labels]
    np.testing.assert_array_equal(
        ns.get(pamr_refine(ns.put(case.image), ns.put(renamed))),
        ns.get(pamr_refine(ns.put(case.image), ns.put(np.searchsorted([5, 33, 70], renamed)))),
    )


def test_bad_inputs_are_rejected(ns):
    zeros8 = ns.put(np.zeros((8, 8), np.int64))
    with pytest.raises(DiffCutError, match="RGB image"):
        pamr_refine(ns.put(np.zeros((8, 8))), zeros8)
    with pytest.raises(DiffCutError, match="dilations"):
        pamr_refine(ns.put(np.zeros((8, 8, 3))), zeros8, dilations=(0,))
    with pytest.raises(DiffCutError, match="num_iter"):
        pamr_refine(ns.put(np.zeros((8, 8, 3))), zeros8, num_iter=-1)


def test_arrays_of_two_libraries_are_refused_with_a_reason():
    from helpers.namespaces import make

    strict = make("strict")
    with pytest.raises(DiffCutError, match="different libraries"):
        pamr_refine(strict.put(np.zeros((8, 8, 3))), np.zeros((8, 8), np.int64))


def test_median_filter_equals_scipy_on_every_namespace(ns):
    # numpy runs scipy's own filter; the others the standard-only sorting filter.
    import scipy.ndimage

    from diffcut_edge.runtime.xp import median_filter3

    labels = np.random.default_rng(2).integers(0, 6, (19, 23)).astype(np.int32)
    np.testing.assert_array_equal(ns.get(median_filter3(ns.put(labels))), scipy.ndimage.median_filter(labels, size=3))


def test_row_strips_and_threads_give_identical_weights_and_masks():
    """Strips (any height, any number of threads) compute every element from the same terms in the
    same order as one whole-image pass (the cupy / torch path)."""
    from diffcut_edge.runtime.pamr import propagate

    case = planted_case((8, 8), 5, 0.1, 4, image_size=(48, 40))
    masks = np.eye(5, dtype=np.float32)[resize_nearest(case.regions, (48, 40))].transpose(2, 0, 1)
    whole_weights = pamr_weights(case.image, rows=48, workers=1)
    whole = propagate(masks, whole_weights, rows=48, workers=1)
    for rows, workers in ((1, 1), (7, 2), (16, 3), (None, None)):
        weights = pamr_weights(case.image, rows=rows, workers=workers)
        np.testing.assert_array_equal(weights, whole_weights)
        np.testing.assert_array_equal(propagate(masks, weights, rows=rows, workers=workers), whole)
