"""Every TensorRT-version-dependent decision, in one module for the runtime and the export stage.

Running (runtime/backends/tensorrt.py): only the name-based tensor API (introduced in
8.5, the only one in 10+): ``num_io_tensors``, ``get_tensor_name/mode/dtype``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``. What still differs
between versions is shimmed here with ``getattr`` checks, so the backend has no version
branches.

Building (export/tensorrt_build.py): TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1+,
desktop) and 11 differ in how a network gets its precision and in a few flags:

- 8.x: networks need ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; fp16 comes from
  ``BuilderFlag.FP16`` (weak typing); the ONNX parser must be told to use the native
  InstanceNormalization (``OnnxParserFlag.NATIVE_INSTANCENORM``) instead of a plugin.
- 10.x: explicit batch is implicit (the flag is deprecated); native InstanceNorm is the
  parser default; ``STRONGLY_TYPED`` makes the builder follow the ONNX types exactly, which
  is what our mixed fp16 graph (fp32 VAE, fp16 UNet, explicit Casts) wants. Setting
  ``BuilderFlag.FP16`` on a strongly typed network is an error, so we never do.
- 11: every network is strongly typed and the weak-typing flags are gone.
- INT8 (a ``diffcut-edge quantize`` folder): explicit quantization from the graph's Q/DQ
  nodes. Strongly typed on >= 10 (the Q/DQ types decide; no flag), ``BuilderFlag.INT8`` on
  8.6. TensorRT takes only symmetric INT8 Q/DQ: a folder quantized with uint8 activations
  (the onnxruntime CPU default) is refused with the command that makes a TensorRT one.

:func:`builder_settings` is a pure function of (version, precision) so the decisions are
tested without TensorRT; :func:`create_network` and :func:`configure` apply them to real
TensorRT objects, with ``getattr`` guards where names moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError

# TensorRT DataType member names -> numpy dtypes (by name, so no tensorrt import is
# needed to test it). BF16/FP8/INT4 have no numpy equivalent: refused by the mapping.
_TRT_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}


def version_tuple(version: str, parts: int = 3) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0)``: engines are tied to major.minor.patch."""
    numbers = []
    for piece in str(version).split(".")[:parts]:
        digits = re.match(r"\d*", piece).group()  # leading digits: "0b1" -> 0
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers + [0] * (parts - len(numbers)))


def same_trt_version(a: str, b: str) -> bool:
    """Whether an engine built with TensorRT ``a`` deserializes with TensorRT ``b``."""
    return version_tuple(a) == version_tuple(b)


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """numpy dtype of a ``tensorrt.DataType`` (read by member name)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in _TRT_DTYPES:
        raise DiffCutError(
            f"TensorRT tensor type {name} has no numpy equivalent; rebuild the engine "
            f"with float32 or float16 I/O ('diffcut-edge build-engine')"
        )
    return np.dtype(_TRT_DTYPES[name])


def io_tensors(trt: Any, engine: Any) -> list[tuple[str, bool, np.dtype]]:
    """``[(name, is_input, numpy dtype)]`` of an engine's I/O tensors, in engine order."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        tensors.append((name, is_input, numpy_dtype(engine.get_tensor_dtype(name))))
    return tensors


def profile_shapes(engine: Any, name: str, profile: int = 0) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) shapes of input ``name`` in optimisation profile ``profile``."""
    if hasattr(engine, "get_tensor_profile_shape"):  # 8.5+, the only one in 10/11
        shapes = engine.get_tensor_profile_shape(name, profile)
    else:  # 8.4 and older
        shapes = engine.get_profile_shape(profile, name)
    return tuple(tuple(int(d) for d in s) for s in shapes)


def deserialize_engine(trt: Any, data: bytes, source: str, logger: Any = None) -> tuple[Any, Any]:
    """Deserialize engine bytes -> (engine, runtime); a None from TensorRT becomes a DiffCutError."""
    logger = logger if logger is not None else trt.Logger(trt.Logger.ERROR)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data) if data else None
    if engine is None:
        version = getattr(trt, "__version__", "?")
        raise DiffCutError(
            f"{source} is not a TensorRT engine or was built by another TensorRT version "
            f"(this is TensorRT {version}); rebuild it on this machine with "
            f"'diffcut-edge build-engine --model-dir <model folder>'"
        )
    # The runtime must outlive the engine on some versions (8.x): keep a reference.
    return engine, runtime


def set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    ok = context.set_input_shape(name, tuple(int(d) for d in shape))
    # 8.6+ returns a bool; older bindings return None on success.
    if ok is False:
        raise DiffCutError(
            f"TensorRT refused input shape {tuple(shape)} for '{name}': it is outside the "
            f"engine's optimisation profile; rebuild with a larger batch profile"
        )


def execute(context: Any, stream_ptr: int) -> None:
    if not context.execute_async_v3(stream_ptr):
        raise DiffCutError(
            "TensorRT execution failed (execute_async_v3 returned False); "
            "see the TensorRT log above, or rebuild the engine on this machine"
        )


def gpu_identity(cupy: Any, device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of CUDA device ``device_id``."""
    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name, f"{props['major']}.{props['minor']}"


# ------------------------------------------------------------------ engine build
MIN_SUPPORTED = (8, 6)


@dataclass(frozen=True)
class BuilderSettings:
    """What to ask of TensorRT for one (version, precision) pair."""

    version: tuple[int, int, int]
    explicit_batch_flag: bool  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (8.x only)
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (>= 10)
    fp16_flag: bool  # BuilderFlag.FP16 (weak typing, < 10, fp16 models only)
    int8_flag: bool  # BuilderFlag.INT8 (weak typing, < 10, int8 Q/DQ models only)
    pin_fp32_layers: bool  # fp32 layers of the mixed graph pinned + OBEY_PRECISION_CONSTRAINTS (< 10, fp16)
    native_instancenorm: bool  # OnnxParserFlag.NATIVE_INSTANCENORM must be set (< 10)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"10.3.0.30"`` -> (10, 3, 0); the runtime's reader, strict about garbage."""
    if not re.match(r"^\s*\d+\.\d+", str(text)):
        raise DiffCutError(f"cannot read the TensorRT version {text!r}")
    return version_tuple(str(text).strip())


def builder_settings(trt_version: str | tuple[int, ...], precision: str) -> BuilderSettings:
    """Builder decisions for a TensorRT version and the model folder's precision."""
    version = parse_version(trt_version) if isinstance(trt_version, str) else tuple(trt_version)[:3]
    version = tuple(int(v) for v in (*version, 0, 0)[:3])
    if version[:2] < MIN_SUPPORTED:
        raise DiffCutError(
            f"TensorRT {'.'.join(map(str, version))} is too old: the encoder needs >= "
            f"{MIN_SUPPORTED[0]}.{MIN_SUPPORTED[1]} (LayerNormalization, native InstanceNorm, "
            f"attention fusion); on Jetson use JetPack 6.0 or newer"
        )
    if precision not in ("fp32", "fp16", "int8"):
        raise DiffCutError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
    typed = version[0] >= 10
    return BuilderSettings(
        version=version,
        explicit_batch_flag=not typed,
        strongly_typed=typed,
        # Weak typing: the fp16 graph's types alone do not make 8.6 pick fp16 kernels, and the
        # FP16 flag alone lets it run the fp32 VAE in fp16 too (the SDXL VAE overflows there):
        # the layers the ONNX computes in fp32 are pinned to fp32 (pin_fp32_layers).
        fp16_flag=(not typed) and precision == "fp16",
        # Explicit quantization: the Q/DQ nodes place INT8; 8.6 still needs the flag to use it.
        int8_flag=(not typed) and precision == "int8",
        pin_fp32_layers=(not typed) and precision == "fp16",
        native_instancenorm=not typed,
    )


def create_network(trt: Any, builder: Any, settings: BuilderSettings) -> Any:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if settings.explicit_batch_flag:
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if settings.strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    if network is None:
        raise DiffCutError("TensorRT could not create a network definition")
    return network


def create_parser(trt: Any, network: Any, logger: Any, settings: BuilderSettings) -> Any:
    parser = trt.OnnxParser(network, logger)
    if settings.native_instancenorm and hasattr(trt, "OnnxParserFlag"):
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    return parser


def configure(trt: Any, config: Any, settings: BuilderSettings, workspace_bytes: int | None) -> None:
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if settings.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.int8_flag:
        config.set_flag(trt.BuilderFlag.INT8)
    if settings.pin_fp32_layers:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def pin_fp32_layers(trt: Any, network: Any) -> int:
    """Pin every layer whose outputs the ONNX types as float32 to float32; returns how many.

    For the mixed fp16 graph on a weakly typed network (TensorRT < 10): with the FP16 flag the
    builder may otherwise pick fp16 kernels for the VAE encoder, which must stay fp32.
    Constants keep the type of their weights.
    """
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.CONSTANT or layer.num_outputs == 0:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if all(t.dtype == trt.DataType.FLOAT for t in outputs):
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.DataType.FLOAT)
            pinned += 1
    return pinned


def check_quantization_for_tensorrt(quantization: dict[str, Any] | None, model_dir: str) -> None:
    """Refuse an INT8 folder TensorRT cannot build: its Q/DQ must be symmetric INT8."""
    if quantization is None:
        return
    if quantization.get("activations") != "int8":
        raise DiffCutError(
            f"{model_dir} was quantized with {quantization.get('activations')} activations (for onnxruntime "
            f"on the CPU); TensorRT builds only symmetric int8 Q/DQ graphs: run diffcut-edge quantize "
            f"--model-dir {quantization.get('source_dir', 'FP32_DIR')} --activations int8 --calibration IMAGES "
            f"--out {model_dir}-trt, then build-engine on that folder"
        )
