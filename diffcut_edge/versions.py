"""Installed library versions, for manifests, bench reports and ``doctor`` (one helper)."""

from __future__ import annotations

import platform
from importlib import metadata

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
