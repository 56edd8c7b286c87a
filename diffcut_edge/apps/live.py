"""Live view in the browser: watch, tune and snapshot a headless board's segmentation.

``diffcut-edge webcam --serve [HOST:]PORT`` runs a small aiohttp server in the same process,
next to the camera loop:

- ``/``: the page (``live_page.html``): the live overlay, the segment list (id, colour, area),
  per-stage milliseconds and FPS, and controls (tau, alpha, PAMR on/off, overlay opacity);
- ``/stream``: the overlays as MJPEG (``multipart/x-mixed-replace``), which every browser shows;
- ``/stats``: the latest frame's segments, timings and options as JSON; ``/events``: the same,
  as server-sent events, at most :data:`EVENT_HZ` a second;
- ``/control`` (POST JSON): new option values, validated like ``SegmenterOptions`` (a bad value
  is a 400 with the reason), applied by the camera loop before its next frame;
- ``/snapshot``: the current frame's label PNG (16-bit ids), overlay (PNG) and segments JSON, zipped.

The camera loop never waits on a client: :meth:`LiveHub.publish` stores references to the
latest frame and wakes the server; JPEG encoding happens in the server, once per frame however
many clients watch; a slow client gets the latest frame (frames in between are dropped, not
queued), a stalled one is dropped after :data:`WRITE_TIMEOUT_S`, at most ``max_clients`` stream
at once (then 503). Bound beyond localhost, ``/control`` and ``/snapshot`` need the token
(``--token``, or one generated and printed at start). The server reads and writes no file.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import secrets
import threading
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError, missing_extra

DEFAULT_MAX_CLIENTS = 8
MAX_BODY_BYTES = 16 * 1024  # a control request is a few numbers
MAX_JSON_DEPTH = 4  # ... in a flat object
MAX_CONNECTIONS = 64  # open connections at once, watchers and requests together
REQUEST_TIMEOUT_S = 10.0  # a connection must have sent a whole request head by then
EVENT_LIFETIME_S = 30.0  # an /events connection is closed then (EventSource reconnects by itself)
EVENT_SNDBUF = 16 * 1024  # ... and buffers little, so a client that reads nothing is noticed
WRITE_TIMEOUT_S = 10.0  # a client that reads nothing for this long is dropped
EVENT_HZ = 5.0  # /events updates per second at most
JPEG_QUALITY = 80
BOUNDARY = "diffcutframe"
TOKEN_HEADER = "X-DiffCut-Token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CONTROLS = ("tau", "alpha", "refine", "opacity")


# ------------------------------------------------------------------ options of the server
def parse_serve(text: str) -> tuple[str, int]:
    """``"8080"`` -> ("127.0.0.1", 8080); ``"0.0.0.0:8080"``; ``"[::]:8080"``."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise DiffCutError(f"--serve expects [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080, got {text!r}") from None
    if not 0 < number < 65536:
        raise DiffCutError(f"--serve port must be 1..65535, got {number}")
    return host or "127.0.0.1", number


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS


def check_controls(body: Any) -> dict[str, Any]:
    """Validated option changes from a /control body, or a DiffCutError saying what is wrong."""
    from diffcut_edge.runtime.options import check_option

    if not isinstance(body, dict) or not body:
        raise DiffCutError(f"expected a JSON object with some of {', '.join(CONTROLS)}")
    unknown = sorted(set(body) - set(CONTROLS))
    if unknown:
        raise DiffCutError(f"unknown control(s) {', '.join(unknown)}; controls: {', '.join(CONTROLS)}")
    changes: dict[str, Any] = {}
    for name, value in body.items():
        if name == "refine":
            if not isinstance(value, bool):
                raise DiffCutError(f"refine must be true or false, got {value!r}")
            changes[name] = value
        elif name == "opacity":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise DiffCutError(f"opacity must be a number in [0, 1], got {value!r}")
            changes[name] = float(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DiffCutError(f"{name} must be a number, got {str(value)[:40]!r}")
            changes[name] = check_option(name, value)  # bounds included: a huge integer is refused there
    return changes


def parse_json_body(data: bytes) -> Any:
    """A /control body as JSON, or a DiffCutError: not UTF-8 JSON, or nested deeper than :data:`MAX_JSON_DEPTH`
    (checked before parsing: a 5000-deep document would exhaust the parser's recursion)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DiffCutError("the body is not UTF-8 JSON") from None
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:  # brackets outside strings
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise DiffCutError(f"the body nests {deepest} levels deep; a control is a flat JSON object")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise DiffCutError("the body is not JSON") from None


# ------------------------------------------------------------------ between the camera loop and the server
@dataclass
class LiveFrame:
    """What the server shows of one frame (host arrays; never modified after publishing)."""

    index: int
    overlay: np.ndarray  # BGR uint8, what the viewer sees
    labels: np.ndarray  # (H, W) int32 displayed ids (persistent when tracking)
    segments: list[dict[str, Any]]
    timings: dict[str, float]
    fps: float
    options: dict[str, Any]
    time: float = field(default_factory=time.time)
    status: dict[str, Any] = field(default_factory=dict)  # keyframe or carried, label age, encoder fps

    def summary(self) -> dict[str, Any]:
        return {
            "frame": self.index,
            "fps": round(self.fps, 2),
            "num_segments": len(self.segments),
            "segments": self.segments,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "options": self.options,
            "size": [int(self.overlay.shape[1]), int(self.overlay.shape[0])],
            "labels": self.status,
        }


def segment_list(labels: np.ndarray, names: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """[{id, color "#rrggbb", area (fraction), name, score}] of the ids shown, largest first;
    ``names``: the overlay's name chips (``SegmentName``; name and score are null without them)."""
    from diffcut_edge.apps.overlay import palette_color

    counts = np.bincount(labels.ravel())
    ids = np.flatnonzero(counts)
    total = float(labels.size)
    named = {int(n.id): n for n in names}
    out = []
    for i in ids[np.argsort(-counts[ids], kind="stable")]:
        b, g, r = palette_color(int(i))
        chip = named.get(int(i))
        out.append(
            {
                "id": int(i),
                "color": f"#{r:02x}{g:02x}{b:02x}",
                "area": round(counts[i] / total, 4),
                "name": None if chip is None else chip.name,
                "score": None if chip is None or chip.score is None else round(float(chip.score), 4),
            }
        )
    return out


class LiveHub:
    """The latest frame and the pending control changes, shared by the camera loop and the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: LiveFrame | None = None
        self._jpeg: tuple[int, bytes] | None = None
        self._pending: dict[str, Any] = {}
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.published = 0

    # camera thread
    def publish(
        self,
        overlay: np.ndarray,
        labels: np.ndarray,
        timings: dict[str, float],
        *,
        fps: float,
        options: dict[str, Any],
        frame: dict[str, Any] | None = None,
        names: Sequence[Any] = (),
    ) -> None:
        """Make a frame the latest one; O(listeners), never blocks on a client. ``frame``: what its
        labels are (:func:`~diffcut_edge.apps.hud.frame_status`); ``names``: its segments' classes and
        scores (the overlay's ``SegmentName`` chips)."""
        frame = LiveFrame(
            self.published,
            overlay,
            labels,
            segment_list(labels, names),
            dict(timings),
            fps,
            options,
            status=dict(frame or {}),
        )
        with self._lock:
            self._latest = frame
            self.published += 1
            listeners = list(self._listeners)
        for loop, event in listeners:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closing: the server is stopping
                pass

    def take_changes(self) -> dict[str, Any]:
        """The control changes submitted since the last call (the camera loop applies them)."""
        with self._lock:
            changes, self._pending = self._pending, {}
        return changes

    # server side
    def submit(self, changes: dict[str, Any]) -> None:
        with self._lock:
            self._pending.update(changes)

    def latest(self) -> LiveFrame | None:
        with self._lock:
            return self._latest

    def jpeg(self, frame: LiveFrame) -> bytes:
        """The frame's JPEG, encoded once whoever asks."""
        with self._lock:
            if self._jpeg is not None and self._jpeg[0] == frame.index:
                return self._jpeg[1]
        import cv2

        from diffcut_edge.runtime.images import encode_image

        data = encode_image(frame.overlay, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        with self._lock:
            self._jpeg = (frame.index, data)
        return data

    def listen(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._listeners.add((loop, event))

    def unlisten(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._lock:
            self._listeners.discard((loop, event))


def snapshot_zip(frame: LiveFrame) -> bytes:
    """labels.png (16-bit ids), overlay.png and segments.json of one frame, zipped in memory."""
    from diffcut_edge.runtime.images import encode_image, encode_labels_png

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("labels.png", encode_labels_png(frame.labels))
        z.writestr("overlay.png", encode_image(frame.overlay, ".png"))
        z.writestr("segments.json", json.dumps(frame.summary(), indent=2))
    return buf.getvalue()


# ------------------------------------------------------------------ the server
def _aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError as e:
        raise missing_extra("aiohttp", "live", "the browser view (webcam --serve)") from e
    return web


class LiveServer:
    """The HTTP server in a thread of its own (its own asyncio loop); a context manager.

    ``LiveServer(hub, host, port)`` binds on enter (a port in use is a DiffCutError) and stops on
    exit: open streams end, the thread is joined.
    """

    def __init__(
        self,
        hub: LiveHub,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if int(max_clients) < 1:
            raise DiffCutError(f"max_clients must be >= 1, got {max_clients}")
        self.hub, self.host, self.port = hub, host, int(port)
        # Always a secret, also on localhost: any web page in the user's browser can reach localhost.
        self.token = token if token else secrets.token_urlsafe(16)
        self.connections = 0
        self.max_clients = int(max_clients)
        self.clients = 0
        self._web = _aiohttp()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    # lifecycle
    def __enter__(self) -> LiveServer:
        self._thread = threading.Thread(target=self._run, name="diffcut-live", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # reported by __enter__ when it happens while binding
            self._error = self._error or e
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        web = self._web
        self._stopping = asyncio.Event()

        @web.middleware
        async def guard(request: Any, handler: Any) -> Any:
            return await self._guard(request, handler)

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[guard])
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/stream", self._stream),
                web.get("/stats", self._stats),
                web.get("/events", self._events),
                web.post("/control", self._control),
                web.get("/snapshot", self._snapshot),
            ]
        )
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0, keepalive_timeout=5.0)
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                lambda: _Connection(runner.server(), self), self.host, self.port, reuse_address=True
            )
        except OSError as e:
            await runner.cleanup()
            self._error = DiffCutError(
                f"cannot serve on {self.host}:{self.port}: {e.strerror or e} (port in use? "
                f"pick another with --serve HOST:PORT)"
            )
            return
        self._ready.set()
        await self._stopping.wait()
        server.close()
        await runner.cleanup()

    # helpers
    def _authorised(self, request: Any) -> bool:
        given = request.headers.get(TOKEN_HEADER) or request.query.get("token") or ""
        # "replace": a header with bytes that are not text is a wrong token, not a server error.
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def _host_allowed(self, request: Any) -> bool:
        """Bound to localhost, only requests addressed to localhost: a DNS-rebinding page sends its own
        name as Host. Bound beyond localhost the name is the network's to choose; the token guards."""
        if not is_local(self.host):
            return True
        host = request.headers.get("Host", "")
        name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
        return name.strip("[]").lower() in LOCAL_HOSTS

    async def _guard(self, request: Any, handler: Any) -> Any:
        """Every request: its connection marked as having sent a whole head, Host checked, a declared body
        over the limit refused before it is read; a handler's unexpected error is a 500 without a traceback."""
        _Connection.mark(request.transport)
        if not self._host_allowed(request):
            return self._refuse(403, "this server answers to localhost only (Host header)")
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return self._refuse(413, f"request body over {MAX_BODY_BYTES} bytes")
        try:
            return await handler(request)
        except self._web.HTTPException:
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as e:  # never a traceback on the console, never the camera loop's problem
            return self._refuse(500, f"internal error: {type(e).__name__}")

    def _refuse(self, status: int, message: str) -> Any:
        return self._web.json_response({"error": message}, status=status)

    async def _next_frame(self, event: asyncio.Event, last: int, wait_s: float = 1.0) -> LiveFrame | None:
        """The latest frame if newer than ``last``, waiting up to ``wait_s`` for one (None: nothing new)."""
        event.clear()
        frame = self.hub.latest()
        if frame is not None and frame.index != last:
            return frame
        try:
            await asyncio.wait_for(event.wait(), wait_s)
        except asyncio.TimeoutError:
            return None
        frame = self.hub.latest()
        return frame if frame is not None and frame.index != last else None

    async def _feed(
        self, request: Any, content_type: str, part: Any, min_interval: float = 0.0, lifetime_s: float | None = None
    ) -> Any:
        """A long response that writes ``part(frame)`` for each new frame: /stream and /events
        (closed after ``lifetime_s`` when given)."""
        web = self._web
        if self.clients >= self.max_clients:
            return self._refuse(503, f"{self.max_clients} clients are watching already; try again later")
        self.clients += 1
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self.hub.listen(loop, event)
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        ends = None if lifetime_s is None else time.monotonic() + lifetime_s
        try:
            await response.prepare(request)
            last, sent_at = -1, 0.0
            while not self._stopping.is_set() and (ends is None or time.monotonic() < ends):
                frame = await self._next_frame(event, last)
                if frame is None:
                    continue
                if min_interval and time.monotonic() - sent_at < min_interval:
                    await asyncio.sleep(min_interval - (time.monotonic() - sent_at))
                    frame = self.hub.latest()
                last, sent_at = frame.index, time.monotonic()
                data = await part(frame)
                await asyncio.wait_for(response.write(data), WRITE_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError, asyncio.CancelledError):
            pass  # the client left, stalled, or the server is stopping: it costs nothing more
        finally:
            self.hub.unlisten(loop, event)
            self.clients -= 1
        return response

    # routes
    async def _page(self, request: Any) -> Any:
        html = resources.files("diffcut_edge.apps").joinpath("live_page.html").read_text(encoding="utf-8")
        return self._web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _stream(self, request: Any) -> Any:
        loop = asyncio.get_running_loop()

        async def part(frame: LiveFrame) -> bytes:
            jpeg = await loop.run_in_executor(None, self.hub.jpeg, frame)
            head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                f"X-Frame: {frame.index}\r\n\r\n"
            ).encode()
            return head + jpeg + b"\r\n"

        return await self._feed(request, f"multipart/x-mixed-replace; boundary={BOUNDARY}", part)

    async def _events(self, request: Any) -> Any:
        # A small send buffer and a bounded lifetime: a client that reads nothing stalls a write (and is
        # dropped) within seconds, and no connection holds a slot for ever; EventSource reconnects.
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EVENT_SNDBUF)
        first = True

        async def part(frame: LiveFrame) -> bytes:
            nonlocal first
            head, first = ("retry: 1000\n" if first else ""), False
            return f"{head}data: {json.dumps(frame.summary())}\n\n".encode()

        return await self._feed(
            request, "text/event-stream", part, min_interval=1.0 / EVENT_HZ, lifetime_s=EVENT_LIFETIME_S
        )

    async def _stats(self, request: Any) -> Any:
        frame = self.hub.latest()
        body = {
            "clients": self.clients,
            "token_required": self.token is not None,
            **(frame.summary() if frame else {"frame": None}),
        }
        return self._web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _control(self, request: Any) -> Any:
        # A cross-site page can POST text/plain or a form without a preflight: only JSON is taken (the
        # preflight a JSON POST needs is never answered), and a browser's Origin must be this server.
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.headers.get('Host', '')}":
            return self._refuse(403, "cross-origin requests are refused")
        if request.content_type != "application/json":
            return self._refuse(415, "send the controls as application/json")
        if not self._authorised(request):
            return self._refuse(403, f"a valid token is needed ({TOKEN_HEADER} header or ?token=)")
        try:
            body = parse_json_body(await request.read())
        except self._web.HTTPRequestEntityTooLarge:
            return self._refuse(413, f"request body over {MAX_BODY_BYTES} bytes")
        except DiffCutError as e:
            return self._refuse(400, str(e))
        try:
            changes = check_controls(body)
        except DiffCutError as e:
            return self._refuse(400, str(e))
        self.hub.submit(changes)
        return self._web.json_response({"accepted": changes})

    async def _snapshot(self, request: Any) -> Any:
        if not self._authorised(request):
            return self._refuse(403, f"a valid token is needed ({TOKEN_HEADER} header or ?token=)")
        frame = self.hub.latest()
        if frame is None:
            return self._refuse(503, "no frame yet")
        data = await asyncio.get_running_loop().run_in_executor(None, snapshot_zip, frame)
        return self._web.Response(
            body=data,
            content_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="diffcut-frame-{frame.index}.zip"'},
        )


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind two bounds: at most :data:`MAX_CONNECTIONS` open
    at once (more are closed at once), and a whole request head within :data:`REQUEST_TIMEOUT_S`
    (half-sent requests would otherwise hold descriptors until the process runs out)."""

    _seen: set = set()

    def __init__(self, inner: Any, server: LiveServer) -> None:
        self._inner, self._server, self._transport, self._counted = inner, server, None, False

    @classmethod
    def mark(cls, transport: Any) -> None:
        if transport is not None:
            cls._seen.add(id(transport))

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        if self._server.connections >= MAX_CONNECTIONS:
            transport.abort()
            return
        self._server.connections += 1
        self._counted = True
        self._inner.connection_made(transport)
        asyncio.get_running_loop().call_later(REQUEST_TIMEOUT_S, self._deadline)

    def _deadline(self) -> None:
        if self._transport is not None and id(self._transport) not in self._seen and not self._transport.is_closing():
            self._transport.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._server.connections -= 1
            self._counted = False
            self._seen.discard(id(self._transport))
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._counted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._counted else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def apply_changes(changes: dict[str, Any], segmenter: Any, overlay: Any) -> None:
    """Apply control changes in the camera loop: opacity to the overlay, the rest to the segmenter."""
    if "opacity" in changes:
        overlay.alpha = float(changes.pop("opacity"))
    if changes:
        segmenter.update_options(**changes)
