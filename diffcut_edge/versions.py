"""Installed library versions, for manifests, bench reports and ``doctor`` (one helper)."""

from __future__ import annotations

import contextlib
import platform
import shutil
from importlib import metadata
from pathlib import Path

# What each report records: key -> distributions that provide it (first installed wins).
RUNTIME_LIBRARIES = {
    "diffcut-edge": ("diffcut-edge",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11"),
    "cupy": ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"),
}
EXPORT_LIBRARIES = {
    "diffcut-edge": ("diffcut-edge",),
    "torch": ("torch",),
    "diffusers": ("diffusers",),
    "transformers": ("transformers",),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
}

# The wheel whose tritonserver ``serve`` runs when none is on PATH (only its binary is used).
PYTRITON = "nvidia-pytriton"

QUANTIZE_LIBRARIES = {
    "diffcut-edge": ("diffcut-edge",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


def dist_version(*names: str) -> str | None:
    """Version of the first of ``names`` that is installed, or None."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions(table: dict[str, tuple[str, ...]], *, python: bool = False) -> dict[str, str]:
    """``{key: version}`` for the installed libraries of ``table`` (missing ones left out)."""
    out = {"python": platform.python_version()} if python else {}
    for key, dists in table.items():
        version = dist_version(*dists)
        if version:
            out[key] = version
    return out


def installed_tritonserver() -> tuple[Path, str] | None:
    """``(executable, where it was found)`` of the tritonserver ``serve`` runs when none is named: the
    one on PATH, else the one the nvidia-pytriton wheel ships; None when neither is installed."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path), "PATH"
    with contextlib.suppress(metadata.PackageNotFoundError):
        path = Path(metadata.distribution(PYTRITON).locate_file("pytriton/tritonserver/bin/tritonserver"))
        if path.is_file():
            return path, PYTRITON
    return None
