"""``SegmenterSpec``: which segmenter, with which options — one value, validated once, that opens it.

A spec is plain data: it round-trips through :meth:`SegmenterSpec.to_dict` /
:meth:`SegmenterSpec.from_dict` (JSON-safe), so a process that must open the same segmenter
elsewhere (the realtime keyframe worker, a Ray actor, a Triton model) receives the spec, not a
dozen arguments. :meth:`open` is the one way a :class:`~diffcut_edge.runtime.segmenter.Segmenter`
is built from a model folder.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from diffcut_edge.defaults import DEVICES
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.options import SegmenterOptions


def _classes_value(classes: Any) -> Any:
    """Classes as immutable plain data: a string stays, lists (synonyms as inner lists) become tuples."""
    if classes is None or isinstance(classes, str):
        return classes
    if isinstance(classes, (list, tuple)):
        return tuple(_classes_value(c) if isinstance(c, (list, tuple)) else c for c in classes)
    raise DiffCutError(
        f"classes must be a string or a list of names (synonyms as inner lists), got {type(classes).__name__}"
    )


@dataclass(frozen=True)
class SegmenterSpec:
    """How to open a segmenter.

    model_dir: the exported model folder. backend: one of ``runtime.backends.BACKENDS`` ("auto",
    "tensorrt", "ort", "ort-cpu", ...). device: where post-processing runs ("cpu", "cuda", None = follow the encoder).
    options: the post-processing options. classes / name_segments: name the segments
    (see :meth:`Segmenter.from_model_dir`). threads: the encoder's CPU threads (None = onnxruntime's).
    verify: hash the folder's files against the manifest when opening.
    """

    model_dir: str
    backend: str = "auto"
    device: str | None = None
    options: SegmenterOptions = field(default_factory=SegmenterOptions)
    classes: Any = None
    name_segments: bool | None = None
    threads: int | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", os.fspath(self.model_dir))
        from diffcut_edge.runtime.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise DiffCutError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device is not None and self.device not in DEVICES:
            raise DiffCutError(f"device must be one of {DEVICES} or None, got {self.device!r}")
        if not isinstance(self.options, SegmenterOptions):
            raise DiffCutError(f"options must be SegmenterOptions, got {type(self.options).__name__}")
        object.__setattr__(self, "classes", _classes_value(self.classes))
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise DiffCutError(f"threads must be None or a whole number >= 1, got {self.threads!r}")

    @classmethod
    def of(cls, segmenter: SegmenterSpec | str | os.PathLike) -> SegmenterSpec:
        """``segmenter`` itself, or the spec of a model folder's path with every default."""
        if isinstance(segmenter, cls):
            return segmenter
        if isinstance(segmenter, (str, os.PathLike)):
            return cls(segmenter)
        raise DiffCutError(f"expected a SegmenterSpec or a model folder's path, got {type(segmenter).__name__}")

    def open(self) -> Any:
        """The :class:`~diffcut_edge.runtime.segmenter.Segmenter` this spec describes."""
        from diffcut_edge.runtime.segmenter import Segmenter

        return Segmenter.open_spec(self)

    def replace(self, **changes: Any) -> SegmenterSpec:
        """A copy with some fields changed; post-processing option names go to ``options``."""
        option_names = {f.name for f in dataclasses.fields(SegmenterOptions)}
        unknown = set(changes) - option_names - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise DiffCutError(
                f"unknown segmenter setting(s): {', '.join(sorted(unknown))} (options: "
                f"{', '.join(sorted(option_names))})"
            )
        options = {k: changes.pop(k) for k in list(changes) if k in option_names}
        if options:
            changes["options"] = dataclasses.replace(changes.get("options", self.options), **options)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe data (tuples as lists)."""
        data = dataclasses.asdict(self)
        data["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["options"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmenterSpec:
        if not isinstance(data, dict):
            raise DiffCutError(f"a segmenter spec is a JSON object, got {type(data).__name__}")
        data = dict(data)
        options = data.pop("options", None) or {}
        if not isinstance(options, dict):
            raise DiffCutError(f"a segmenter spec's options are a JSON object, got {type(options).__name__}")
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DiffCutError(f"unknown segmenter spec field(s): {', '.join(sorted(unknown))}")
        try:
            return cls(options=SegmenterOptions(**options), **data)
        except TypeError as e:
            raise DiffCutError(f"malformed segmenter spec: {e}") from None
