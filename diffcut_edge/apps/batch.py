"""Segment a list of image files into an output folder: what ``diffcut-edge segment`` does.

Per image: ``<stem>_labels.png`` (16-bit, values = segment ids), ``<stem>_overlay.jpg|png``
(with class names when the folder has a vocabulary), ``<stem>_segments.json`` (the class of each
segment) with a vocabulary, and, when asked, ``<stem>.npz``; every file written atomically.
An input that cannot be read or segmented is reported and skipped (the batch goes on); an
output that cannot be written (disk full, no permission) stops the batch, since every later
image would fail the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge import atomic
from diffcut_edge.apps.overlay import OverlayStyle, annotate, colorize_labels, result_names
from diffcut_edge.apps.pipeline import Throughput
from diffcut_edge.atomic import OutputError
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import images as image_io

OVERLAY_FORMATS = ("jpg", "png", "none")
RESULTS_NAME = "results.jsonl"  # one JSON line per input: which outputs it became, segments, timings, or the error
OUTPUT_SUFFIXES = ("_labels.png", "_labels_color.png", "_overlay.jpg", "_overlay.png", ".npz", "_segments.json")


@dataclass(frozen=True)
class OutputOptions:
    """What to write per image."""

    overlay_format: str = "jpg"  # one of OVERLAY_FORMATS ("none": no overlay)
    style: OverlayStyle = field(default_factory=lambda: OverlayStyle(tint_largest=False))
    save_npz: bool = False
    segments_json: bool = True  # <stem>_segments.json: each segment's id, area, box and mask (+ class)
    save_color: bool = False  # <stem>_labels_color.png: the label map in its overlay colours

    def __post_init__(self) -> None:
        if self.overlay_format not in OVERLAY_FORMATS:
            raise DiffCutError(f"overlay_format must be one of {OVERLAY_FORMATS}, got {self.overlay_format!r}")
        if isinstance(self.style, dict):  # plain data again (a Ray actor's arguments)
            style = {k: tuple(v) if isinstance(v, list) else v for k, v in self.style.items()}
            object.__setattr__(self, "style", OverlayStyle(**style))


@dataclass
class BatchReport:
    """How a batch went: per-stage means over the segmented images, and the failures."""

    images: int
    failed: list[tuple[Path, str]] = field(default_factory=list)
    stats: Throughput = field(default_factory=Throughput)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return self.images - len(self.failed)


def output_stems(paths: Sequence[Path]) -> list[str]:
    """One output stem per input, never two alike: a repeated stem (a/x.jpg, b/x.png) gets the first
    numeric suffix that no other input's stem or earlier output has (x.jpg, x.png, x_2.png -> x, x_3,
    x_2), compared without case, as a case-insensitive file system would."""
    reserved = {p.stem.casefold() for p in paths}
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem = path.stem
        if stem.casefold() in taken:
            n = 2
            while f"{path.stem}_{n}".casefold() in taken | reserved:
                n += 1
            stem = f"{path.stem}_{n}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def is_output_name(name: str) -> bool:
    """Whether a file name is one this module writes (so a re-run does not segment its outputs)."""
    return name.endswith(OUTPUT_SUFFIXES)


def drop_own_outputs(images: list[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """Split ``images`` into (inputs, our own outputs found in ``out`` by an earlier run)."""
    out = out.resolve()
    ours = [p for p in images if p.parent.resolve() == out and is_output_name(p.name)]
    return [p for p in images if p not in ours], ours


def collect_inputs(inputs: Sequence[str], out: Path) -> tuple[list[Path], list[Path]]:
    """The images ``inputs`` (files, folders, globs) name, and the files skipped: not images, or
    outputs an earlier run wrote into ``out`` (a re-run does not segment its own outputs)."""
    images, skipped = image_io.collect_image_paths(inputs)
    images, ours = drop_own_outputs(images, out)
    return images, skipped + ours


def output_paths(out: Path, stem: str, options: OutputOptions) -> dict[str, Path]:
    """The files one image gets: "labels" always, "overlay" and "npz" when asked (one source of the names)."""
    paths = {"labels": out / f"{stem}_labels.png"}
    if options.save_color:
        paths["color"] = out / f"{stem}_labels_color.png"
    if options.overlay_format != "none":
        paths["overlay"] = out / f"{stem}_overlay.{options.overlay_format}"
    if options.save_npz:
        paths["npz"] = out / f"{stem}.npz"
    if options.segments_json:
        paths["segments"] = out / f"{stem}_segments.json"
    return paths


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean (H, W) mask: ``{"size": [H, W], "counts": [...]}``, run lengths
    in column-major order starting with a run of zeros (pycocotools' ``frPyObjects`` reads it)."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _segment_entries(labels: np.ndarray) -> list[dict[str, Any]]:
    """``id``, ``area``, ``bbox`` of every id of a host label map (COCO-style, exclusive box ends)."""
    from diffcut_edge.runtime.labeling import segment_stats

    ids, areas, boxes = segment_stats(labels)
    return [{"id": int(i), "area": int(a), "bbox": [int(v) for v in b]} for i, a, b in zip(ids, areas, boxes)]


def _add_masks(entries: list[dict[str, Any]], labels: np.ndarray) -> list[dict[str, Any]]:
    """Each entry's mask as ``rle`` (:func:`mask_rle`), in place; returns the entries."""
    for entry in entries:
        entry["rle"] = mask_rle(labels == entry["id"])
    return entries


def segments_document(result: Any, *, masks: bool = True) -> dict[str, Any]:
    """``<stem>_segments.json``: ``{"vocabulary", "num_classes", "segments": [...]}``, one entry per id of the
    label PNG, COCO-style: ``id``, ``area``, ``bbox`` (x0, y0, x1, y1, exclusive ends) and, with ``masks``,
    ``rle`` (:func:`mask_rle`); with a vocabulary (export-vocab or --classes) also ``class_index``,
    ``class_name``, ``score``, ``pooling``. Without one, ``vocabulary`` is null and ``num_classes`` 0."""
    labels = np.asarray(result.labels)
    entries = [s.to_dict() for s in result.segments] if result.segments is not None else _segment_entries(labels)
    if masks:
        _add_masks(entries, labels)
    return {"vocabulary": result.vocabulary, "num_classes": len(result.class_names or ()), "segments": entries}


def frame_document(
    labels: np.ndarray, names: Sequence[Any] = (), *, frame: int, status: dict | None = None, masks: bool = True
) -> dict[str, Any]:
    """One video frame's segments, as :func:`segments_document` writes an image's: ``id`` is the id in
    the frame's label PNG (the track id when tracking), ``area``, ``bbox``, ``rle``; named segments also
    ``class_name`` and ``score``. ``status``: what the labels are (keyframe or carried, their age)."""
    named = {int(n.id): n for n in names}
    entries = _segment_entries(labels)
    for entry in entries:
        if entry["id"] in named:
            entry.update(class_name=named[entry["id"]].name, score=named[entry["id"]].score)
    if masks:
        _add_masks(entries, labels)
    return {"frame": int(frame), "labels": dict(status or {}), "segments": entries}


@dataclass
class FrameSaver:
    """Per-frame outputs of ``video`` / ``webcam`` (``--save-frames DIR``): ``frame_000012_labels.png``
    (16-bit, the ids of the overlay: track ids when tracking) and ``frame_000012_segments.json``
    (:func:`frame_document`), written atomically as each frame is shown."""

    folder: Path
    saved: int = 0

    def __post_init__(self) -> None:
        self.folder = atomic.check_writable_dir(Path(self.folder), "--save-frames")

    def save(self, index: int, labels: np.ndarray, names: Sequence[Any] = (), status: dict | None = None) -> None:
        if self.saved == 0:
            atomic.make_dirs(self.folder)
        stem = self.folder / f"frame_{int(index):06d}"
        image_io.write_labels_png(f"{stem}_labels.png", labels)
        document = frame_document(labels, names, frame=index, status=status)
        atomic.write_text(Path(f"{stem}_segments.json"), json.dumps(document, ensure_ascii=False) + "\n")
        self.saved += 1


def write_outputs(out: Path, stem: str, frame: Any, result: Any, options: OutputOptions) -> list[Path]:
    """Write one image's outputs (:func:`output_paths`); returns the paths written."""
    paths = output_paths(out, stem, options)
    written = [image_io.write_labels_png(paths["labels"], result.labels)]
    if "color" in paths:
        written.append(image_io.write_image(paths["color"], colorize_labels(result.labels)))
    if "overlay" in paths:
        overlay = annotate(frame, result.labels, result_names(result), options.style)
        written.append(image_io.write_image(paths["overlay"], overlay))
    if "segments" in paths:
        text = json.dumps(segments_document(result), indent=1, ensure_ascii=False) + "\n"
        written.append(atomic.write_text(paths["segments"], text))
    if "npz" in paths:
        written.append(
            image_io.save_npz(
                paths["npz"],
                labels=result.labels,
                mask_labels=result.mask_labels,
                coarse_labels=result.coarse_labels,
                embeddings=result.embeddings,
            )
        )
    return written


def segment_images(
    segmenter: Any,
    images: Sequence[Path],
    out: Path,
    options: OutputOptions = OutputOptions(),
    *,
    on_result: Callable[[Path, Any], None] | None = None,
    on_failure: Callable[[Path, str], None] | None = None,
    raise_unexpected: bool = False,
) -> BatchReport:
    """Segment ``images`` (paths) with ``segmenter`` and write their outputs into ``out``.

    Args:
        on_result / on_failure: called per image (a progress bar, a line per image, a warning).
        raise_unexpected: re-raise errors that are not DiffCutErrors (``--debug``).
    Raises:
        OutputError: an output could not be written; the batch stops there.
    """
    report = BatchReport(images=len(images))
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    try:
        for path, stem in zip(images, output_stems(images)):
            try:
                frame = image_io.read_image(path)
                result = segmenter(frame)
                written = write_outputs(out, stem, frame, result, options)
            except (KeyboardInterrupt, MemoryError, OutputError):
                raise
            except Exception as e:  # one bad image must not stop a batch: report, count, go on
                if raise_unexpected and not isinstance(e, DiffCutError):
                    raise
                message = str(e) if isinstance(e, DiffCutError) else f"{path}: {type(e).__name__}: {e}"
                report.failed.append((path, message))
                records.append({"image": str(path), "stem": stem, "outputs": [], "error": message})
                if on_failure is not None:
                    on_failure(path, message)
                continue
            records.append(
                {
                    "image": str(path),
                    "stem": stem,
                    "outputs": [p.name for p in written],
                    "num_segments": int(result.num_segments),
                    "timings": {k: round(float(v), 2) for k, v in result.timings.items()},
                    "error": None,
                }
            )
            report.stats.add(result.timings)
            if on_result is not None:
                on_result(path, result)
    finally:  # also when interrupted: which input became which outputs, for what was done
        if records:
            atomic.write_text(out / RESULTS_NAME, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    report.seconds = time.perf_counter() - started
    return report
