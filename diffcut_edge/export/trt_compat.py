"""Every TensorRT-version-dependent decision of the engine build, in one place.

TensorRT 8.6 (JetPack 6.0), 10.x (JetPack 6.1+, desktop) and 11 differ in how a network
gets its precision and in a few flags:

- 8.x: networks need ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``; fp16 comes from
  ``BuilderFlag.FP16`` (weak typing); the ONNX parser must be told to use the native
  InstanceNormalization (``OnnxParserFlag.NATIVE_INSTANCENORM``) instead of a plugin.
- 10.x: explicit batch is implicit (the flag is deprecated); native InstanceNorm is the
  parser default; ``STRONGLY_TYPED`` makes the builder follow the ONNX types exactly, which
  is what our mixed fp16 graph (fp32 VAE, fp16 UNet, explicit Casts) wants. Setting
  ``BuilderFlag.FP16`` on a strongly typed network is an error, so we never do.
- 11: every network is strongly typed and the weak-typing flags are gone.

:func:`builder_settings` is a pure function of (version, precision) so the decisions are
tested without TensorRT; :func:`create_network` and :func:`configure` apply them to real
TensorRT objects, with ``getattr`` guards where names moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.backends._compat import version_tuple

MIN_SUPPORTED = (8, 6)


@dataclass(frozen=True)
class BuilderSettings:
    """What to ask of TensorRT for one (version, precision) pair."""

    version: tuple[int, int, int]
    explicit_batch_flag: bool      # NetworkDefinitionCreationFlag.EXPLICIT_BATCH (8.x only)
    strongly_typed: bool           # NetworkDefinitionCreationFlag.STRONGLY_TYPED (>= 10)
    fp16_flag: bool                # BuilderFlag.FP16 (weak typing, < 10, fp16 models only)
    native_instancenorm: bool      # OnnxParserFlag.NATIVE_INSTANCENORM must be set (< 10)


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
        raise DiffCutError(f"TensorRT {'.'.join(map(str, version))} is too old: the encoder needs >= "
                           f"{MIN_SUPPORTED[0]}.{MIN_SUPPORTED[1]} (LayerNormalization, native InstanceNorm, "
                           f"attention fusion); on Jetson use JetPack 6.0 or newer")
    if precision not in ("fp32", "fp16"):
        raise DiffCutError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    typed = version[0] >= 10
    return BuilderSettings(
        version=version,
        explicit_batch_flag=not typed,
        strongly_typed=typed,
        # Weak typing: the fp16 graph's types alone do not make 8.6 pick fp16 kernels.
        fp16_flag=(not typed) and precision == "fp16",
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

