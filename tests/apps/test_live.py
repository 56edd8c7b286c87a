"""The live browser view's server (apps/live.py) at the HTTP level: a real aiohttp server on
localhost, fed by a thread that publishes frames the way the camera loop does."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
import zipfile

import cv2
import numpy as np
import pytest

from diffcut_edge.apps import live
from diffcut_edge.errors import DiffCutError

pytest.importorskip("aiohttp", reason="the live view needs the [live] extra (aiohttp)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frame(i: int) -> tuple[np.ndarray, np.ndarray]:
    """A moving two-segment frame: (overlay BGR, labels)."""
    labels = np.zeros((48, 64), np.int32)
    labels[:, : 8 + (i % 40)] = 3
    overlay = np.zeros((48, 64, 3), np.uint8)
    overlay[labels == 3] = (0, 0, 255)
    overlay[labels == 0] = (i * 5 % 256, 128, 0)
    return overlay, labels


class Publisher:
    """Publishes frames at ``hz`` in a thread, like the camera loop; records publish() times."""

    def __init__(self, hub: live.LiveHub, hz: float = 50.0) -> None:
        self.hub, self.period, self.stop, self.durations = hub, 1.0 / hz, threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            overlay, labels = _frame(i)
            t0 = time.perf_counter()
            self.hub.publish(
                overlay,
                labels,
                {"encoder": 1.0, "total": 2.0},
                fps=50.0,
                options={"tau": 0.5, "alpha": 10.0, "refine": True, "opacity": 0.5},
            )
            self.durations.append(time.perf_counter() - t0)
            i += 1
            time.sleep(self.period)

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def served():
    """(server, hub, port) with frames flowing; stopped afterwards."""
    hub, port = live.LiveHub(), _free_port()
    with live.LiveServer(hub, "127.0.0.1", port, max_clients=8) as server, Publisher(hub):
        deadline = time.time() + 5
        while hub.latest() is None and time.time() < deadline:
            time.sleep(0.01)
        yield server, hub, port


def _get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, dict(resp.getheaders())


def _post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else {}


def _open_stream(port: int) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stream")
    return conn.getresponse()


def _read_part(resp: http.client.HTTPResponse) -> tuple[dict, bytes]:
    """One multipart part: its headers and its body (by Content-Length); http.client undoes the chunking."""
    line = resp.readline()
    while line in (b"\r\n", b"\n"):
        line = resp.readline()
    assert line.strip() == f"--{live.BOUNDARY}".encode(), line
    headers = {}
    while (line := resp.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    return headers, resp.read(int(headers["content-length"]))


# ------------------------------------------------------------------ pure parts
@pytest.mark.parametrize(
    "text, expected",
    [
        ("8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:8081", ("::1", 8081)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_serve(text, expected):
    assert live.parse_serve(text) == expected


@pytest.mark.parametrize("text", ["http", "0.0.0.0:", "70000", "0"])
def test_parse_serve_refuses_nonsense(text):
    with pytest.raises(DiffCutError, match="--serve"):
        live.parse_serve(text)


def test_controls_are_validated_like_the_segmenter_options():
    assert live.check_controls({"tau": 0.3, "refine": False, "opacity": 1}) == {
        "tau": 0.3,
        "refine": False,
        "opacity": 1.0,
    }
    for body, message in [
        ({"tau": -1}, "tau"),
        ({"alpha": 0}, "alpha"),
        ({"opacity": 2}, "opacity"),
        ({"refine": "yes"}, "refine"),
        ({"tau": "0.5"}, "number"),
        ({"mask": 3}, "unknown"),
        ([], "JSON object"),
        ({}, "JSON object"),
        ({"tau": True}, "number"),
    ]:
        with pytest.raises(DiffCutError, match=message):
            live.check_controls(body)


def test_segment_list_is_sorted_by_area_with_palette_colours():
    labels = np.array([[0, 0, 0, 5], [0, 0, 5, 5]], np.int32)
    segments = live.segment_list(labels)
    assert [s["id"] for s in segments] == [0, 5] and segments[0]["area"] == pytest.approx(5 / 8)
    assert segments[0]["color"] == "#e6194b"  # palette_color(0), as drawn in the overlay
    assert segments[0]["name"] is None and segments[0]["score"] is None  # no vocabulary


def test_stats_carry_class_names_and_scores_and_the_page_never_parses_them_as_html():
    from diffcut_edge.apps.overlay import SegmentName

    hub = live.LiveHub()
    labels = np.array([[0, 0, 0, 5], [0, 0, 5, 5]], np.int32)
    hub.publish(
        np.zeros((2, 4, 3), np.uint8),
        labels,
        {},
        fps=1.0,
        options={},
        names=[SegmentName(5, "<img src=x onerror=alert(1)>", 0.87654)],
    )
    segments = hub.latest().summary()["segments"]
    assert segments[1] == {
        "id": 5,
        "color": "#911eb4",
        "area": 0.375,
        "name": "<img src=x onerror=alert(1)>",
        "score": 0.8765,
    }
    from importlib import resources

    page = resources.files("diffcut_edge.apps").joinpath("live_page.html").read_text(encoding="utf-8")
    assert ".innerHTML" not in page and "textContent" in page


# ------------------------------------------------------------------ the server
def test_page_stats_and_stream_framing(served):
    server, hub, port = served
    status, page, headers = _get(port, "/")
    assert status == 200 and b'src="stream"' in page and headers["Content-Type"].startswith("text/html")
    status, body, _ = _get(port, "/stats")
    stats = json.loads(body)
    assert status == 200 and stats["num_segments"] == 2 and stats["options"]["tau"] == 0.5
    resp = _open_stream(port)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == f"multipart/x-mixed-replace; boundary={live.BOUNDARY}"
    parts = [_read_part(resp) for _ in range(4)]
    resp.close()
    indices = [int(h["x-frame"]) for h, _ in parts]
    assert indices == sorted(indices) and len(set(indices)) == 4  # newer frames, never repeated
    images = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for _, b in parts]
    assert all(img.shape == (48, 64, 3) for img in images)
    assert any(np.abs(images[0].astype(int) - img).mean() > 1 for img in images[1:])  # the picture moves


def test_eight_clients_then_503_and_a_freed_slot_is_reused(served):
    server, hub, port = served
    streams = [_open_stream(port) for _ in range(8)]
    assert all(s.status == 200 for s in streams)
    for s in streams:
        _read_part(s)
    status, body, _ = _get(port, "/stream")
    assert status == 503 and b"8 clients" in body
    streams.pop().close()
    deadline = time.time() + 10
    while server.clients >= 8 and time.time() < deadline:
        time.sleep(0.05)
    again = _open_stream(port)
    assert again.status == 200
    _read_part(again)
    for s in [*streams, again]:
        s.close()


def test_a_client_that_reads_nothing_does_not_slow_the_camera_loop(served):
    server, hub, port = served
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")  # then never read
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = hub.published
    time.sleep(2.0)  # ~100 frames of 6 KB: far beyond what the stalled socket buffers
    assert hub.published - before > 50
    reader = _open_stream(port)
    first, _ = _read_part(reader)
    second, _ = _read_part(reader)
    assert int(second["x-frame"]) > int(first["x-frame"])  # others still get new frames
    reader.close()
    stalled.close()


def test_publish_never_blocks(served):
    server, hub, port = served
    streams = [_open_stream(port) for _ in range(4)]
    time.sleep(1.0)
    t0 = time.perf_counter()
    for i in range(200):
        overlay, labels = _frame(i)
        hub.publish(overlay, labels, {}, fps=0.0, options={})
    per_call = (time.perf_counter() - t0) / 200
    assert per_call < 0.005  # references and a wake-up; encoding happens in the server
    for s in streams:
        s.close()


def test_malformed_controls_are_400_and_the_server_keeps_serving(served):
    server, hub, port = served
    auth = {live.TOKEN_HEADER: server.token}
    assert _post(port, "/control", b"not json", auth)[0] == 400
    status, body = _post(port, "/control", json.dumps({"tau": -1}).encode(), auth)
    assert status == 400 and "tau" in body["error"]
    assert _post(port, "/control", json.dumps({"nonsense": 1}).encode(), auth)[0] == 400
    assert _post(port, "/control", b"{" + b" " * (live.MAX_BODY_BYTES + 10) + b"}", auth)[0] == 413
    status, body = _post(port, "/control", json.dumps({"tau": 0.25, "opacity": 0.8}).encode(), auth)
    assert status == 200 and body["accepted"] == {"tau": 0.25, "opacity": 0.8}
    assert hub.take_changes() == {"tau": 0.25, "opacity": 0.8} and hub.take_changes() == {}
    assert _get(port, "/stats")[0] == 200


def test_snapshot_is_the_current_frame(served):
    server, hub, port = served
    status, body, headers = _get(port, f"/snapshot?token={server.token}")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        assert sorted(z.namelist()) == ["labels.png", "overlay.png", "segments.json"]
        labels = cv2.imdecode(np.frombuffer(z.read("labels.png"), np.uint8), cv2.IMREAD_UNCHANGED)
        meta = json.loads(z.read("segments.json"))
    assert labels.dtype == np.uint16 and labels.shape == (48, 64) and set(np.unique(labels)) == {0, 3}
    assert {s["id"] for s in meta["segments"]} == {0, 3}


def test_shutdown_while_streaming_ends_the_stream_and_the_thread():
    hub, port = live.LiveHub(), _free_port()
    server = live.LiveServer(hub, "127.0.0.1", port)
    with server, Publisher(hub):
        while hub.latest() is None:
            time.sleep(0.01)
        resp = _open_stream(port)
        _read_part(resp)
        t0 = time.time()
        server.stop()
        assert not server._thread.is_alive() and time.time() - t0 < 8
        with pytest.raises(Exception):  # noqa: B017 - the stream ends (EOF or reset), it does not hang
            for _ in range(1000):
                _read_part(resp)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_beyond_localhost_controls_and_snapshot_need_the_token():
    hub, port = live.LiveHub(), _free_port()
    with live.LiveServer(hub, "0.0.0.0", port) as server, Publisher(hub):
        while hub.latest() is None:
            time.sleep(0.01)
        token = server.token
        assert token and f"?token={token}" in server.url
        assert _post(port, "/control", b'{"tau": 0.3}')[0] == 403
        assert _post(port, "/control", b'{"tau": 0.3}', {live.TOKEN_HEADER: "wrong"})[0] == 403
        assert _post(port, "/control", b'{"tau": 0.3}', {live.TOKEN_HEADER: token})[0] == 200
        assert _get(port, "/snapshot")[0] == 403
        assert _get(port, f"/snapshot?token={token}")[0] == 200
        assert _get(port, "/stats")[0] == 200  # watching needs no token; changing and saving do
    with live.LiveServer(live.LiveHub(), "127.0.0.1", _free_port()) as local:
        # Localhost too: any page in the user's browser can reach it.
        assert local.token and local.url.endswith(f"?token={local.token}")


def test_a_port_in_use_is_one_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DiffCutError, match=f"cannot serve on 127.0.0.1:{port}"):
            with live.LiveServer(live.LiveHub(), "127.0.0.1", port):
                pass


def test_stats_say_what_the_labels_are():
    from diffcut_edge.apps.hud import frame_status
    from diffcut_edge.apps.pipeline import SegmentedFrame

    hub = live.LiveHub()
    item = SegmentedFrame(
        12,
        np.zeros((8, 8, 3), np.uint8),
        None,
        keyframe=False,
        key_index=9,
        age_frames=3,
        age_ms=99.94,
        confidence=0.8712,
        encoder_fps=1.25,
    )
    hub.publish(
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((8, 8), np.int32),
        {"flow": 1.0},
        fps=30.0,
        options={},
        frame=frame_status(item),
    )
    labels = hub.latest().summary()["labels"]
    assert labels == {
        "keyframe": False,
        "key_index": 9,
        "age_frames": 3,
        "age_ms": 99.9,
        "confidence": 0.871,
        "encoder_fps": 1.25,
    }
    json.dumps(labels)  # plain data for /stats and /events


# ------------------------------------------------------------------ attacks (real HTTP on 127.0.0.1)
def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_a_web_page_cannot_drive_or_read_the_live_view(served):
    server, hub, port = served
    auth = {live.TOKEN_HEADER: server.token}
    # A cross-site form or text/plain POST needs no preflight: refused, even with the token in the URL.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST",
        f"/control?token={server.token}",
        body=b'{"tau": 0.1}',
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert conn.getresponse().status in (403, 415)
    conn.close()
    assert _post(port, "/control", b'{"tau": 0.1}', {**auth, "Origin": "https://evil.example"})[0] == 403
    assert _post(port, "/control", b'{"tau": 0.1}')[0] == 403  # no token, also on localhost
    assert _post(port, "/control", b'{"tau": 0.1}', {**auth, "Origin": f"http://127.0.0.1:{port}"})[0] == 200
    assert _get(port, "/snapshot")[0] == 403
    # DNS rebinding: the page's own name arrives as Host.
    for path in ("/stats", f"/snapshot?token={server.token}", "/"):
        assert _get(port, path, {"Host": f"evil.example:{port}"})[0] == 403
    assert _get(port, "/stats", {"Host": f"localhost:{port}"})[0] == 200
    hub.take_changes()


def test_every_accepted_value_is_computable_and_odd_bodies_are_400(served):
    server, hub, port = served
    auth = {live.TOKEN_HEADER: server.token}
    for body in (
        b'{"alpha": 1e308}',
        b'{"tau": 1e308}',
        b'{"alpha": ' + b"9" * 400 + b"}",
        b"[" * 5000 + b"]" * 5000,
        b'{"tau": "0.3"}',
        b"\xff\xfe",
    ):
        status, reply = _post(port, "/control", body, auth)
        assert status == 400 and len(reply["error"]) < 200, (body[:20], status, reply)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/control")
    conn.putheader("Content-Type", "application/json")
    conn.putheader(live.TOKEN_HEADER, "tök€n".encode().decode("latin-1"))
    conn.putheader("Content-Length", "12")
    conn.endheaders(b'{"tau": 0.3}')
    assert conn.getresponse().status == 403
    conn.close()
    assert hub.take_changes() == {}
    assert _get(port, "/stats")[0] == 200


def test_a_huge_declared_body_is_413_at_once(served):
    server, hub, port = served
    start = time.time()
    head = (
        f"POST /control HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{live.TOKEN_HEADER}: {server.token}\r\nContent-Length: {10**12}\r\n\r\n"
    ).encode()
    reply = _raw(port, head)
    assert reply.startswith(b"HTTP/1.1 413") and time.time() - start < 3


def test_half_sent_requests_cannot_exhaust_the_server(served, monkeypatch):
    server, hub, port = served
    monkeypatch.setattr(live, "REQUEST_TIMEOUT_S", 1.0)
    hung = []
    for _ in range(live.MAX_CONNECTIONS + 40):  # more than the server keeps open
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        hung.append(s)
    try:
        time.sleep(2.0)  # past the request deadline: every half-sent connection is closed
        assert server.connections <= 2, server.connections
        assert _get(port, "/stats")[0] == 200
        closed = 0
        for s in hung:
            try:
                s.settimeout(0.5)
                closed += s.recv(1) == b""
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except TimeoutError:
                pass
        assert closed == len(hung)
    finally:
        for s in hung:
            s.close()


def test_an_events_client_that_never_reads_gives_its_slot_back(monkeypatch):
    monkeypatch.setattr(live, "EVENT_LIFETIME_S", 1.0)
    hub, port = live.LiveHub(), _free_port()
    with live.LiveServer(hub, "127.0.0.1", port, max_clients=2) as server, Publisher(hub):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for s in idle:
            s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())  # and never read
        time.sleep(0.5)
        assert server.clients == 2 and _get(port, "/events")[0] == 503
        deadline = time.time() + 5
        while server.clients and time.time() < deadline:
            time.sleep(0.1)
        assert server.clients == 0
        for s in idle:
            s.close()
