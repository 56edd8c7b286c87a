"""Per-layer INT8 sensitivity: the final features when only one layer is quantized.

One graph answers for every layer: the fp32 encoder where each quantizable node ``L`` reads, through
``Where(layer == i, fake_quantized, float)``, either its float inputs, weight and output or their
INT8-rounded versions (QuantizeLinear -> DequantizeLinear with the calibrated ranges; the weight
rounded per output channel as onnxruntime's quantizer does, with its own ``quantize_data``). Feeding
``layer = i`` runs the encoder with only layer ``i`` quantized; ``layer = -1`` is the fp32 encoder.
One session, one run per (layer, image): no per-layer graph is written or loaded.

The figure per layer is the cosine between its tokens and the fp32 tokens (minimum over tokens and
images, and the mean): what ``verify --against`` gates on. ``quantize --report`` writes it; the
layers kept in float (``quantize.SENSITIVE_LAYERS``) are measured too, so the table's evidence is the
report's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

LAYER_INPUT = "sensitivity/layer"  # int64 scalar: which layer is quantized (-1: none)


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    min_cosine: float  # over tokens and images, only this layer quantized, against fp32
    mean_cosine: float
    kept_fp32: str = ""  # why quantize keeps it in float ("": quantized)


@dataclass
class SensitivityReport:
    layers: list[LayerSensitivity]
    images: list[str]
    method: str
    activations: str

    def worst(self, count: int = 10) -> list[LayerSensitivity]:
        return sorted(self.layers, key=lambda r: r.min_cosine)[:count]

    def lines(self, count: int = 10) -> list[str]:
        head = (
            f"sensitivity ({len(self.layers)} layers, each alone in int8, on {len(self.images)} image(s)); "
            f"worst {min(count, len(self.layers))} by min token cosine against fp32:"
        )
        rows = [
            f"  {r.min_cosine:.5f} (mean {r.mean_cosine:.5f})  {r.op_type:<6} {r.node}"
            + (f"  [kept in float: {r.kept_fp32}]" if r.kept_fp32 else "")
            for r in self.worst(count)
        ]
        return [head, *rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "activations": self.activations,
            "images": self.images,
            "layers": [asdict(r) for r in sorted(self.layers, key=lambda r: r.min_cosine)],
        }


# ------------------------------------------------------------------ the switchable graph
def _weight_axis(node: Any) -> int:
    """The output-channel axis onnxruntime's per-channel quantizer uses for this node's weight."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0 if node.op_type == "Conv" else 1


def fake_quantized_weight(weight: np.ndarray, axis: int, reduce_range: bool) -> np.ndarray:
    """``weight`` rounded to symmetric int8 per channel along ``axis`` and back (onnxruntime's math)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    moved = np.moveaxis(weight, axis, 0)
    out = np.empty_like(moved)
    for c in range(moved.shape[0]):
        zero_point, scale, q = quantize_data(moved[c].ravel(), TensorProto.INT8, True, reduce_range)
        out[c] = ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).reshape(moved[c].shape)
    return np.moveaxis(out, 0, axis)


def activation_qparams(low: float, high: float, activations: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of an activation range, as onnxruntime's quantizer computes them."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qtype = TensorProto.INT8 if activations == "int8" else TensorProto.UINT8
    symmetric = activations == "int8"
    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=symmetric)
    zero_point, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax, symmetric=symmetric)
    dtype = np.int8 if activations == "int8" else np.uint8
    return np.asarray(scale, np.float32).reshape(()), np.asarray(zero_point, dtype).reshape(())


def switchable_graph(
    model: Any, layers: Sequence[str], ranges: dict[str, tuple[float, float]], activations: str, reduce_range: bool
) -> Any:
    """The fp32 ``model`` (weights loaded) in which ``layers[i]`` runs fake-quantized when the
    :data:`LAYER_INPUT` input equals ``i`` (see the module doc)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {t.name: t for t in graph.initializer}
    index = {name: i for i, name in enumerate(layers)}
    ranges = dict(ranges)
    graph.input.append(helper.make_tensor_value_info(LAYER_INPUT, onnx.TensorProto.INT64, []))
    nodes: list[Any] = []

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def rounded(tensor: str, tag: str) -> str:
        scale, zero = activation_qparams(*ranges[tensor], activations)
        s, z = constant(f"{tag}/scale", scale), constant(f"{tag}/zero", zero)
        nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tag}/q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}/q", s, z], [f"{tag}/dq"]))
        return f"{tag}/dq"

    for node in graph.node:
        i = index.get(node.name)
        if i is None:
            nodes.append(node)
            continue
        flag = f"sensitivity/{i}/on"
        nodes.append(
            helper.make_node("Equal", [LAYER_INPUT, constant(f"sensitivity/{i}/index", np.array(i, np.int64))], [flag])
        )
        for k, name in enumerate(node.input):
            if not name:
                continue
            tag = f"sensitivity/{i}/in{k}"
            if name in weights and k == 1:  # the weight: per-channel int8, rounded once here
                value = numpy_helper.to_array(weights[name]).astype(np.float32)
                alt = constant(f"{tag}/w", fake_quantized_weight(value, _weight_axis(node), reduce_range))
            elif name in ranges:
                alt = rounded(name, tag)
            else:  # a bias or a constant onnxruntime does not round to 8 bits
                continue
            nodes.append(helper.make_node("Where", [flag, alt, name], [f"{tag}/sel"]))
            node.input[k] = f"{tag}/sel"
        result = node.output[0]
        nodes.append(node)
        if result in ranges:  # onnxruntime's QDQ format rounds the node's output too
            raw = f"sensitivity/{i}/out/raw"
            node.output[0] = raw
            ranges[raw] = ranges[result]
            nodes.append(helper.make_node("Where", [flag, rounded(raw, f"sensitivity/{i}/out"), raw], [result]))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


# ------------------------------------------------------------------ measuring
def layer_sensitivity(
    model_path: Path,
    layers: Sequence[tuple[str, str, str]],
    ranges: dict[str, tuple[float, float]],
    feeds: Callable[[], Iterator[dict[str, np.ndarray]]],
    activations: str,
    *,
    reduce_range: bool,
    on_layer: Callable[[], None] | None = None,
) -> list[LayerSensitivity]:
    """One :class:`LayerSensitivity` per (node name, op type, why kept) in ``layers``."""
    import onnx
    import onnxruntime as ort

    from diffcut_edge.export.verify import token_cosines

    model = onnx.load(str(model_path))  # weights too: the rounded copies are made from them
    graph = switchable_graph(model, [name for name, _, _ in layers], ranges, activations, reduce_range)
    del model
    work = model_path.with_name(".sensitivity.onnx")  # beside the source: external data may exceed 2 GB
    try:
        onnx.save_model(graph, str(work), save_as_external_data=True, location=work.name + ".data")
        del graph
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = ort.InferenceSession(str(work), options, providers=["CPUExecutionProvider"])
    finally:
        for path in (work, work.with_name(work.name + ".data")):
            path.unlink(missing_ok=True)
    output = session.get_outputs()[0].name
    inputs = list(feeds())

    def tokens(i: int) -> list[np.ndarray]:
        return [session.run([output], {**feed, LAYER_INPUT: np.array(i, np.int64)})[0] for feed in inputs]

    reference = tokens(-1)
    results = []
    for i, (name, op_type, kept) in enumerate(layers):
        cosines = np.concatenate([token_cosines(r, t).ravel() for r, t in zip(reference, tokens(i))])
        results.append(LayerSensitivity(name, op_type, float(cosines.min()), float(cosines.mean()), kept))
        if on_layer is not None:
            on_layer()
    return results
