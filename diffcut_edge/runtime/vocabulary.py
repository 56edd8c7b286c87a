"""Class vocabularies, prompt templates and the CLIP text bank that names segments.

A vocabulary is a list of classes, each a tuple of synonyms (the first is the class's name).
The text bank holds one embedding per synonym, as the official ``tools/clip_classifier.py``
computes it: every "template x synonym" prompt embedded and L2-normalised, averaged over the
templates, renormalised. A segment's score for a class is the max over the class's synonyms of
``min(exp(logit_scale), 100) * cosine``; softmax over the classes; argmax names the segment.

(The official code also appends the last synonym's logit as a "void" column and drops it again
before the softmax; that is the softmax over the classes computed here.)
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError

# ViLD's prompt ensemble (Gu et al., 2022), as VILD_PROMPT in the official tools/clip_classifier.py.
VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)
TEXT_TEMPLATES_NAME = "vild"
TEMPLATE_SETS = {TEXT_TEMPLATES_NAME: VILD_TEMPLATES}
BUILTIN_VOCABULARIES = ("voc", "context", "coco-object")  # files in runtime/vocabularies/
LOGIT_SCALE_MAX = 100.0
MAX_NAME_LENGTH = 200  # characters of one synonym (CLIP reads 77 tokens anyway)
MAX_BANK_BYTES = 512 << 20  # a text bank of 100k synonyms x 1024 float32 is 400 MiB
_DATA = Path(__file__).parent / "vocabularies"


@dataclass(frozen=True)
class Vocabulary:
    """Classes as synonym tuples; ``name`` says where they came from ("voc", a file, "run-time")."""

    name: str
    classes: tuple[tuple[str, ...], ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c[0] for c in self.classes)

    @property
    def synonym_counts(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def prompts(self, templates: Sequence[str] = VILD_TEMPLATES) -> list[str]:
        """Every prompt, synonym-major and template-minor (the bank averages each run of len(templates))."""
        return [t.format(s) for synonyms in self.classes for s in synonyms for t in templates]


def _check_classes(classes: list[tuple[str, ...]], source: str) -> tuple[tuple[str, ...], ...]:
    if not classes:
        raise DiffCutError(f"{source}: no class names")
    seen: dict[str, int] = {}
    for index, synonyms in enumerate(classes):
        if not synonyms or any(not s for s in synonyms):
            raise DiffCutError(
                f"{source}: class {index + 1} has an empty name (one class a line, synonyms comma-separated)"
            )
        for s in synonyms:
            if len(s) > MAX_NAME_LENGTH or any(ch in s for ch in "\x00\r\n"):
                raise DiffCutError(
                    f"{source}: class {index + 1}: a name over {MAX_NAME_LENGTH} characters or with control characters"
                )
        key = synonyms[0].casefold()
        if key in seen:
            raise DiffCutError(
                f"{source}: class {index + 1} ({synonyms[0]!r}) repeats class {seen[key] + 1}; "
                f"give each class once (synonyms go on its line, comma-separated)"
            )
        seen[key] = index
    return tuple(classes)


def parse_class_lines(text: str, source: str) -> Vocabulary:
    """FILE.txt format: one class a line, synonyms comma-separated; blank lines and ``#`` comments skipped."""
    classes = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        classes.append(tuple(s.strip() for s in line.split(",")))
    return Vocabulary(source, _check_classes(classes, source))


def vocabulary_from_names(names: Sequence[str | Sequence[str]], source: str = "run-time") -> Vocabulary:
    """Classes given at run time: ``["cat", "sofa"]``, or with synonyms ``["cat", ["sofa", "couch"]]``;
    a single string is split on commas into classes and on ``|`` into synonyms
    (``--classes "cat, sofa|couch, window"``: three classes, the second also called "couch")."""
    if isinstance(names, str):
        names = [tuple(part.split("|")) for part in names.split(",")]
    classes = []
    for item in names:
        synonyms = (item,) if isinstance(item, str) else tuple(item) if isinstance(item, (list, tuple)) else (item,)
        if not all(isinstance(s, str) for s in synonyms):
            raise DiffCutError(f"{source}: class names must be strings, got {item!r}")
        classes.append(tuple(s.strip() for s in synonyms))
    return Vocabulary(source, _check_classes(classes, source))


def load_vocabulary(spec: str | os.PathLike) -> Vocabulary:
    """A built-in vocabulary (``voc``, ``context``, ``coco-object``) or a FILE.txt (UTF-8)."""
    if str(spec) in BUILTIN_VOCABULARIES:
        return parse_class_lines((_DATA / f"{spec}.txt").read_text(encoding="utf-8"), str(spec))
    path = Path(spec)
    if not path.is_file():
        raise DiffCutError(f"--vocab {spec}: not one of {', '.join(BUILTIN_VOCABULARIES)} and not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DiffCutError(
            f"--vocab {spec}: not UTF-8 text (byte {e.start}); save it as UTF-8, one class a line"
        ) from e
    except OSError as e:
        raise DiffCutError(f"--vocab {spec}: cannot read it ({e.strerror})") from e
    if "\x00" in text:
        raise DiffCutError(f"--vocab {spec}: not a text file (it contains NUL bytes)")
    return parse_class_lines(text, path.name)


# ----------------------------------------------------------------------------- the text bank
@dataclass(frozen=True)
class TextBank:
    """One normalised embedding per synonym, grouped by class, and what it was made with.

    embeddings: (S, D) float32, S = sum(synonym_counts). logit_scale: min(exp(logit_scale), 100).
    clip_id: the identity of the CLIP (the SHA-256 of its weights) the bank was embedded with; the
        dense and head graphs of a model folder carry the same id.
    """

    vocabulary: Vocabulary
    embeddings: np.ndarray
    logit_scale: float
    templates: str
    clip_id: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.vocabulary.class_names

    def __post_init__(self) -> None:
        counts = self.vocabulary.synonym_counts
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != sum(counts):
            raise DiffCutError(f"text bank: {self.embeddings.shape[0]} embeddings for {sum(counts)} synonyms")

    def to_bytes(self) -> bytes:
        meta = {
            "vocabulary": self.vocabulary.name,
            "classes": [list(c) for c in self.vocabulary.classes],
            "logit_scale": self.logit_scale,
            "templates": self.templates,
            "clip_id": self.clip_id,
        }
        buffer = io.BytesIO()
        np.savez(buffer, embeddings=self.embeddings.astype(np.float32), meta=np.array(json.dumps(meta)))
        return buffer.getvalue()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextBank:
        try:
            with np.load(path, allow_pickle=False) as data:
                # Sizes from the zip directory before any array is read: a small npz may declare an
                # array of gigabytes (np.load allocates the header's shape first).
                for member in data.zip.infolist():
                    if member.file_size > MAX_BANK_BYTES:
                        raise DiffCutError(
                            f"{path}: {member.filename} holds {member.file_size >> 20} MiB, more "
                            f"than a text bank can ({MAX_BANK_BYTES >> 20} MiB); re-run export-vocab"
                        )
                meta = json.loads(str(data["meta"]))
                embeddings = np.asarray(data["embeddings"], dtype=np.float32)
            vocab = Vocabulary(meta["vocabulary"], tuple(tuple(c) for c in meta["classes"]))
            return cls(vocab, embeddings, float(meta["logit_scale"]), meta["templates"], meta["clip_id"])
        except DiffCutError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DiffCutError(f"{path}: not a text bank written by diffcut-edge ({e})") from e


def average_over_templates(prompt_embeddings: Any, templates: int) -> Any:
    """(S * T, D) prompt embeddings -> (S, D): normalise, mean over each synonym's T, renormalise."""
    from diffcut_edge.runtime.xp import get_xp

    xp = get_xp(prompt_embeddings)
    x = prompt_embeddings / xp.linalg.vector_norm(prompt_embeddings, axis=-1, keepdims=True)
    x = xp.mean(xp.reshape(x, (x.shape[0] // templates, templates, x.shape[-1])), axis=1)
    return x / xp.linalg.vector_norm(x, axis=-1, keepdims=True)


def class_logits(embeddings: Any, bank_embeddings: Any, synonym_counts: Sequence[int], logit_scale: float) -> Any:
    """(N, D) segment embeddings -> (N, K) class logits: scale * cosine, max over each class's synonyms.

    The max runs over synonym positions (at most max(counts) steps), so memory stays (N, K) even for
    10 000 classes with long synonym lists.
    """
    from diffcut_edge.runtime.xp import from_host, get_xp

    xp = get_xp(embeddings)
    x = embeddings / xp.linalg.vector_norm(embeddings, axis=-1, keepdims=True)
    logits = float(logit_scale) * (x @ xp.matrix_transpose(bank_embeddings))  # (N, S)
    counts = np.asarray(synonym_counts, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    best = xp.take(logits, from_host(starts, embeddings), axis=1)
    for j in range(1, int(counts.max())):
        columns = from_host(starts + np.minimum(j, counts - 1), embeddings)
        best = xp.maximum(best, xp.take(logits, columns, axis=1))
    return best


def softmax(logits: Any) -> Any:
    from diffcut_edge.runtime.xp import get_xp

    xp = get_xp(logits)
    e = xp.exp(logits - xp.max(logits, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)
