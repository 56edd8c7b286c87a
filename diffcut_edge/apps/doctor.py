"""``diffcut-edge doctor``: what this machine can run, and why not, one line per piece.

Nothing is installed or built: it imports what is there, asks the driver for the GPU, and
with a model folder says which backend ``auto`` picks (the same decision
``open_backend`` makes), which engines match this GPU, and the command to build one.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffcut_edge import versions
from diffcut_edge.lazy import cupy, onnxruntime, tensorrt

MIN_PYTHON = (3, 10)


@dataclass
class Finding:
    """One piece: whether it is usable here, what it is, and what to do when it is not."""

    name: str
    ok: bool
    detail: str


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    gpu: dict[str, str] | None = None
    backend: str | None = None  # what auto picks for --model-dir (None without one)
    can_run: bool = False  # the chosen (or any, without a folder) backend can run here

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.findings.append(Finding(name, ok, detail))

    def lines(self) -> list[str]:
        out = [f"{'ok' if f.ok else '--'}  {f.name:<12} {f.detail}" for f in self.findings]
        verdict = "can run" if self.can_run else "cannot run"
        out.append(f"=>  {verdict}" + (f" with backend {self.backend}" if self.backend else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _python(report: DoctorReport) -> None:
    ok = sys.version_info[:2] >= MIN_PYTHON
    report.add(
        "python",
        ok,
        platform.python_version() + ("" if ok else f": diffcut-edge needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}"),
    )
    import numpy

    report.add("numpy", True, numpy.__version__)


def _onnxruntime(report: DoctorReport) -> list[str]:
    """Adds the onnxruntime finding; returns its available providers ([] when missing)."""
    wheels = [d for d in ("onnxruntime", "onnxruntime-gpu") if versions.dist_version(d)]
    if len(wheels) > 1:
        report.add(
            "onnxruntime",
            False,
            "both onnxruntime and onnxruntime-gpu are installed: they overwrite "
            "each other's files; pip uninstall both, then install one extra "
            "([cpu] or [gpu])",
        )
    if not onnxruntime.available():
        report.add(
            "onnxruntime",
            False,
            "not installed: pip install 'diffcut-edge[cpu]' (CPU) or "
            "'diffcut-edge[gpu]'; on Jetson NVIDIA's wheel (docs/jetson.md)",
        )
        return []
    providers = list(onnxruntime.get_available_providers())
    if len(wheels) <= 1:
        report.add("onnxruntime", True, f"{onnxruntime.__version__} ({', '.join(providers)})")
    return providers


def _gpu(report: DoctorReport) -> None:
    from diffcut_edge.runtime.gpu import jetson_release, probe_gpu

    gpu = probe_gpu()
    if gpu is None:
        report.add("gpu", False, "no NVIDIA GPU (no driver or no device): everything runs on the CPU")
    else:
        report.gpu = {"name": gpu.name, "compute_capability": gpu.compute_capability}
        report.add("gpu", True, f"{gpu.name}, compute capability {gpu.compute_capability}")
    release = jetson_release()
    if release:
        report.add("jetson", True, release)


def _cupy(report: DoctorReport) -> bool:
    from diffcut_edge.runtime.xp import gpu_postprocessing_problem

    problem = gpu_postprocessing_problem()
    if problem is None:
        try:
            devices = int(cupy.cuda.runtime.getDeviceCount())
        except Exception as e:  # cupy without a driver raises its own CUDA errors
            problem = f"cupy {cupy.__version__} sees no CUDA device ({type(e).__name__}: {str(e)[:120]})"
        else:
            report.add(
                "cupy",
                True,
                f"{cupy.__version__}, cupyx.scipy imports, {devices} device(s): NCut/PAMR can run on the GPU",
            )
            return True
    report.add("cupy", False, f"{problem} (post-processing runs on the CPU with numpy)")
    return False


def _tensorrt(report: DoctorReport) -> bool:
    if not tensorrt.available():
        report.add(
            "tensorrt",
            False,
            "not installed: pip install 'diffcut-edge[trt]' (Jetson: JetPack's "
            "system TensorRT); only needed for build-engine and --backend tensorrt",
        )
        return False
    report.add("tensorrt", True, str(tensorrt.__version__))
    return True


def _live(report: DoctorReport) -> None:
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        report.add("live view", False, "aiohttp is not installed: pip install 'diffcut-edge[live]' for webcam --serve")
    else:
        report.add("live view", True, "aiohttp installed: webcam --serve works")


# The optional stages: (finding, distributions that must all be there, what they enable, the extra).
OPTIONAL_STAGES = (
    (
        "export",
        ("torch", "diffusers", "transformers", "onnx"),
        "export, verify --model, eval --reference",
        "pip install '.[export]' (README, Install: which torch build that brings)",
    ),
    (
        "clip",
        ("open_clip_torch", "timm", "ftfy", "wcwidth"),
        "export-vocab (CLIP names the segments)",
        "pip install '.[clip]' and pip install --no-deps open_clip_torch timm (docs/open-vocabulary.md)",
    ),
    ("ray", ("ray",), "segment --engine ray", "pip install '.[ray]'"),
    ("tritonclient", ("tritonclient",), "triton-repo and the TritonSegmenter client", "pip install '.[triton]'"),
)


def _optional_stages(report: DoctorReport) -> None:
    """What the optional extras enable, read from the installed distributions (nothing is imported:
    torch alone takes seconds)."""
    for name, dists, enables, how in OPTIONAL_STAGES:
        found = {d: versions.dist_version(d) for d in dists}
        missing = [d for d, v in found.items() if not v]
        if missing:
            report.add(name, False, f"{', '.join(missing)} not installed: {how}; needed for {enables}")
        else:
            report.add(name, True, ", ".join(f"{d} {v}" for d, v in found.items()) + f": {enables}")
    found = versions.installed_tritonserver()  # the binary serve runs when none is named
    report.add(
        "tritonserver",
        found is not None,
        f"{found[0]} ({found[1]}): serve can run"
        if found
        else "none on PATH and no nvidia-pytriton: pip install --no-deps nvidia-pytriton (Linux x86-64) or "
        "NVIDIA's Triton container; needed for serve",
    )


def _model_folder(report: DoctorReport, model_dir: Path, providers: list[str], trt_ok: bool, cupy_ok: bool) -> None:
    from diffcut_edge.runtime.backends import auto_backend, choose_providers, find_engine
    from diffcut_edge.runtime.manifest import read_manifest

    manifest = read_manifest(model_dir)
    report.add(
        "model",
        True,
        f"{model_dir}: exported from {manifest.model_id}, R={manifest.resolution} "
        f"{manifest.precision}, {len(manifest.engines)} engine(s) recorded",
    )
    vocabulary = manifest.vocabulary or {}
    report.add(
        "vocabulary",
        bool(vocabulary),
        f"{vocabulary.get('vocabulary')} ({vocabulary.get('num_classes')} classes, CLIP {vocabulary.get('clip')})"
        if vocabulary
        else "none: segments are not named (diffcut-edge export-vocab adds one; --classes needs it too)",
    )
    if manifest.needs_verification:
        note = manifest.verification_note(str(model_dir))
        report.add("verified", note is None, note or f"passed against {manifest.verification.get('against')}")
    build = f"diffcut-edge build-engine --model-dir {model_dir}"
    if report.gpu is None:
        if manifest.engines:
            report.add("engine", False, "engines are recorded but this machine has no NVIDIA GPU to run them")
    elif not trt_ok:
        report.add("engine", False, "no tensorrt here: engines cannot be built or run")
    else:
        record = find_engine(manifest, report.gpu["name"], report.gpu["compute_capability"], tensorrt.__version__)
        if record is not None:
            report.add("engine", True, f"{record.file} matches this GPU and TensorRT")
        else:
            report.add(
                "engine", False, f"none built for {report.gpu['name']} / TensorRT {tensorrt.__version__}: run '{build}'"
            )
    backend = auto_backend(manifest)
    if backend == "tensorrt":
        report.backend, report.can_run = "tensorrt (native, GPU)", cupy_ok
        return
    if not providers:
        report.backend, report.can_run = "ort (onnxruntime is missing)", False
        return
    best = choose_providers(providers, manifest)[0][0].removesuffix("ExecutionProvider")
    report.backend, report.can_run = f"ort ({best})", True


def diagnose(model_dir: str | Path | None = None) -> DoctorReport:
    """Everything ``doctor`` reports; never raises for a missing piece (a bad folder does)."""
    report = DoctorReport()
    _python(report)
    providers = _onnxruntime(report)
    _gpu(report)
    cupy_ok = _cupy(report)
    trt_ok = _tensorrt(report)
    _live(report)
    _optional_stages(report)
    if model_dir is not None:
        _model_folder(report, Path(model_dir), providers, trt_ok, cupy_ok)
    else:
        report.can_run = bool(providers) or (trt_ok and cupy_ok and report.gpu is not None)
    if sys.version_info[:2] < MIN_PYTHON:
        report.can_run = False
    return report
