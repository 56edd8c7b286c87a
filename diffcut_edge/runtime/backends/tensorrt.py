"""Native TensorRT backend: a prebuilt engine from the model folder, cupy buffers.

Everything that does not need a GPU — picking the engine for this GPU and TensorRT
version from the manifest, checking the engine's tensors against the manifest — is a
pure function here, tested on the CPU. The backend itself needs tensorrt + cupy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import cupy as cp
from diffcut_edge.lazy import tensorrt as trt
from diffcut_edge.runtime import trt_compat
from diffcut_edge.runtime.backends.base import Backend
from diffcut_edge.runtime.manifest import EngineRecord, Manifest, folder_file, read_manifest, sha256_file
from diffcut_edge.runtime.xp import to_host


def _describe(record: EngineRecord) -> str:
    return f"{record.gpu_name} (sm {record.compute_capability}) / TRT {record.tensorrt_version}"


def find_engine(manifest: Manifest, gpu_name: str, compute_capability: str, trt_version: str) -> EngineRecord | None:
    """The manifest's engine built for this GPU and TensorRT version, or None."""
    for record in manifest.engines:
        if (
            record.gpu_name == gpu_name
            and record.compute_capability == compute_capability
            and trt_compat.same_trt_version(record.tensorrt_version, trt_version)
        ):
            return record
    return None


def select_engine(
    manifest: Manifest,
    gpu_name: str,
    compute_capability: str,
    trt_version: str,
    model_dir: str | os.PathLike = "<model folder>",
) -> EngineRecord:
    """Like :func:`find_engine`, but a missing match is a DiffCutError saying what to run."""
    record = find_engine(manifest, gpu_name, compute_capability, trt_version)
    if record is not None:
        return record
    here = f"{gpu_name} (sm {compute_capability}) / TRT {trt_version}"
    command = f"run 'diffcut-edge build-engine --model-dir {model_dir}' on this machine"
    if not manifest.engines:
        raise DiffCutError(
            f"{model_dir} has no TensorRT engine (this is {here}): {command}, "
            f"or use an ONNX Runtime backend (--backend ort)"
        )
    built = "; ".join(_describe(r) for r in manifest.engines)
    raise DiffCutError(f"the engines in {model_dir} were built for {built}; this is {here}: {command}")


def check_engine_io(tensors: list[tuple[str, bool, np.dtype]], manifest: Manifest) -> None:
    """Check an engine's I/O (``[(name, is_input, dtype)]``) against the manifest."""
    inputs = [(n, d) for n, is_in, d in tensors if is_in]
    outputs = [(n, d) for n, is_in, d in tensors if not is_in]
    if [n for n, _ in inputs] != [manifest.input_name] or manifest.output_name not in [n for n, _ in outputs]:
        raise DiffCutError(
            f"engine tensors: inputs {[n for n, _ in inputs]}, outputs {[n for n, _ in outputs]}; "
            f"the manifest says '{manifest.input_name}' -> '{manifest.output_name}': "
            f"rebuild the engine from this folder's encoder.onnx"
        )
    if inputs[0][1] != np.float32:
        raise DiffCutError(
            f"engine input '{manifest.input_name}' is {inputs[0][1]}, expected float32: "
            f"rebuild the engine with 'diffcut-edge build-engine'"
        )
    out_dtype = dict(outputs)[manifest.output_name]
    if out_dtype not in (np.float32, np.float16):
        raise DiffCutError(
            f"engine output '{manifest.output_name}' is {out_dtype}, expected float32 "
            f"or float16: rebuild the engine with 'diffcut-edge build-engine'"
        )


def check_profile(
    min_shape: tuple[int, ...], max_shape: tuple[int, ...], manifest: Manifest, record: EngineRecord
) -> None:
    """The engine's input profile must match the manifest's resolution and recorded batch."""
    r = manifest.resolution
    expected_min = (record.batch_profile[0], 3, r, r)
    expected_max = (record.batch_profile[2], 3, r, r)
    if tuple(min_shape) != expected_min or tuple(max_shape) != expected_max:
        raise DiffCutError(
            f"engine {record.file}: input profile {tuple(min_shape)}..{tuple(max_shape)}, "
            f"the manifest expects {expected_min}..{expected_max}; rebuild the engine"
        )


class TensorRTBackend(Backend):
    """A TensorRT engine from the model folder, run on the current CUDA device with cupy.

    Args:
        model_dir: an exported model folder with an engine for this GPU (``build-engine``).
        manifest: an already-read manifest.
        keep_on_device: return features as a cupy array (for cupy post-processing)
            instead of copying them to host numpy.
        device_id: the CUDA device.
        verify: check the engine file's SHA-256 against the manifest.
    """

    device = "cuda"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        manifest: Manifest | None = None,
        keep_on_device: bool = False,
        device_id: int = 0,
        verify: bool = True,
    ) -> None:
        model_dir = Path(model_dir)
        manifest = manifest or read_manifest(model_dir)
        # Both missing-package errors come before any GPU work.
        trt.load()
        cp.load()
        cp.cuda.Device(device_id).use()
        gpu_name, cc = trt_compat.gpu_identity(cp, device_id)
        record = select_engine(manifest, gpu_name, cc, trt.__version__, model_dir)
        path = folder_file(model_dir, record.file, "engine")
        if not path.is_file():
            raise DiffCutError(
                f"{path} is listed in the manifest but missing: rebuild it with "
                f"'diffcut-edge build-engine --model-dir {model_dir}'"
            )
        if verify and record.sha256 and sha256_file(path) != record.sha256:
            raise DiffCutError(
                f"{path} does not match its manifest entry (modified or truncated): "
                f"rebuild it with 'diffcut-edge build-engine --model-dir {model_dir}'"
            )
        super().__init__(manifest, (record.batch_profile[0], record.batch_profile[2]))
        self.engine_path = path
        self.device_id = int(device_id)
        self.outputs_on_device = keep_on_device
        self._engine, self._runtime = trt_compat.deserialize_engine(trt.load(), path.read_bytes(), str(path))
        check_engine_io(trt_compat.io_tensors(trt.load(), self._engine), manifest)
        low, _, high = trt_compat.profile_shapes(self._engine, manifest.input_name)
        check_profile(low, high, manifest, record)
        self._out_dtype = trt_compat.numpy_dtype(self._engine.get_tensor_dtype(manifest.output_name))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise DiffCutError(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self._stream = cp.cuda.Stream(non_blocking=True)

    def _infer_impl(self, images: Any) -> dict[str, Any]:
        # The batch was written on the caller's stream (preprocess runs on cupy's current one);
        # the engine runs on its own non-blocking stream, which does not wait for the default
        # stream by itself: order the two explicitly, or the engine can read a half-written input.
        # cupy's current device is per thread (the pipelined video worker is another thread):
        # name it on every call instead of relying on the Device(id).use() of __init__.
        with cp.cuda.Device(self.device_id):
            return self._enqueue(images)

    def _enqueue(self, images: Any) -> dict[str, Any]:
        self._stream.wait_event(cp.cuda.get_current_stream().record())
        with self._stream:
            x = cp.ascontiguousarray(cp.asarray(images, dtype=np.float32))
            trt_compat.set_input_shape(self._context, self.input_name, x.shape)
            out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self.output_name))
            out = cp.empty(out_shape, dtype=self._out_dtype)
            self._context.set_tensor_address(self.input_name, x.data.ptr)
            self._context.set_tensor_address(self.output_name, out.data.ptr)
            trt_compat.execute(self._context, self._stream.ptr)
            # Post-processing runs in float32 whatever the engine's output precision.
            features = out.astype(np.float32, copy=False)
        self._stream.synchronize()
        return {self.output_name: features if self.outputs_on_device else to_host(features)}

    def _close_impl(self) -> None:
        # Release in dependency order: context, engine, then the runtime that made it.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None
