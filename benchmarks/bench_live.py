"""Live view cost: pipeline frames per second alone vs with 1 and 8 browsers watching, and the
latency a viewer sees from capture to a received frame — same process, same clip, same run.

The pipeline is `webcam --serve`'s loop (iter_segmented -> tracked overlay -> LiveHub.publish) on a
video file; "clients" are threads of a separate process reading /stream over HTTP as a browser
does (each part read whole) -- on this machine, so they take CPU a remote browser would not.
Latency = time the JPEG of frame i was fully received - time frame i left the reader (one
monotonic clock for both processes).

    python benchmarks/bench_live.py --model-dir TINY_OR_REAL_FOLDER --frames 60
    python benchmarks/bench_live.py --model-dir M --clip my.mp4 --frames 100 --json live.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--clip", type=Path, default=None, help="video file (default: a generated 256x192 pan)")
    p.add_argument("--frames", type=int, default=60, help="frames per scenario")
    p.add_argument("--clients", type=int, nargs="+", default=[0, 1, 8])
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--viewers", type=int, default=None, help=argparse.SUPPRESS)  # viewer-process mode
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def _viewer_process(args: argparse.Namespace) -> int:
    """N viewers until SIGTERM, then {frame: first arrival} as JSON in --out."""
    import signal

    received: dict[int, float] = {}
    viewers = [Viewer(args.port, received) for _ in range(args.viewers)]
    for v in viewers:
        v.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    print("ready", flush=True)
    done.wait()
    args.out.write_text(json.dumps({str(k): v for k, v in received.items()}))
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Viewer(threading.Thread):
    """Reads /stream like a browser; records when each frame's JPEG arrived."""

    def __init__(self, port: int, received: dict[int, float]) -> None:
        super().__init__(daemon=True)
        self.port, self.received, self.stop = port, received, threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        try:
            while not self.stop.is_set():
                headers = {}
                line = resp.readline()
                while line in (b"\r\n", b"\n"):
                    line = resp.readline()
                if not line:
                    return
                while (line := resp.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = line.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                resp.read(int(headers["content-length"]))
                self.received.setdefault(int(headers["x-frame"]), time.perf_counter())
        except (OSError, KeyError, ValueError):
            return
        finally:
            conn.close()


def _scenario(args: argparse.Namespace, clip: Path, clients: int) -> dict:
    from diffcut_edge.apps.live import LiveHub, LiveServer
    from diffcut_edge.apps.pipeline import iter_segmented
    from diffcut_edge.apps.tracking import TrackedOverlay
    from diffcut_edge.apps.video import FrameReader
    from diffcut_edge.runtime import Segmenter

    captured: dict[int, float] = {}
    received: dict[int, float] = {}

    def frames():
        i = 0
        while True:  # loop the clip
            with FrameReader(str(clip)) as reader:
                for frame in reader:
                    captured[i] = time.perf_counter()
                    i += 1
                    yield frame

    import subprocess

    hub = LiveHub()
    with (
        Segmenter.from_model_dir(args.model_dir, backend=args.backend) as seg,
        LiveServer(hub, "127.0.0.1", _free_port(), max_clients=max(8, clients)) as server,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out = Path(tmp) / "received.json"
        viewers = None
        if clients:
            viewers = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--model-dir",
                    str(args.model_dir),
                    "--viewers",
                    str(clients),
                    "--port",
                    str(server.port),
                    "--out",
                    str(out),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            viewers.stdout.readline()  # "ready"
        draw = TrackedOverlay()
        stream = iter_segmented(frames(), seg, max_frames=args.frames + 5)
        for n, item in enumerate(stream):
            if n == 5:
                started = time.perf_counter()  # 5 warm-up frames
            vis = draw(item.frame, item.result)
            options = {"tau": seg.options.tau, "alpha": seg.options.alpha, "refine": seg.options.refine}
            hub.publish(vis, draw.last_labels, item.result.timings, fps=0.0, options=options)
        elapsed = time.perf_counter() - started
        time.sleep(0.5)  # the last frames reach the viewers
        if viewers is not None:
            viewers.terminate()
            viewers.wait(30)
            received = {int(k): v for k, v in json.loads(out.read_text()).items()}
    latencies = [(received[i] - captured[i]) * 1e3 for i in received if i in captured and i >= 5]
    return {
        "clients": clients,
        "fps": args.frames / elapsed,
        "latency_ms_median": statistics.median(latencies) if latencies else None,
        "latency_ms_p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))] if latencies else None,
        "frames_received": len([i for i in received if i >= 5]),
    }


def main() -> int:
    args = _parse()
    if args.viewers is not None:
        return _viewer_process(args)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip
        if clip is None:
            from helpers.fake_segmenter import make_video

            clip = Path(tmp) / "clip.avi"
            make_video(clip, n=60, size=(192, 256))
        rows = [_scenario(args, clip, n) for n in args.clients]
    alone = next((r["fps"] for r in rows if r["clients"] == 0), None)
    print(f"\n{args.model_dir}, backend {args.backend}, {args.frames} frames per scenario")
    print(f"  {'clients':>7}{'fps':>8}{'vs alone':>10}{'latency median ms':>19}{'p90 ms':>9}")
    for r in rows:
        ratio = f"{r['fps'] / alone:>9.1%}" if alone else "-"
        med = f"{r['latency_ms_median']:.0f}" if r["latency_ms_median"] is not None else "-"
        p90 = f"{r['latency_ms_p90']:.0f}" if r["latency_ms_p90"] is not None else "-"
        print(f"  {r['clients']:>7}{r['fps']:>8.2f}{ratio:>10}{med:>19}{p90:>9}")
    if args.json:
        args.json.write_text(json.dumps({"model_dir": str(args.model_dir), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
