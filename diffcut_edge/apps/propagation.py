"""Between keyframes: carry the last segmentation to the current frame with dense optical flow.

DiffCut's encoder costs far more than a camera's frame interval on an edge board, so video runs
it on *keyframes* only and moves the keyframe's labels with the scene in between:

1. :class:`MotionEstimator` computes OpenCV's DIS optical flow between consecutive frames on
   small grey copies (``flow_width`` pixels wide: the flow is smooth, its cost is not), both
   ways, and marks the pixels whose forward and backward flows disagree (occlusions,
   dis-occlusions, where the flow is not to be trusted): :class:`Motion`.
2. :func:`warp_labels` moves the label map at mask resolution backwards along the flow (each
   pixel takes the label of where it came from, nearest neighbour: labels are ids, not values);
   the inconsistent pixels and those that came from outside the frame get no label (-1).
3. :func:`refine_labels` fills those pixels and snaps every boundary to the current frame's own
   pixels with a short PAMR (the keyframe's colour affinities, fewer rounds, the nearest
   neighbours, labels voted by affinity each round): unlabelled pixels take the label their
   neighbours hold the most affinity for.

Warping the label map (not the token features, not soft maps) is what the measurements chose:
see benchmarks/RESULTS.md, "Video". :class:`KeyframePolicy` says when the encoder runs again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from diffcut_edge.errors import DiffCutError

FLOW_WIDTH = 160  # the flow's frame width in pixels (DIS at 160x120: ~1 ms both ways)
CONSISTENCY_PX = 1.0  # forward-backward disagreement (flow pixels) beyond which a pixel is occluded
REFINE_ITERATIONS = 3  # PAMR rounds on a propagated frame (a keyframe: 10)
REFINE_DILATIONS = (1,)  # PAMR dilation on a propagated frame (a keyframe: 1, 2, 4, 8)
SCENE_CUT_RESIDUAL = 0.12  # mean |frame - warped previous frame| (0..1) above which the scene changed
SCENE_CUT_CONFIDENCE = 0.25  # share of consistent pixels below which the scene changed


# ------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class KeyframePolicy:
    """When the encoder runs: ``every:N`` frames, or ``auto``.

    every:N: frames 0, N, 2N, ... are keyframes; ``every:1`` is DiffCut on every frame.
    auto: a new keyframe when the scene cuts, when flow confidence falls below
        ``min_confidence``, when more than ``max_novelty`` of the frame could not be carried
        since the keyframe (content entering the view, dis-occlusions: carried labels cannot
        invent a segment), or when the labels are ``max_age`` frames old; with an encoder in
        its own worker (live sources, ``--realtime``), whenever the encoder is free.
    """

    mode: str = "every"
    interval: int = 1
    max_age: int = 30
    min_confidence: float = 0.6
    max_novelty: float = 0.08

    def __post_init__(self) -> None:
        if self.mode not in ("every", "auto"):
            raise DiffCutError(f"keyframes: expected 'every:N' or 'auto', got mode {self.mode!r}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, (int, np.integer)) or self.interval < 1:
            raise DiffCutError(f"keyframes every:N needs a whole N >= 1, got {self.interval!r}")
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, (int, np.integer)) or self.max_age < 1:
            raise DiffCutError(f"keyframes max_age must be a whole number of frames >= 1, got {self.max_age!r}")
        for name in ("min_confidence", "max_novelty"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise DiffCutError(f"keyframes {name} must be in [0, 1], got {getattr(self, name)!r}")

    @classmethod
    def parse(cls, text: str | KeyframePolicy) -> KeyframePolicy:
        """``"every:N"`` or ``"auto"`` (what ``--keyframes`` takes)."""
        if isinstance(text, KeyframePolicy):
            return text
        spec = str(text).strip().lower()
        if spec == "auto":
            return cls("auto")
        if spec.startswith("every:"):
            try:
                return cls("every", int(spec.split(":", 1)[1]))
            except ValueError:
                pass
        raise DiffCutError(f"--keyframes: expected 'every:N' (N >= 1) or 'auto', got {text!r}")

    @property
    def per_frame(self) -> bool:
        """DiffCut on every frame: nothing is ever propagated."""
        return self.mode == "every" and self.interval == 1

    def due(self, index: int, age: int, motion: Motion | None, novelty: float = 0.0) -> bool:
        """Whether frame ``index`` must be a keyframe, ``age`` frames after the last one, ``motion``
        being the flow from the previous frame (None on the first frame) and ``novelty`` the share of
        the frame that could not be carried since the keyframe."""
        if motion is None:
            return True
        if self.mode == "every":
            return index % self.interval == 0
        return (
            motion.scene_cut
            or motion.confidence < self.min_confidence
            or age >= self.max_age
            or novelty >= self.max_novelty
        )

    def __str__(self) -> str:
        return "auto" if self.mode == "auto" else f"every:{self.interval}"


# ------------------------------------------------------------------------- motion
@dataclass
class Motion:
    """The flow from the previous frame to this one, at flow resolution.

    backward: (h, w, 2) float32, pixel p of this frame came from p + backward[p] in the previous.
    valid: (h, w) bool, forward and backward flows agree there (and it stays inside the frame).
    confidence: the share of valid pixels.
    residual: mean |this frame - the previous frame warped along the flow|, grey levels / 255.
    scene_cut: the previous frame does not explain this one (residual or confidence past bounds).
    """

    backward: np.ndarray
    valid: np.ndarray
    confidence: float
    residual: float
    scene_cut: bool


def small_grey(frame: np.ndarray, width: int = FLOW_WIDTH) -> np.ndarray:
    """``frame`` (BGR uint8, or grey) as grey uint8 ``width`` pixels wide, aspect kept."""
    import cv2

    grey = frame if frame.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    height = max(8, round(h * width / max(w, 1)))
    return cv2.resize(grey, (int(width), int(height)), interpolation=cv2.INTER_AREA)


def _sample(
    field_: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, nearest: bool = False, border: float = 0.0
) -> np.ndarray:
    import cv2

    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(field_, map_x, map_y, mode, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


@dataclass
class MotionEstimator:
    """Flow between consecutive frames: call it once per frame, in order; None on the first.

    The forward (previous -> this) and backward (this -> previous) flows are both computed; a
    pixel whose backward flow, followed by the forward flow from where it lands, does not come
    back within ``consistency_px`` (plus 5 % of the motion) is occluded or unreliable.
    """

    width: int = FLOW_WIDTH
    consistency_px: float = CONSISTENCY_PX
    scene_cut_residual: float = SCENE_CUT_RESIDUAL
    scene_cut_confidence: float = SCENE_CUT_CONFIDENCE
    _previous: np.ndarray | None = field(default=None, repr=False)
    _dis: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        import cv2

        if int(self.width) < 16:
            raise DiffCutError(f"the flow width must be at least 16 pixels, got {self.width}")
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    def reset(self) -> None:
        self._previous = None

    def __call__(self, frame: np.ndarray) -> Motion | None:
        current = small_grey(frame, self.width)
        previous, self._previous = self._previous, current
        if previous is None or previous.shape != current.shape:
            return None
        return self.between(previous, current)

    def between(self, previous: np.ndarray, current: np.ndarray) -> Motion:
        """The :class:`Motion` from grey ``previous`` to grey ``current`` (same size)."""
        backward = self._dis.calc(current, previous, None)
        forward = self._dis.calc(previous, current, None)
        h, w = current.shape
        xs, ys = _grid(h, w)
        map_x, map_y = xs + backward[..., 0], ys + backward[..., 1]
        inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
        back_again = _sample(forward, map_x, map_y)
        error = np.linalg.norm(backward + back_again, axis=-1)
        valid = inside & (error <= self.consistency_px + 0.05 * np.linalg.norm(backward, axis=-1))
        warped = _sample(previous.astype(np.float32), map_x, map_y)
        residual = float(np.abs(current.astype(np.float32) - warped)[inside].mean() / 255.0) if inside.any() else 1.0
        confidence = float(valid.mean())
        cut = residual > self.scene_cut_residual or confidence < self.scene_cut_confidence
        return Motion(backward, valid, confidence, residual, cut)


# ------------------------------------------------------------------------- labels
def warp_labels(labels: np.ndarray, motion: Motion) -> np.ndarray:
    """(mh, mw) int32 labels of the previous frame -> this frame's, -1 where no label can be carried.

    The mask covers the whole frame at its own resolution: the flow is resized to it and its
    displacements rescaled per axis.
    """
    import cv2

    mh, mw = labels.shape
    fh, fw = motion.valid.shape
    flow = cv2.resize(motion.backward, (mw, mh), interpolation=cv2.INTER_LINEAR)
    xs, ys = _grid(mh, mw)
    map_x = xs + flow[..., 0] * (mw / fw)
    map_y = ys + flow[..., 1] * (mh / fh)
    carried = _sample(labels.astype(np.float32), map_x, map_y, nearest=True, border=-1.0)
    valid = cv2.resize(motion.valid.astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = np.rint(carried).astype(np.int32)
    out[~valid] = -1
    return out


def refine_labels(
    image: np.ndarray,
    labels: np.ndarray,
    iterations: int = REFINE_ITERATIONS,
    dilations: Sequence[int] = REFINE_DILATIONS,
) -> np.ndarray:
    """Carried ``labels`` (mh, mw; -1 = none) snapped to ``image`` (mh, mw, 3 RGB float in [0, 1]).

    PAMR's neighbour affinities (the keyframe's, :func:`~diffcut_edge.runtime.pamr.pamr_weights`), used
    as votes: each round, every pixel takes the label its neighbours carry the most affinity for
    (unlabelled neighbours do not vote; a pixel no neighbour votes for keeps its label, -1 included,
    which the caller fills). This is PAMR's propagation with the soft maps replaced by their argmax
    after each round, so the cost is the same for 5 segments or 255 (soft maps cost K times more).
    """
    from diffcut_edge.runtime import pamr

    if iterations <= 0:
        return labels
    h, w = labels.shape
    dil = tuple(int(d) for d in dilations)
    # One strip on the calling thread: at mask size (128²) a thread pool costs more than it saves.
    weights = pamr.pamr_weights(image, dil, rows=h, workers=1)  # (n, h, w)
    offsets = [(dy * d, dx * d) for d in dil for dy, dx in pamr.NEIGHBOURS]
    pad = max(dil)
    current = labels
    for _ in range(int(iterations)):
        padded = np.pad(current, pad, mode="edge")
        neighbours = np.stack([padded[pad + oy : pad + oy + h, pad + ox : pad + ox + w] for oy, ox in offsets])
        votes = np.where(neighbours >= 0, weights, 0.0).astype(np.float32)
        score = np.zeros_like(votes)
        for j in range(len(offsets)):  # the affinity behind each neighbour's label
            score += votes[j] * (neighbours == neighbours[j])
        best = score.argmax(axis=0)
        chosen = np.take_along_axis(neighbours, best[None], axis=0)[0]
        current = np.where(score.max(axis=0) > 0, chosen, current).astype(np.int32)
    return current


def fill_unlabelled(labels: np.ndarray) -> np.ndarray:
    """Every -1 takes the label of the nearest labelled pixel (what PAMR could not reach)."""
    import cv2

    missing = labels < 0
    if not missing.any():
        return labels
    if missing.all():
        return np.zeros_like(labels)
    _, nearest = cv2.distanceTransformWithLabels(
        missing.astype(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    # distanceTransformWithLabels numbers the zero (labelled) pixels; map each number to its label.
    index = np.zeros(int(nearest.max()) + 1, np.int32)
    index[nearest[~missing]] = labels[~missing]
    return index[nearest]
