"""INT8 vs fp32 encoder, same run: time, peak memory, size, token cosine and label agreement.

Quantizes an fp32 model folder (``diffcut-edge quantize`` code path) on calibration photos, then
times both folders' encoder through onnxruntime on the CPU, each in its own subprocess (so peak
resident memory is per model), and compares their features on the photos (``verify --against``
code path, not recorded).

    python benchmarks/make_random_ssd1b.py --resolution 512 --out /tmp/ssd1b-512
    python benchmarks/bench_quantize.py --model-dir /tmp/ssd1b-512/model --calibration 2 --threads 2
    python benchmarks/bench_quantize.py --model-dir TINY_EXPORT --json out.json

``--calibration N`` uses the first N scikit-image sample photos (astronaut, chelsea, coffee,
rocket); a path uses your images. Not a test: record the figures in RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="fp32 model folder")
    p.add_argument("--calibration", default="4", help="N sample photos, or an image folder")
    p.add_argument("--method", default="minmax")
    p.add_argument("--activations", default="uint8")
    p.add_argument("--int8-dir", type=Path, default=None, help="reuse (or keep) the INT8 folder here")
    p.add_argument("--repeats", type=int, default=3, help="timed encoder runs per folder (median)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # subprocess mode
    return p.parse_args()


def _measure(model_dir: Path, repeats: int, threads: int | None) -> dict:
    """Encoder seconds (first run and median of the rest) and peak RSS of one folder, in this process."""
    import numpy as np

    from diffcut_edge.runtime.backends import open_backend

    backend = open_backend(model_dir, "ort-cpu", threads=threads)
    r = backend.manifest.resolution
    batch = np.random.default_rng(0).random((1, 3, r, r), dtype=np.float32)
    t0 = time.perf_counter()
    backend.infer({backend.input_name: batch})
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        backend.infer({backend.input_name: batch})
        times.append(time.perf_counter() - t0)
    backend.close()
    return {"first_s": first, "median_s": statistics.median(times), "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: the latter survives exec, so a
    child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _calibration(spec: str, resolution: int, tmp: Path) -> list[Path]:
    if not spec.isdigit():
        return [Path(spec)]
    import cv2
    import numpy as np
    from skimage import data

    folder = tmp / "photos"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket")[: int(spec)]:
        rgb = getattr(data, name)()[..., :3]
        cv2.imwrite(str(folder / f"{name}.png"), np.ascontiguousarray(rgb[..., ::-1]))
    return sorted(folder.iterdir())


def _size_mb(folder: Path) -> float:
    from diffcut_edge.runtime.manifest import read_manifest

    m = read_manifest(folder)
    return sum((folder / f).stat().st_size for f in [m.onnx_file, *m.onnx_data_files]) / 1e6


def main() -> int:
    args = _parse()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.repeats, args.threads)))
        return 0
    from diffcut_edge.export.quantize import quantize_model
    from diffcut_edge.export.verify import verify_against
    from diffcut_edge.runtime.manifest import read_manifest

    fp32 = args.model_dir
    resolution = read_manifest(fp32).resolution
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        tmp = Path(tmp)
        photos = _calibration(args.calibration, resolution, tmp)
        int8 = args.int8_dir or tmp / "int8"
        quantize_s = None
        if not (int8 / "manifest.json").is_file():
            t0 = time.perf_counter()
            quantize_model(fp32, photos, int8, method=args.method, activations=args.activations, progress=True)
            quantize_s = time.perf_counter() - t0
        rows = {}
        for name, folder in (("fp32", fp32), ("int8", int8)):
            cmd = [
                sys.executable,
                __file__,
                "--model-dir",
                str(fp32),
                "--measure",
                str(folder),
                "--repeats",
                str(args.repeats),
            ] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
            rows[name] = {**json.loads(out.strip().splitlines()[-1]), "size_mb": _size_mb(folder)}
        fidelity = verify_against(int8, fp32, photos if photos and photos[0].is_file() else None, record=False)
    report = {
        "model_dir": str(fp32),
        "resolution": resolution,
        "threads": args.threads,
        "method": args.method,
        "activations": args.activations,
        "calibration_images": len(photos),
        "quantize_s": quantize_s,
        "rows": rows,
        "speedup": rows["fp32"]["median_s"] / rows["int8"]["median_s"],
        "min_cosine": fidelity.min_cosine,
        "mean_label_agreement": fidelity.mean_label_agreement,
        "per_image": [
            {"image": i.name, "min_cosine": i.min_cosine, "label_agreement": i.label_agreement} for i in fidelity.images
        ],
    }
    print(
        f"\n{fp32} at {resolution} px, onnxruntime CPU, threads={args.threads or 'default'}; "
        f"INT8 {args.method}/{args.activations} on {len(photos)} photo(s)"
        + (f", quantized in {quantize_s:.0f} s" if quantize_s else "")
    )
    print(f"  {'folder':<6}{'size MB':>10}{'encoder s':>11}{'first s':>9}{'peak RSS MB':>13}")
    for name, r in rows.items():
        print(f"  {name:<6}{r['size_mb']:>10.1f}{r['median_s']:>11.3f}{r['first_s']:>9.3f}{r['peak_rss_mb']:>13.0f}")
    print(
        f"  INT8 speed-up {report['speedup']:.2f}x; vs fp32: min token cosine {fidelity.min_cosine:.5f}, "
        f"mean label agreement {100 * (fidelity.mean_label_agreement or 0):.1f}%"
    )
    for i in fidelity.images:
        print(f"    {i.name:<12} cosine {i.min_cosine:.5f}  labels {100 * (i.label_agreement or 0):.1f}%")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
