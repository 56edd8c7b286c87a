"""Build a TensorRT engine from a model folder's ``encoder.onnx``, on the target GPU.

TensorRT Python API only (no trtexec) and no torch in the process: building needs far more
memory than running, which is tight on Jetson boards. One step per function:

    read + verify manifest -> probe GPU -> parse ONNX (external data by path) -> builder config
    (precision per TensorRT version, one batch profile, workspace, timing cache)
    -> build_serialized_network -> save engine atomically -> record it in the manifest

The engine is named ``encoder.<gpu-slug>.trt<version>.plan`` because an engine only runs on
the GPU model and TensorRT version that built it; the manifest records both, and the
runtime refuses a mismatch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from diffcut_edge import atomic
from diffcut_edge.errors import DiffCutError, missing_extra
from diffcut_edge.runtime import trt_compat
from diffcut_edge.runtime.gpu import GpuInfo, probe_gpu
from diffcut_edge.runtime.manifest import (
    EngineRecord,
    Manifest,
    read_manifest,
    sha256_file,
    verify_files,
    write_manifest,
)

MAX_BATCH = 64  # matches nothing in the graph; a sanity bound for typos like 1:1:400


# ------------------------------------------------------------------ pure helpers
def parse_batch_spec(spec: str | tuple[int, int, int] | list[int]) -> tuple[int, int, int]:
    """``"1:1:4"`` (or a 3-tuple) -> (min, opt, max), validated: 1 <= min <= opt <= max <= 64.

    A single number ``"2"`` means a static batch (2, 2, 2).
    """
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise DiffCutError(f"--batch must be MIN:OPT:MAX (e.g. 1:1:4) or one number, got {spec!r}")
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            raise DiffCutError(f"--batch must be integers MIN:OPT:MAX (e.g. 1:1:4), got {spec!r}") from None
    else:
        values = tuple(int(v) for v in spec)
        if len(values) != 3:
            raise DiffCutError(f"batch profile must be (min, opt, max), got {spec!r}")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise DiffCutError(f"batch profile must satisfy 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
    if hi > MAX_BATCH:
        raise DiffCutError(
            f"batch max {hi} is above {MAX_BATCH}; each extra image costs activation memory, pick a smaller max"
        )
    return lo, opt, hi


def gpu_slug(gpu_name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"`` (file-name safe)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return slug or "gpu"


def engine_file_name(gpu_name: str, trt_version: str) -> str:
    """``encoder.<gpu-slug>.trt<major.minor.patch>.plan``."""
    version = ".".join(str(v) for v in trt_compat.parse_version(trt_version))
    return f"encoder.{gpu_slug(gpu_name)}.trt{version}.plan"


def workspace_bytes(workspace_gb: float | None) -> int | None:
    if workspace_gb is None:
        return None
    if not workspace_gb > 0:
        raise DiffCutError(f"--workspace must be a positive number of GiB, got {workspace_gb}")
    return int(workspace_gb * (1 << 30))


def record_engine(
    model_dir: str | os.PathLike,
    manifest: Manifest,
    engine: bytes | memoryview,
    *,
    gpu: GpuInfo,
    trt_version: str,
    batch: tuple[int, int, int],
) -> Path:
    """Save ``engine`` atomically in ``model_dir`` and record it in the manifest.

    A record for the same file (same GPU model and TensorRT version) is replaced.
    """
    model_dir = Path(model_dir)
    path = model_dir / engine_file_name(gpu.name, trt_version)
    atomic.write_bytes(path, engine)
    version = ".".join(str(v) for v in trt_compat.parse_version(trt_version))
    record = EngineRecord(
        file=path.name,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=version,
        batch_profile=tuple(batch),
        sha256=sha256_file(path),
    )
    manifest.engines = [e for e in manifest.engines if e.file != record.file] + [record]
    write_manifest(model_dir, manifest)
    return path


# ------------------------------------------------------------------ environment probes
def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise missing_extra("tensorrt", "trt", "building a TensorRT engine") from e
    return tensorrt


def require_gpu() -> GpuInfo:
    gpu = probe_gpu()
    if gpu is None:
        raise DiffCutError(
            "no CUDA GPU found (no NVIDIA driver or no device): a TensorRT engine must be "
            "built on the GPU that will run it; run 'diffcut-edge build-engine' on the "
            "target machine, or use the ONNX model with onnxruntime meanwhile"
        )
    return gpu


# ------------------------------------------------------------------ the build (GPU only)
def _parse_onnx(trt: Any, network: Any, logger: Any, settings: trt_compat.BuilderSettings, onnx_path: Path) -> Any:
    parser = trt_compat.create_parser(trt, network, logger, settings)
    # parse_from_file resolves encoder.onnx.data relative to the file, unlike parse(bytes).
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DiffCutError(
            f"TensorRT could not parse {onnx_path}: "
            + "; ".join(errors[:10])
            + (f" (+{len(errors) - 10} more)" if len(errors) > 10 else "")
            + "; re-export with a supported --opset or a newer TensorRT"
        )
    return parser


def _add_profile(builder: Any, config: Any, manifest: Manifest, batch: tuple[int, int, int]) -> None:
    r = manifest.resolution
    profile = builder.create_optimization_profile()
    lo, opt, hi = ((b, 3, r, r) for b in batch)
    profile.set_shape(manifest.input_name, lo, opt, hi)
    config.add_optimization_profile(profile)


def timing_cache_name(gpu_name: str, trt_version: str) -> str:
    """``timing.<gpu-slug>.trt<version>.cache``: timings are only valid for the GPU and TensorRT
    version that measured them, like the engine (one shared cache mixed GPUs)."""
    version = ".".join(str(v) for v in trt_compat.parse_version(trt_version))
    return f"timing.{gpu_slug(gpu_name)}.trt{version}.cache"


def _load_timing_cache(config: Any, path: Path) -> Any:
    """The timing cache at ``path`` set on ``config``; an empty one when TensorRT refuses it."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, ignore_mismatch=False) is False and data:
        # A cache from another device or version: start afresh (it is overwritten with ours).
        cache = config.create_timing_cache(b"")
        if config.set_timing_cache(cache, ignore_mismatch=False) is False:
            raise DiffCutError("TensorRT refused an empty timing cache; rerun with --no-timing-cache")
    return cache


def _build_serialized(
    trt: Any,
    settings: trt_compat.BuilderSettings,
    onnx_path: Path,
    manifest: Manifest,
    batch: tuple[int, int, int],
    workspace: int | None,
    cache_path: Path | None,
    verbose: bool,
) -> tuple[Any, Any]:
    """(serialized engine, timing cache or None). Builder, network, parser and config are local,
    so they are freed when this returns, before the plan is written: on an 8 GB board the
    builder's memory and the plan must not be held together."""
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = trt_compat.create_network(trt, builder, settings)
    parser = _parse_onnx(trt, network, logger, settings, onnx_path)
    if settings.pin_fp32_layers:
        trt_compat.pin_fp32_layers(trt, network)
    config = builder.create_builder_config()
    trt_compat.configure(trt, config, settings, workspace)
    _add_profile(builder, config, manifest, batch)
    cache = _load_timing_cache(config, cache_path) if cache_path is not None else None
    serialized = builder.build_serialized_network(network, config)
    del parser, network, config, builder
    return serialized, cache


def build_engine(
    model_dir: str | os.PathLike,
    *,
    workspace_gb: float | None = None,
    batch: tuple[int, int, int] | str = (1, 1, 4),
    timing_cache: bool = True,
    verbose: bool = False,
) -> Path:
    """Build ``encoder.<gpu>.trt<ver>.plan`` from ``model_dir/encoder.onnx`` and record it.

    ``batch`` is the one optimization profile (min, opt, max) over the batch axis;
    ``workspace_gb`` caps TensorRT's scratch memory pool; ``timing_cache`` keeps
    ``timing.cache`` in the folder so rebuilds skip kernel timing. Needs TensorRT
    (``[trt]`` extra) and an NVIDIA GPU; no torch is imported.
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    verify_files(model_dir, manifest)
    batch = parse_batch_spec(batch)
    workspace = workspace_bytes(workspace_gb)
    trt_compat.check_quantization_for_tensorrt(manifest.quantization, str(model_dir))
    trt = import_tensorrt()
    gpu = require_gpu()
    settings = trt_compat.builder_settings(trt.__version__, manifest.precision)
    cache_path = model_dir / timing_cache_name(gpu.name, trt.__version__) if timing_cache else None
    serialized, cache = _build_serialized(
        trt, settings, model_dir / manifest.onnx_file, manifest, batch, workspace, cache_path, verbose
    )
    if serialized is None:
        raise DiffCutError(
            "TensorRT returned no engine (see its log above); this is usually out of memory: lower "
            "--workspace, lower the batch max, close other GPU processes, or build on a bigger machine "
            f"with the same GPU ({gpu.name}, compute {gpu.compute_capability}) and TensorRT version"
        )
    if cache is not None:
        atomic.write_bytes(cache_path, cache.serialize())
    return record_engine(model_dir, manifest, serialized, gpu=gpu, trt_version=trt.__version__, batch=batch)
