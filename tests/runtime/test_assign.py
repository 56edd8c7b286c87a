"""Runtime concept assignment on every tested namespace: torch-exact bilinear resize, embeddings,
parity with diffcut_ref."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import assign_concepts, recursive_ncut
from diffcut_edge.runtime.assign import interp_matrix, resize_bilinear, segment_embeddings
from diffcut_edge.runtime.ncut import normalize_tokens
from helpers.runtime_planted import planted_case


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="resize parity is checked against torch's F.interpolate")
    torch.set_num_threads(1)
    return torch


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "src,dst",
    [((16, 16), (128, 128)), ((24, 40), (96, 160)), ((5, 7), (13, 3)), ((128, 128), (32, 32)), ((1, 4), (3, 9))],
)
def test_resize_matches_torch_interpolate(torch, src, dst, align_corners, ns):
    maps = np.random.default_rng(0).standard_normal((3, *src)).astype(np.float32)
    ours = ns.get(resize_bilinear(ns.put(maps), dst, align_corners=align_corners))
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[None], size=dst, mode="bilinear", align_corners=align_corners
    )[0].numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_interpolation_rows_are_convex_weights():
    for align in (False, True):
        m = interp_matrix(7, 29, align_corners=align)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)
        assert (m >= 0).all()


def test_upsampling_similarities_equals_upsampling_channels(ns):
    """Linearity: K similarity maps upsampled == similarities of the upsampled C channels."""
    case = planted_case((16, 16), 6, 0.3, 0)
    fn = normalize_tokens(case.features)
    coarse = recursive_ncut(case.features, case.grid).labels
    emb = segment_embeddings(fn, coarse)
    h, w = case.grid
    fmap = fn.T.reshape(-1, h, w)
    channels_up = resize_bilinear(fmap, (128, 128), align_corners=False)  # (C, H, W): the official way
    via_channels = np.einsum("chw,kc->khw", channels_up, emb)
    via_maps = resize_bilinear((fn @ emb.T).T.reshape(-1, h, w), (128, 128), align_corners=False)
    np.testing.assert_allclose(via_maps, via_channels, atol=1e-5)
    labels = ns.get(assign_concepts(ns.put(case.features), case.grid, ns.put(coarse)))
    assert (labels == via_channels.argmax(axis=0)).mean() >= 0.999


def test_segment_embeddings_are_segment_means_in_sorted_label_order(ns):
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((12, 5)).astype(np.float32)
    labels = np.array([9, 3, 3, 7, 9, 9, 3, 7, 7, 7, 3, 9])  # ids with gaps, unsorted
    emb = ns.get(segment_embeddings(ns.put(feats), ns.put(labels)))
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    expected = np.stack([fn[labels == v].mean(axis=0) for v in (3, 7, 9)])
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)


def test_assignment_matches_reference(torch, ns):
    from diffcut_edge import diffcut_ref

    for grid, seed in (((16, 16), 2), ((24, 40), 3)):
        case = planted_case(grid, 7, 0.3, seed)
        coarse = recursive_ncut(case.features, grid).labels
        ours = ns.get(assign_concepts(ns.put(case.features), grid, ns.put(coarse), mask_size=(128, 128)))
        theirs = diffcut_ref.assign_concepts(case.features, grid, coarse.astype(np.int64), mask_size=(128, 128))
        assert ours.dtype == np.int32
        # Same ids (both index the sorted coarse labels); only float near-ties may differ.
        assert (ours == theirs).mean() >= 0.999


def test_label_count_must_match_grid(ns):
    feats = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    with pytest.raises(DiffCutError, match="coarse labels"):
        assign_concepts(ns.put(feats), (4, 4), ns.put(np.zeros((3, 3), np.int64)))


def test_labels_given_as_a_list_are_placed_on_the_features_device(ns):
    feats = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    from_list = ns.get(assign_concepts(ns.put(feats), (2, 2), [[0, 0], [1, 1]], mask_size=(4, 4)))
    from_array = ns.get(assign_concepts(ns.put(feats), (2, 2), ns.put(np.array([[0, 0], [1, 1]])), mask_size=(4, 4)))
    np.testing.assert_array_equal(from_list, from_array)
    assert set(np.unique(from_list)) == {0, 1}
