"""Drawing segmentations on frames (BGR uint8 in, BGR uint8 out), supervision-style.

Small annotators compose into :func:`annotate`, whose look is data (:class:`OverlayStyle`):
segment colours (:func:`draw_overlay`, optionally leaving the largest segment untinted),
boundaries (:func:`draw_boundaries`) and one name chip per named segment, a swatch of its colour
before its class (:func:`draw_name_chips`). :func:`colorize_labels` turns a label map into a
picture for people (the 16-bit label PNG looks black in a viewer).

Every function returns a new frame and leaves its input untouched, unless an ``out=``
array is given, which is then written in place and returned (pass ``out=frame`` to
draw on the frame itself, e.g. in a video loop). Label maps may be numpy or cupy;
:func:`labels_to_host` is the one place that moves them to the host and checks them.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.images import to_bgr_uint8
from diffcut_edge.runtime.preprocess import check_frame
from diffcut_edge.runtime.xp import to_host

# First colours: a readable qualitative palette (BGR); later ids get golden-ratio hues.
_BASE_PALETTE_RGB = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
_GOLDEN = 0.618033988749895


def palette_color(index: int) -> tuple[int, int, int]:
    """The BGR colour of segment id ``index``: the same id always gets the same colour."""
    index = int(index)
    if index < 0:
        raise DiffCutError(f"segment ids are non-negative, got {index}")
    if index < len(_BASE_PALETTE_RGB):
        r, g, b = _BASE_PALETTE_RGB[index]
    else:  # spread further ids around the hue circle, alternating brightness
        hue = (index * _GOLDEN) % 1.0
        value = 0.95 if index % 2 else 0.75
        r, g, b = (int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.85, value))
    return (b, g, r)


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 BGR colours of ids 0..n-1."""
    return np.array([palette_color(i) for i in range(int(n))], dtype=np.uint8).reshape(-1, 3)


def labels_to_host(labels: Any, frame_shape: Sequence[int] | None = None) -> np.ndarray:
    """Label map (numpy or cupy, any integer dtype) -> host (H, W) int32, checked against a frame.

    Raises a DiffCutError for a non-2-D or non-integer map, negative ids, or a size that is
    not the frame's (resize with ``SegmentationResult.labels``, which is at frame size).
    """
    if labels is None:
        raise DiffCutError("got no label map (None)")
    labels = to_host(labels)
    if labels.ndim != 2:
        raise DiffCutError(f"expected a (H, W) label map, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DiffCutError(f"expected integer labels, got dtype {labels.dtype}")
    if frame_shape is not None and tuple(labels.shape) != tuple(frame_shape[:2]):
        raise DiffCutError(
            f"label map is {labels.shape[0]}x{labels.shape[1]} but the frame is "
            f"{frame_shape[0]}x{frame_shape[1]}: use result.labels (frame size), "
            f"not mask_labels"
        )
    if labels.size and labels.min() < 0:
        raise DiffCutError(f"label ids must be non-negative, got {int(labels.min())}")
    return labels.astype(np.int32, copy=False)


def _check_bgr_frame(frame: Any) -> np.ndarray:
    """The frame as BGR uint8 (H, W, 3): every frame type the Segmenter accepts (gray, BGRA,
    16-bit, float in [0, 1]) is converted; a BGR uint8 frame is returned as is."""
    if not isinstance(frame, np.ndarray):
        raise DiffCutError(f"overlays draw on numpy image arrays (H, W[, C]), got {type(frame).__name__}")
    check_frame(frame)
    return to_bgr_uint8(frame, "frame")


def _target(frame: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return frame.copy()
    if out.shape != frame.shape or out.dtype != np.uint8:
        raise DiffCutError(f"out= must be a {frame.shape} uint8 array, got {out.dtype} {out.shape}")
    if out is not frame:
        np.copyto(out, frame)
    return out


def _color_table(labels: np.ndarray, colors: Any) -> np.ndarray:
    needed = int(labels.max()) + 1 if labels.size else 1
    if colors is None:
        return palette(needed)
    table = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(table) < needed:
        raise DiffCutError(f"colors has {len(table)} entries but the labels go up to {needed - 1}")
    return table


def draw_overlay(
    frame: np.ndarray,
    labels: Any,
    alpha: float = 0.5,
    colors: Any = None,
    out: np.ndarray | None = None,
    untinted: Sequence[int] = (),
) -> np.ndarray:
    """Blend segment colours over ``frame``: ``(1 - alpha) * frame + alpha * colour[label]``.

    Args:
        frame: (H, W, 3) BGR uint8 (gray, BGRA, 16-bit and float frames are converted to it);
            not modified (unless it is also ``out``).
        labels: (H, W) integer label map, numpy or cupy.
        alpha: opacity of the colours, in [0, 1].
        colors: optional (K, 3) BGR table indexed by label id (default :func:`palette`).
        out: optional (H, W, 3) uint8 array to draw into, in place.
        untinted: ids whose pixels keep the frame's colours (e.g. the background).
    Returns:
        The drawn frame (``out`` if given, else a new array).
    """
    frame = _check_bgr_frame(frame)
    if not 0.0 <= float(alpha) <= 1.0:
        raise DiffCutError(f"alpha must be in [0, 1], got {alpha}")
    labels = labels_to_host(labels, frame.shape)
    colored = _color_table(labels, colors)[labels]
    target = _target(frame, out)
    if len(untinted):
        keep = np.isin(labels, np.asarray(untinted, dtype=np.int64))
        colored[keep] = target[keep]  # blending a pixel with itself leaves it as it was
    cv2.addWeighted(target, 1.0 - float(alpha), colored, float(alpha), 0.0, dst=target)
    return target


def segment_boundaries(labels: Any, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label, dilated to ``thickness``."""
    labels = labels_to_host(labels)
    edges = np.zeros(labels.shape, dtype=np.uint8)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    if thickness > 1:
        edges = cv2.dilate(edges, np.ones((thickness, thickness), np.uint8))
    return edges.astype(bool)


def draw_boundaries(
    frame: np.ndarray,
    labels: Any,
    color: tuple[int, int, int] = (255, 255, 255),
    thickness: int = 1,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Paint the boundaries between segments in ``color`` (BGR); same in-place contract as
    :func:`draw_overlay`."""
    frame = _check_bgr_frame(frame)
    if int(thickness) < 1:
        raise DiffCutError(f"thickness must be >= 1, got {thickness}")
    edges = segment_boundaries(labels_to_host(labels, frame.shape), int(thickness))
    target = _target(frame, out)
    target[edges] = np.asarray(color, dtype=np.uint8)
    return target


def label_anchor(labels: np.ndarray, segment_id: int, max_side: int = 256) -> tuple[int, int]:
    """(x, y) inside segment ``segment_id``, as far from its border as possible (where a name reads
    best; a bbox centre can fall outside a non-convex segment). Searched on a map of at most
    ``max_side`` pixels a side."""
    height, width = labels.shape
    step = max(1, int(np.ceil(max(height, width) / max_side)))
    small = np.ascontiguousarray(labels[::step, ::step] == segment_id).astype(np.uint8)
    if not small.any():  # a segment thinner than the step: any of its pixels
        ys, xs = np.nonzero(labels == segment_id)
        return (int(xs[len(xs) // 2]), int(ys[len(ys) // 2])) if len(xs) else (width // 2, height // 2)
    distance = cv2.distanceTransform(np.pad(small, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x * step), int(y * step)


def draw_outlined_text(
    image: np.ndarray,
    text: str,
    origin: tuple[int, int],
    scale: float,
    thickness: int = 1,
    *,
    outline: int = 1,
    colour: tuple[int, int, int] = (255, 255, 255),
    outline_colour: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Draw ``text`` in ``colour`` with an ``outline``-pixel border, in place; returns ``image``.

    The glyphs are drawn once (a mask) and the border is that mask dilated, so fill and outline line
    up on every OpenCV: OpenCV 5 advances each glyph by an amount that depends on the stroke
    thickness, so a thick black pass and a thin white pass drift apart ("diningtablee").
    """
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    pad = outline + thickness + 2
    x0, y0 = origin[0] - pad, origin[1] - h - pad
    x1, y1 = origin[0] + w + pad, origin[1] + base + pad
    ih, iw = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, iw), min(y1, ih)
    if cx0 >= cx1 or cy0 >= cy1:
        return image
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.putText(mask, text, (pad, pad + h), font, scale, 255, thickness, cv2.LINE_AA)
    size = 2 * int(outline) + 1
    border = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    crop = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    roi = image[cy0:cy1, cx0:cx1].astype(np.float32)
    for layer, paint in ((border[crop], outline_colour), (mask[crop], colour)):
        alpha = (layer.astype(np.float32) / 255.0)[..., None]
        roi = roi * (1.0 - alpha) + np.float32(paint) * alpha
    image[cy0:cy1, cx0:cx1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
    return image


# ----------------------------------------------------------------------------- annotators
@dataclass(frozen=True)
class OverlayStyle:
    """How an overlay looks, as data (the CLI, batch outputs, video and the live view share it).

    alpha: opacity of the segment colours. tint_largest: False leaves the largest segment (the
    background, mostly) untinted. boundaries / boundary_color / boundary_thickness: lines between
    segments (thickness None: 1 px per 500 px of the shorter side, at least 1). names: each named
    segment's class inside it, on a chip of its colour (segments named by a vocabulary only).
    """

    alpha: float = 0.5
    tint_largest: bool = True
    boundaries: bool = True
    boundary_color: tuple[int, int, int] = (255, 255, 255)
    boundary_thickness: int | None = None
    names: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= float(self.alpha) <= 1.0):
            raise DiffCutError(f"overlay alpha must be in [0, 1], got {self.alpha!r}")
        if self.boundary_thickness is not None and int(self.boundary_thickness) < 1:
            raise DiffCutError(f"boundary thickness must be >= 1, got {self.boundary_thickness}")

    def thickness_for(self, shape: Sequence[int]) -> int:
        if self.boundary_thickness is not None:
            return int(self.boundary_thickness)
        return max(1, int(round(min(shape[:2]) / 500)))


@dataclass(frozen=True)
class SegmentName:
    """What a name chip shows: the segment's id in the drawn label map, its class and score."""

    id: int
    name: str
    score: float | None = None


def largest_segment(labels: np.ndarray) -> int:
    """The id covering the most pixels (ties: the lowest id)."""
    return int(np.argmax(np.bincount(labels.ravel()))) if labels.size else 0


def draw_name_chips(
    frame: np.ndarray,
    labels: Any,
    names: Sequence[SegmentName],
    *,
    scale: float | None = None,
    colors: Any = None,
    untinted: Sequence[int] = (),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Each name inside its segment, after a swatch of the segment's colour (which name is which
    colour), white on a dark outline; one chip per segment. An ``untinted`` segment's swatch is a
    frame of its colour."""
    frame = _check_bgr_frame(frame)
    labels = labels_to_host(labels, frame.shape)
    target = _target(frame, out)
    if not len(names):
        return target
    table = _color_table(labels, colors)
    area = np.bincount(labels.ravel(), minlength=len(table))  # one pass: which ids the map shows
    scale = scale if scale is not None else max(0.4, min(frame.shape[:2]) / 800)
    thickness = max(1, int(round(scale * 2)))
    for segment in names:
        if not (0 <= int(segment.id) < len(table)) or area[int(segment.id)] == 0:
            continue
        x, y = label_anchor(labels, int(segment.id))
        (w, h), _ = cv2.getTextSize(str(segment.name), cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        swatch = h + 2
        total = swatch + 4 + w
        x0 = int(np.clip(x - total // 2, 0, max(0, frame.shape[1] - total)))
        baseline = int(np.clip(y + h // 2, h + 1, frame.shape[0] - 2))
        top = baseline - h - 1
        color = tuple(int(c) for c in table[int(segment.id)])
        cv2.rectangle(target, (x0, top), (x0 + swatch, top + swatch), (0, 0, 0), thickness=-1)
        filled = -1 if int(segment.id) not in untinted else max(1, swatch // 5)
        cv2.rectangle(target, (x0 + 1, top + 1), (x0 + swatch - 1, top + swatch - 1), color, thickness=filled)
        draw_outlined_text(target, str(segment.name), (x0 + swatch + 4, baseline), scale, thickness)
    return target


def annotate(
    frame: np.ndarray,
    labels: Any,
    names: Sequence[SegmentName] = (),
    style: OverlayStyle = OverlayStyle(),
    *,
    colors: Any = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The overlay ``style`` describes: segment colours, boundaries, then name chips."""
    frame = _check_bgr_frame(frame)
    labels = labels_to_host(labels, frame.shape)
    target = _target(frame, out)
    untinted = () if style.tint_largest else (largest_segment(labels),)
    draw_overlay(target, labels, alpha=style.alpha, colors=colors, out=target, untinted=untinted)
    if style.boundaries:
        draw_boundaries(target, labels, style.boundary_color, style.thickness_for(frame.shape), out=target)
    if style.names and names:
        draw_name_chips(target, labels, names, colors=colors, untinted=untinted, out=target)
    return target


def colorize_labels(labels: Any, colors: Any = None) -> np.ndarray:
    """A label map as a BGR picture (each id its palette colour): the ``--save-color`` preview of a
    16-bit label PNG that looks black in a viewer."""
    labels = labels_to_host(labels)
    return np.ascontiguousarray(_color_table(labels, colors)[labels])


def result_names(result: Any, ids: Any = None) -> list[SegmentName]:
    """The name chips of a result's named segments (none without a vocabulary); ``ids`` maps the
    result's own ids to the drawn ones (a tracker's persistent ids)."""
    if not result.segments:
        return []
    return [
        SegmentName(int(s.id if ids is None else ids[int(s.id)]), str(s.class_name), float(s.score))
        for s in result.segments
    ]
