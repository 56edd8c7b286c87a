"""Tiny synthetic datasets in each supported folder layout, and fake predictors, for eval tests.

Every scene is 129 x 129: the protocol's square crop has side 128 at offset
``round(0.5) = 0``, so with R = 128 and 128 x 128 masks each label pixel maps 1:1 and
expected scores can be worked out by hand. Region 0 (red) covers the columns left of
``split``, region 1 (green) the rest; the raw label values of each region are the
dataset's own (palette PNGs for VOC and COCO, like the real files).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = 129
SPLITS = (64, 48, 80)  # split column of image i
COLORS_RGB = np.array([(220, 40, 40), (40, 200, 60), (40, 60, 220)], dtype=np.float32) / 255.0

# dataset -> (raw value of region 0, raw value of region 1, raw "ignore" value or None)
RAW_VALUES = {
    "voc": (1, 0, None),  # aeroplane, background (void 255 is background officially)
    "context": (3, 255, None),  # a ctx59 class, background
    "coco-object": (0, 148, None),  # person, road (stuff -> background)
    "coco-stuff": (0, 148, 255),  # person -> "person", road -> "ground", 255 unlabeled
    "cityscapes": (26, 7, 0),  # car, road, unlabeled
    "ade20k": (5, 1, 0),  # two classes, 0 = other (ignored)
}
IGNORE_ROWS = 16  # rows of the ignore value at the top, where the dataset has one


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC palette (bit-interleaved), (n, 3) uint8 RGB; all colours distinct."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def scene(split: int) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, region map int) of one scene."""
    regions = np.where(np.arange(SIZE)[None, :] < split, 0, 1).repeat(SIZE, axis=0)
    rgb = (COLORS_RGB[regions] * 255).round().astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1]), regions


def raw_labels(name: str, regions: np.ndarray, *, void_cols: int = 0, split: int = 0) -> np.ndarray:
    r0, r1, ignore = RAW_VALUES[name]
    raw = np.where(regions == 0, r0, r1).astype(np.uint8)
    if ignore is not None:
        raw[:IGNORE_ROWS] = ignore
    if void_cols:
        raw[:, split - void_cols : split] = 255
    return raw


def write_palette_png(path: Path, indices: np.ndarray, palette: np.ndarray) -> None:
    from PIL import Image

    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    image.save(path)


def _write_label(path: Path, raw: np.ndarray, palette: np.ndarray | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is None:
        assert cv2.imwrite(str(path), raw)
    else:
        write_palette_png(path, raw, palette)


def _write_image(path: Path, bgr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), bgr)  # PNG: lossless, so colours stay exact


def write_dataset(name: str, root: Path, n_images: int = 2, *, void_cols: int = 0) -> Path:
    """Write ``n_images`` scenes in the standard layout of ``name``; returns the --root to pass."""
    root = Path(root)
    gray_palette = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    for i in range(n_images):
        split = SPLITS[i % len(SPLITS)]
        bgr, regions = scene(split)
        raw = raw_labels(name, regions, void_cols=void_cols, split=split)
        stem = f"img{i:03d}"
        if name == "voc":
            _write_image(root / "JPEGImages" / f"{stem}.png", bgr)
            _write_label(root / "SegmentationClass" / f"{stem}.png", raw, voc_colormap())
        elif name == "context":
            _write_image(root / "images" / "validation" / f"{stem}.png", bgr)
            _write_label(root / "annotations_ctx59" / "validation" / f"{stem}.png", raw, None)
        elif name in ("coco-object", "coco-stuff"):
            _write_image(root / "val2017" / f"{stem}.png", bgr)
            _write_label(root / "annotations" / "val2017" / f"{stem}.png", raw, gray_palette)
        elif name == "cityscapes":
            city = "lindau" if i % 2 else "frankfurt"
            base = f"{city}_{i:06d}_000019"
            _write_image(root / "leftImg8bit" / "val" / city / f"{base}_leftImg8bit.png", bgr)
            _write_label(root / "gtFine" / "val" / city / f"{base}_gtFine_labelIds.png", raw, None)
        elif name == "ade20k":
            _write_image(root / "images" / "validation" / f"ADE_val_{i:08d}.png", bgr)
            _write_label(root / "annotations" / "validation" / f"ADE_val_{i:08d}.png", raw, None)
        else:
            raise ValueError(name)
    if name == "voc":
        split_file = root / "ImageSets" / "Segmentation" / "val.txt"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        split_file.write_text("".join(f"img{i:03d}\n" for i in range(n_images)))
    return root


# ---------------------------------------------------------------------- predictors
def colour_segments(image_rgb: np.ndarray) -> np.ndarray:
    """Segment ids from the image alone: nearest scene colour, ids offset by 5 (any ids work)."""
    d = ((image_rgb[:, :, None, :] - COLORS_RGB[None, None]) ** 2).sum(-1)
    return d.argmin(-1).astype(np.int64) + 5


class OraclePredictor:
    """Predicts the scene's colour regions: perfect segments, found from the image only."""

    resolution = 128
    description = {"predictor": "oracle", "backend": "fake", "model": {}}

    def __init__(self) -> None:
        self.refined = 0

    def segments(self, image_rgb: np.ndarray) -> np.ndarray:
        return colour_segments(image_rgb)

    def predict(self, batch):
        return [self.segments(item.image_rgb) for item in batch]

    def refine(self, image_small, labels):
        self.refined += 1
        return labels


class ShiftedPredictor(OraclePredictor):
    """The oracle's segments moved ``shift`` columns to the right (edge column repeated)."""

    def __init__(self, shift: int = 8) -> None:
        super().__init__()
        self.shift = shift

    def segments(self, image_rgb):
        seg = colour_segments(image_rgb)
        cols = np.maximum(np.arange(seg.shape[1]) - self.shift, 0)
        return seg[:, cols]


class FragmentPredictor(OraclePredictor):
    """The oracle, with region 1 cut into a top and a bottom segment."""

    def segments(self, image_rgb):
        seg = colour_segments(image_rgb)
        bottom = np.arange(seg.shape[0])[:, None] >= seg.shape[0] // 2
        return np.where((seg == 6) & bottom, 9, seg)
