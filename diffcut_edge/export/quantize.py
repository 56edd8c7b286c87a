"""INT8 quantization of a model folder, calibrated on the user's own images.

onnxruntime's static quantization writes a QDQ graph (QuantizeLinear/DequantizeLinear pairs
around Conv, MatMul and Gemm): int8 weights per output channel, activations uint8 (asymmetric;
what onnxruntime's CPU kernels with VNNI/AVX-512 want) or int8 (symmetric; what TensorRT's
explicit quantization takes). Activation ranges come from running the fp32 encoder on the
calibration images, preprocessed exactly as the runtime does (``runtime.preprocess``).

Layers known to be sensitive stay in float: they are listed in :data:`SENSITIVE_LAYERS`, a
table of (op type, which nodes, why), not code branches; ``keep_fp32`` adds node-name patterns, and
``keep_worst`` the layers the per-layer measurement (``export.sensitivity``, ``report``) finds worst.
Activation ranges come from ``export.calibrate`` in bounded memory; for big folders each heavy stage
runs in a process of its own (``isolated.py``).
Everything else about the folder (resolution, grid, family, noise) is the source folder's.

A quantized folder is faster, not equal. ``quantize`` holds out every fourth image (with four or
more; ``holdout``) from the calibration and verifies the new folder against its source on those
images it was not calibrated on, before the folder appears: the verdict is printed and recorded in
the manifest. ``diffcut-edge verify --model-dir INT8 --against FP32 [IMAGES]`` checks it again on
other images; ``segment``/``bench`` say when a folder was never verified
(``Manifest.verification_note``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffcut_edge import versions
from diffcut_edge.atomic import write_text
from diffcut_edge.errors import DiffCutError, missing_extra
from diffcut_edge.export.progress import Stages, item_bar
from diffcut_edge.runtime.manifest import Manifest, read_manifest, sha256_file, verify_files, write_manifest

# How activation ranges are set (export/calibrate.py): the extremes seen, a quantile of each image's
# extremes, or onnxruntime's histogram methods.
METHODS = ("minmax", "smoothed", "percentile", "entropy")
# smoothed: on quantize's held-out split, the tiny model's labels 96.3 -> 97.9 % and min token cosine
# 0.99915 -> 0.99939; SSD-1B at 512 px the same as minmax (0.99961, labels near-ties). RESULTS.md.
DEFAULT_METHOD = "smoothed"
ACTIVATIONS = ("uint8", "int8")  # uint8: onnxruntime CPU; int8 (symmetric): TensorRT
OP_TYPES = ("Conv", "MatMul", "Gemm")  # the only op types quantized: norms, softmax, SiLU stay float
DEFAULT_MAX_IMAGES = 64  # calibration images used at most (ranges settle well before)
DEFAULT_REPORT_IMAGES = 2  # images the per-layer sensitivity runs on (a run per layer and image)
# Source folders above this size run each heavy stage (calibration, quantization, the report, each
# side of the held-out check) in a process of its own, so their memory does not add up (isolated.py).
ISOLATE_ABOVE_BYTES = 256 << 20

# Layers that stay in float: (op type, selector, why). Selectors are named in _SELECTORS.
# A prior, not a measurement: trained SD UNets have attention outliers. On random weights
# `quantize --report` ranks these 8th-121st of the tiny model's 125 layers, and 2nd, 3rd, then median
# 147th of SSD-1B's 218 (the hooked and VAE mid-block softmax·V are among the worst; benchmarks/RESULTS.md).
# Measure your model with --report and keep what it finds with --keep-worst N.
SENSITIVE_LAYERS: tuple[tuple[str, str, str], ...] = (
    (
        "MatMul",
        "activation-by-activation",
        "attention products Q·Kᵀ and softmax·V: two activations, and SD attention has outlier activations",
    ),
    ("Conv", "first", "the first convolution (the VAE encoder's conv_in) reads the image itself"),
    ("Conv", "last", "the last convolution before the features: its error reaches the tokens unfiltered"),
)


@dataclass
class QuantizeReport:
    model_dir: Path
    source_dir: Path
    method: str
    activations: str
    calibration_images: int
    kept_fp32: list[str] = field(default_factory=list)
    quantized_nodes: int = 0
    onnx_bytes: int = 0
    source_bytes: int = 0
    held_out: Any = None  # the verify --against report on the held-out images (None: none held out)
    sensitivity: Any = None  # export.sensitivity.SensitivityReport when asked for (--report)
    report_path: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage

    @property
    def passed(self) -> bool | None:
        """The held-out verdict (None when no image was held out)."""
        return None if self.held_out is None else self.held_out.passed

    def lines(self) -> list[str]:
        ratio = self.source_bytes / self.onnx_bytes if self.onnx_bytes else float("nan")
        out = [
            f"quantized {self.source_dir} -> {self.model_dir}: int8 ({self.method} on "
            f"{self.calibration_images} image(s), {self.activations} activations), "
            f"{self.quantized_nodes} nodes quantized, {len(self.kept_fp32)} kept in float, "
            f"{self.onnx_bytes / 1e6:.1f} MB ({ratio:.1f}x smaller)"
        ]
        if self.seconds:
            out.append("stages: " + ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items()))
        if self.sensitivity is not None:
            out += self.sensitivity.lines()
        if self.report_path is not None:
            out.append(f"all {len(self.sensitivity.layers)} layers: {self.report_path}")
        verify = f"diffcut-edge verify --model-dir {self.model_dir} --against {self.source_dir} IMAGES"
        if self.held_out is None:
            return [
                *out,
                "no image held out of the calibration (fewer than 4, or --holdout 0): the folder is not "
                f"verified yet; next: {verify}",
            ]
        out += [
            f"held out of the calibration: {len(self.held_out.images)} image(s); the new folder against its "
            f"source on them:",
            *self.held_out.lines()[:-1],
        ]
        if self.held_out.passed:
            return [*out, f"held-out check passed (recorded in the manifest); on more of your images: {verify}"]
        return [
            *out,
            "held-out check FAILED (recorded in the manifest; the folder is written): calibrate on more "
            "and more typical images, try --method percentile, or keep the layers that hurt in float "
            "with --keep-fp32 (docs/faster.md)",
        ]


def split_holdout(paths: Sequence[Path], holdout: int | None = None) -> tuple[list[Path], list[Path]]:
    """(calibration, held out): every fourth image held out, or the ``holdout`` images spread evenly
    through the list (None: a quarter of them when there are 4 or more, else none)."""
    n = len(paths)
    count = (n // 4 if n >= 4 else 0) if holdout is None else int(holdout)
    if count < 0 or (count and count >= n):
        raise DiffCutError(f"--holdout {count}: keep at least one of the {n} image(s) for the calibration")
    if count == 0:
        return list(paths), []
    held = {int(i * n / count) + (n // count) - 1 for i in range(count)}  # the last of each of `count` equal runs
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


# ------------------------------------------------------------------ checks
def check_method(method: str) -> str:
    if method not in METHODS:
        raise DiffCutError(f"unknown calibration method {method!r}: choose one of {', '.join(METHODS)}")
    return method


def check_activations(activations: str) -> str:
    if activations not in ACTIVATIONS:
        raise DiffCutError(
            f"unknown activation type {activations!r}: choose uint8 (onnxruntime CPU) or int8 (TensorRT)"
        )
    return activations


def check_source(model_dir: Path) -> Manifest:
    manifest = read_manifest(model_dir)
    verify_files(model_dir, manifest)
    if manifest.precision != "fp32":
        why = (
            "it is quantized already"
            if manifest.quantization
            else "quantizing rounded fp16 weights compounds two errors"
        )
        raise DiffCutError(
            f"{model_dir} is {manifest.precision}: quantize an fp32 export instead (diffcut-edge "
            f"export --precision fp32 ...); {why}"
        )
    return manifest


def _import_quantization() -> Any:
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError as e:
        name = "onnx" if "onnx" in str(e) and "onnxruntime" not in str(e) else "onnxruntime"
        raise missing_extra(name, "export" if name == "onnx" else "cpu", "quantizing a model folder") from e
    return quantization


# ------------------------------------------------------------------ calibration data
def calibration_paths(inputs: Sequence[str | os.PathLike], max_images: int | None = DEFAULT_MAX_IMAGES) -> list[Path]:
    """Image files from files, folders and globs (runtime.images's rules), sorted, at most ``max_images``."""
    from diffcut_edge.runtime.images import collect_image_paths

    if not inputs:
        raise DiffCutError(
            "no calibration images: pass --calibration with image files or a folder of "
            "photos like the ones the model will see (16-64 is plenty)"
        )
    paths, _ = collect_image_paths(inputs)
    if not paths:
        raise DiffCutError(f"no images found in {', '.join(map(str, inputs))}")
    if max_images is not None:
        if int(max_images) < 1:
            raise DiffCutError(f"--max-images must be >= 1, got {max_images}")
        paths = paths[: int(max_images)]
    return paths


def calibration_batches(paths: Sequence[Path], resolution: int) -> Iterator[np.ndarray]:
    """(1, 3, R, R) float32 encoder inputs, one per image, exactly as the runtime preprocesses."""
    from diffcut_edge.runtime.images import read_image
    from diffcut_edge.runtime.preprocess import preprocess

    for path in paths:
        yield preprocess(read_image(path), resolution)


def calibration_sha256(paths: Sequence[Path]) -> str:
    """Hash of the calibration set: the sorted SHA-256 of every image's bytes."""
    digest = hashlib.sha256()
    for h in sorted(sha256_file(p) for p in paths):
        digest.update(h.encode())
    return digest.hexdigest()


def _feeds(paths: Sequence[Path], manifest: Manifest) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """A fresh pass over the calibration images as encoder feeds (histogram methods make several)."""
    return lambda: ({manifest.input_name: batch} for batch in calibration_batches(paths, manifest.resolution))


# ------------------------------------------------------------------ which nodes stay in float
def _activation_by_activation(nodes: list[Any], initializers: set[str], constants: set[str]) -> list[Any]:
    static = initializers | constants
    return [n for n in nodes if not any(i in static for i in n.input)]


_SELECTORS: dict[str, Callable[[list[Any], set[str], set[str]], list[Any]]] = {
    "activation-by-activation": _activation_by_activation,
    "first": lambda nodes, *_: nodes[:1],
    "last": lambda nodes, *_: nodes[-1:],
}


def float_nodes(model: Any, keep_fp32: Sequence[str] = ()) -> dict[str, str]:
    """{node name: why} of the nodes kept in float: :data:`SENSITIVE_LAYERS` plus the patterns."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    kept: dict[str, str] = {}
    for op_type, selector, why in SENSITIVE_LAYERS:
        nodes = [n for n in graph.node if n.op_type == op_type]
        for node in _SELECTORS[selector](nodes, initializers, constants):
            kept.setdefault(node.name, why)
    for pattern in keep_fp32:
        matched = [n.name for n in graph.node if n.op_type in OP_TYPES and fnmatch.fnmatchcase(n.name, pattern)]
        if not matched:
            examples = ", ".join([n.name for n in graph.node if n.op_type in OP_TYPES][:3])
            raise DiffCutError(
                f"--keep-fp32 {pattern!r} matches no Conv/MatMul/Gemm node name; node names look like {examples}"
            )
        for name in matched:
            kept.setdefault(name, f"--keep-fp32 {pattern}")
    return kept


def _name_nodes(model: Any) -> None:
    """Give every node a unique name (exclusion lists and reports refer to nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


# ------------------------------------------------------------------ steps
def _preprocessed(source: Path, dst: Path, big: bool) -> Path:
    """onnxruntime's recommended pre-pass (shape inference, graph fusions) into ``dst``; the source
    itself when it fails (then quantization still works, with fewer fused patterns)."""
    import warnings

    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_root_logger():
            quant_pre_process(
                str(source),
                str(dst),
                save_as_external_data=big,
                all_tensors_to_one_file=True,
                external_data_location=dst.name + ".data",
            )
        return dst
    except Exception as e:  # shape inference refuses some graphs: not fatal
        for p in dst.parent.glob(dst.name + "*"):
            p.unlink()
        warnings.warn(
            f"onnxruntime's pre-processing failed ({type(e).__name__}: {str(e)[:200]}); "
            f"quantizing the graph as exported",
            stacklevel=2,
        )
        return source


def _calibrate(
    src: Path, dst: Path, paths: Sequence[Path], manifest: Manifest, method: str, progress: bool
) -> dict[str, Any]:
    """Activation ranges of the graph at ``src`` over the calibration images, in bounded memory
    (``export.calibrate``), written to ``dst`` as onnxruntime's calibration cache; {tensor: (low, high)}."""
    from onnxruntime.quantization import save_tensors_data

    from diffcut_edge.export.calibrate import RangeCollector

    collector = RangeCollector(src, OP_TYPES, method)
    # onnxruntime's histogram collector prints its steps to stdout: stdout keeps only results.
    with (
        item_bar(collector.passes * len(paths), progress, "calibrate", "image") as tick,
        contextlib.redirect_stdout(io.StringIO()),
    ):
        ranges = collector.collect(_feeds(paths, manifest), on_image=tick)
    save_tensors_data(ranges, dst)
    return {name: tuple(float(np.ravel(v)[0]) for v in data.range_value) for name, data in ranges.items()}


def _sensitivity(
    src: Path,
    kept: dict[str, str],
    ranges: dict[str, Any],
    paths: Sequence[Path],
    manifest: Manifest,
    method: str,
    activations: str,
    progress: bool,
) -> Any:
    """The per-layer report (``export.sensitivity``) on ``paths``: every Conv/MatMul/Gemm, kept ones too."""
    import onnx

    from diffcut_edge.export.sensitivity import SensitivityReport, layer_sensitivity

    graph = onnx.load(str(src), load_external_data=False).graph
    layers = [(n.name, n.op_type, kept.get(n.name, "")) for n in graph.node if n.op_type in OP_TYPES]
    del graph
    with item_bar(len(layers), progress, "sensitivity", "layer") as tick:
        rows = layer_sensitivity(
            src,
            layers,
            ranges,
            _feeds(paths, manifest),
            activations,
            reduce_range=activations == "uint8",
            on_layer=tick,
        )
    return SensitivityReport(rows, [p.name for p in paths], method, activations)


def _prepare(source: Path, named: Path, big: bool, keep_fp32: Sequence[str]) -> tuple[dict[str, str], bool]:
    """Pre-process ``source`` and write it with every node named to ``named`` (external data when
    ``big`` or when it must); ({node kept in float: why}, whether the graph is big)."""
    import onnx

    from diffcut_edge.export.onnx_export import needs_external_data

    model = onnx.load(str(_preprocessed(source, named.with_name("pre.onnx"), big)))
    _name_nodes(model)
    kept = float_nodes(model, keep_fp32)
    big = big or needs_external_data(model.ByteSize())
    onnx.save_model(model, str(named), save_as_external_data=big, location=named.name + ".data")
    return kept, big


def _quantize_static(
    src: Path,
    dst: Path,
    ranges: Path,
    method: str,
    activations: str,
    big: bool,
    exclude: Sequence[str] = (),
    *,
    only: Sequence[str] = (),
) -> None:
    """onnxruntime's QDQ quantization of ``src`` into ``dst`` with the ranges cached at ``ranges``
    (its own calibrator does not run); ``only``: quantize just these nodes."""
    quant = _import_quantization()
    with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():  # its advice goes to the root logger
        quant.quantize_static(
            str(src),
            str(dst),
            None,
            quant_format=quant.QuantFormat.QDQ,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            activation_type={"uint8": quant.QuantType.QUInt8, "int8": quant.QuantType.QInt8}[activations],
            weight_type=quant.QuantType.QInt8,
            nodes_to_quantize=list(only),
            nodes_to_exclude=sorted(exclude),
            use_external_data_format=big,
            # 7-bit weights for onnxruntime's CPU kernels: without AVX-512 VNNI (AVX2, AVX-512F) their
            # u8 x s8 products are summed in pairs into int16, which saturates with full-range weights and
            # puts systematic error in every token; measured here (VNNI) the 7 bits cost nothing (RESULTS.md).
            reduce_range=activations == "uint8",
            calibrate_method={
                "minmax": quant.CalibrationMethod.MinMax,
                "smoothed": quant.CalibrationMethod.MinMax,  # ranges are ranges: how they were set is ours
                "percentile": quant.CalibrationMethod.Percentile,
                "entropy": quant.CalibrationMethod.Entropy,
            }[method],
            calibration_cache_path=str(ranges),
            # TensorRT takes only symmetric int8 Q/DQ (zero point 0); weights are symmetric either way.
            extra_options={"ActivationSymmetric": activations == "int8", "WeightSymmetric": True},
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------ orchestrator
def quantize_model(
    model_dir: str | os.PathLike,
    calibration: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    method: str = DEFAULT_METHOD,
    activations: str = "uint8",
    keep_fp32: Sequence[str] = (),
    max_images: int | None = DEFAULT_MAX_IMAGES,
    force: bool = False,
    progress: bool = True,
    holdout: int | None = None,
    report: str | os.PathLike | None = None,
    report_images: int = DEFAULT_REPORT_IMAGES,
    keep_worst: int = 0,
) -> QuantizeReport:
    """Write ``out_dir``: the INT8 QDQ version of the fp32 folder ``model_dir``, verified on the images
    held out of the calibration (:func:`split_holdout`; see the module doc). ``report``: also write the
    per-layer sensitivity (``export.sensitivity``), measured on the first ``report_images`` calibration
    images (the choice of what to keep in float is tuning: the held-out images stay unseen);
    ``keep_worst``: keep the N layers that report measures worst in float too."""
    from diffcut_edge.export.onnx_export import (
        ONNX_NAME,
        check_graph,
        check_out_dir,
        move_into_place,
    )

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_method(method)
    check_activations(activations)
    if out_dir.resolve() == model_dir.resolve():
        raise DiffCutError(
            "--out must be a new folder: quantizing in place would destroy the fp32 source "
            "that verify --against compares with"
        )
    manifest = check_source(model_dir)
    check_out_dir(out_dir, force)
    paths, held_out = split_holdout(calibration_paths(calibration, max_images), holdout)
    _import_quantization()  # a missing extra is said before any work
    import onnx

    from diffcut_edge.isolated import run_stage

    source_bytes = sum((model_dir / f).stat().st_size for f in [manifest.onnx_file, *manifest.onnx_data_files])
    isolate = source_bytes > ISOLATE_ABOVE_BYTES

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(staging, 0o755)
    reporting = report is not None or bool(keep_worst)
    names = ["prepare graph", "calibrate", *(["sensitivity"] if reporting else []), "quantize", "check graph"]
    stages = Stages("quantize", [*names, *(["held-out verify"] if held_out else [])], progress)
    try:
        big = bool(manifest.onnx_data_files)
        named = staging / "named.onnx"
        with stages.stage("prepare graph"):
            kept, big = run_stage(
                isolate, "preparation", _prepare, model_dir / manifest.onnx_file, named, big, keep_fp32
            )
        target = staging / ONNX_NAME
        ranges_file = staging / "ranges.json"
        with stages.stage("calibrate"):
            ranges = run_stage(
                isolate, "calibration", _calibrate, named, ranges_file, paths, manifest, method, progress
            )
        sensitivity = None
        if reporting:
            chosen = paths[: max(1, int(report_images))]
            with stages.stage("sensitivity"):
                sensitivity = run_stage(
                    isolate,
                    "sensitivity",
                    _sensitivity,
                    named,
                    kept,
                    ranges,
                    chosen,
                    manifest,
                    method,
                    activations,
                    progress,
                )
            if report is not None:
                write_text(report, json.dumps(sensitivity.to_dict(), indent=1) + "\n")
            quantized_layers = [r for r in sensitivity.worst(len(sensitivity.layers)) if not r.kept_fp32]
            for row in quantized_layers[: int(keep_worst)]:
                kept[row.node] = f"--keep-worst {keep_worst}: min token cosine {row.min_cosine:.5f} alone in int8"
        with stages.stage("quantize"):
            run_stage(
                isolate, "quantization", _quantize_static, named, target, ranges_file, method, activations, big, kept
            )
        for leftover in [*staging.glob("named.onnx*"), *staging.glob("pre.onnx*"), ranges_file]:
            leftover.unlink()
        data_files = sorted(p.name for p in staging.iterdir() if p.name != ONNX_NAME)
        with stages.stage("check graph"):
            check_graph(target, resolution=manifest.resolution, channels=manifest.channels)
            qmodel = onnx.load(str(target), load_external_data=False)
            dequantized = {o for n in qmodel.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
            quantized = sum(1 for n in qmodel.graph.node if n.op_type in OP_TYPES and set(n.input) & dequantized)
            del qmodel
        out = Manifest(**{**manifest.__dict__})
        out.precision = "int8"
        out.onnx_file = ONNX_NAME
        out.onnx_data_files = data_files
        out.files_sha256 = {f: sha256_file(staging / f) for f in [ONNX_NAME, *data_files]}
        out.engines = []
        out.verification = None
        out.exporter = {**manifest.exporter, **versions.library_versions(versions.QUANTIZE_LIBRARIES)}
        out.quantization = {
            "method": method,
            "activations": activations,
            "weights": "int8 per-channel symmetric",
            "format": "QDQ",
            "op_types": list(OP_TYPES),
            "calibration_images": len(paths),
            "calibration_sha256": calibration_sha256(paths),
            "held_out_images": len(held_out),
            "kept_fp32": [{"node": name, "why": why} for name, why in sorted(kept.items())],
            "source_dir": str(model_dir.resolve()),
            "source_sha256": manifest.files_sha256.get(manifest.onnx_file, ""),
        }
        write_manifest(staging, out)
        check = None
        if held_out:  # before the folder appears: the verdict is in its manifest from the start
            from diffcut_edge.export.verify import verify_against

            with stages.stage("held-out verify"):
                check = verify_against(
                    staging, model_dir, held_out, labels=True, record=True, isolate=isolate, files_checked=True
                )
            check.model_dir = out_dir
        report = QuantizeReport(
            model_dir=out_dir,
            source_dir=model_dir,
            method=method,
            activations=activations,
            calibration_images=len(paths),
            kept_fp32=sorted(kept),
            quantized_nodes=quantized,
            onnx_bytes=sum((staging / f).stat().st_size for f in [ONNX_NAME, *data_files]),
            source_bytes=source_bytes,
            held_out=check,
            sensitivity=sensitivity,
            report_path=None if report is None else Path(report),
            seconds=dict(stages.seconds),
        )
        move_into_place(staging, out_dir)
        return report
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        stages.close()
