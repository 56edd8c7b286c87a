"""Segmentation datasets in their standard folder layouts, and the paper's input protocol.

numpy, OpenCV and Pillow only (no torch): the evaluation loop of ``diffcut-edge eval``
runs on a device that only has the runtime installed.

Each dataset is a :class:`DatasetSpec` (how raw label values map to the classes the
protocol scores, and whether unmatched segments merge into a background class) plus a
function that lists ``(image, label)`` file pairs under a root folder. The protocol
transforms reproduce the official ``dataloader/iterator.py`` (torchvision) with cv2:

* square centre crop of side ``min(H, W) - 1``, offset ``int(round((H - c) / 2))``
  (torchvision ``CenterCrop``; Python's ``round`` is round-half-to-even);
* image: bilinear resize to R (align_corners=False, no antialias);
* labels: ``nearest-exact`` resize to R, then PyTorch's default ``nearest`` to the mask
  size (128x128): the two-step is reproduced exactly because index selection, unlike
  interpolation, composes into one gather.

Label files are read as class *indices* with Pillow: an indexed (palette) PNG such as VOC's
SegmentationClass gives its palette indices, as torchvision and mmsegmentation read them
(OpenCV would expand it to colours). Images are read raw, without applying EXIF
orientation, as the official torchvision loader does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.xp import nearest_taps

DATASETS = ("voc", "context", "coco-object", "coco-stuff", "cityscapes", "ade20k")
# ``--file-list curated``: the image lists the official evaluation loads (eval/data/README.md).
CURATED = "curated"
CURATED_LISTS = {
    name: Path(__file__).parent / "data" / "coco_val2017_curated.txt" for name in ("coco-object", "coco-stuff")
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE = -1  # a pixel that no class scores


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset's raw label values become the classes the protocol scores.

    ``lut[v]`` is the class of raw value ``v`` (``IGNORE`` = not scored). When
    ``background`` is set (VOC, Context, COCO-Object), predicted segments left unmatched
    by the per-image Hungarian matching on the foreground classes merge into one
    segment, scored against that class.
    """

    name: str
    num_classes: int
    lut: np.ndarray = field(repr=False)  # (65536,) int32, raw value -> class or -1
    background: int | None = None
    class_names: tuple[str, ...] = ()
    note: str = ""  # what is verified / where it departs from the official

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values (any int array) -> class indices int32, -1 = ignored."""
        raw = np.asarray(raw)
        if raw.dtype.kind not in "iu":
            raise DiffCutError(f"{self.name}: label maps must hold integers, got dtype {raw.dtype}")
        if raw.size and (raw.min() < 0 or raw.max() >= self.lut.size):
            raise DiffCutError(
                f"{self.name}: label values must lie in [0, {self.lut.size}), got [{raw.min()}, {raw.max()}]"
            )
        return self.lut[raw]


def _lut(mapping: dict[int, int], size: int = 1 << 16) -> np.ndarray:
    lut = np.full(size, IGNORE, dtype=np.int32)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# COCO ids 1..90 of the 80 annotated thing classes (11 ids have no segmentation), in order.
COCO_THING_IDS = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
# The 27 coarse classes of COCO-Stuff (PiCIE / STEGO): the 12 COCO thing supercategories and
# the 15 stuff supercategories of the COCO-Stuff label hierarchy, as COCO-Stuff ids (1-based).
COCO_STUFF_COARSE: dict[str, tuple[int, ...]] = {
    "electronic": (72, 73, 74, 75, 76, 77),
    "appliance": (78, 79, 80, 81, 82),
    "food-things": tuple(range(52, 62)),
    "furniture-things": (62, 63, 64, 65, 67, 70),
    "indoor": (84, 85, 86, 87, 88, 89, 90),
    "kitchen": (44, 46, 47, 48, 49, 50, 51),
    "accessory": (27, 28, 31, 32, 33),
    "animal": tuple(range(16, 26)),
    "outdoor": (10, 11, 13, 14, 15),
    "person": (1,),
    "sports": tuple(range(34, 44)),
    "vehicle": tuple(range(2, 10)),
    "ceiling": (102, 103),
    "floor": (101, 114, 115, 116, 117, 118),
    "food-stuff": (121, 122, 153, 170),
    "furniture-stuff": (98, 107, 108, 110, 112, 123, 130, 133, 156, 161, 165),
    "raw-material": (100, 132, 139, 143),
    "textile": (92, 93, 104, 105, 109, 131, 137, 141, 152, 167, 168),
    "wall": (171, 172, 173, 174, 175, 176, 177),
    "window": (180, 181),
    "building": (95, 96, 128, 151, 158, 166),
    "ground": (111, 125, 126, 136, 140, 144, 145, 147, 149, 154, 159),
    "plant": (94, 97, 119, 124, 129, 134, 142, 163, 169),
    "sky": (106, 157),
    "solid": (127, 135, 150, 160, 162, 182),
    "structural": (99, 113, 138, 146, 164),
    "water": (120, 148, 155, 178, 179),
}
CITYSCAPES_27 = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)


def _voc_spec(ignore_void: bool) -> DatasetSpec:
    # Raw VOC2012 palette indices: 0 background, 1..20 classes, 255 void (object borders).
    # The official run reads pascal_voc_d2/annotations_pascal20 (0 and 255 both -> 255) and
    # maps 255 -> -1 -> background: void borders are scored as background. Same here by default.
    bg = 20
    mapping = {k: k - 1 for k in range(1, 21)} | {0: bg, 255: IGNORE if ignore_void else bg}
    return DatasetSpec(
        "voc",
        21,
        _lut(mapping),
        background=bg,
        class_names=VOC_CLASSES + ("background",),
        note="void (255) scored as background like the official run"
        + ("; here ignored (ignore_void=True)" if ignore_void else ""),
    )


def _voc_d2_spec() -> DatasetSpec:
    # detectron2-prepared annotations_pascal20: 0..19 classes, 255 background *and* void
    # (they cannot be told apart, so ignore_void has no effect on this layout).
    return DatasetSpec(
        "voc",
        21,
        _lut({k: k for k in range(20)} | {255: 20}),
        background=20,
        class_names=VOC_CLASSES + ("background",),
        note="pascal_voc_d2 layout: background and void share 255 (scored as background)",
    )


def _context_spec() -> DatasetSpec:
    # pascal_ctx_d2/annotations_ctx59: 0..58 the 59 classes, 255 background -> class 59.
    return DatasetSpec(
        "context",
        60,
        _lut({k: k for k in range(59)} | {255: 59}),
        background=59,
        class_names=tuple(f"ctx{k}" for k in range(59)) + ("background",),
    )


def _coco_object_spec() -> DatasetSpec:
    # stuffthingmaps value v = COCO-Stuff id - 1. Things -> 0..79 in id order; stuff and
    # unlabeled (255) -> background 80, as the official (keys >= 91 -> -1 -> background).
    mapping = {v: 80 for v in range(256)}
    mapping.update({cid - 1: k for k, cid in enumerate(COCO_THING_IDS)})
    return DatasetSpec(
        "coco-object",
        81,
        _lut(mapping),
        background=80,
        class_names=tuple(f"coco{cid}" for cid in COCO_THING_IDS) + ("background",),
        note="mapping derived from the public COCO ids; equal to the official pickle on all its keys "
        "(compared once, docs/eval.md)",
    )


def _coco_stuff_spec() -> DatasetSpec:
    mapping = {cid - 1: k for k, ids in enumerate(COCO_STUFF_COARSE.values()) for cid in ids}
    return DatasetSpec(
        "coco-stuff",
        27,
        _lut(mapping),
        class_names=tuple(COCO_STUFF_COARSE),
        note="27 coarse classes derived from the public COCO-Stuff hierarchy, not read "
        "from the official pickle; equal to it on every value a stuffthingmap holds (compared "
        "once, docs/eval.md)",
    )


def _cityscapes_spec() -> DatasetSpec:
    # gtFine labelIds 7..33 -> 0..26 (PiCIE / STEGO: id - 7); 0..6 (void, ego vehicle, ...) ignored.
    return DatasetSpec("cityscapes", 27, _lut({i: i - 7 for i in range(7, 34)}), class_names=CITYSCAPES_27)


def _ade20k_spec() -> DatasetSpec:
    # ADEChallengeData2016: 0 = "other" (ignored), 1..150 -> 0..149.
    return DatasetSpec(
        "ade20k",
        150,
        _lut({i: i - 1 for i in range(1, 151)}),
        class_names=tuple(f"ade{k}" for k in range(1, 151)),
        note="0 ignored and 150 classes scored; the official code scores raw 0..149 (0 as a class, 150 dropped)",
    )


def get_spec(name: str, *, ignore_void: bool = False, layout: str | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset by name (see :data:`DATASETS`)."""
    if name == "voc":
        return _voc_d2_spec() if layout == "pascal_voc_d2" else _voc_spec(ignore_void)
    builders = {
        "context": _context_spec,
        "coco-object": _coco_object_spec,
        "coco-stuff": _coco_stuff_spec,
        "cityscapes": _cityscapes_spec,
        "ade20k": _ade20k_spec,
    }
    if name not in builders:
        raise DiffCutError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return builders[name]()


def spec_from_file(path: str | os.PathLike, name: str = "custom") -> DatasetSpec:
    """A user-supplied label mapping: JSON ``{"num_classes": N, "background": k|null,
    "map": {"raw": class, ...}}``; raw values not listed are ignored (-1)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        mapping = {int(k): int(v) for k, v in data["map"].items()}
        num_classes = int(data["num_classes"])
        background = data.get("background")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DiffCutError(
            f"label map {path}: expected JSON {{'num_classes': N, 'background': k or null, "
            f"'map': {{'raw': class}}}} ({e})"
        ) from e
    bad = [v for v in mapping.values() if not -1 <= v < num_classes]
    if bad or (background is not None and not 0 <= int(background) < num_classes):
        raise DiffCutError(f"label map {path}: classes must lie in [-1, {num_classes}), got {bad or background}")
    return DatasetSpec(
        name,
        num_classes,
        _lut(mapping),
        background=None if background is None else int(background),
        note=f"user label map {path}",
    )


# --------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class Sample:
    """One evaluation image and its label map."""

    name: str
    image: Path
    label: Path


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _pair_by_stem(
    image_dir: Path, label_dir: Path, names: list[str] | None = None, label_suffix: str = ".png"
) -> list[Sample]:
    """Pairs ``image_dir/NAME.*`` with ``label_dir/NAME<label_suffix>`` (by name, not by sort order)."""
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DiffCutError(f"expected the folder {folder}; see docs/eval.md for the dataset layouts")
    images = _images_by_stem(image_dir)
    for name in names or []:
        if name not in images:
            raise DiffCutError(f"{image_dir} has no image {name}.jpg/.png (listed in the image list)")
    samples = []
    for name in sorted(images) if names is None else names:
        label = label_dir / f"{name}{label_suffix}"
        if not label.is_file():
            raise DiffCutError(f"label {label} is missing for {images[name]}")
        samples.append(Sample(name, images[name], label))
    return samples


def _read_names(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise DiffCutError(f"cannot read the image list {path} ({e})") from e


def _first_dir(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise DiffCutError(
        "none of the folders "
        + ", ".join(str(c) for c in candidates)
        + " exists; see docs/eval.md for the dataset layouts"
    )


def detect_layout(name: str, root: Path) -> str:
    """The folder layout found under ``root`` (VOC has two)."""
    if name == "voc" and (root / "annotations_pascal20").is_dir():
        return "pascal_voc_d2"
    return name


def list_samples(
    name: str, root: str | os.PathLike, *, file_list: str | os.PathLike | None = None, limit: int | None = None
) -> list[Sample]:
    """The evaluation pairs of a dataset under ``root``, in a deterministic order.

    ``file_list``: a text file of image names (one per line, no suffix) restricting the
    set, or ``"curated"``: the curated COCO subset the paper scores (2175 val2017 images,
    shipped); the VOC default is ``ImageSets/Segmentation/val.txt``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DiffCutError(f"dataset root {root} does not exist")
    if file_list is not None and str(file_list) == CURATED:
        if name not in CURATED_LISTS:
            raise DiffCutError(
                f"--file-list curated is the paper's COCO subset ({', '.join(CURATED_LISTS)}); {name} has none"
            )
        file_list = CURATED_LISTS[name]
    names = _read_names(Path(file_list)) if file_list is not None else None
    layout = detect_layout(name, root)
    if layout == "pascal_voc_d2":
        samples = _pair_by_stem(root / "images" / "validation", root / "annotations_pascal20" / "validation", names)
    elif name == "voc":
        if names is None:
            names = _read_names(root / "ImageSets" / "Segmentation" / "val.txt")
        samples = _pair_by_stem(root / "JPEGImages", root / "SegmentationClass", names)
    elif name == "context":
        samples = _pair_by_stem(root / "images" / "validation", root / "annotations_ctx59" / "validation", names)
    elif name in ("coco-object", "coco-stuff"):
        image_dir = _first_dir(root / "images" / "val2017", root / "val2017")
        label_dir = _first_dir(root / "annotations" / "val2017", root / "stuffthingmaps_trainval2017" / "val2017")
        samples = _pair_by_stem(image_dir, label_dir, names)
    elif name == "cityscapes":
        samples = _cityscapes_samples(root, names)
    elif name == "ade20k":
        samples = _pair_by_stem(root / "images" / "validation", root / "annotations" / "validation", names)
    else:
        raise DiffCutError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not samples:
        raise DiffCutError(f"no image/label pairs found for {name} under {root}; see docs/eval.md")
    return samples[:limit] if limit is not None else samples


def _cityscapes_samples(root: Path, names: list[str] | None) -> list[Sample]:
    image_root = root / "leftImg8bit" / "val"
    if not image_root.is_dir():
        raise DiffCutError(f"expected the folder {image_root}; see docs/eval.md for the dataset layouts")
    samples = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        stem = image.name.removesuffix("_leftImg8bit.png")
        if names is not None and stem not in names:
            continue
        label = root / "gtFine" / "val" / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise DiffCutError(f"label {label} is missing for {image}")
        samples.append(Sample(stem, image, label))
    return samples


# ----------------------------------------------------------------------------- files
def read_sample_image(path: str | os.PathLike) -> np.ndarray:
    """A dataset image as BGR uint8, raw pixels (no EXIF rotation: the official loader's view)."""
    from diffcut_edge.runtime.images import read_image

    return read_image(path, apply_orientation=False)


# Pillow modes that hold one channel of integer labels (P: palette indices).
_LABEL_MODES = {"P", "L", "I;16", "I;16B", "I;16L", "I"}


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A label map as raw class indices (H, W): palette indices of an indexed PNG, else the
    values of a one-channel image (8 or 16 bit)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            raw = np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DiffCutError(f"cannot read the label map {path} ({e})") from e
    if mode not in _LABEL_MODES or raw.ndim != 2:
        raise DiffCutError(
            f"label map {path} is a {mode} image; expected one channel of class indices (or an indexed PNG)"
        )
    if raw.dtype.kind not in "iu":
        raise DiffCutError(f"label map {path} holds {raw.dtype} values; expected integer class indices")
    return raw


# ------------------------------------------------------------------------- protocol
def center_crop_box(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the protocol's square crop of side ``min(H, W) - 1``.

    torchvision ``CenterCrop``: offset ``int(round((size - crop) / 2))`` with Python's
    half-to-even rounding, so a 0.5 offset on the short side rounds to 0.
    """
    side = min(height, width) - 1
    if side < 1:
        raise DiffCutError(f"image of {height}x{width} is too small for the evaluation crop")
    return int(round((height - side) / 2.0)), int(round((width - side) / 2.0)), side


def center_crop(array: np.ndarray) -> np.ndarray:
    top, left, side = center_crop_box(array.shape[0], array.shape[1])
    return array[top : top + side, left : left + side]


def protocol_image(image_bgr: np.ndarray, resolution: int) -> np.ndarray:
    """Cropped image resized bilinearly to R: (R, R, 3) RGB float32 in [0, 1].

    As the official: to float in [0, 1] first, then bilinear (align_corners=False, no
    antialias) with the runtime's PyTorch-exact resize (cv2 differs on 2x downscales).
    """
    from diffcut_edge.runtime.preprocess import resize_bilinear

    rgb = np.ascontiguousarray(center_crop(image_bgr)[..., ::-1]).astype(np.float32) / np.float32(255.0)
    return resize_bilinear(rgb, (resolution, resolution))


def protocol_labels(
    raw: np.ndarray, resolution: int, mask_size: tuple[int, int] = defaults.MASK_SIZE, *, exact_mask: bool = False
) -> np.ndarray:
    """Cropped labels at the mask size, as the official two steps: nearest-exact to R
    (torchvision Resize), then F.interpolate's default nearest to ``mask_size``
    (``exact_mask``: nearest-exact, as the open-vocabulary evaluation)."""
    cropped = center_crop(raw)
    side = cropped.shape[0]
    first = nearest_taps(side, resolution, exact=True)
    rows = first[nearest_taps(resolution, mask_size[0], exact=exact_mask)]
    cols = first[nearest_taps(resolution, mask_size[1], exact=exact_mask)]
    return cropped[np.ix_(rows, cols)]
