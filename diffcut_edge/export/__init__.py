"""The export stage: truncated encoder -> ONNX model folder -> TensorRT engine.

torch, diffusers, onnx and tensorrt are imported lazily (only by the functions that need
them), so ``import diffcut_edge.export`` is cheap. The runtime never imports this package.

Public API::

    export_model(model_or_pipeline_dir, out_dir, *, resolution=1024, precision="fp32",
                 opset=17, progress=True, force=False) -> Path
    build_engine(model_dir, *, workspace_gb=None, batch=(1, 1, 4), timing_cache=True) -> Path
    TruncatedEncoder, build_truncated_encoder(pipeline, *, resolution, timestep, noise_seed, precision)
    verify_model(pipeline_or_model, model_dir, images=None) -> VerifyReport
"""

from __future__ import annotations

from diffcut_edge.lazy import lazy_getattr

_LAZY = {
    "export_model": "onnx_export",
    "export_model_report": "onnx_export",
    "ExportReport": "onnx_export",
    "TruncatedEncoder": "truncated",
    "build_truncated_encoder": "truncated",
    "EncoderSpec": "truncated",
    "build_engine": "tensorrt_build",
    "parse_batch_spec": "tensorrt_build",
    "engine_file_name": "tensorrt_build",
    "verify_model": "verify",
    "VerifyReport": "verify",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_getattr(__name__, _LAZY)
