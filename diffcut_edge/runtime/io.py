"""Robust image input and atomic output for the applications (``segment``, ``video``).

Reading: every image comes back as BGR uint8 (H, W, 3), whatever it was on disk
(grayscale, RGBA, 16-bit); unreadable, zero-byte and truncated files raise a
:class:`DiffCutError` naming the file, so a batch can warn and go on.

Writing: every output goes to a temporary name in the same folder and is renamed
over the target with :func:`os.replace`, so a crash or Ctrl-C never leaves a
half-written file where a good one was. Label maps are 16-bit PNGs (ids up to 65535).
"""

from __future__ import annotations

import contextlib
import glob
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from diffcut_edge.errors import DiffCutError

# Extensions OpenCV decodes in every build we ship (opencv-python-headless).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
# How far from the end a JPEG's end-of-image marker may sit (some cameras append trailers).
_JPEG_EOI_SEARCH = 4096


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension we decode."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _has_glob_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def collect_image_paths(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Expand files, folders (not recursive) and glob patterns into image paths.

    Returns ``(images, skipped)``: ``skipped`` are files found in folders or globs that do
    not look like images (the caller warns about them). A path named explicitly is kept
    whatever its extension, so the reader can say precisely why it fails. A missing path
    or a pattern that matches nothing raises :class:`DiffCutError`.
    """
    images: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            candidates = sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            images.append(path)
            continue
        elif _has_glob_magic(text):
            candidates = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not candidates:
                raise DiffCutError(f"the pattern {text!r} matches no file")
        else:
            raise DiffCutError(f"{text} does not exist (expected an image, a folder or a glob pattern)")
        for p in candidates:
            (images if is_image_path(p) else skipped).append(p)
    # The same file named twice (a folder and a glob) is segmented once.
    unique: dict[Path, Path] = {}
    for p in images:
        unique.setdefault(p.resolve(), p)
    return list(unique.values()), skipped


def _looks_truncated(head: bytes, tail: bytes) -> bool:
    """Cheap end-marker checks on the first and last bytes: decoders silently fill a cut JPEG with grey."""
    if head[:2] == b"\xff\xd8":  # JPEG: needs an end-of-image marker near the end
        return b"\xff\xd9" not in tail
    if head[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: the last chunk is IEND
        return b"IEND" not in tail[-16:]
    return False


def _head_and_tail(path: Path) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _JPEG_EOI_SEARCH))
        return head, f.read()


def to_bgr_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """Convert a decoded image (gray, BGR, BGRA; uint8, uint16 or float) to BGR uint8 (H, W, 3).

    Returns the input itself when it already is BGR uint8 (no copy).
    """
    import cv2

    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DiffCutError(f"{source}: unsupported image shape {image.shape} "
                           f"(expected H×W gray, H×W×3 BGR or H×W×4 BGRA)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)  # keep the 8 most significant bits
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DiffCutError(f"{source}: unsupported pixel type {image.dtype} (expected 8/16-bit or float)")
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)  # alpha dropped: DiffCut sees colour only
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as BGR uint8 (H, W, 3).

    Raises :class:`DiffCutError` for a missing, empty, truncated or undecodable file.
    The file is decoded straight from disk (no second in-memory copy of a big file).
    EXIF orientation is ignored (IMREAD_UNCHANGED), like torchvision's reader, which the
    evaluation protocol relies on (runtime/datasets.py reads with this function).
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DiffCutError(f"{path}: no such file")
    try:
        if path.stat().st_size == 0:
            raise DiffCutError(f"{path}: the file is empty (0 bytes)")
        head, tail = _head_and_tail(path)
    except OSError as e:
        raise DiffCutError(f"{path}: cannot read ({e.strerror or e})") from e
    if _looks_truncated(head, tail):
        raise DiffCutError(f"{path}: the file is truncated (no end marker); re-copy or re-save it")
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if decoded is None and not str(path).isascii():
        # OpenCV's file API cannot open some non-ASCII paths (Windows): decode from memory.
        decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise DiffCutError(f"{path}: not an image OpenCV can decode (corrupt or unsupported format)")
    return to_bgr_uint8(decoded, str(path))


# ------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` if the block succeeds.

    The temporary name keeps the extension (OpenCV picks the format from it). On any
    exception, Ctrl-C included, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_image(path: str | os.PathLike, image: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Encode ``image`` by the extension of ``path`` and write it atomically."""
    import cv2

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", image, list(params))
    if not ok:
        raise DiffCutError(f"{path}: OpenCV could not encode a {image.dtype} {image.shape} image as {path.suffix}")
    with atomic_path(path) as tmp:
        buf.tofile(tmp)
    return path


def write_labels_png(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write an (H, W) integer label map as a 16-bit single-channel PNG (values = segment ids)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DiffCutError(f"labels must be an (H, W) integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise DiffCutError(f"label ids {labels.min()}..{labels.max()} do not fit a 16-bit PNG (0..65535)")
    if Path(path).suffix.lower() != ".png":
        raise DiffCutError(f"{path}: label maps are written as .png (lossless 16-bit)")
    return write_image(path, labels.astype(np.uint16, copy=False))


def read_labels_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label map written by :func:`write_labels_png` as (H, W) int32."""
    import cv2

    data = np.fromfile(Path(path), np.uint8)
    labels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if labels is None or labels.ndim != 2:
        raise DiffCutError(f"{path}: not a single-channel label PNG")
    return labels.astype(np.int32)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to a compressed ``.npz`` atomically (cupy arrays are moved to the host)."""
    path = Path(path)
    host = {k: (v.get() if hasattr(v, "get") and not isinstance(v, np.ndarray) else np.asarray(v))
            for k, v in arrays.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a str name
            np.savez_compressed(f, **host)
    return path

