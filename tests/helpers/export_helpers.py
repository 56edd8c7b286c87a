"""Helpers shared by the export tests (no fixtures here: conftest owns those)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from helpers.data import sample_photos


@cache
def load_tiny_pipeline(folder: str):
    """A tiny pipeline loaded once per session, fp32 on the CPU (tests must not mutate it)."""
    import torch

    from diffcut_edge.models import load_pipeline

    return load_pipeline(folder, torch_dtype=torch.float32, device="cpu")


def photo_batch(size: int, count: int) -> np.ndarray:
    """``count`` real photos (B, size, size, 3) RGB float32 in [0, 1]."""
    return np.stack(sample_photos(size)[:count]).astype(np.float32)


def run_onnx(model_dir: Path, images_bhwc: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(model_dir) / "encoder.onnx"), providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(images_bhwc.transpose(0, 3, 1, 2))
    return session.run(["features"], {"image": batch})[0]


def token_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref.astype(np.float64)))
