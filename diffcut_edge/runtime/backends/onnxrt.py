"""ONNX Runtime backend: TensorRT EP > CUDA EP > CPU, from what onnxruntime reports.

Provider choice is a pure function (:func:`choose_providers`) of the provider names
onnxruntime reports as available, so it is tested on any machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge import atomic
from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import onnxruntime as ort
from diffcut_edge.paths import cache_root
from diffcut_edge.runtime.backends.base import Backend
from diffcut_edge.runtime.manifest import Manifest, folder_file, read_manifest
from diffcut_edge.runtime.xp import to_host

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_EPS = (TRT_EP, CUDA_EP)

# backend name -> execution providers wanted, best first ("ort" = the best available).
ORT_BACKENDS: dict[str, tuple[str, ...]] = {
    "ort": (TRT_EP, CUDA_EP, CPU_EP),
    "ort-trt": (TRT_EP, CUDA_EP, CPU_EP),
    "ort-cuda": (CUDA_EP, CPU_EP),
    "ort-cpu": (CPU_EP,),
}
# Folder (inside the model folder) where the TensorRT EP caches its engines: building
# one takes minutes, so it must survive the process.
TRT_EP_CACHE_DIR = "ort-trt-cache"
# Largest batch the TensorRT EP profile admits; bigger batches would rebuild the engine.
DEFAULT_MAX_BATCH = 4

ProviderSpec = tuple[str, dict[str, Any]]


def trt_ep_cache_dir(model_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Where the TensorRT EP keeps its engines: inside the model folder when it can be written,
    else under the user's cache (a read-only model folder made ORT fail, reported as a corrupt ONNX)."""
    inside = Path(model_dir) / TRT_EP_CACHE_DIR
    try:
        atomic.check_writable_dir(atomic.make_dirs(inside))
        return inside
    except DiffCutError:
        key = (manifest.files_sha256.get(manifest.onnx_file) or str(Path(model_dir).resolve()))[:16]
        return atomic.make_dirs(cache_root() / "ort-trt" / key)


def _trt_ep_options(manifest: Manifest, cache_dir: Path, max_batch: int, device_id: int) -> dict[str, Any]:
    r, name = manifest.resolution, manifest.input_name
    return {
        "device_id": int(device_id),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        # Never the FP16 flag: the EP builds a weakly typed network, where the flag lets TensorRT
        # run the fp32 VAE encoder of the mixed graph in fp16 (it overflows there); the UNet part
        # keeps the fp16 types the ONNX gives it. Precision pinning is native TensorRT's job.
        "trt_fp16_enable": False,
        # An INT8 folder is explicitly quantized (Q/DQ nodes): the EP's weakly typed network needs
        # the INT8 flag to use them, and no calibration table.
        "trt_int8_enable": manifest.precision == "int8",
        # One explicit profile, so a new batch size within it does not trigger a rebuild.
        "trt_profile_min_shapes": f"{name}:1x3x{r}x{r}",
        "trt_profile_opt_shapes": f"{name}:1x3x{r}x{r}",
        "trt_profile_max_shapes": f"{name}:{max_batch}x3x{r}x{r}",
    }


def _tensorrt_refusal(manifest: Manifest) -> str | None:
    """Why TensorRT cannot build this folder (uint8-activation INT8), or None."""
    from diffcut_edge.runtime.trt_compat import check_quantization_for_tensorrt

    try:
        check_quantization_for_tensorrt(manifest.quantization, "this folder")
    except DiffCutError as e:
        return str(e)
    return None


def choose_providers(
    available: Sequence[str],
    manifest: Manifest,
    *,
    backend: str = "ort",
    cache_dir: str | os.PathLike | None = None,
    device_id: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> list[ProviderSpec]:
    """The execution providers (with options) to open a session with, best first.

    Args:
        available: what ``onnxruntime.get_available_providers()`` reports.
        manifest: the model folder's manifest (precision, input name, resolution).
        backend: one of :data:`ORT_BACKENDS`; "ort" takes the best available, the others
            demand their first provider and fail with the package to install.
        cache_dir: where the TensorRT EP keeps its engine cache.
    Returns:
        ``[(provider_name, options), ...]`` ending with the CPU provider.
    """
    if backend not in ORT_BACKENDS:
        raise DiffCutError(f"unknown ONNX Runtime backend {backend!r}; choose one of {sorted(ORT_BACKENDS)}")
    wanted = ORT_BACKENDS[backend]
    available = list(available)
    if backend != "ort" and wanted[0] not in available:
        hint = (
            "pip install 'diffcut-edge[gpu]' (onnxruntime-gpu, replacing onnxruntime) on a machine with an NVIDIA GPU"
            if wanted[0] in GPU_EPS
            else "reinstall onnxruntime"
        )
        raise DiffCutError(f"backend {backend!r} needs {wanted[0]}, but onnxruntime reports only {available}: {hint}")
    tensorrt_cannot_build = _tensorrt_refusal(manifest)
    if backend == "ort-trt" and tensorrt_cannot_build:
        raise DiffCutError(tensorrt_cannot_build)
    chosen: list[ProviderSpec] = []
    for name in wanted:
        if name not in available and name != CPU_EP:
            continue
        if name == TRT_EP and tensorrt_cannot_build:
            continue  # "ort" (best available): an onnxruntime-CPU INT8 folder goes to the CUDA EP
        if name == TRT_EP:
            chosen.append((name, _trt_ep_options(manifest, Path(cache_dir or TRT_EP_CACHE_DIR), max_batch, device_id)))
        elif name == CUDA_EP:
            chosen.append((name, {"device_id": device_id}))
        else:
            chosen.append((name, {}))
    return chosen


def _resolve_onnx(model_dir_or_onnx: str | os.PathLike, manifest: Manifest | None) -> tuple[Path, Path, Manifest]:
    """(model folder, ONNX file, manifest) from a folder or an ONNX file inside one."""
    path = Path(model_dir_or_onnx)
    if path.is_file():
        model_dir, onnx_path = path.parent, path
    else:
        model_dir, onnx_path = path, None
    manifest = manifest or read_manifest(model_dir)
    onnx_path = onnx_path or folder_file(model_dir, manifest.onnx_file, "ONNX")
    if not onnx_path.is_file():
        raise DiffCutError(f"{onnx_path} is missing; the model folder is incomplete, re-export it")
    return model_dir, onnx_path, manifest


class OnnxRuntimeBackend(Backend):
    """The encoder in an ONNX Runtime session.

    Args:
        model_dir_or_onnx: an exported model folder, or an ONNX file inside one.
        providers: explicit ``[(name, options)]`` or names; None = :func:`choose_providers`.
        backend: "ort" (best available), "ort-trt", "ort-cuda" or "ort-cpu".
        manifest: an already-read manifest (skips reading it again).
        threads: intra-op threads for the CPU provider (None = onnxruntime's default).
        max_batch: largest batch (the TensorRT EP's profile; None = unbounded otherwise).
    """

    def __init__(
        self,
        model_dir_or_onnx: str | os.PathLike,
        providers: Sequence[Any] | None = None,
        *,
        backend: str = "ort",
        manifest: Manifest | None = None,
        threads: int | None = None,
        max_batch: int | None = None,
        device_id: int = 0,
    ) -> None:
        model_dir, onnx_path, manifest = _resolve_onnx(model_dir_or_onnx, manifest)
        if providers is None:
            available = ort.get_available_providers()
            cache_dir = trt_ep_cache_dir(model_dir, manifest) if TRT_EP in available else None
            providers = choose_providers(
                available,
                manifest,
                backend=backend,
                cache_dir=cache_dir,
                device_id=device_id,
                max_batch=max_batch or DEFAULT_MAX_BATCH,
            )
        self.onnx_path = onnx_path
        self.session = self._open_session(onnx_path, list(providers), threads)
        self.providers = self.session.get_providers()
        uses_trt = self.providers[0] == TRT_EP
        super().__init__(manifest, (1, (max_batch or DEFAULT_MAX_BATCH) if uses_trt else max_batch))
        self.device = "cuda" if self.providers[0] in GPU_EPS else "cpu"
        self._check_io_names()

    @staticmethod
    def _open_session(onnx_path: Path, providers: list[Any], threads: int | None) -> Any:
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        try:
            return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DiffCutError(
                f"onnxruntime could not load {onnx_path} ({first_line[:300]}): the file is "
                f"corrupt, truncated or not an ONNX model; re-export the model folder with "
                f"'diffcut-edge export'"
            ) from e

    def _check_io_names(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [self.input_name] or self.output_name not in outputs:
            raise DiffCutError(
                f"{self.onnx_path} has inputs {inputs} / outputs {outputs}, but the manifest "
                f"says '{self.input_name}' -> '{self.output_name}'; re-export the model folder"
            )
        # The manifest's resolution sizes every buffer: it must be the graph's own (a manifest that
        # declares 64k px would otherwise allocate gigabytes before the graph refuses the input).
        shape = list(self.session.get_inputs()[0].shape)
        r = self.manifest.resolution
        if len(shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, r, r))):
            raise DiffCutError(
                f"{self.onnx_path} takes input {shape}, but the manifest says (B, 3, {r}, {r}); "
                f"re-export the model folder"
            )

    @property
    def description(self) -> str:
        return f"{type(self).__name__}[{self.providers[0]}]"  # the provider that runs first

    def _infer_impl(self, images: Any) -> dict[str, Any]:
        images = to_host(images)  # a cupy batch: onnxruntime reads host memory
        (features,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(images)})
        return {self.output_name: features}

    def _close_impl(self) -> None:
        self.session = None
