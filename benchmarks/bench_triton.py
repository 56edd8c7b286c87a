"""Triton (dynamic batching, `diffcut-edge serve`'s setup) vs sequential local calls, for 1, 4 and 16
concurrent clients: throughput and p50/p99 latency, measured in the same run on the same frames.

Local = one in-process Segmenter shared by the client threads under a lock (a Segmenter runs one
call at a time), so its latency includes the queue. Triton = a real tritonserver started here on
a `triton-repo` repository; each client thread has its own TritonSegmenter.

    python benchmarks/bench_triton.py --model-dir TINY_SDXL_EXPORT_256 [--tritonserver PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def _run_clients(clients: int, requests: int, call) -> tuple[float, list[float]]:
    """``clients`` threads, ``requests`` calls in all; (images/s, latencies ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    share = [requests // clients + (k < requests % clients) for k in range(clients)]

    def worker(k: int) -> None:
        for i in range(share[k]):
            start = time.perf_counter()
            call(k, i)
            elapsed = (time.perf_counter() - start) * 1e3
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return requests / (time.perf_counter() - start), latencies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--post-instances", type=int, default=2)
    p.add_argument("--tritonserver", default=None)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import numpy as np
    import tritonclient.http as http

    from diffcut_edge.runtime import Segmenter
    from diffcut_edge.serve import triton_repo as tr
    from diffcut_edge.serve.triton_client import TritonSegmenter
    from diffcut_edge.serve.triton_server import TritonServer, find_tritonserver
    from helpers.data import sample_photos
    from helpers.triton import free_ports

    frames = [np.ascontiguousarray((p[:, :, ::-1] * 255).round().astype(np.uint8)) for p in sample_photos()]
    rows = []
    with Segmenter.from_model_dir(args.model_dir, backend="ort-cpu") as seg:
        lock = threading.Lock()

        def local(k: int, i: int) -> None:
            with lock:
                seg(frames[(k + i) % len(frames)])

        local(0, 0)  # warm-up
        for clients in args.clients:
            rows.append(("local", clients, *_run_clients(clients, args.requests, local), None))

    binary = find_tritonserver(args.tritonserver)
    with tempfile.TemporaryDirectory() as tmp:
        spec = tr.RepositorySpec(encoder="python", max_batch=args.max_batch, post_instances=args.post_instances)
        repo = tr.write_repository(args.model_dir, Path(tmp) / "repo", spec)
        ports = free_ports(3)
        with TritonServer(
            binary, repo, Path(tmp), http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2], host="127.0.0.1"
        ) as server:
            stats = http.InferenceServerClient(server.url)
            for clients in args.clients:
                segs = [TritonSegmenter(server.url) for _ in range(clients)]
                segs[0](frames[0])  # warm-up
                before = stats.get_inference_statistics(tr.ENCODER)["model_stats"][0]

                def served(k: int, i: int) -> None:
                    segs[k](frames[(k + i) % len(frames)])

                rate, latencies = _run_clients(clients, args.requests, served)
                after = stats.get_inference_statistics(tr.ENCODER)["model_stats"][0]
                batch = (after["inference_count"] - before["inference_count"]) / max(
                    1, after["execution_count"] - before["execution_count"]
                )
                rows.append(("triton", clients, rate, latencies, batch))
                for s in segs:
                    s.close()

    local_rate = {c: r for name, c, r, _, _ in rows if name == "local"}
    print(
        f"\n{args.model_dir}: {args.requests} requests per row, frames {frames[0].shape[1]}x{frames[0].shape[0]}; "
        f"Triton: python encoder, max batch {args.max_batch}, {args.post_instances} post-processing instance(s)"
    )
    print(
        f"  {'engine':<8}{'clients':>8}{'images/s':>10}{'vs local':>10}{'p50 ms':>9}{'p99 ms':>9}{'mean encoder batch':>20}"
    )
    for name, clients, rate, latencies, batch in rows:
        print(
            f"  {name:<8}{clients:>8}{rate:>10.2f}{rate / local_rate[clients]:>9.2f}x"
            f"{_percentile(latencies, 50):>9.0f}{_percentile(latencies, 99):>9.0f}"
            f"{'' if batch is None else f'{batch:.2f}':>20}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
