"""Optical-flow propagation: the policy's grammar, flow and its consistency check, label warping,
the PAMR fill of what could not be carried."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.apps.propagation import (
    KeyframePolicy,
    MotionEstimator,
    fill_unlabelled,
    refine_labels,
    small_grey,
    warp_labels,
)
from diffcut_edge.errors import DiffCutError
from helpers.clips import make_clip


def test_policy_grammar():
    assert KeyframePolicy.parse("every:8") == KeyframePolicy("every", 8)
    assert KeyframePolicy.parse(" AUTO ").mode == "auto"
    assert KeyframePolicy.parse("every:1").per_frame and not KeyframePolicy.parse("every:2").per_frame
    assert str(KeyframePolicy.parse("every:3")) == "every:3"
    for bad in ("every:0", "every:-2", "every:1.5", "keyframes", ""):
        with pytest.raises(DiffCutError, match="every:N"):
            KeyframePolicy.parse(bad)
    with pytest.raises(DiffCutError, match="min_confidence"):
        KeyframePolicy("auto", min_confidence=2.0)


def _textured(seed: int, shape=(120, 160)) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.random((shape[0] // 4, shape[1] // 4)).astype(np.float32)
    img = cv2.resize(noise, shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.repeat((np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def test_flow_follows_a_shift_and_flags_what_came_from_outside():
    frame = _textured(0)
    shifted = np.roll(frame, 4, axis=1)  # content moves 4 px right
    est = MotionEstimator(width=160)
    assert est(frame) is None  # nothing to compare the first frame with
    motion = est(shifted)
    inner = motion.backward[10:-10, 20:-20]
    assert np.median(inner[..., 0]) == pytest.approx(-4.0, abs=0.5)
    assert np.median(np.abs(inner[..., 1])) < 0.5
    assert motion.confidence > 0.8 and not motion.scene_cut
    unrelated = est(_textured(1))
    assert unrelated.scene_cut


def test_labels_move_with_the_flow_and_unknown_pixels_are_marked():
    frame = _textured(2)
    shifted = np.roll(frame, 8, axis=1)
    est = MotionEstimator(width=160)
    est(frame)
    motion = est(shifted)
    labels = np.zeros((60, 80), np.int32)
    labels[:, 40:] = 1  # the boundary at column 40 of 80
    warped = warp_labels(labels, motion)
    moved = (warped[20:40] == 1).argmax(axis=1)
    assert np.median(moved) == pytest.approx(44, abs=1)  # 8 px of 160 = 4 px of 80
    assert (warped == -1).any()  # the wrapped-around strip has no consistent flow


def test_refine_fills_holes_along_colour_and_fill_reaches_the_rest():
    image = np.zeros((32, 32, 3), np.float32)
    image[:, 16:] = 1.0  # two colours, the edge at column 16
    labels = np.zeros((32, 32), np.int32)
    labels[:, 16:] = 1
    holed = labels.copy()
    holed[:, 12:20] = -1  # nothing carried around the edge
    refined = refine_labels(image, holed, iterations=10, dilations=(1, 2, 4))
    assert (refined[:, 2:14] == 0).all() and (refined[:, 18:30] == 1).all()
    assert (fill_unlabelled(refined) >= 0).all()
    far = -np.ones((8, 8), np.int32)
    far[0, 0] = 3
    assert (fill_unlabelled(far) == 3).all()
    assert (fill_unlabelled(-np.ones((4, 4), np.int32)) == 0).all()


def test_occlusions_fail_the_forward_backward_check():
    cross = make_clip("cross", 40, (160, 120), seed=0, speed=4.0)
    est = MotionEstimator(width=160)
    confidences = [m.confidence for m in map(est, cross.frames) if m is not None]
    # Once the two discs overlap, the covered one's pixels have no consistent flow.
    assert min(confidences) < max(confidences)
    assert small_grey(cross.frames[0]).shape == (120, 160)
