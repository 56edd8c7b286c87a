"""Compare an exported model folder with the PyTorch reference, or with another folder, on real photos.

``verify_against`` (``diffcut-edge verify --model-dir FAST --against FULL``) compares two model
folders through onnxruntime on the CPU -- no torch -- with the runtime's own NCut for the label
agreement, gates on :data:`AGAINST_THRESHOLDS` and records the verdict in FAST's manifest.

For each image, resized once to R x R (so both sides see the very same pixels):
``diffcut_ref.extract_features`` on the full UNet with its hook, and the exported
``encoder.onnx`` through onnxruntime on the CPU. Reported per image: the minimum over
tokens of the feature cosine, the relative error ||onnx - ref|| / ||ref||, and the share
of pixels where ``diffcut_ref.segment_features`` gives the same label on both feature
sets. An image passes when it meets the precision's thresholds (:data:`THRESHOLDS`);
label agreement is reported, not gated (NCut may flip a near-tie cut on tiny noise).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.manifest import Manifest, read_manifest, verify_files, write_manifest

# precision -> (max relative error or None, min token cosine)
THRESHOLDS: dict[str, tuple[float | None, float]] = {
    "fp32": (1e-4, 0.9999),
    "fp16": (None, 0.999),
    "int8": (None, 0.99),
}
# verify --against, by the faster folder's precision: (min token cosine, min mean label agreement).
# Labels are the verdict where they can be one (:func:`label_stability`): mean over the images whose
# fp32 labels hold still, because one image whose NCut flips a near-tie cut is not a verdict on the
# encoder. The cosine decides where no image's labels can (random weights, --no-labels).
# benchmarks/bench_gate.py measured what moves labels on planted features: an independent error per
# token at min cosine 0.99 leaves 96.2 % of labels (mean; 98.4 % at 0.995), while one error shared
# by every token, or per-channel scale errors, leave >= 98 % down to cosine 0.95: a cosine gate alone
# refuses errors that move no label, so it is the fallback, not the verdict.
AGAINST_THRESHOLDS: dict[str, tuple[float, float]] = {
    "fp32": (0.9999, 0.99),
    "fp16": (0.999, 0.97),
    "int8": (0.99, 0.95),
    "tiny-vae": (0.98, 0.90),
}


def against_thresholds(manifest: Manifest) -> tuple[float, float]:
    """The gate of ``verify --against`` for a folder: by precision, loosened for a tiny VAE.

    The tiny-VAE gate (TAESD approximates the VAE's latents) is a starting point, not calibrated
    on real weights: random-weight SSD-1B at 512 px gave 0.9935 / 96.8 % full vs tiny VAE, a
    figure dominated by the input-independent part of random features.
    """
    gates = [AGAINST_THRESHOLDS[manifest.precision]]
    if manifest.vae == "tiny":
        gates.append(AGAINST_THRESHOLDS["tiny-vae"])
    return min(g[0] for g in gates), min(g[1] for g in gates)


# Label stability probe: an independent random error of this relative size per token (min cosine
# 0.9999995) on the reference features. Where it moves more than STABLE_LABELS of the labels, the
# image's segmentation sits on near-ties (random-weight SSD-1B at 1024 px: 14 % agreement) and its
# label agreement says nothing about the faster folder.
PROBE_ERROR = 1e-3
STABLE_LABELS = 0.99


def label_stability(features: np.ndarray, grid: tuple[int, int], labels: np.ndarray, seed: int = 0) -> float:
    """Share of ``labels`` (the runtime's segmentation of ``features``) kept when every token gets an
    independent random error of relative size :data:`PROBE_ERROR` (matched agreement)."""
    from diffcut_edge.metrics import matched_agreement
    from diffcut_edge.runtime import segment_features

    noise = np.random.default_rng(seed).standard_normal(features.shape).astype(np.float32)
    scale = PROBE_ERROR * np.linalg.norm(features, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    return matched_agreement(labels, segment_features(features + scale * noise, grid))


SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass
class ImageCheck:
    name: str
    min_cosine: float
    rel_error: float
    label_agreement: float | None
    passed: bool
    label_stability: float | None = None  # verify --against: :func:`label_stability` of the reference

    @property
    def labels_informative(self) -> bool:
        return self.label_agreement is not None and (
            self.label_stability is None or self.label_stability >= STABLE_LABELS
        )


@dataclass
class VerifyReport:
    model_dir: Path
    precision: str
    thresholds: tuple[float | None, float]
    images: list[ImageCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.images) and all(i.passed for i in self.images)

    def lines(self) -> list[str]:
        rel_max, cos_min = self.thresholds
        head = f"{self.model_dir} ({self.precision}): pass if min cosine >= {cos_min}" + (
            f" and rel error <= {rel_max:g}" if rel_max is not None else ""
        )
        rows = [f"{'image':<24} {'min cos':>10} {'rel err':>10} {'labels':>8}  result"]
        for i in self.images:
            labels = "-" if i.label_agreement is None else f"{100 * i.label_agreement:.1f}%"
            rows.append(
                f"{i.name[:24]:<24} {i.min_cosine:>10.6f} {i.rel_error:>10.2e} {labels:>8}  "
                f"{'ok' if i.passed else 'FAIL'}"
            )
        return [head, *rows, "verify: " + ("passed" if self.passed else "FAILED")]


# ------------------------------------------------------------------ metrics (numpy only)
def token_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of (N, C) arrays, float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    # The tiny epsilon only guards an all-zero token (then the cosine reads 0, a failure).
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def passes(min_cos: float, rel: float, precision: str) -> bool:
    rel_max, cos_min = THRESHOLDS[precision]
    return min_cos >= cos_min and (rel_max is None or rel <= rel_max)


# ------------------------------------------------------------------ inputs
def load_images(paths: Sequence[str | os.PathLike] | None, resolution: int) -> list[tuple[str, np.ndarray]]:
    """(name, (R, R, 3) RGB float32 [0, 1]) pairs; scikit-image samples when ``paths`` is empty."""
    import cv2

    from diffcut_edge.runtime.images import read_image

    out = []
    if paths:
        for p in paths:  # read as segment reads (any name, EXIF orientation, pixel limit, one-line errors)
            out.append((Path(p).name, cv2.cvtColor(read_image(p), cv2.COLOR_BGR2RGB)))
    else:
        try:
            from skimage import data
        except ImportError as e:
            raise DiffCutError(
                "no images given and scikit-image (for its sample photos) is not installed; "
                "pass image files: diffcut-edge verify ... IMG [IMG ...]"
            ) from e
        out = [(name, getattr(data, name)()[..., :3]) for name in SAMPLE_NAMES]
    resized = []
    for name, rgb in out:
        img = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
        img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_AREA)
        resized.append((name, np.clip(img, 0.0, 1.0)))
    return resized


def open_session(model_dir: Path, manifest: Manifest) -> Any:
    """An onnxruntime CPU session on ``encoder.onnx`` (the reference side runs on the CPU too)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model_dir / manifest.onnx_file), providers=["CPUExecutionProvider"])


def onnx_features(session: Any, manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """Features (B, N, C) float32 of (B, R, R, 3) RGB images from an onnxruntime session."""
    batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    out = session.run([manifest.output_name], {manifest.input_name: batch})[0]
    return np.asarray(out, dtype=np.float32)


def label_agreement(ours: np.ndarray, ref: np.ndarray, grid: tuple[int, int]) -> float | None:
    """Share of pixels with equal ``diffcut_ref.segment_features`` labels (None if unavailable)."""
    try:
        from diffcut_edge.diffcut_ref import segment_features
    except (ImportError, AttributeError):
        return None
    a = segment_features(ours, grid)
    b = segment_features(ref, grid)
    return float(np.mean(np.asarray(a) == np.asarray(b)))


# ------------------------------------------------------------------ orchestrator
def verify_model(
    model: Any,
    model_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike] | None = None,
    *,
    labels: bool = True,
    record: bool = True,
) -> VerifyReport:
    """Run the reference (``model``: a hub id, a pipeline folder, or a loaded pipeline) and the
    exported folder on the same images; see the module docstring for what is compared.

    With ``record``, a folder that needs verification (INT8, tiny VAE) gets the verdict in its
    manifest, as with :func:`verify_against`."""
    import torch

    from diffcut_edge import models
    from diffcut_edge.diffcut_ref import extract_features

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    verify_files(model_dir, manifest)
    pipeline = (
        model if hasattr(model, "unet") else models.load_pipeline(str(model), torch_dtype=torch.float32, device="cpu")
    )
    family = models.pipeline_family(pipeline)
    if family != manifest.family:
        raise DiffCutError(
            f"{model} is an {family} pipeline but {model_dir} was exported from an "
            f"{manifest.family} one ({manifest.model_id}); pass the model it was exported from"
        )
    report = VerifyReport(model_dir=model_dir, precision=manifest.precision, thresholds=THRESHOLDS[manifest.precision])
    session = open_session(model_dir, manifest)
    for name, img in load_images(images, manifest.resolution):
        ref = extract_features(
            pipeline,
            img[None],
            resolution=manifest.resolution,
            timestep=manifest.timestep,
            noise_seed=manifest.noise_seed,
        )[0]
        ours = onnx_features(session, manifest, img[None])[0]
        if ours.shape != ref.shape:
            raise DiffCutError(
                f"{model_dir} gives features {ours.shape} but the reference gives {ref.shape}; "
                f"was the folder exported from {model}?"
            )
        cos = float(token_cosines(ours, ref).min())
        rel = relative_error(ours, ref)
        agree = label_agreement(ours, ref, manifest.grid) if labels else None
        report.images.append(ImageCheck(name, cos, rel, agree, passes(cos, rel, manifest.precision)))
    if record and manifest.needs_verification:
        against = f"PyTorch reference {model if isinstance(model, (str, os.PathLike)) else 'pipeline'}"
        manifest.verification = verification_record(
            against,
            report.passed,
            report.images,
            {"min_cosine": report.thresholds[1], "max_rel_error": report.thresholds[0]},
        )
        write_manifest(model_dir, manifest)
    return report


def verification_record(
    against: str, passed: bool, images: Sequence[ImageCheck], thresholds: dict[str, Any], **figures: Any
) -> dict[str, Any]:
    """The ``verification`` entry of a manifest: the verdict, its figures, when and by which version."""
    import datetime

    from diffcut_edge import versions

    return {
        "against": against,
        "passed": bool(passed),
        "images": len(images),
        "min_cosine": min((i.min_cosine for i in images), default=float("nan")),
        "max_rel_error": max((i.rel_error for i in images), default=float("nan")),
        **figures,
        "thresholds": thresholds,
        "verified_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "diffcut_edge": versions.dist_version("diffcut-edge") or "unknown",
    }


# ------------------------------------------------------------------ folder against folder
@dataclass
class AgainstReport:
    model_dir: Path
    against: Path
    precision: str
    thresholds: tuple[float, float]
    images: list[ImageCheck] = field(default_factory=list)
    images_sha256: str = ""

    @property
    def min_cosine(self) -> float:
        return min((i.min_cosine for i in self.images), default=float("nan"))

    @property
    def mean_label_agreement(self) -> float | None:
        """Mean over the images whose labels can judge (stable reference labels); None: none can."""
        values = [i.label_agreement for i in self.images if i.labels_informative]
        return float(np.mean(values)) if values else None

    @property
    def passed(self) -> bool:
        """Labels decide where they can; the cosine where no image's labels can."""
        cos_min, labels_min = self.thresholds
        labels = self.mean_label_agreement
        if not self.images:
            return False
        return labels >= labels_min if labels is not None else self.min_cosine >= cos_min

    def record(self) -> dict[str, Any]:
        """What goes into the faster folder's manifest (``verification``)."""
        cos_min, labels_min = self.thresholds
        return verification_record(
            str(self.against.resolve()),
            self.passed,
            self.images,
            {"min_cosine": cos_min, "min_mean_label_agreement": labels_min},
            images_sha256=self.images_sha256,
            mean_label_agreement=self.mean_label_agreement,
            label_images=sum(i.labels_informative for i in self.images),
            decided_by="labels" if self.mean_label_agreement is not None else "cosine",
        )

    def lines(self) -> list[str]:
        cos_min, labels_min = self.thresholds
        head = (
            f"{self.model_dir} ({self.precision}) against {self.against}: pass if mean label agreement >= "
            f"{100 * labels_min:.0f}% on the images whose labels hold still, else if min token cosine >= {cos_min}"
        )
        rows = [f"{'image':<24} {'min cos':>10} {'rel err':>10} {'labels':>8}  reference labels under noise"]
        for i in self.images:
            labels = "-" if i.label_agreement is None else f"{100 * i.label_agreement:.1f}%"
            probe = "" if i.label_stability is None else f"  {100 * i.label_stability:.1f}%"
            if i.label_agreement is not None and not i.labels_informative:
                probe += " (near-ties: labels not counted)"
            rows.append(f"{i.name[:24]:<24} {i.min_cosine:>10.6f} {i.rel_error:>10.2e} {labels:>8}{probe}")
        mean = self.mean_label_agreement
        decided = "labels" if mean is not None else "cosine (no image's labels hold still)"
        summary = (
            f"min cosine {self.min_cosine:.6f}, mean label agreement "
            + ("-" if mean is None else f"{100 * mean:.1f}%")
            + f"; decided by {decided}"
        )
        return [head, *rows, summary, "verify: " + ("passed" if self.passed else "FAILED")]


def _check_comparable(fast: Manifest, full: Manifest, fast_dir: Path, full_dir: Path) -> None:
    def norm(value: Any) -> Any:
        return tuple(value) if isinstance(value, (list, tuple)) else value

    source = (fast.quantization or {}).get("source_dir")
    hint = f" (its manifest names {source})" if source else ""
    for name in ("family", "resolution", "grid", "channels", "timestep", "noise_seed"):
        a, b = getattr(fast, name), getattr(full, name)
        if norm(a) != norm(b):
            raise DiffCutError(
                f"{fast_dir} and {full_dir} differ in {name} ({a} vs {b}): compare a folder "
                f"with the one it was made from{hint}"
            )


def _images_sha256(images: Sequence[tuple[str, np.ndarray]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, img in images:
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(img).tobytes())
    return digest.hexdigest()


def _features_of_each(model_dir: Path, manifest: Manifest, loaded: Sequence[tuple[str, np.ndarray]]) -> list:
    """The folder's features of every image; its session closes when this returns."""
    session = open_session(model_dir, manifest)
    return [onnx_features(session, manifest, img[None])[0] for _, img in loaded]


def verify_against(
    model_dir: str | os.PathLike,
    against: str | os.PathLike,
    images: Sequence[str | os.PathLike] | None = None,
    *,
    labels: bool = True,
    record: bool = True,
    isolate: bool = False,
    files_checked: bool = False,
) -> AgainstReport:
    """Compare the folder ``model_dir`` (e.g. INT8) with ``against`` (its fp32 source) on the same images.

    Both run through onnxruntime on the CPU; labels come from the runtime's NCut + assignment
    (numpy). With ``record``, the verdict is written into ``model_dir``'s manifest, where
    ``segment`` and ``bench`` read it. ``isolate``: each folder's session in a process of its own
    (``isolated.py``: for big models, whose sessions keep memory after they close).
    ``files_checked``: the caller has just hashed both folders' ONNX files (quantize: the source
    at its start, the new folder as it wrote it), so they are not hashed again (GBs at 1024 px).
    """
    from diffcut_edge.metrics import matched_agreement
    from diffcut_edge.runtime import segment_features

    model_dir, against = Path(model_dir), Path(against)
    if model_dir.resolve() == against.resolve():
        raise DiffCutError("--model-dir and --against are the same folder: compare a faster folder with its source")
    fast, full = read_manifest(model_dir), read_manifest(against)
    if not files_checked:
        verify_files(model_dir, fast)
        verify_files(against, full)
    _check_comparable(fast, full, model_dir, against)
    loaded = load_images(images, fast.resolution)
    report = AgainstReport(
        model_dir=model_dir,
        against=against,
        precision=fast.precision,
        thresholds=against_thresholds(fast),
        images_sha256=_images_sha256(loaded),
    )
    # One folder's session at a time: at 1024 px an fp32 SSD-1B session alone peaks near 8 GB.
    from diffcut_edge.isolated import run_stage

    fast_features = run_stage(isolate, "verify", _features_of_each, model_dir, fast, loaded)
    full_features = run_stage(isolate, "verify", _features_of_each, against, full, loaded)
    grid = tuple(fast.grid)
    for (name, _), ours, ref in zip(loaded, fast_features, full_features):
        cos = float(token_cosines(ours, ref).min())
        rel = relative_error(ours, ref)
        agree = stability = None
        if labels:
            ref_labels = segment_features(ref, grid)
            agree = matched_agreement(segment_features(ours, grid), ref_labels)
            stability = label_stability(ref, grid, ref_labels)
        report.images.append(ImageCheck(name, cos, rel, agree, cos >= report.thresholds[0], stability))
    if record:
        fast.verification = report.record()
        write_manifest(model_dir, fast)
    return report
