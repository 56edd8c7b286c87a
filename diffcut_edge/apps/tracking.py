"""Stable segment ids across video frames.

DiffCut numbers the segments of every frame afresh (0..K-1 in cut order), so colours
would flicker from frame to frame. :class:`SegmentTracker` gives each segment a
persistent id by matching this frame's segment embeddings (the mean of the normalised
features over the segment, :attr:`SegmentationResult.embeddings`) to the tracks of the
previous frames: Hungarian assignment on cosine similarity, a minimum similarity below
which a segment starts a new track, and a short memory so a segment hidden for a few
frames gets its old id back. Host-side numpy + scipy: K is a handful, the cost is µs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.xp import get_xp, to_host


def _unit_rows(x: np.ndarray) -> np.ndarray:
    # Embeddings are means of unit vectors (norm <= 1); the floor only guards an all-zero row.
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Ka, C) x (Kb, C) -> (Ka, Kb) cosine similarities."""
    return _unit_rows(a) @ _unit_rows(b).T


def match_embeddings(previous: np.ndarray, current: np.ndarray, min_similarity: float) -> list[tuple[int, int]]:
    """Pairs ``(i_previous, j_current)`` maximising total cosine similarity, each >= ``min_similarity``."""
    from scipy.optimize import linear_sum_assignment

    if len(previous) == 0 or len(current) == 0:
        return []
    sim = cosine_similarity(previous, current)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    # The threshold is applied after the assignment: a weak pair is dropped, not re-matched.
    return [(int(i), int(j)) for i, j in zip(rows, cols) if sim[i, j] >= min_similarity]


@dataclass
class Track:
    """One persistent segment: its id, a running embedding, when it was last seen."""

    id: int
    embedding: np.ndarray  # (C,) float32, unit norm
    last_seen: int  # frame index


@dataclass
class SegmentTracker:
    """Assigns persistent ids to per-frame segments by their embeddings.

    Args:
        min_similarity: cosine similarity a segment needs with a track to take its id;
            below it the segment starts a new track. DiffCut features of different
            objects are fairly similar (all positive-ish), so this is high; the default
            is a guess not calibrated on a full-size model.
        max_age: frames a track stays matchable after it was last seen.
        momentum: weight of the old embedding when a track is updated (0 = latest only);
            smooths the slow drift of a segment's appearance.

    Example::

        tracker = SegmentTracker()
        for frame in frames:
            result = seg(frame)
            ids = tracker.update(result.embeddings)      # (K,) persistent id per label
            stable = ids[result.labels]                  # label map in persistent ids
    """

    min_similarity: float = 0.8
    max_age: int = 15
    momentum: float = 0.5
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 0
    frame_index: int = -1

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_similarity <= 1.0:
            raise DiffCutError(f"min_similarity must be a cosine in [-1, 1], got {self.min_similarity}")
        if self.max_age < 0:
            raise DiffCutError(f"max_age must be >= 0 frames, got {self.max_age}")
        if not 0.0 <= self.momentum < 1.0:
            raise DiffCutError(f"momentum must be in [0, 1), got {self.momentum}")

    def update(self, embeddings) -> np.ndarray:
        """Match one frame's segments to the tracks; returns their ids, (K,) int32 in label order."""
        current = _unit_rows(np.asarray(to_host(embeddings), dtype=np.float32))
        if current.ndim != 2:
            raise DiffCutError(f"embeddings must be (K, C), got shape {current.shape}")
        self.frame_index += 1
        alive = [t for t in self.tracks if self.frame_index - t.last_seen <= self.max_age]
        if alive and current.shape[0] and alive[0].embedding.shape[0] != current.shape[1]:
            raise DiffCutError(
                f"embeddings have {current.shape[1]} channels but the tracks have "
                f"{alive[0].embedding.shape[0]}; use a new tracker when the model changes"
            )
        previous = np.stack([t.embedding for t in alive]) if alive else np.zeros((0, current.shape[1]), np.float32)
        ids = np.full(current.shape[0], -1, dtype=np.int32)
        for i, j in match_embeddings(previous, current, self.min_similarity):
            ids[j] = alive[i].id
            self._refresh(alive[i], current[j])
        for j in np.flatnonzero(ids < 0):
            ids[j] = self._new_track(current[j]).id
        self.tracks = [t for t in self.tracks if self.frame_index - t.last_seen <= self.max_age]
        return ids

    def _refresh(self, track: Track, embedding: np.ndarray) -> None:
        blended = self.momentum * track.embedding + (1.0 - self.momentum) * embedding
        track.embedding = _unit_rows(blended[None])[0].astype(np.float32)
        track.last_seen = self.frame_index

    def _new_track(self, embedding: np.ndarray) -> Track:
        track = Track(id=self.next_id, embedding=embedding.astype(np.float32), last_seen=self.frame_index)
        self.next_id += 1
        self.tracks.append(track)
        return track


def relabel(labels, ids: np.ndarray):
    """Map a label map of per-frame labels 0..K-1 to persistent ids (numpy or cupy in, same out)."""
    return get_xp(labels).asarray(ids)[labels]


class TrackedOverlay:
    """Overlay drawer whose segment colours follow the segments across frames.

    ``draw(frame, result)`` relabels ``result.labels`` to persistent ids with a
    :class:`SegmentTracker` (unless ``track`` is False) and annotates a copy of ``frame`` as
    ``style`` (an :class:`~diffcut_edge.apps.overlay.OverlayStyle`, or just its opacity) says;
    ``alpha`` may be changed between frames. ``last_labels`` / ``last_names``: the ids and name
    chips of the last overlay (persistent ids when tracking).
    """

    def __init__(self, track: bool = True, style: Any = None) -> None:
        from diffcut_edge.apps.overlay import OverlayStyle

        self.tracker = SegmentTracker() if track else None
        self.style = (
            style if isinstance(style, OverlayStyle) else OverlayStyle(**({} if style is None else {"alpha": style}))
        )
        self.last_labels: np.ndarray | None = None
        self.last_names: list = []

    @property
    def alpha(self) -> float:
        return self.style.alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.style = replace(self.style, alpha=float(value))

    def __call__(self, frame: np.ndarray, result) -> np.ndarray:
        from diffcut_edge.apps.overlay import annotate, result_names

        labels = to_host(result.labels)
        ids = None
        if self.tracker is not None:
            ids = self.tracker.update(result.embeddings)
            labels = relabel(labels, ids)
        self.last_labels = labels
        self.last_names = result_names(result, ids)  # the result's own ids, mapped to the drawn ones
        return annotate(frame, labels, self.last_names, self.style)
