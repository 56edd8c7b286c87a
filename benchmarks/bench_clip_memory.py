"""Peak memory and time of the dense CLIP graph, one fresh process per setting.

What an 8 GB board must hold for the open-vocabulary protocol: the CLIP trunk at R (1024) or, for
COCO-Object, at 2048 (the official upsamples COCO images before CLIP). Each setting runs in its own
process (peak RSS is per process): ONNX Runtime's CPU provider, with and without its memory arena.

    python benchmarks/bench_clip.py --model-dir TINY_SDXL_EXPORT_256      # once: exports the real
                                                                         # architecture to --work
    python benchmarks/bench_clip_memory.py --model-dir /tmp/diffcut-clip-bench/model --sides 1024 2048

Not a test: record the figures in RESULTS.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime as ort
path, side, arena = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
options = ort.SessionOptions()
options.enable_cpu_mem_arena = arena
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
pixels = np.random.default_rng(0).uniform(0, 1, (1, 3, side, side)).astype(np.float32)
start = time.perf_counter()
session.run(None, {"image": pixels})
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "loaded_gb": loaded}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a model folder with export-vocab's graphs")
    p.add_argument("--sides", type=int, nargs="+", default=[1024, 2048])
    args = p.parse_args()
    dense = args.model_dir / "clip_dense.onnx"
    if not dense.is_file():
        sys.exit(f"{dense} is missing: run export-vocab (or bench_clip.py) first")
    print(f"  {'side':>6}{'arena':>8}{'seconds':>10}{'peak RSS GB':>13}{'after load GB':>15}")
    for side in args.sides:
        for arena in (True, False):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(dense), str(side), "1" if arena else "0"],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {side:>6}{'on' if arena else 'off':>8}{row['seconds']:>10.1f}{row['peak_gb']:>13.2f}"
                f"{row['loaded_gb']:>15.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
