"""Inference backends behind one interface, and :func:`open_backend` to pick one.

=============  ============================================================
``auto``       native TensorRT if the folder has an engine for this GPU and
               tensorrt + cupy import; else ONNX Runtime with the best providers
``tensorrt``   native TensorRT (fails with what to do if it cannot)
``ort``        ONNX Runtime, best available provider (TensorRT EP > CUDA > CPU)
``ort-trt``    ONNX Runtime with the TensorRT execution provider
``ort-cuda``   ONNX Runtime with the CUDA execution provider
``ort-cpu``    ONNX Runtime on the CPU
=============  ============================================================

Importing this package imports neither onnxruntime, tensorrt nor cupy.
"""

from __future__ import annotations

import os
from pathlib import Path

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.backends.base import Backend, check_image_batch
from diffcut_edge.runtime.backends.onnxrt import ORT_BACKENDS, OnnxRuntimeBackend, choose_providers
from diffcut_edge.runtime.backends.tensorrt import TensorRTBackend, find_engine, select_engine
from diffcut_edge.runtime.manifest import Manifest, read_manifest, verify_files

BACKENDS = ("auto", "tensorrt", *ORT_BACKENDS)

__all__ = [
    "BACKENDS",
    "Backend",
    "OnnxRuntimeBackend",
    "TensorRTBackend",
    "check_image_batch",
    "auto_backend",
    "choose_providers",
    "find_engine",
    "open_backend",
    "select_engine",
]


def _native_engine_available(manifest: Manifest, device_id: int) -> bool:
    """Whether auto should take native TensorRT: packages import and an engine fits this GPU."""
    from diffcut_edge.lazy import cupy, tensorrt
    from diffcut_edge.runtime import trt_compat

    if not manifest.engines or not (tensorrt.available() and cupy.available()):
        return False
    try:
        gpu_name, cc = trt_compat.gpu_identity(cupy, device_id)
    except Exception:  # cupy present but no usable CUDA device/driver
        return False
    return find_engine(manifest, gpu_name, cc, tensorrt.__version__) is not None


def auto_backend(manifest: Manifest, device_id: int = 0) -> str:
    """What ``backend="auto"`` opens: "tensorrt" when an engine fits this GPU and tensorrt + cupy
    import, else "ort" (onnxruntime with its best provider). ``doctor`` reports the same choice."""
    return "tensorrt" if _native_engine_available(manifest, device_id) else "ort"


def open_backend(
    model_dir: str | os.PathLike,
    backend: str = "auto",
    manifest: Manifest | None = None,
    *,
    verify: bool = True,
    keep_on_device: bool = False,
    device_id: int = 0,
    threads: int | None = None,
) -> Backend:
    """Open the encoder of an exported model folder.

    Args:
        model_dir: the folder written by ``diffcut-edge export``.
        backend: one of :data:`BACKENDS` (see the module docstring).
        manifest: an already-read manifest (else read from the folder).
        verify: hash the ONNX files against the manifest (cheap next to loading them;
            turn off to open big models faster).
        keep_on_device: native TensorRT only: return cupy features for GPU post-processing.
        threads: ONNX Runtime CPU intra-op threads (None = its default).
    """
    if backend not in BACKENDS:
        raise DiffCutError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model_dir = Path(model_dir)
    manifest = manifest or read_manifest(model_dir)
    if verify:
        verify_files(model_dir, manifest)
    chosen = auto_backend(manifest, device_id) if backend == "auto" else backend
    if chosen == "tensorrt":
        return TensorRTBackend(
            model_dir, manifest=manifest, keep_on_device=keep_on_device, device_id=device_id, verify=verify
        )
    return OnnxRuntimeBackend(model_dir, backend=chosen, manifest=manifest, threads=threads, device_id=device_id)
