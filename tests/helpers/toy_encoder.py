"""A toy "encoder" model folder for runtime tests that must not wait on the real export.

The graph has the exported encoder's contract, image (B, 3, R, R) RGB in [0, 1] ->
features (B, (R/32)^2, C), built with ``onnx.helper``: 32x32 patches are summarised
by an average pool + a strided conv, squashed by tanh and projected to C channels.
Patches of similar colour get similar features, so NCut finds colour regions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffcut_edge.runtime.manifest import EngineRecord, Manifest, sha256_file, write_manifest


def _encoder_model(name: str, nodes: list, last: str, weights: dict[str, np.ndarray], resolution: int, channels: int):
    """The exported encoder's contract around ``nodes`` (whose output ``last`` is (B, C, h, w)): reshaped
    to tokens (B, h*w, C), image (B, 3, R, R) in, features out, opset 18, IR 8 (older onnxruntime reads it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = {**weights, "shape": np.array([0, channels, -1], dtype=np.int64)}
    nodes = [
        *nodes,
        helper.make_node("Reshape", [last, "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["features"], perm=[0, 2, 1]),
    ]
    r, n = resolution, (resolution // 32) ** 2
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, r, r])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", n, channels])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="toy")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _toy_graph(resolution: int, channels: int, seed: int):
    from onnx import helper

    rng = np.random.default_rng(seed)
    hidden = 16
    weights = {
        "w1": rng.normal(0, 1.0, (hidden, 3, 4, 4)).astype(np.float32),
        "b1": rng.normal(0, 0.5, hidden).astype(np.float32),
        "w2": rng.normal(0, 1.0, (channels, hidden, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Conv", ["pooled", "w1", "b1"], ["h1"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Tanh", ["h1"], ["t1"]),
        helper.make_node("Conv", ["t1", "w2"], ["h2"], kernel_shape=[1, 1]),
    ]
    return _encoder_model("toy_encoder", nodes, "h2", weights, resolution, channels)


def _colour_graph(resolution: int, channels: int, seed: int, bandwidth: float):
    """Features that are a fixed function of each 32x32 patch's mean colour: AveragePool 32 -> 1x1 Conv
    -> Cos (random Fourier features of the RGB mean, so the tokens' cosine falls with colour distance)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    weights = {
        "w": rng.normal(0, bandwidth, (channels, 3, 1, 1)).astype(np.float32),
        "b": rng.uniform(0, 2 * np.pi, channels).astype(np.float32),
    }
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[32, 32], strides=[32, 32]),
        helper.make_node("Conv", ["pooled", "w", "b"], ["proj"], kernel_shape=[1, 1]),
        helper.make_node("Cos", ["proj"], ["waves"]),
    ]
    return _encoder_model("colour_encoder", nodes, "waves", weights, resolution, channels)


def _write_folder(
    out_dir: str | Path, model, model_id: str, resolution: int, channels: int, engines: list[EngineRecord] | None = None
) -> Path:
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "encoder.onnx")
    grid = resolution // 32
    manifest = Manifest(
        model_id=model_id,
        family="sdxl",
        resolution=resolution,
        grid=(grid, grid),
        channels=channels,
        precision="fp32",
        timestep=50,
        noise_seed=42,
        opset=18,
        files_sha256={"encoder.onnx": sha256_file(out / "encoder.onnx")},
        engines=list(engines or []),
    )
    write_manifest(out, manifest)
    return out


def make_toy_model_dir(
    out_dir: str | Path,
    resolution: int = 256,
    channels: int = 32,
    seed: int = 0,
    engines: list[EngineRecord] | None = None,
) -> Path:
    """Write encoder.onnx + manifest.json for the toy encoder; returns the folder."""
    return _write_folder(out_dir, _toy_graph(resolution, channels, seed), "toy-encoder", resolution, channels, engines)


def make_colour_model_dir(
    out_dir: str | Path, resolution: int = 256, channels: int = 64, seed: int = 0, bandwidth: float = 6.0
) -> Path:
    """A planted model folder whose segmentation is known: tokens are a fixed function of the patch's
    mean colour, so DiffCut splits a picture of flat coloured shapes along the shapes."""
    return _write_folder(
        out_dir, _colour_graph(resolution, channels, seed, bandwidth), "colour-encoder", resolution, channels
    )


def toy_features(images: np.ndarray, model_dir: Path) -> np.ndarray:
    """The toy graph's output computed by a plain onnxruntime session (the test oracle)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(model_dir) / "encoder.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"image": images})[0]
