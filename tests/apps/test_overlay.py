"""Overlays: deterministic palette, blending maths, the in-place contract, label checks."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.apps.overlay import (
    OverlayStyle,
    SegmentName,
    annotate,
    colorize_labels,
    draw_boundaries,
    draw_name_chips,
    draw_overlay,
    labels_to_host,
    largest_segment,
    palette,
    palette_color,
    segment_boundaries,
)
from diffcut_edge.errors import DiffCutError


def _frame(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(h=24, w=32) -> np.ndarray:
    labels = np.zeros((h, w), np.int32)
    labels[:, w // 2 :] = 1
    labels[h // 2 :, :] = 2
    return labels


def test_palette_is_deterministic_and_distinct():
    colors = [palette_color(i) for i in range(200)]
    assert colors == [palette_color(i) for i in range(200)]
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)
    assert len(set(colors[:40])) == 40  # the ids a frame usually has never share a colour
    assert palette(5).shape == (5, 3) and palette(5).dtype == np.uint8
    np.testing.assert_array_equal(palette(3)[2], palette_color(2))
    with pytest.raises(DiffCutError, match="non-negative"):
        palette_color(-1)


def test_overlay_blends_and_leaves_input_untouched():
    frame, labels = _frame(), _labels()
    before = frame.copy()
    out = draw_overlay(frame, labels, alpha=0.25)
    np.testing.assert_array_equal(frame, before)
    assert out is not frame and out.dtype == np.uint8 and out.shape == frame.shape
    expected = 0.75 * frame.astype(np.float64) + 0.25 * palette(3)[labels].astype(np.float64)
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0  # uint8 rounding
    np.testing.assert_array_equal(draw_overlay(frame, labels, alpha=0.0), frame)
    np.testing.assert_array_equal(draw_overlay(frame, labels, alpha=1.0), palette(3)[labels])


def test_overlay_out_argument_draws_in_place():
    frame, labels = _frame(), _labels()
    expected = draw_overlay(frame, labels)
    buffer = np.zeros_like(frame)
    assert draw_overlay(frame, labels, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)
    same = frame.copy()
    assert draw_overlay(same, labels, out=same) is same
    np.testing.assert_array_equal(same, expected)


def test_custom_colors():
    frame, labels = _frame(), _labels()
    colors = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    out = draw_overlay(frame, labels, alpha=1.0, colors=colors)
    np.testing.assert_array_equal(out[0, 0], colors[0])
    np.testing.assert_array_equal(out[-1, -1], colors[2])
    with pytest.raises(DiffCutError, match="up to 2"):
        draw_overlay(frame, labels, colors=colors[:2])


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((12, 32), np.int32), "mask_labels"),
        (np.zeros((24, 32), np.float32), "integer"),
        (np.zeros((24, 32, 1), np.int32), r"\(H, W\)"),
        (np.full((24, 32), -1, np.int32), "non-negative"),
        (None, "None"),
    ],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(DiffCutError, match=message):
        draw_overlay(_frame(), labels)


def test_every_frame_type_the_segmenter_accepts_gets_an_overlay():
    # Gray, BGRA, 16-bit and float frames are what Segmenter.__call__ accepts: the overlay takes
    # them too, drawn on the same BGR picture the segmenter saw.
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    gray = bgr[..., 1].copy()
    bgra = np.dstack([bgr, np.full((24, 32), 7, np.uint8)])
    cases = [
        (gray, np.repeat(gray[..., None], 3, axis=2)),
        (bgra, bgr),
        (bgr.astype(np.uint16) << 8, bgr),
        (bgr.astype(np.float32) / 255, bgr),
    ]
    for frame, as_bgr in cases:
        np.testing.assert_array_equal(
            draw_overlay(frame, _labels(), alpha=0.4), draw_overlay(as_bgr, _labels(), alpha=0.4)
        )


@pytest.mark.parametrize("frame", [np.zeros((24, 32, 2), np.uint8), np.zeros((24, 32, 3), np.int64), [[0, 1], [2, 3]]])
def test_bad_frames_are_refused(frame):
    with pytest.raises(DiffCutError):
        draw_overlay(frame, _labels())
    with pytest.raises(DiffCutError, match="alpha"):
        draw_overlay(_frame(), _labels(), alpha=1.5)


def test_labels_to_host_converts_dtype():
    out = labels_to_host(_labels().astype(np.uint8), (24, 32, 3))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, _labels())


def test_boundaries():
    labels = _labels(8, 8)
    edges = segment_boundaries(labels)
    # Exactly the pixels whose right or lower neighbour differs.
    expected = np.zeros((8, 8), bool)
    expected[:4, 3] = True  # 0 | 1 in the top half
    expected[3, :] = True  # top half above label 2
    assert edges.dtype == bool
    np.testing.assert_array_equal(edges, expected)
    assert segment_boundaries(labels, thickness=3).sum() > edges.sum()
    assert not segment_boundaries(np.zeros((5, 5), np.int32)).any()
    frame = _frame(8, 8)
    out = draw_boundaries(frame, labels, color=(1, 2, 3))
    np.testing.assert_array_equal(out[edges], np.tile([1, 2, 3], (edges.sum(), 1)))
    np.testing.assert_array_equal(out[~edges], frame[~edges])
    with pytest.raises(DiffCutError, match="thickness"):
        draw_boundaries(frame, labels, thickness=0)


@pytest.mark.parametrize("scale, thickness", [(0.5, 1), (0.9, 2), (1.4, 3)])
def test_text_fill_and_outline_line_up_on_this_opencv(scale, thickness):
    """The fill lies inside its outline, end to end (OpenCV 5 advances glyphs by a stroke-dependent
    amount: a thick outline pass and a thin fill pass drifted apart, "diningtablee")."""
    from diffcut_edge.apps.overlay import draw_outlined_text

    image = np.full((80, 600, 3), 128, np.uint8)
    draw_outlined_text(image, "diningtable 3 seg refine on", (10, 50), scale, thickness)
    grey = image[..., 0].astype(int)
    fill, outline = np.argwhere(grey > 200), np.argwhere(grey < 60)
    assert len(fill) and len(outline)
    (fy0, fx0), (fy1, fx1) = fill.min(0), fill.max(0)
    (oy0, ox0), (oy1, ox1) = outline.min(0), outline.max(0)
    assert ox0 <= fx0 and fx1 <= ox1 and oy0 <= fy0 and fy1 <= oy1
    assert (fx0 - ox0) <= 3 and (ox1 - fx1) <= 3  # the outline hugs the fill at both ends
    # Every fill pixel has outline within a stroke's width (no glyph left bare).
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(grey >= 60)
    assert dist[grey > 200].max() <= 2 * thickness + 3


def test_the_hud_is_drawn_with_the_same_outlined_text():
    from diffcut_edge.apps.hud import draw_hud

    image = np.full((30, 300, 3), 128, np.uint8)
    draw_hud(image, "12.3 fps  81 ms  6 seg  refine on")
    assert (image[..., 0] > 200).any() and (image[..., 0] < 60).any()


# ------------------------------------------------------------------ annotators
def test_the_largest_segment_can_stay_untinted():
    frame, labels = _frame(), _labels()
    largest = largest_segment(labels)
    assert largest == 2  # the lower half
    drawn = draw_overlay(frame, labels, alpha=0.6, untinted=(largest,))
    keep = labels == largest
    assert np.array_equal(drawn[keep], frame[keep]) and not np.array_equal(drawn[~keep], frame[~keep])
    assert np.array_equal(drawn[~keep], draw_overlay(frame, labels, alpha=0.6)[~keep])


def test_annotate_composes_colours_boundaries_and_name_chips():
    frame, labels = np.full((120, 160, 3), 90, np.uint8), np.zeros((120, 160), np.int32)
    labels[20:100, 30:130] = 3  # one object on a background
    plain = annotate(frame, labels, (), OverlayStyle(boundaries=False))
    bounded = annotate(frame, labels, (), OverlayStyle(boundary_color=(0, 0, 255), boundary_thickness=1))
    edges = segment_boundaries(labels)
    assert (bounded[edges] == (0, 0, 255)).all() and np.array_equal(bounded[~edges], plain[~edges])
    named = annotate(frame, labels, [SegmentName(3, "cat", 0.9)], OverlayStyle(boundaries=False))
    changed = np.any(named != plain, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any() and (labels[ys, xs] == 3).all()  # the chip sits inside its segment
    # Its swatch is the segment's palette colour: which name is which colour.
    assert (np.all(named == palette_color(3), axis=2) & changed).sum() >= 16
    untinted = annotate(frame, labels, [SegmentName(0, "wall")], OverlayStyle(tint_largest=False, names=False))
    assert np.array_equal(untinted[labels == 0][:5], frame[labels == 0][:5])


def test_name_chips_skip_ids_the_map_does_not_show():
    frame, labels = _frame(), _labels()
    drawn = draw_name_chips(frame, labels, [SegmentName(9, "ghost")])
    assert np.array_equal(drawn, frame)


def test_colorized_labels_use_the_overlay_palette():
    labels = _labels()
    picture = colorize_labels(labels)
    assert picture.shape == (*labels.shape, 3) and picture.dtype == np.uint8
    for i in (0, 1, 2):
        assert (picture[labels == i] == palette_color(i)).all()


@pytest.mark.parametrize("change, message", [({"alpha": 1.5}, "alpha"), ({"boundary_thickness": 0}, "thickness")])
def test_overlay_style_refuses_bad_values(change, message):
    with pytest.raises(DiffCutError, match=message):
        OverlayStyle(**change)


def test_boundaries_thicken_with_the_frame():
    assert OverlayStyle().thickness_for((480, 640)) == 1 and OverlayStyle().thickness_for((2000, 3000)) == 4
