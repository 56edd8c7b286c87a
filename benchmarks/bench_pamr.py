"""PAMR at the open-vocabulary settings: the compiled loops (numba), the numpy array path and the
PyTorch reference, same process.

15 iterations, dilations (1, 2, 4, 8, 12, 24, 32, 64), then the 3x3 median (the official
``eval_diffcut_openvoc.py``), on a seeded random image with 8 block segments, at each --sizes
side. Prints the median wall time of each, the ratios against the compiled loops and whether the
labels agree with them. All get the same thread budget (--threads: torch and numba threads, and
the array path's strip workers through OMP_NUM_THREADS).

    python benchmarks/bench_pamr.py                    # 512 and 1024, reference at both
    python benchmarks/bench_pamr.py --sizes 1024 --ref-sizes --repeats 3

Not a test: record the figures in RESULTS.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

DILATIONS = (1, 2, 4, 8, 12, 24, 32, 64)
ITERATIONS = 15


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="square label-map sides")
    p.add_argument(
        "--ref-sizes",
        type=int,
        nargs="*",
        default=None,
        help="sides on which the reference runs too (default: all of --sizes; ~40 s at 1024)",
    )
    p.add_argument("--segments", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="runtime runs per size (median)")
    p.add_argument("--threads", type=int, default=None, help="threads for both sides (default: all CPUs)")
    return p.parse_args()


def _case(side: int, segments: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, (side, side, 3)).astype(np.float32)
    block = max(1, side // 4)
    labels = (np.arange(side)[:, None] // block * 4 + np.arange(side)[None, :] // block) % segments
    return image, labels.astype(np.int32)


def _median_s(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    args = _parse()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
    from diffcut_edge.runtime import pamr, pamr_kernel

    if not pamr_kernel.available():
        raise SystemExit("numba is not installed: pip install numba (it comes with the [cpu] extra)")
    pamr_kernel.warm_up()

    def array_path(image, labels):
        os.environ[pamr_kernel.ENV] = "numpy"
        try:
            return pamr.pamr_refine(image, labels, ITERATIONS, DILATIONS)
        finally:
            del os.environ[pamr_kernel.ENV]

    ref_sizes = args.sizes if args.ref_sizes is None else args.ref_sizes
    ref = None
    if ref_sizes:
        import torch

        from diffcut_edge.diffcut_ref import pamr_refine as ref_refine

        if args.threads:
            torch.set_num_threads(args.threads)
        ref = ref_refine
    threads = args.threads or os.cpu_count()
    print(f"PAMR {ITERATIONS} iterations, dilations {DILATIONS}, {args.segments} segments, {threads} threads")
    print(
        f"  {'side':>6}{'compiled s':>12}{'array s':>10}{'array/comp':>12}{'agree':>8}"
        f"{'reference s':>13}{'ref/comp':>10}{'agree':>8}"
    )
    for side in args.sizes:
        image, labels = _case(side, args.segments)
        pamr.pamr_refine(image[:64, :64], labels[:64, :64], num_iter=1, dilations=(1, 2))  # warm-up
        ours_s, ours = _median_s(lambda: pamr.pamr_refine(image, labels, ITERATIONS, DILATIONS), args.repeats)
        array_s, array = _median_s(lambda: array_path(image, labels), args.repeats)
        agree_array = float(np.mean(np.asarray(ours) == np.asarray(array)))
        ref_s, agree = float("nan"), float("nan")
        if ref is not None and side in ref_sizes:
            ref_s, theirs = _median_s(lambda: ref(image, labels, ITERATIONS, DILATIONS), 1)
            agree = float(np.mean(np.asarray(ours) == np.asarray(theirs)))
        ratio = ref_s / ours_s if np.isfinite(ref_s) else float("nan")
        print(
            f"  {side:>6}{ours_s:>12.2f}{array_s:>10.2f}{array_s / ours_s:>11.1f}x{agree_array:>8.4f}"
            f"{ref_s:>13.2f}{ratio:>9.1f}x{agree:>8.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
