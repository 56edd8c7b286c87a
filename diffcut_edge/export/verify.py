"""Compare an exported model folder with the PyTorch reference on real photos.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.manifest import Manifest, read_manifest, verify_files

# precision -> (max relative error or None, min token cosine)
THRESHOLDS: dict[str, tuple[float | None, float]] = {"fp32": (1e-4, 0.9999), "fp16": (None, 0.999)}
SAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass
class ImageCheck:
    name: str
    min_cosine: float
    rel_error: float
    label_agreement: float | None
    passed: bool


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
        head = (f"{self.model_dir} ({self.precision}): pass if min cosine >= {cos_min}"
                + (f" and rel error <= {rel_max:g}" if rel_max is not None else ""))
        rows = [f"{'image':<24} {'min cos':>10} {'rel err':>10} {'labels':>8}  result"]
        for i in self.images:
            labels = "-" if i.label_agreement is None else f"{100 * i.label_agreement:.1f}%"
            rows.append(f"{i.name[:24]:<24} {i.min_cosine:>10.6f} {i.rel_error:>10.2e} {labels:>8}  "
                        f"{'ok' if i.passed else 'FAIL'}")
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

    out = []
    if paths:
        for p in paths:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DiffCutError(f"cannot read image {p} (missing, or not an image OpenCV can decode)")
            out.append((Path(p).name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    else:
        try:
            from skimage import data
        except ImportError as e:
            raise DiffCutError("no images given and scikit-image (for its sample photos) is not installed; "
                               "pass image files: diffcut-edge verify ... IMG [IMG ...]") from e
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
def verify_model(model: Any, model_dir: str | os.PathLike, images: Sequence[str | os.PathLike] | None = None,
                 *, labels: bool = True) -> VerifyReport:
    """Run the reference (``model``: a hub id, a pipeline folder, or a loaded pipeline) and the
    exported folder on the same images; see the module docstring for what is compared."""
    import torch

    from diffcut_edge import models
    from diffcut_edge.diffcut_ref import extract_features

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    verify_files(model_dir, manifest)
    pipeline = model if hasattr(model, "unet") else models.load_pipeline(str(model), torch_dtype=torch.float32,
                                                                           device="cpu")
    family = models.pipeline_family(pipeline)
    if family != manifest.family:
        raise DiffCutError(f"{model} is an {family} pipeline but {model_dir} was exported from an "
                           f"{manifest.family} one ({manifest.model_id}); pass the model it was exported from")
    report = VerifyReport(model_dir=model_dir, precision=manifest.precision,
                          thresholds=THRESHOLDS[manifest.precision])
    session = open_session(model_dir, manifest)
    for name, img in load_images(images, manifest.resolution):
        ref = extract_features(pipeline, img[None], resolution=manifest.resolution, timestep=manifest.timestep,
                               noise_seed=manifest.noise_seed)[0]
        ours = onnx_features(session, manifest, img[None])[0]
        if ours.shape != ref.shape:
            raise DiffCutError(f"{model_dir} gives features {ours.shape} but the reference gives {ref.shape}; "
                               f"was the folder exported from {model}?")
        cos = float(token_cosines(ours, ref).min())
        rel = relative_error(ours, ref)
        agree = label_agreement(ours, ref, manifest.grid) if labels else None
        report.images.append(ImageCheck(name, cos, rel, agree, passes(cos, rel, manifest.precision)))
    return report
