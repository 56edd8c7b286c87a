"""Synthetic video clips with known motion and a ground-truth class map per frame.

A scene is a canvas of flat coloured shapes over a background, with a faint texture fixed to the
canvas (so optical flow has something to follow inside flat regions, as in real footage). Each
clip moves a view over it in a known way:

- ``pan``: the view slides across a wider canvas;
- ``zoom``: the view shrinks towards the centre (the scene grows);
- ``cross``: two shapes move across each other (one occludes the other) over a still background;
- ``cut``: one scene, then at the middle frame another one (a scene cut);
- ``photo-pan`` / ``photo-zoom``: the same motions over a real photo (scikit-image's coffee,
  astronaut, chelsea, rocket by seed), without ground truth (``classes`` is None).

``make_clip(kind, frames, size, seed)`` returns BGR uint8 frames and int32 class maps (0 =
background). Seeded: the same arguments give the same clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("pan", "zoom", "cross", "cut", "photo-pan", "photo-zoom")
PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")
SHAPES = 4


@dataclass
class Clip:
    kind: str
    frames: list[np.ndarray]  # BGR uint8
    classes: list[np.ndarray] | None  # (H, W) int32 ground truth (None for photos)
    n_classes: int


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` BGR colours far apart (hues spread around the circle, varied value)."""
    hues = (rng.permutation(n) * 180 // n + rng.integers(0, 180 // n)).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), rng.integers(140, 250, n).astype(np.uint8)], -1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0].astype(np.float32)


def _texture(rng: np.random.Generator, shape: tuple[int, int], amplitude: float = 12.0) -> np.ndarray:
    noise = rng.standard_normal((shape[0] // 8 + 2, shape[1] // 8 + 2)).astype(np.float32)
    smooth = cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return amplitude * smooth / max(float(np.abs(smooth).max()), 1e-6)


def _scene(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(canvas BGR float32, classes int32) of ``SHAPES`` shapes on a background."""
    h, w = shape
    colours = _palette(rng, SHAPES + 1)
    classes = np.zeros(shape, np.int32)
    for k in range(1, SHAPES + 1):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.15, 0.85) * w
        size = rng.uniform(0.12, 0.2) * min(h, w)
        mask = np.zeros(shape, np.uint8)
        if k % 2:
            cv2.circle(mask, (int(cx), int(cy)), int(size), 1, -1)
        else:
            cv2.rectangle(mask, (int(cx - size), int(cy - 0.7 * size)), (int(cx + size), int(cy + 0.7 * size)), 1, -1)
        classes[mask > 0] = k
    canvas = colours[classes] + _texture(rng, shape)[..., None]
    return canvas, classes


def _view(canvas: np.ndarray, classes: np.ndarray, matrix: np.ndarray, size: tuple[int, int]):
    w, h = size
    frame = cv2.warpAffine(canvas, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    truth = cv2.warpAffine(classes, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    return np.clip(frame, 0, 255).astype(np.uint8), truth.astype(np.int32)


def make_clip(
    kind: str, frames: int = 24, size: tuple[int, int] = (320, 240), seed: int = 0, speed: float = 3.0
) -> Clip:
    """A clip of ``frames`` frames of ``size`` (width, height); ``speed`` pixels a frame for pan and cross."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    w, h = size
    out_frames, out_classes = [], []
    if kind.startswith("photo-"):
        from skimage import data

        photo = getattr(data, PHOTOS[seed % len(PHOTOS)])()[..., :3][..., ::-1].astype(np.float32)
        wide = int(speed * frames) + w + 1 if kind == "photo-pan" else w
        canvas = cv2.resize(photo, (wide, h), interpolation=cv2.INTER_AREA)
        classes = np.zeros((h, wide), np.int32)
        for t in range(frames):
            m = (
                np.float32([[1, 0, -speed * t], [0, 1, 0]])
                if kind == "photo-pan"
                else cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.0 + 0.01 * t).astype(np.float32)
            )
            out_frames.append(_view(canvas, classes, m, size)[0])
        return Clip(kind, out_frames, None, 0)
    if kind == "pan":
        canvas, classes = _scene(rng, (h, w + int(speed * frames) + 1))
        for t in range(frames):
            m = np.float32([[1, 0, -speed * t], [0, 1, 0]])
            f, c = _view(canvas, classes, m, size)
            out_frames.append(f)
            out_classes.append(c)
    elif kind == "zoom":
        canvas, classes = _scene(rng, (h, w))
        for t in range(frames):
            m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, 1.0 + 0.01 * t).astype(np.float32)
            f, c = _view(canvas, classes, m, size)
            out_frames.append(f)
            out_classes.append(c)
    elif kind == "cross":
        colours = _palette(rng, 3)
        background = colours[0] + _texture(rng, (h, w))[..., None]
        r = int(0.18 * min(h, w))
        for t in range(frames):
            frame = background.copy()
            truth = np.zeros((h, w), np.int32)
            for k, (x0, direction) in enumerate(((r + 4, 1), (w - r - 4, -1)), start=1):
                cx = int(x0 + direction * speed * t)
                mask = np.zeros((h, w), np.uint8)
                cv2.circle(mask, (cx, h // 2 + (k - 1) * r // 3), r, 1, -1)
                frame[mask > 0] = colours[k]
                truth[mask > 0] = k
            out_frames.append(np.clip(frame, 0, 255).astype(np.uint8))
            out_classes.append(truth)
        return Clip(kind, out_frames, out_classes, 3)
    else:  # cut
        first, second = _scene(rng, (h, w)), _scene(rng, (h, w))
        for t in range(frames):
            canvas, classes = first if t < frames // 2 else second
            m = np.float32([[1, 0, -1.0 * (t % (frames // 2))], [0, 1, 0]])
            f, c = _view(canvas, classes, m, size)
            out_frames.append(f)
            out_classes.append(c)
    return Clip(kind, out_frames, out_classes, SHAPES + 1)
