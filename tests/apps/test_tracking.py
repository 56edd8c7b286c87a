"""Stable segment ids: embeddings fed directly, and planted features moving through the runtime NCut."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.apps.tracking import SegmentTracker, match_embeddings, relabel
from diffcut_edge.errors import DiffCutError
from helpers.data import load_planted


def _directions(k: int, c: int, rng: np.random.Generator) -> np.ndarray:
    d = rng.standard_normal((k, c)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def test_ids_follow_segments_through_reordering_noise_and_absence():
    rng = np.random.default_rng(0)
    dirs = _directions(6, 64, rng)
    tracker = SegmentTracker(min_similarity=0.8, max_age=3)
    first = tracker.update(dirs[:4])
    identity = dict(zip(range(4), first.tolist()))  # segment (true object) -> id
    for frame in range(8):
        present = [0, 1, 3] if frame in (2, 3) else [0, 1, 2, 3]  # object 2 hidden for two frames
        order = rng.permutation(present)  # NCut numbers segments afresh
        noisy = dirs[order] + 0.05 * rng.standard_normal((len(order), 64)).astype(np.float32)
        ids = tracker.update(noisy)
        assert [identity[o] for o in order] == ids.tolist(), f"frame {frame}"
    assert tracker.next_id == 4  # nobody got a new id, the hidden object came back with its own


def test_new_segments_get_new_ids_and_lost_tracks_expire():
    rng = np.random.default_rng(1)
    dirs = _directions(5, 32, rng)
    tracker = SegmentTracker(min_similarity=0.8, max_age=1)
    a = tracker.update(dirs[:2])
    b = tracker.update(dirs[[0, 1, 4]])  # object 4 appears
    assert b[:2].tolist() == a.tolist() and b[2] not in a
    tracker.update(dirs[[4]])
    tracker.update(dirs[[4]])  # objects 0, 1 unseen for 2 frames > max_age
    c = tracker.update(dirs[[0]])
    assert c[0] not in a and c[0] not in b


def test_match_rejects_pairs_below_threshold_and_handles_empty():
    rng = np.random.default_rng(2)
    dirs = _directions(3, 16, rng)
    ortho = np.linalg.qr(rng.standard_normal((16, 16)))[0][:5].astype(np.float32)
    # Only previous[1] reappears; the two newcomers are orthogonal to every track.
    assert match_embeddings(ortho[:3], ortho[[3, 1, 4]], 0.5) == [(1, 1)]
    assert match_embeddings(dirs[:0], dirs, 0.5) == []
    tracker = SegmentTracker()
    assert tracker.update(np.zeros((0, 16), np.float32)).shape == (0,)


def test_relabel_and_validation():
    labels = np.array([[0, 1], [2, 1]])
    assert relabel(labels, np.array([7, 3, 9])).tolist() == [[7, 3], [9, 3]]
    with pytest.raises(DiffCutError):
        SegmentTracker(min_similarity=2.0)
    tracker = SegmentTracker()
    tracker.update(np.eye(3, 8, dtype=np.float32))
    with pytest.raises(DiffCutError, match="channels"):
        tracker.update(np.eye(3, 4, dtype=np.float32))


def _shift(features: np.ndarray, grid: tuple[int, int], dy: int, dx: int) -> np.ndarray:
    h, w = grid
    return np.roll(features.reshape(h, w, -1), (dy, dx), axis=(0, 1)).reshape(h * w, -1)


@pytest.mark.parametrize("name", ["blobs-k5-s1", "img-chelsea-k4"])
def test_planted_regions_moving_keep_their_ids_through_runtime_ncut(name):
    from diffcut_edge.runtime import assign, ncut

    case = load_planted(name)
    grid = case["grid"]
    rng = np.random.default_rng(3)
    scale = float(case["features"].std())
    tracker = SegmentTracker()
    previous, previous_raw, big_ids = None, None, []
    for t in range(5):
        feats = _shift(case["features"], grid, t, 2 * t)  # regions translate one row, two columns a frame
        feats = feats + 0.05 * scale * rng.standard_normal(feats.shape).astype(np.float32)
        coarse = np.asarray(ncut.recursive_ncut(feats, grid).labels)
        k = int(coarse.max()) + 1
        # A new frame may number its segments in any order (cut order changes with content):
        # shuffle them so that only the tracker can bring the ids back.
        shuffle = np.roll(np.arange(k), t)
        coarse = shuffle[coarse]
        ids = tracker.update(np.asarray(assign.segment_embeddings(feats, coarse)))
        stable = relabel(coarse, ids)
        big_ids.append(sorted(int(ids[j]) for j in np.flatnonzero(np.bincount(coarse.ravel()) >= 8)))
        if previous is not None:
            # The id map moves with the content: undo this frame's shift and compare.
            agreement = float(np.mean(np.roll(stable, (-1, -2), axis=(0, 1)) == previous))
            raw = float(np.mean(np.roll(coarse, (-1, -2), axis=(0, 1)) == previous_raw))
            assert agreement > 0.95, f"frame {t}: only {agreement:.2%} of cells kept their id"
            assert raw < 0.9, "the shuffled per-frame labels should not already agree"
        previous, previous_raw = stable, coarse
    # Every sizeable region kept one id all along (the known NCut singletons may come and go).
    assert all(ids == big_ids[0] for ids in big_ids), big_ids
