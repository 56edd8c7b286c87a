"""Local engine vs `segment --engine ray` with 1 and 2 workers: images/s on the same images, and the
overhead per image Ray adds (same run, same machine, a fresh output folder each).

    python benchmarks/bench_ray.py --model-dir TINY_SDXL_EXPORT --images 24
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import cv2
    import numpy as np

    from diffcut_edge.apps.batch import segment_images
    from diffcut_edge.runtime import Segmenter, SegmenterSpec
    from diffcut_edge.serve import ray_batch
    from helpers.data import sample_photos

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        photos = sample_photos(256)
        for i in range(args.images):
            rgb = photos[i % len(photos)]
            img = rgb if rgb.dtype == np.uint8 else np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
            cv2.imwrite(str(src / f"img{i:03d}.png"), np.ascontiguousarray(img[..., ::-1]))
        paths = sorted(src.iterdir())
        rows = []
        t0 = time.perf_counter()
        with Segmenter.from_model_dir(args.model_dir, backend="ort-cpu") as seg:
            opened = time.perf_counter()
            (Path(tmp) / "local").mkdir()
            segment_images(seg, paths, Path(tmp) / "local")
        done = time.perf_counter()
        rows.append(("local", len(paths) / (done - opened), done - t0))
        items = ray_batch.collect_items([str(src)])
        for workers in args.workers:
            out = Path(tmp) / f"ray{workers}"
            t0 = time.perf_counter()
            report = ray_batch.run(items, SegmenterSpec(args.model_dir, backend="ort-cpu"), out, workers=workers)
            rows.append((f"ray, {workers} worker(s)", report.images_per_s, time.perf_counter() - t0))
            shutil.rmtree(out)
    local = rows[0][1]
    print(f"\n{args.model_dir}: {args.images} images")
    print(f"  {'engine':<20}{'images/s':>10}{'vs local':>10}{'ms/image added':>16}{'wall s (incl. start)':>22}")
    for name, rate, wall in rows:
        added = (1 / rate - 1 / local) * 1e3
        print(f"  {name:<20}{rate:>10.2f}{rate / local:>9.2f}x{added:>16.0f}{wall:>22.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
