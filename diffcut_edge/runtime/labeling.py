"""Name every segment with CLIP, on the device, without torch (the paper's open-vocabulary extension).

    pixels (1, 3, R, R), the encoder's input ─▶ clip_dense.onnx ─▶ dense (C, R/32, R/32)
    final label map (H, W) ─ nearest-exact to the grid, binarised ─▶ mean per segment (all at once)
    ─▶ clip_head.onnx ─▶ (S, D) ─▶ cosine x logit scale vs the text bank, max over synonyms,
    softmax over classes ─▶ class, score per segment

As the official ``associate_label`` (``diffcut_ref.clip_labels``) but every segment in one pass.
A segment too small to cover any cell of the 32x32 grid pools to a zero vector in the official
code; here it falls back to area-weighted pooling (the share of each cell it covers) and says so
(``pooling: "area"``). Classes typed at run time (``SegmentLabeler.from_model_dir(dir, classes)``, :meth:`SegmentLabeler.text_bank`) are
embedded with ``clip_text.onnx`` and the numpy tokenizer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import onnxruntime as ort
from diffcut_edge.runtime.manifest import Manifest, read_manifest, verify_vocabulary_files
from diffcut_edge.runtime.vocabulary import (
    TEMPLATE_SETS,
    TEXT_TEMPLATES_NAME,
    TextBank,
    Vocabulary,
    average_over_templates,
    class_logits,
    softmax,
    vocabulary_from_names,
)
from diffcut_edge.runtime.xp import from_host, get_xp, nearest_taps, to_host

DENSE_NAME = "clip_dense.onnx"
HEAD_NAME = "clip_head.onnx"
TEXT_NAME = "clip_text.onnx"
BPE_FILE = "clip_bpe.txt.gz"
BANK_NAME = "text_bank.npz"
VOCABULARY_FORMAT = 1
SYNONYMS_PER_TEXT_CALL = 32  # synonyms (x templates prompts) per clip_text.onnx call: bounded memory


@dataclass(frozen=True)
class SegmentLabel:
    """One segment of the label map: ``id`` is its value in the label PNG.

    bbox: (x0, y0, x1, y1) in pixels, x1/y1 exclusive. pooling: "mask" (the official mean over
    the segment's grid cells) or "area" (the segment covers no whole cell: area-weighted).
    """

    id: int
    class_index: int
    class_name: str
    score: float
    area: int
    bbox: tuple[int, int, int, int]
    pooling: str = "mask"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bbox"] = list(self.bbox)
        return out


def segment_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host label map (H, W) -> (ids sorted, areas, boxes (S, 4) x0 y0 x1 y1), every id present.

    One counting pass and one bounding-box pass (scipy.ndimage.find_objects), with no per-pixel index
    arrays: a 10000² map stays within a few hundred MB."""
    from scipy import ndimage

    labels = np.asarray(labels)
    low = int(labels.min())
    shifted = (labels - (low - 1)).astype(np.int32, copy=False)  # ids from 1: find_objects skips 0
    counts = np.bincount(shifted.ravel())
    present = np.flatnonzero(counts)
    slices = ndimage.find_objects(shifted)
    boxes = np.array(
        [
            [slices[i - 1][1].start, slices[i - 1][0].start, slices[i - 1][1].stop, slices[i - 1][0].stop]
            for i in present
        ],
        dtype=np.int64,
    ).reshape(-1, 4)
    return (present + low - 1).astype(np.int64), counts[present].astype(np.int64), boxes


def pool_segments(dense: Any, labels: Any, ids: np.ndarray) -> tuple[Any, list[str]]:
    """Mean dense feature of each segment: (C, h, w) and (H, W) -> (S, C), and the pooling used.

    The label map goes to the grid nearest-exact and is binarised per id (the official
    ``MaskPooling``, denominator + 1e-8); ids that cover no cell there are pooled by area.
    """
    xp = get_xp(dense)
    channels, h, w = dense.shape
    height, width = labels.shape[:2]
    rows = from_host(nearest_taps(height, h, exact=True), labels)
    cols = from_host(nearest_taps(width, w, exact=True), labels)
    grid = xp.reshape(xp.take(xp.take(labels, rows, axis=0), cols, axis=1), (h * w,))
    wanted = from_host(ids.astype(np.int64), labels)
    onehot = xp.astype(xp.astype(grid, xp.int64)[None, :] == wanted[:, None], dense.dtype)  # (S, h*w)
    cells = xp.reshape(dense, (channels, h * w))
    counts = xp.sum(onehot, axis=1)
    pooled = (onehot @ xp.matrix_transpose(cells)) / (counts[:, None] + 1e-8)
    pooling = ["mask"] * len(ids)
    empty = np.flatnonzero(to_host(counts) == 0)
    if empty.size:
        weights = _area_weights(to_host(labels), ids[empty], (h, w))  # (E, h*w) on the host
        by_area = from_host(weights.astype(np.float32), dense) @ xp.matrix_transpose(cells)
        position = {int(k): i for i, k in enumerate(empty)}
        pooled = xp.concat(
            [
                by_area[position[k] : position[k] + 1, :] if k in position else pooled[k : k + 1, :]
                for k in range(len(ids))
            ],
            axis=0,
        )
        for k in position:
            pooling[k] = "area"
    return pooled, pooling


def _area_weights(labels: np.ndarray, ids: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The share of each grid cell's pixels that each id covers, normalised to sum 1 per id."""
    h, w = grid
    height, width = labels.shape
    cell_rows = np.minimum((np.arange(height) * h) // height, h - 1)
    cell_cols = np.minimum((np.arange(width) * w) // width, w - 1)
    cell = (cell_rows[:, None] * w + cell_cols[None, :]).ravel()
    cell_size = np.bincount(cell, minlength=h * w).astype(np.float64)
    flat = labels.ravel()
    out = np.zeros((len(ids), h * w), dtype=np.float64)
    for i, k in enumerate(ids):
        out[i] = np.bincount(cell[flat == k], minlength=h * w) / cell_size
        out[i] /= out[i].sum()
    return out


def paint_classes(labels: np.ndarray, class_of_segment: dict[int, int]) -> np.ndarray:
    """Each segment of ``labels`` painted with its class index (the official ``final_mask``)."""
    ids, inverse = np.unique(np.asarray(labels), return_inverse=True)
    missing = [int(i) for i in ids if int(i) not in class_of_segment]
    if missing:
        raise DiffCutError(f"segments {missing[:5]} got no class")
    classes = np.array([class_of_segment[int(i)] for i in ids], dtype=np.int32)
    return classes[inverse.reshape(np.shape(labels))]


def _providers(available: Sequence[str], device: str | None = None) -> list[str]:
    """CUDA where onnxruntime has it (unless ``device`` is "cpu"), then the CPU."""
    wanted = ("CPUExecutionProvider",) if device == "cpu" else ("CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in wanted if p in available]


class SegmentLabeler:
    """Names the segments of a model folder's label maps with its exported CLIP.

    Open with :meth:`from_model_dir` (the folder's text bank, or ``classes`` typed now).
    device: "cpu" keeps the CLIP graphs on ONNX Runtime's CPU provider (as ``--backend ort-cpu``);
    None uses CUDA where onnxruntime has it.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        manifest: Manifest | None = None,
        *,
        bank: TextBank | None = None,
        verify: bool = True,
        threads: int | None = None,
        device: str | None = None,
        load_bank: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = manifest or read_manifest(self.model_dir)
        self.record = self.manifest.vocabulary
        if verify or not self.record:  # without a record, it raises saying what to run
            self.record = verify_vocabulary_files(self.model_dir, self.manifest)
        self._threads = threads
        self.device = device
        self._sessions: dict[str, Any] = {}
        self._bank = None if bank is None else self._check_bank(bank)
        if load_bank:
            _ = self.bank  # a bank from another CLIP is refused now, not at the first frame

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike,
        classes: Any = None,
        *,
        manifest: Manifest | None = None,
        verify: bool = True,
        threads: int | None = None,
        device: str | None = None,
    ) -> SegmentLabeler:
        labeler = cls(model_dir, manifest, verify=verify, threads=threads, device=device, load_bank=classes is None)
        if classes is not None:
            labeler.bank = labeler.text_bank(classes)  # the folder's bank is then never read
        return labeler

    @property
    def bank(self) -> TextBank:
        """The text bank in use: ``classes`` embedded now, else the folder's (read when first needed)."""
        if self._bank is None:
            self._bank = self._check_bank(TextBank.from_file(self.model_dir / BANK_NAME))
        return self._bank

    @bank.setter
    def bank(self, value: TextBank) -> None:
        self._bank = self._check_bank(value)

    def _check_bank(self, bank: TextBank) -> TextBank:
        if bank.clip_id != self.record["clip_id"]:
            raise DiffCutError(
                f"the text bank was embedded with another CLIP (id {bank.clip_id[:12]}…) than this "
                f"folder's graphs ({self.record['clip_id'][:12]}…, {self.record['clip']}): re-run "
                f"export-vocab, or type the classes (--classes) to embed them with this CLIP"
            )
        if bank.embeddings.shape[1] != int(self.record["embed_dim"]):
            raise DiffCutError(
                f"the text bank has {bank.embeddings.shape[1]}-d embeddings, the CLIP "
                f"{self.record['embed_dim']}-d: re-run export-vocab"
            )
        return bank

    def _session(self, name: str) -> Any:
        if name not in self._sessions:
            options = ort.SessionOptions()
            if self._threads:
                options.intra_op_num_threads = int(self._threads)
            path = self.model_dir / name
            try:
                self._sessions[name] = ort.InferenceSession(
                    str(path), options, providers=_providers(ort.get_available_providers(), self.device)
                )
            except Exception as e:  # onnxruntime's own exception types: a garbage or truncated graph
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise DiffCutError(f"{path}: onnxruntime cannot load it ({first}); re-run export-vocab") from e
        return self._sessions[name]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.bank.class_names

    # ------------------------------------------------------------------ text
    def text_bank(self, classes: Any) -> TextBank:
        """A bank for classes typed now (``"cat, sofa"``, a list, or a :class:`Vocabulary`), embedded
        with this folder's text tower: no torch. Synonyms go through in bounded chunks."""
        from diffcut_edge.runtime.tokenizer import ClipTokenizer

        vocabulary = classes if isinstance(classes, Vocabulary) else vocabulary_from_names(classes)
        templates = TEMPLATE_SETS[self.record.get("templates", TEXT_TEMPLATES_NAME)]
        tokenizer = ClipTokenizer(self.model_dir / BPE_FILE, int(self.record["context_length"]))
        session = self._session(TEXT_NAME)
        synonyms = [s for c in vocabulary.classes for s in c]
        parts = []
        for i in range(0, len(synonyms), SYNONYMS_PER_TEXT_CALL):
            prompts = [t.format(s) for s in synonyms[i : i + SYNONYMS_PER_TEXT_CALL] for t in templates]
            tokens = tokenizer(prompts)
            # The tower is causal and reads the end token: the padding after the longest prompt's
            # end changes nothing, so it is not computed (diffcut_ref.clip_labels.encode_text).
            tokens = np.ascontiguousarray(tokens[:, : int(tokens.argmax(axis=1).max()) + 1])
            embedded = session.run(None, {"tokens": tokens})[0]
            parts.append(average_over_templates(embedded.astype(np.float32), len(templates)))
        embeddings = np.concatenate(parts, axis=0).astype(np.float32)
        return TextBank(
            vocabulary,
            embeddings,
            float(self.record["logit_scale"]),
            self.record.get("templates", TEXT_TEMPLATES_NAME),
            self.record["clip_id"],
        )

    # ------------------------------------------------------------------ image
    def dense(self, pixels: Any) -> np.ndarray:
        """The encoder's input (1, 3, R, R) or (3, R, R) RGB [0, 1] -> dense CLIP features (C, h, w)."""
        pixels = to_host(pixels).astype(np.float32, copy=False)
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4 or pixels.shape[:2] != (1, 3):
            raise DiffCutError(f"labeling: expected pixels (1, 3, H, W), got {tuple(pixels.shape)}")
        return self._session(DENSE_NAME).run(None, {"image": np.ascontiguousarray(pixels)})[0][0]

    def embed(self, pooled: Any) -> np.ndarray:
        """(S, C) pooled dense features -> (S, D) CLIP image embeddings (trunk.head + visual.head)."""
        return self._session(HEAD_NAME).run(None, {"pooled": np.ascontiguousarray(to_host(pooled), np.float32)})[0]

    def classify(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S, D) -> (class index (S,), score (S,), class logits (S, K))."""
        bank = self.bank
        logits = class_logits(embeddings, bank.embeddings, bank.vocabulary.synonym_counts, bank.logit_scale)
        probs = softmax(logits)
        index = np.argmax(probs, axis=1)
        return index, np.take_along_axis(probs, index[:, None], axis=1)[:, 0], logits

    def label(self, pixels: Any, labels: Any) -> list[SegmentLabel]:
        """Every segment of the final label map (H, W) (ids as in the label PNG), named in one pass."""
        host_labels = to_host(labels)
        ids, areas, boxes = segment_stats(host_labels)
        dense = self.dense(pixels)
        pooled, pooling = pool_segments(dense, host_labels, ids)
        index, score, _ = self.classify(self.embed(pooled))
        names = self.bank.class_names
        return [
            SegmentLabel(int(i), int(c), names[int(c)], float(s), int(a), tuple(int(v) for v in b), p)
            for i, c, s, a, b, p in zip(ids, index, score, areas, boxes, pooling)
        ]

    def name_result(self, result: Any, pixels: Any) -> Any:
        """Fill a :class:`~diffcut_edge.runtime.postprocess.SegmentationResult`'s ``segments``,
        ``vocabulary`` and ``class_names`` from its frame's encoder input ``pixels`` (1, 3, R, R)."""
        start = time.perf_counter()
        result.segments = self.label(pixels, result.labels)
        result.vocabulary = self.bank.vocabulary.name
        result.class_names = self.class_names
        result.timings["label"] = (time.perf_counter() - start) * 1e3
        if "total" in result.timings:
            result.timings["total"] += result.timings["label"]
        return result

    def close(self) -> None:
        self._sessions.clear()
