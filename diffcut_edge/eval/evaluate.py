"""One evaluation request and the predictor it calls for: the engine on a model folder or the
PyTorch reference on a pipeline, with the standard or the open-vocabulary protocol.

:func:`evaluate` is what ``diffcut-edge eval`` runs; the request checks its combination of
settings before anything slow opens.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.options import SegmenterOptions


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate, on what, how.

    model_dir / backend: the engine's model folder. reference: a pipeline (hub id or folder) to run
    the PyTorch reference on instead; resolution: its R (default: the folder's, the recipe's, 1024).
    options: tau, alpha (and with ``open_vocab`` the label-map size) of the segmenter.
    refine: PAMR after the background merge (None: each official script's default).
    open_vocab: the official open-vocabulary protocol (CLIP names the segments); vocab, clip,
    clip_resolution belong to it only.
    """

    dataset: str
    root: str | os.PathLike
    model_dir: str | None = None
    backend: str = "auto"
    reference: str | None = None
    resolution: int | None = None
    options: SegmenterOptions = field(default_factory=SegmenterOptions)
    mask_size: tuple[int, int] | None = None
    refine: bool | None = None
    open_vocab: bool = False
    vocab: str | None = None
    clip: str | None = None
    clip_resolution: int | None = None
    limit: int | None = None
    batch: int = 1
    file_list: str | None = None
    label_map: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.open_vocab:
            from diffcut_edge.eval.open_vocab import check_dataset

            check_dataset(self.dataset)
            if self.label_map:
                raise DiffCutError(
                    "--label-map is not used with --open-vocab: the vocabulary's class order is the mapping"
                )
        else:
            for name in ("vocab", "mask_size", "clip_resolution", "clip"):
                if getattr(self, name) is not None:
                    raise DiffCutError(f"--{name.replace('_', '-')} goes with --open-vocab")
        if self.refine is None:
            object.__setattr__(self, "refine", bool(self.open_vocab))  # each official script's default

    @property
    def label_size(self) -> tuple[int, int]:
        """The protocol's label-map size: 128 (standard), or --mask-size / 1024 (open vocabulary)."""
        if self.open_vocab:
            return tuple(self.mask_size or defaults.OPEN_VOCAB_MASK_SIZE)
        return defaults.MASK_SIZE

    def segmenter(self) -> Any:
        """The engine's :class:`~diffcut_edge.runtime.spec.SegmenterSpec`."""
        from diffcut_edge.runtime.spec import SegmenterSpec

        if not self.model_dir:
            raise DiffCutError(
                "eval --open-vocab needs --model-dir MODEL_DIR (with export-vocab), or --reference --model"
                if self.open_vocab
                else "eval needs --model-dir MODEL_DIR (or --reference --model PIPELINE)"
            )
        return SegmenterSpec(self.model_dir, backend=self.backend, options=self.options).replace(
            mask_size=self.label_size
        )

    @functools.cached_property
    def folder_manifest(self) -> Any:
        """The model folder's :class:`~diffcut_edge.runtime.manifest.Manifest` (read once), or None."""
        if not self.model_dir:
            return None
        from diffcut_edge.runtime.manifest import read_manifest

        return read_manifest(self.model_dir)

    def reference_resolution(self) -> int | None:
        if self.resolution is None and self.folder_manifest is not None:
            return self.folder_manifest.resolution
        return self.resolution

    def reference_clip(self) -> str:
        """--clip, else the model folder's CLIP (export-vocab), else the paper's."""
        if self.clip is None and self.folder_manifest is not None:
            clip = (self.folder_manifest.vocabulary or {}).get("clip")
            if clip:
                return clip
        from diffcut_edge.models.clip import DEFAULT_CLIP

        return self.clip or DEFAULT_CLIP


def open_predictor(request: EvalRequest, vocabulary: Any = None) -> Any:
    """The predictor ``request`` calls for; with ``vocabulary`` one that also names segments."""
    from diffcut_edge.eval import open_vocab, protocol

    if not request.reference:
        spec = request.segmenter()
        return protocol.engine_predictor(spec) if vocabulary is None else open_vocab.engine_open_vocab(spec, vocabulary)
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    tau, alpha, resolution = request.options.tau, request.options.alpha, request.reference_resolution()
    if vocabulary is None:
        return protocol.reference_predictor(request.reference, resolution=resolution, tau=tau, alpha=alpha)
    return open_vocab.reference_open_vocab(
        request.reference,
        request.reference_clip(),
        vocabulary,
        resolution=resolution,
        tau=tau,
        alpha=alpha,
        mask_size=request.label_size,
    )


def evaluate(request: EvalRequest) -> Any:
    """Run ``request``'s protocol; returns its :class:`~diffcut_edge.eval.protocol.EvalResult`."""
    from diffcut_edge.eval import datasets, open_vocab, protocol

    common = {
        "limit": request.limit,
        "refine": request.refine,
        "batch": request.batch,
        "tau": request.options.tau,
        "alpha": request.options.alpha,
        "file_list": request.file_list,
        "progress": request.progress,
    }
    if not request.open_vocab:
        with contextlib.closing(open_predictor(request)) as predictor:
            return protocol.run_eval(request.dataset, request.root, predictor, label_map=request.label_map, **common)
    layout = datasets.detect_layout(request.dataset, Path(request.root))
    vocabulary = open_vocab.dataset_vocabulary(
        request.dataset, datasets.get_spec(request.dataset, layout=layout), request.vocab
    )
    with contextlib.closing(open_predictor(request, vocabulary)) as predictor:
        return open_vocab.run_open_vocab_eval(
            request.dataset,
            request.root,
            predictor,
            mask_size=request.label_size,
            clip_resolution=request.clip_resolution,
            **common,
        )
