"""``diffcut-edge export-vocab``: the CLIP that names segments, exported into a model folder.

Adds to the folder (recorded in the manifest's ``vocabulary`` with SHA-256, checked like the encoder):

=====================  ==================================================================
``clip_dense.onnx``    image (1, 3, H, W) RGB [0, 1] -> dense (1, C, H/32, W/32); H, W dynamic
``clip_head.onnx``     pooled (S, C) -> embeddings (S, D) (trunk.head + visual.head); S dynamic
``clip_text.onnx``     tokens (N, L<=77) int64 -> text embeddings (N, D), un-normalised; N, L dynamic
``clip_bpe.txt.gz``    CLIP's BPE merges (from open_clip), for the numpy tokenizer
``text_bank.npz``      the vocabulary's embeddings (one per synonym), names, logit scale
=====================  ==================================================================

The text bank is computed with the PyTorch reference (``diffcut_ref.clip_labels``, open_clip's
tokenizer); classes typed at run time go through ``clip_text.onnx`` and the numpy tokenizer, and
the tests hold the two equal. Every file carries the CLIP's identity (the SHA-256 of its weights),
so a bank from another CLIP is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffcut_edge import atomic
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.labeling import BANK_NAME, BPE_FILE, DENSE_NAME, HEAD_NAME, TEXT_NAME, VOCABULARY_FORMAT
from diffcut_edge.runtime.manifest import read_manifest, sha256_file, write_manifest
from diffcut_edge.runtime.vocabulary import LOGIT_SCALE_MAX, TEXT_TEMPLATES_NAME, TextBank, Vocabulary

OPSET = 17
OPSET_DYNAMO = 18  # the dynamo exporter's lowest well-supported opset


def clip_identity(clip: Any) -> str:
    """SHA-256 over the CLIP's parameters and buffers (names, shapes, float32 bytes), in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(clip.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _modules(clip: Any) -> dict[str, tuple[Any, tuple, dict]]:
    """The three graphs as (module, example inputs, export kwargs)."""
    import torch

    from diffcut_edge.diffcut_ref import clip_labels as ref

    class Wrapper(torch.nn.Module):  # the CLIP as a submodule: its weights become initializers
        def __init__(self, fn):
            super().__init__()
            self.clip, self.fn = clip, fn

        def forward(self, x):
            return self.fn(self.clip, x)

    clip.requires_grad_(False)
    Dense = lambda: Wrapper(ref.dense_features)  # noqa: E731
    Head = lambda: Wrapper(lambda c, pooled: ref.visual_head(c, pooled[None])[0])  # noqa: E731
    Text = lambda: Wrapper(ref.encode_text)  # noqa: E731

    channels = int(clip.visual.trunk.num_features)
    context = int(clip.positional_embedding.shape[0])
    g = torch.Generator().manual_seed(0)
    return {
        DENSE_NAME: (
            Dense(),
            (torch.rand(1, 3, 96, 128, generator=g),),
            {
                "input_names": ["image"],
                "output_names": ["dense"],
                "dynamic_axes": {"image": {2: "height", 3: "width"}, "dense": {2: "grid_h", 3: "grid_w"}},
            },
        ),
        HEAD_NAME: (
            Head(),
            (torch.rand(3, channels, generator=g),),
            {
                "input_names": ["pooled"],
                "output_names": ["embeddings"],
                "dynamic_axes": {"pooled": {0: "segments"}, "embeddings": {0: "segments"}},
            },
        ),
        # The dynamo exporter: the TorchScript tracer bakes the sequence length into the attention's
        # reshapes, and this graph takes any length up to the context (clip_labels.encode_text).
        TEXT_NAME: (
            Text(),
            (torch.randint(1, 400, (2, min(20, context - 1)), generator=g),),
            {
                "input_names": ["tokens"],
                "output_names": ["embeddings"],
                "dynamo": True,
                "dynamic_shapes": {
                    "x": {
                        0: torch.export.Dim("prompts", min=1, max=1 << 20),
                        1: torch.export.Dim("length", min=2, max=context),
                    }
                },
            },
        ),
    }


def _export_graph(module: Any, example: tuple, path: Path, kwargs: dict) -> None:
    import torch

    from diffcut_edge.export.onnx_export import optimize_and_layout

    raw = path.with_suffix(".raw.onnx")
    dynamo = kwargs.pop("dynamo", False)
    import logging

    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            if dynamo:
                program = torch.onnx.export(module.eval(), example, opset_version=OPSET_DYNAMO, dynamo=True, **kwargs)
                program.save(str(raw))
            else:
                torch.onnx.export(
                    module.eval(),
                    example,
                    str(raw),
                    opset_version=OPSET,
                    dynamo=False,
                    do_constant_folding=True,
                    **kwargs,
                )
        except Exception as e:
            raise DiffCutError(
                f"exporting {path.name} failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from e
        finally:
            quiet.setLevel(level)
    data = optimize_and_layout(raw, path)
    if data:
        raise DiffCutError(f"{path.name} is over 2 GiB: CLIPs that large are not supported yet")
    raw.unlink()


def build_text_bank(clip: Any, tokenizer: Any, vocabulary: Vocabulary, clip_id: str) -> TextBank:
    """The reference text bank (``diffcut_ref.clip_labels.text_classifier``) of ``vocabulary``."""
    import torch

    from diffcut_edge.diffcut_ref.clip_labels import text_classifier

    embeddings = text_classifier(clip, tokenizer, vocabulary).to(torch.float32).numpy()
    scale = float(torch.clamp(clip.logit_scale.detach().exp(), max=LOGIT_SCALE_MAX))
    return TextBank(vocabulary, embeddings, scale, TEXT_TEMPLATES_NAME, clip_id)


def export_vocabulary(
    model_dir: str | os.PathLike, clip_spec: str, vocabulary: Vocabulary, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Export ``clip_spec`` and ``vocabulary`` into ``model_dir``; returns the manifest record.

    All or nothing: files are written to a staging folder, moved in, then the manifest is rewritten
    atomically; an earlier vocabulary's files are replaced.
    """
    from diffcut_edge.models.clip import bpe_vocabulary_path, import_open_clip, load_clip, parse_clip_spec

    say = progress or (lambda message: None)
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    atomic.check_writable_dir(model_dir, "--model-dir")
    say(f"loading CLIP {clip_spec}")
    clip = load_clip(clip_spec)
    open_clip = import_open_clip()
    tokenizer = open_clip.get_tokenizer(parse_clip_spec(clip_spec)[0])
    clip_id = clip_identity(clip)
    staging = Path(tempfile.mkdtemp(prefix=".vocab.partial-", dir=model_dir))
    try:
        for name, (module, example, kwargs) in _modules(clip).items():
            say(f"exporting {name}")
            _export_graph(module, example, staging / name, kwargs)
        shutil.copyfile(bpe_vocabulary_path(), staging / BPE_FILE)
        say(f"embedding {len(vocabulary)} classes ({sum(vocabulary.synonym_counts)} synonyms)")
        bank = build_text_bank(clip, tokenizer, vocabulary, clip_id)
        (staging / BANK_NAME).write_bytes(bank.to_bytes())
        names = [DENSE_NAME, HEAD_NAME, TEXT_NAME, BPE_FILE, BANK_NAME]
        record = {
            "format": VOCABULARY_FORMAT,
            "clip": clip_spec,
            "clip_id": clip_id,
            "dense_channels": int(clip.visual.trunk.num_features),
            "embed_dim": int(bank.embeddings.shape[1]),
            "context_length": int(clip.positional_embedding.shape[0]),
            "logit_scale": bank.logit_scale,
            "templates": TEXT_TEMPLATES_NAME,
            "vocabulary": vocabulary.name,
            "num_classes": len(vocabulary),
            "files": {n: sha256_file(staging / n) for n in names},
        }
        for n in names:
            os.replace(staging / n, model_dir / n)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_manifest(model_dir, dataclasses.replace(manifest, vocabulary=record))
    return record
