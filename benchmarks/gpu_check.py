"""GPU acceptance check: the GPU paths against the numpy path, in one run, one JSON out.

For an NVIDIA GPU machine with CuPy and PyTorch (no TensorRT, no onnxruntime-gpu, no network
needed), in under 5 minutes:

- the runtime's post-processing on cupy arrays and on torch CUDA tensors (the same Array API
  code path) vs numpy on the same planted features: NCut + assignment at 32x32 and 64x64 (label
  agreement, ms each), PAMR at 128^2, 512^2, 1024^2 (max soft-mask difference, ms);
- the PyTorch reference NCut on CUDA vs the numpy runtime (agreement);
- the reference's truncated encoder (tiny random SDXL-family model) in fp16 on the GPU vs fp32
  on the CPU: token cosine (needs diffusers).

Every piece the machine lacks is one line in the output and a "skipped" entry with the reason.

    python benchmarks/gpu_check.py --out gpu_check.json          # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out dry.json      # CPU: small sizes, see below

The dry run (a CI test) runs every check on the CPU at small sizes: the "cupy" slot on
array_api_strict's non-default device (which refuses implicit host copies as cupy does), the
"torch" slot on torch CPU tensors, the encoder in fp32.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # planted features (helpers/)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--dry-run", action="store_true", help="CPU only, small sizes: checks the script itself")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def _timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """(median ms after one warm-up run, last result)."""
    out = fn()
    sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels on which two label maps agree after matching their ids (Hungarian)."""
    from diffcut_edge.metrics import matched_agreement

    return matched_agreement(a, b)


class Checks:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            self.results[name] = {"status": "ok", **fn()}
            line = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in self.results[name].items()
                if k != "status"
            )
        except Skip as e:
            self.results[name] = {"status": "skipped", "reason": str(e)}
            line = f"skipped: {e}"
        except Exception as e:  # a failure of one piece is recorded, the others still run
            self.results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            line = f"FAILED: {type(e).__name__}: {e}"
        print(f"{name}: {line}", flush=True)


class Skip(Exception):
    """This machine lacks what the check needs."""


def _cupy():
    from diffcut_edge.runtime.xp import gpu_postprocessing_problem

    problem = gpu_postprocessing_problem()
    if problem:
        raise Skip(problem)
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise Skip("cupy sees no CUDA device")
    return cupy


def _device_path(kind: str, dry_run: bool) -> tuple[str, Callable[[np.ndarray], Any], Callable[[], None]]:
    """(where it runs, host -> device, synchronise) for the checked path ``kind`` ("cupy" | "torch")."""
    if kind == "cupy":
        if dry_run:
            import array_api_strict

            device = array_api_strict.Device("device1")
            return "array_api_strict device1", lambda a: array_api_strict.asarray(a, device=device), lambda: None
        cp = _cupy()
        return "cupy", cp.asarray, lambda: cp.cuda.get_current_stream().synchronize()
    torch, device = _torch_cuda(dry_run)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return f"torch {device}", lambda a: torch.as_tensor(a, device=device), sync


_NUMPY_RESULTS: dict[tuple, tuple[float, Any]] = {}  # numpy side, timed once per size


def _numpy_side(key: tuple, fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    if key not in _NUMPY_RESULTS:
        _NUMPY_RESULTS[key] = _timed(fn, repeats)
    return _NUMPY_RESULTS[key]


def ncut_check(kind: str, grid: int, repeats: int, dry_run: bool) -> dict[str, Any]:
    from diffcut_edge.runtime import assign_concepts, recursive_ncut
    from diffcut_edge.runtime.xp import to_host
    from helpers.runtime_planted import planted_case

    where, to_device, sync = _device_path(kind, dry_run)
    case = planted_case((grid, grid), 10, 0.2, 0)
    feats = case.features.astype(np.float32)

    def segment(x):
        coarse = recursive_ncut(x, (grid, grid)).labels
        return assign_concepts(x, (grid, grid), coarse)

    cpu_ms, cpu = _numpy_side(("ncut", grid), lambda: segment(feats), repeats)
    device_feats = to_device(feats)
    dev_ms, dev = _timed(lambda: segment(device_feats), repeats, sync)
    return {
        "agreement": _agreement(cpu, to_host(dev)),
        "numpy_ms": cpu_ms,
        "device_ms": dev_ms,
        "speedup": cpu_ms / dev_ms,
        "device": where,
    }


def pamr_check(kind: str, size: int, repeats: int, dry_run: bool) -> dict[str, Any]:
    from diffcut_edge.runtime import pamr_soft
    from diffcut_edge.runtime.xp import to_host

    where, to_device, sync = _device_path(kind, dry_run)
    rng = np.random.default_rng(0)
    image = rng.random((size, size, 3), dtype=np.float32)
    labels = (np.arange(size)[:, None] * 6 // size + np.arange(size)[None, :] * 6 // size).astype(np.int32) % 7
    cpu_ms, cpu = _numpy_side(("pamr", size), lambda: pamr_soft(image, labels), repeats)
    d_image, d_labels = to_device(image), to_device(labels)
    dev_ms, dev = _timed(lambda: pamr_soft(d_image, d_labels), repeats, sync)
    return {
        "max_abs_diff": float(np.abs(cpu - to_host(dev)).max()),
        "numpy_ms": cpu_ms,
        "device_ms": dev_ms,
        "speedup": cpu_ms / dev_ms,
        "device": where,
    }


def _torch_cuda(dry_run: bool):
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch is not installed ({e})") from e
    if dry_run:
        return torch, "cpu"
    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    return torch, "cuda"


def reference_ncut_check(grid: int, dry_run: bool) -> dict[str, Any]:
    from diffcut_edge.diffcut_ref import segment_features as reference
    from diffcut_edge.runtime import segment_features
    from helpers.runtime_planted import planted_case

    torch, device = _torch_cuda(dry_run)
    case = planted_case((grid, grid), 10, 0.2, 0)
    ours = segment_features(case.features, (grid, grid))
    t0 = time.perf_counter()
    ref = reference(torch.as_tensor(case.features, device=device), (grid, grid))
    return {
        "agreement": _agreement(np.asarray(ours), np.asarray(ref)),
        "reference_ms": (time.perf_counter() - t0) * 1e3,
        "device": device,
    }


def encoder_check(dry_run: bool) -> dict[str, Any]:
    torch, device = _torch_cuda(dry_run)
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        raise Skip(f"diffusers is not installed ({e}): carry it to run the encoder check") from e
    import tempfile

    from diffcut_edge.diffcut_ref import extract_features
    from diffcut_edge.models import load_pipeline, make_tiny_pipeline
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()

    resolution = 128 if dry_run else 256
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_pipeline("sdxl", Path(tmp) / "tiny", seed=0)
        images = np.random.default_rng(0).random((2, resolution, resolution, 3), dtype=np.float32)
        cpu = extract_features(load_pipeline(folder), images, resolution=resolution)
        dtype = torch.float32 if dry_run else torch.float16
        pipe = load_pipeline(folder, torch_dtype=dtype, device=device)
        t0 = time.perf_counter()
        dev = extract_features(pipe, images, resolution=resolution)
        ms = (time.perf_counter() - t0) * 1e3
    a, b = cpu.reshape(-1, cpu.shape[-1]), dev.reshape(-1, dev.shape[-1]).astype(np.float32)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {
        "min_token_cosine": float(cos.min()),
        "mean_token_cosine": float(cos.mean()),
        "precision": "fp32 (dry run)" if dry_run else "fp16",
        "device_ms": ms,
    }


def main() -> int:
    args = _parse()
    started = time.perf_counter()
    grids = (12, 16) if args.dry_run else (32, 64)
    sizes = (32, 64) if args.dry_run else (128, 512, 1024)
    checks = Checks()
    for kind in ("cupy", "torch"):
        pair = f"{kind} vs numpy" + (", dry run" if args.dry_run else "")
        for grid in grids:
            checks.run(
                f"ncut+assign {grid}x{grid} ({pair})",
                lambda g=grid, k=kind: ncut_check(k, g, args.repeats, args.dry_run),
            )
        for size in sizes:
            checks.run(f"pamr {size}^2 ({pair})", lambda s=size, k=kind: pamr_check(k, s, args.repeats, args.dry_run))
    checks.run(
        f"reference ncut {grids[0]}x{grids[0]} (torch vs numpy runtime)",
        lambda: reference_ncut_check(grids[0], args.dry_run),
    )
    checks.run("truncated encoder (torch fp16 GPU vs fp32 CPU)", lambda: encoder_check(args.dry_run))
    report = {
        "dry_run": args.dry_run,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds": time.perf_counter() - started,
        "checks": checks.results,
    }
    try:
        from diffcut_edge.runtime.gpu import probe_gpu

        gpu = probe_gpu()
        report["gpu"] = None if gpu is None else {"name": gpu.name, "compute_capability": gpu.compute_capability}
    except Exception as e:  # never lose the figures for a probe
        report["gpu"] = f"probe failed: {e}"
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']:.0f} s)")
    return 1 if any(r["status"] == "failed" for r in checks.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
