"""``serve`` and ``TritonSegmenter`` against a real tritonserver on localhost (nvidia-pytriton's 2.51
binary, python backend, CPU), with the tiny SDXL export: the served labels are the local
Segmenter's, 8 clients at once, malformed requests answered with errors while the server keeps
serving, a clean stop on SIGTERM, and the one-line errors before a server starts."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.segmenter import Segmenter
from diffcut_edge.serve import triton_repo as tr
from diffcut_edge.serve.triton_client import TritonSegmenter, to_rgb_uint8
from diffcut_edge.serve.triton_server import TritonServer, check_port_free, find_tritonserver

triton_http = pytest.importorskip("tritonclient.http", reason="the Triton tests need the [triton] extra")
from helpers.triton import free_ports, tritonserver_binary  # noqa: E402

R = 256


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("sdxl", R, "fp32")


@pytest.fixture(scope="module")
def binary():
    return tritonserver_binary()


@pytest.fixture(scope="module")
def server(binary, model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("triton")
    repo = tr.write_repository(
        model_dir, work / "repo", tr.RepositorySpec(encoder="python", max_batch=4, post_instances=2)
    )
    http, grpc, metrics = free_ports(3)
    server = TritonServer(binary, repo, work, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1")
    server.start(timeout_s=180)
    yield server
    assert server.stop() == 0  # SIGTERM: in-flight requests finished, models unloaded, status 0


@pytest.fixture(scope="module")
def frames(photos) -> list[np.ndarray]:
    """The sample frames as an OpenCV app has them (BGR uint8), one at an odd size."""
    import cv2

    bgr = [np.ascontiguousarray((p[:, :, ::-1] * 255).round().astype(np.uint8)) for p in photos]
    bgr[2] = cv2.resize(bgr[2], (301, 217), interpolation=cv2.INTER_AREA)
    return bgr


@pytest.fixture(scope="module")
def local_labels(model_dir, frames):
    with Segmenter.from_model_dir(model_dir, backend="ort-cpu") as seg:
        return [r.labels for r in seg.segment_batch(frames)]


def test_served_labels_equal_the_local_segmenter(server, frames, local_labels):
    with TritonSegmenter(server.url) as seg:
        one = seg(frames[0])
        many = seg.segment_batch(frames)
    assert one.labels.dtype == np.int32 and one.labels.shape == frames[0].shape[:2]
    np.testing.assert_array_equal(one.labels, local_labels[0])
    for served, local in zip(many, local_labels):
        np.testing.assert_array_equal(served.labels, local)
        assert served.num_segments > int(served.labels.max()) >= 0 and served.timings["request"] > 0


def test_grpc_client_gets_the_same_labels(server, frames, local_labels):
    with TritonSegmenter(f"grpc://127.0.0.1:{server.ports['grpc']}") as seg:
        results = seg.segment_batch(frames[:2])
    for served, local in zip(results, local_labels):
        np.testing.assert_array_equal(served.labels, local)


def test_eight_concurrent_clients(server, frames, local_labels):
    """Four threads share one TritonSegmenter made in this thread, four have their own."""
    errors, results = [], {}
    shared = TritonSegmenter(server.url)

    def client(k: int) -> None:
        try:
            seg = shared if k < 4 else TritonSegmenter(server.url)
            results[k] = [seg(frames[(k + i) % len(frames)]).labels for i in range(2)]
            seg.close()
        except Exception as e:  # collected: an assert in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 8
    for k, labels in results.items():
        for i, got in enumerate(labels):
            np.testing.assert_array_equal(got, local_labels[(k + i) % len(frames)])


@pytest.mark.parametrize(
    "array, dtype, message",
    [
        (np.zeros((8, 8, 3), np.float32), "FP32", "expects 'UINT8'"),
        (np.zeros((8, 8), np.uint8), "UINT8", "unexpected shape"),
        (np.zeros((0, 0, 3), np.uint8), "UINT8", "empty image"),
        (np.zeros((4, 0, 3), np.uint8), "UINT8", "empty image"),
    ],
)
def test_malformed_requests_get_errors_and_the_server_keeps_serving(
    server, frames, local_labels, array, dtype, message
):
    from tritonclient.utils import InferenceServerException

    tensor = triton_http.InferInput("image", list(array.shape), dtype)
    tensor.set_data_from_numpy(array, binary_data=True)
    # Closed here: a client left open holds a keep-alive connection, and the module's server then
    # waits out its exit timeout at SIGTERM and exits 1 (seen when this test ran last).
    with triton_http.InferenceServerClient(server.url) as client:
        with pytest.raises(InferenceServerException, match=message) as caught:
            client.infer("diffcut", [tensor])
    assert caught.value.status() in ("400", 400)  # the client's mistake, not a server failure
    assert server.process.poll() is None
    with TritonSegmenter(server.url) as seg:
        np.testing.assert_array_equal(seg(frames[0]).labels, local_labels[0])


def test_client_refuses_what_the_contract_cannot_carry(server):
    with TritonSegmenter(server.url) as seg:
        with pytest.raises(DiffCutError, match="sends uint8 frames"):
            seg(np.zeros((8, 8, 3), np.float32))
        with pytest.raises(DiffCutError, match="empty image"):
            seg(np.zeros((0, 8, 3), np.uint8))


def test_client_frame_conversion():
    bgr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(to_rgb_uint8(bgr), bgr[:, :, ::-1])
    bgra = np.dstack([bgr, np.full((2, 3), 255, np.uint8)])
    np.testing.assert_array_equal(to_rgb_uint8(bgra), bgr[:, :, ::-1])
    gray = bgr[:, :, 0]
    assert to_rgb_uint8(gray).shape == (2, 3, 3) and (to_rgb_uint8(gray)[:, :, 1] == gray).all()
    assert to_rgb_uint8(bgr).flags.c_contiguous


def test_unreachable_server_is_one_line():
    (port,) = free_ports(1)
    with pytest.raises(DiffCutError, match=f"cannot reach Triton at 127.0.0.1:{port}.*diffcut-edge serve"):
        TritonSegmenter(f"127.0.0.1:{port}")
    with pytest.raises(DiffCutError, match="use host:port"):
        TritonSegmenter("ftp://host:1")


def _serve_command(model_dir: Path, binary, ports: list[int], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "diffcut_edge.cli",
        "serve",
        "--model-dir",
        str(model_dir),
        "--tritonserver",
        str(binary.executable),
        "--host",
        "127.0.0.1",
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        *extra,
    ]


def test_serve_cli_runs_until_sigterm_and_stops_cleanly(binary, model_dir, frames, local_labels, tmp_path):
    ports = free_ports(3)
    proc = subprocess.Popen(
        _serve_command(model_dir, binary, ports, "--post-instances", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "serving ..." once every model is ready
        assert line.startswith("serving "), (line, proc.stderr.read() if proc.poll() is not None else "")
        with TritonSegmenter(f"127.0.0.1:{ports[0]}") as seg:
            np.testing.assert_array_equal(seg(frames[1]).labels, local_labels[1])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped tritonserver (exit status 0)" in out
    workdir = line.split("(log ")[1].split(")")[0]
    assert not Path(workdir).parent.exists()  # the temporary repository is gone
    for port in ports:  # and the ports are free again: no server left behind
        check_port_free(port, "127.0.0.1", "test")


def test_serve_cli_port_in_use_is_one_line(binary, model_dir):
    ports = free_ports(3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[1]))
        taken.listen()
        proc = subprocess.run(_serve_command(model_dir, binary, ports), capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert lines[-1] == (
        f"diffcut-edge serve: error: grpc port {ports[1]} on 127.0.0.1 is in use; pick another with --grpc-port"
    )
    assert "Traceback" not in proc.stderr


def test_serve_cli_refuses_a_backend_the_binary_lacks(binary, model_dir, capsys):
    from diffcut_edge import cli

    if binary.has_backend("onnxruntime"):
        pytest.skip("this tritonserver has an onnxruntime backend")
    assert (
        cli.main(
            [
                "serve",
                "--model-dir",
                str(model_dir),
                "--tritonserver",
                str(binary.executable),
                "--encoder",
                "onnxruntime",
            ]
        )
        == 2
    )
    assert "has no onnxruntime backend" in capsys.readouterr().err


def test_no_tritonserver_says_how_to_get_one(monkeypatch, tmp_path):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DiffCutError, match="pip install --no-deps nvidia-pytriton"):
        find_tritonserver()
    with pytest.raises(DiffCutError, match="is not a tritonserver executable"):
        find_tritonserver(tmp_path)


def test_served_segments_are_the_local_segmenters(binary, vocab_model_dir, frames, tmp_path):
    """A folder with a vocabulary: the server names each segment as Segmenter does (same classes,
    scores, areas, boxes), through HTTP and gRPC."""
    repo = tr.write_repository(
        vocab_model_dir, tmp_path / "repo", tr.RepositorySpec(encoder="python", post_instances=1)
    )
    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        binary, repo, tmp_path, http_port=http, grpc_port=grpc, metrics_port=metrics, host="127.0.0.1"
    )
    server.start(timeout_s=180)
    try:
        with Segmenter.from_model_dir(vocab_model_dir, backend="ort-cpu") as local:
            expected = local.segment_batch(frames[:2])
        for url in (server.url, f"grpc://127.0.0.1:{grpc}"):
            with TritonSegmenter(url) as seg:
                served = seg.segment_batch(frames[:2])
            for got, want in zip(served, expected):
                np.testing.assert_array_equal(got.labels, want.labels)
                assert got.vocabulary == "voc" and got.num_classes == 21
                assert [s.id for s in got.segments] == sorted(int(i) for i in np.unique(got.labels))
                for a, b in zip(got.segments, want.segments, strict=True):
                    assert (a.id, a.class_index, a.class_name, a.area, a.bbox, a.pooling) == (
                        b.id,
                        b.class_index,
                        b.class_name,
                        b.area,
                        b.bbox,
                        b.pooling,
                    )
                    assert a.score == pytest.approx(b.score, abs=1e-5)
    finally:
        assert server.stop() == 0


def test_model_control_logging_trace_and_shared_memory_are_closed_to_clients(server, frames, local_labels):
    import http.client

    host, port = server.url.rsplit(":", 1)
    for method, path in [
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/diffcut/unload"),
        ("GET", "/v2/logging"),
        ("GET", "/v2/trace/setting"),
        ("GET", "/v2/systemsharedmemory/status"),
    ]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request(method, path, body=b"{}" if method == "POST" else None)
        status = conn.getresponse().status
        conn.close()
        assert status in (401, 403), (path, status)
    with TritonSegmenter(server.url) as seg:  # inference, health and metadata stay open
        np.testing.assert_array_equal(seg(frames[0]).labels, local_labels[0])


def test_serve_listens_on_localhost_unless_told_otherwise():
    import inspect

    from diffcut_edge import cli

    assert inspect.signature(TritonServer).parameters["host"].default == "127.0.0.1"
    assert cli.build_parser().parse_args(["serve", "--model-dir", "m"]).host == "127.0.0.1"


def test_the_client_refuses_a_frame_over_the_pixel_limit_before_sending_it(server, monkeypatch):
    from diffcut_edge.runtime.preprocess import MAX_PIXELS_ENV

    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with TritonSegmenter(server.url) as seg:
        with pytest.raises(DiffCutError, match="over the limit of 1000"):
            seg(np.zeros((40, 40, 3), np.uint8))
