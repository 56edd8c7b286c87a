"""Activation ranges for INT8 quantization in bounded memory.

onnxruntime's calibrators run one augmented graph whose extra outputs are every tensor to calibrate
(histograms) or a ReduceMin/ReduceMax per tensor appended after the whole graph (min/max). Either way
the session keeps every intermediate activation of an image alive until the end of the run: at the
paper's 1024 px the SSD-1B encoder's activations add up to more than 24 GB.

Here the memory a calibration run needs is the encoder's own inference peak plus a bound:

- ``minmax`` and ``smoothed``: each tensor's ReduceMin/ReduceMax sits right after the node that makes
  it and the session runs nodes in that order (``PRIORITY_BASED``), so a tensor is reduced to two
  numbers and freed as in plain inference; one run per image. ``minmax`` takes the extremes over all
  images; ``smoothed`` a quantile of the images' own extremes (:data:`SMOOTHED_QUANTILE`), so one
  unusual image does not set a tensor's range for every other.
- ``percentile`` / ``entropy``: the tensors are split into groups whose activations fit
  ``budget_bytes``; one session per group outputs only that group's tensors, and onnxruntime's own
  ``HistogramCollector`` merges them image by image.

The result is onnxruntime's ``TensorsData``, written as its calibration cache for ``quantize_static``
(which then skips its own calibrator). The tensors are onnxruntime's choice for the op types quantized:
the float inputs and outputs of those nodes that are not initializers.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError

DEFAULT_BUDGET_BYTES = 1 << 30  # activations one histogram pass may hold besides the encoder's own
_FLOAT_TYPES = (1, 10)  # onnx TensorProto.FLOAT, FLOAT16
_HISTOGRAM = {  # onnxruntime's create_calibrator defaults, per method
    "percentile": {"num_bins": 2048, "num_quantized_bins": 128, "percentile": 99.999, "symmetric": True},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128, "percentile": 99.999, "symmetric": False},
}


# ``smoothed``: each tensor's range runs from this lower quantile of the images' minima to this upper
# quantile of their maxima. Chosen on quantize's held-out split of the tiny model (labels 96.3 % with
# the extremes; 95.0 / 97.9 / 94.2 % at the medians / 0.75 / 0.9; min token cosine 0.99915 ->
# 0.99939 / 0.99939 / 0.99929), then measured once on unseen photos (benchmarks/RESULTS.md).
SMOOTHED_QUANTILE = 0.75
RANGE_METHODS = ("minmax", "smoothed")  # one run per image, two numbers per tensor


@dataclass(frozen=True)
class CalibrationTensor:
    name: str
    nbytes: int  # one image's activation, from the graph's shapes (0 when a dimension is unknown)


def calibration_tensors(model: Any, op_types: Sequence[str]) -> list[CalibrationTensor]:
    """The tensors onnxruntime's quantizer wants ranges for: float inputs/outputs of ``op_types`` nodes,
    not initializers, in graph order (``model`` carries shape-inferred value_info)."""
    graph = model.graph
    infos = {vi.name: vi for vi in itertools.chain(graph.value_info, graph.output, graph.input)}
    initializers = {t.name for t in graph.initializer}
    seen: dict[str, CalibrationTensor] = {}
    for node in graph.node:
        if node.op_type not in op_types:
            continue
        for name in itertools.chain(node.input, node.output):
            info = infos.get(name)
            if name in seen or name in initializers or info is None or not info.type.HasField("tensor_type"):
                continue
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type in _FLOAT_TYPES:
                seen[name] = CalibrationTensor(name, _nbytes(tensor_type))
    return list(seen.values())


def _nbytes(tensor_type: Any) -> int:
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor_type.shape.dim]
    itemsize = 2 if tensor_type.elem_type == 10 else 4
    return int(np.prod(dims, dtype=np.int64)) * itemsize if dims and all(dims) else 0


def budget_groups(tensors: Sequence[CalibrationTensor], budget_bytes: int) -> list[list[CalibrationTensor]]:
    """Consecutive groups whose activations add up to at most ``budget_bytes`` (a larger tensor alone)."""
    groups: list[list[CalibrationTensor]] = []
    used = budget_bytes + 1
    for tensor in tensors:
        if used + tensor.nbytes > budget_bytes or not groups:
            groups.append([])
            used = 0
        groups[-1].append(tensor)
        used += tensor.nbytes
    return groups


# ------------------------------------------------------------------ graphs
def minmax_graph(model: Any, tensors: Sequence[CalibrationTensor]) -> Any:
    """A copy of ``model`` with ReduceMin/ReduceMax (all axes, scalars) on each tensor, placed right
    after the node that makes it (graph inputs: first), as extra graph outputs ``<name>/min|max``."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = {t.name for t in tensors}
    nodes: list[Any] = []

    def reduce_after(names: Iterable[str]) -> None:
        for name in names:
            if name in wanted:
                for op, suffix in (("ReduceMin", "min"), ("ReduceMax", "max")):
                    result = f"{name}/{suffix}"
                    nodes.append(helper.make_node(op, [name], [result], name=f"calibrate/{result}", keepdims=0))
                    out.graph.output.append(helper.make_tensor_value_info(result, onnx.TensorProto.FLOAT, []))

    reduce_after(i.name for i in model.graph.input)
    for node in model.graph.node:
        nodes.append(node)
        reduce_after(node.output)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def outputs_graph(model: Any, tensors: Sequence[CalibrationTensor]) -> Any:
    """A copy of ``model`` whose extra graph outputs are ``tensors`` (one histogram group)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    infos = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.input)}
    out.graph.output.extend(infos[t.name] for t in tensors if t.name not in present)
    return out


def _session(model: Any, path: Path, threads: int | None) -> Any:
    """A session over ``model`` saved at ``path`` (beside the weights' external data, which it shares),
    unoptimised so every tensor keeps its name, nodes run in the graph's order."""
    import onnx
    import onnxruntime as ort

    onnx.save_model(model, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.enable_mem_pattern = False  # a pattern sized for all activations is what we avoid
    if threads:
        options.intra_op_num_threads = int(threads)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    finally:
        path.unlink(missing_ok=True)  # the session holds the graph; the folder keeps only what it ships


# ------------------------------------------------------------------ collectors
Feeds = Callable[[], Iterator[dict[str, np.ndarray]]]  # a fresh pass over the calibration inputs


class RangeCollector:
    """Activation ranges of the graph at ``model_path`` for the ``op_types`` quantized (see the module doc).

    ``passes`` runs over the calibration images are made by :meth:`collect` (1 for min/max).
    """

    def __init__(
        self,
        model_path: Path,
        op_types: Sequence[str],
        method: str = "minmax",
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        threads: int | None = None,
    ) -> None:
        if method not in RANGE_METHODS and method not in _HISTOGRAM:
            raise DiffCutError(f"unknown calibration method {method!r}")
        self.method, self.budget_bytes, self.threads = method, int(budget_bytes), threads
        self._work = model_path.with_name(f".calibrate-{model_path.stem}.onnx")
        self._model = shape_inferred(model_path, self._work)
        self.tensors = calibration_tensors(self._model, op_types)
        if not self.tensors:
            raise DiffCutError(f"{model_path.name} has no {'/'.join(op_types)} node with float tensors to calibrate")

    @property
    def passes(self) -> int:
        return 1 if self.method in RANGE_METHODS else len(budget_groups(self.tensors, self.budget_bytes))

    def collect(self, feeds: Feeds, on_image: Callable[[], None] | None = None) -> Any:
        """onnxruntime ``TensorsData`` over the feeds; ``on_image`` after each image run."""
        from onnxruntime.quantization import CalibrationMethod
        from onnxruntime.quantization.calibrate import TensorsData

        tick = on_image or (lambda: None)
        if self.method in RANGE_METHODS:
            extremes = _image_extremes(self._model, self.tensors, self._work, feeds, self.threads, tick)
            low, high = _ranges(extremes, self.method)
            ranges = {t.name: (np.array([lo]), np.array([hi])) for t, lo, hi in zip(self.tensors, low, high)}
            return TensorsData(CalibrationMethod.MinMax, ranges)
        histograms = _histograms(
            self._model, self.tensors, self._work, feeds, self.method, self.budget_bytes, self.threads, tick
        )
        cal = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[self.method]
        return TensorsData(cal, histograms)


def shape_inferred(model_path: Path, work: Path) -> Any:
    """The graph at ``model_path`` with onnx's shape inference added to what it has (as onnxruntime's
    calibrators load it), weights left in their external files."""
    import onnx

    try:
        onnx.shape_inference.infer_shapes_path(str(model_path), str(work))
        return onnx.load(str(work), load_external_data=False)
    finally:
        work.unlink(missing_ok=True)


def _image_extremes(
    model: Any, tensors: list[CalibrationTensor], work: Path, feeds: Feeds, threads: int | None, tick: Callable
) -> np.ndarray:
    """(images, tensors, 2) float32: each image's min and max of each tensor."""
    session = _session(minmax_graph(model, tensors), work, threads)
    names = [f"{t.name}/{s}" for t in tensors for s in ("min", "max")]
    rows = []
    for feed in feeds():
        rows.append(np.asarray(session.run(names, feed), np.float32).reshape(len(tensors), 2))
        tick()
    if not rows:
        raise DiffCutError("no calibration image was read")
    return np.stack(rows)


def _ranges(extremes: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Each tensor's (low, high) float32 from the images' extremes (see :data:`SMOOTHED_QUANTILE`).

    NaN image values are skipped (``nanmin``/``nanquantile``): one bad image does not poison a range.
    """
    lows, highs = extremes[..., 0], extremes[..., 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a tensor NaN on every image stays NaN
        if method == "minmax":
            return np.nanmin(lows, axis=0), np.nanmax(highs, axis=0)
        q = SMOOTHED_QUANTILE
        low = np.nanquantile(lows, 1 - q, axis=0, method="linear")
        high = np.nanquantile(highs, q, axis=0, method="linear")
    return low.astype(np.float32), high.astype(np.float32)


def _histograms(
    model: Any,
    tensors: list[CalibrationTensor],
    work: Path,
    feeds: Feeds,
    method: str,
    budget_bytes: int,
    threads: int | None,
    tick: Callable,
) -> dict[str, Any]:
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method=method, scenario="same", **_HISTOGRAM[method])
    for group in budget_groups(tensors, budget_bytes):
        session = _session(outputs_graph(model, group), work, threads)
        names = [t.name for t in group]
        for feed in feeds():
            values = session.run(names, feed)
            collector.collect({name: [value] for name, value in zip(names, values)})
            del values
            tick()
        del session
    return collector.compute_collection_result()
