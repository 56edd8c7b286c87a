"""``TritonSegmenter``: the call shape of :class:`~diffcut_edge.runtime.Segmenter`, served by Triton.

    seg = Segmenter.from_model_dir("ssd1b-1024")       # local
    seg = TritonSegmenter("gpu-box:8000")               # served: the one line that changes
    result = seg(frame)                                 # BGR uint8 frame; result.labels (H, W) int32

It calls the ``diffcut`` ensemble of a ``triton-repo`` repository (HTTP by default,
``grpc://host:8001`` for gRPC). ``segment_batch`` sends its frames concurrently, so the server's
dynamic batcher can put them in one encoder batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffcut_edge.errors import DiffCutError
from diffcut_edge.lazy import LazyModule
from diffcut_edge.runtime.preprocess import check_frame, frame_list

triton_http = LazyModule("tritonclient.http", extra="triton", purpose="the Triton client (TritonSegmenter)")
triton_grpc = LazyModule("tritonclient.grpc", extra="triton", purpose="the Triton client (TritonSegmenter)")


@dataclass
class ServedSegmentation:
    """One frame's segmentation from the server.

    labels: (H, W) int32 at the frame's size, the ids ``segment`` writes to its label PNG.
    num_segments: K (ids are < K).
    segments: when the served folder has a vocabulary, one
        :class:`~diffcut_edge.runtime.labeling.SegmentLabel` per id of ``labels`` (class index, name,
        score, area, bbox), as ``Segmenter`` gives them; vocabulary / num_classes: where they come from.
    timings: {"request": ms} as the client saw it (upload, queue, all stages, download).
    """

    labels: np.ndarray
    num_segments: int
    segments: list[Any] | None = None
    vocabulary: str | None = None
    num_classes: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


def parse_segments(data: np.ndarray) -> tuple[list[Any], str | None, int]:
    """The served ``segments`` tensor (UTF-8 JSON bytes, the ``<stem>_segments.json`` document) ->
    (SegmentLabels, vocabulary name, number of classes)."""
    import json

    from diffcut_edge.runtime.labeling import SegmentLabel

    try:
        doc = json.loads(np.ascontiguousarray(data, dtype=np.uint8).tobytes().decode("utf-8"))
        segments = [SegmentLabel(**{**s, "bbox": tuple(s["bbox"])}) for s in doc["segments"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DiffCutError(f"the server's segments output is not a segments document ({e})") from e
    return segments, doc.get("vocabulary"), int(doc.get("num_classes", 0))


def to_rgb_uint8(frame: Any) -> np.ndarray:
    """A BGR (or gray, BGRA) uint8 frame as the contract's contiguous RGB [H, W, 3]."""
    check_frame(frame)
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise DiffCutError(
            f"TritonSegmenter sends uint8 frames, got {frame.dtype}; convert it first "
            f"(e.g. cv2.convertScaleAbs, or (frame * 255).astype(np.uint8) for [0, 1] floats)"
        )
    if frame.ndim == 2 or frame.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(frame.reshape(frame.shape[0], frame.shape[1], 1), 3, axis=2))
    return np.ascontiguousarray(frame[:, :, 2::-1])  # BGR(A) -> RGB


def _split_url(url: str) -> tuple[str, str]:
    for scheme in ("grpc", "http"):
        if url.startswith(f"{scheme}://"):
            return scheme, url[len(scheme) + 3 :].rstrip("/")
    if "://" in url:
        raise DiffCutError(f"Triton URL {url!r}: use host:port (HTTP), http://host:port or grpc://host:port")
    return "http", url.rstrip("/")


class TritonSegmenter:
    """A client of ``diffcut-edge serve`` (or any Triton serving a ``triton-repo`` repository).

    Args:
        url: ``host:port`` or ``http://host:port`` (HTTP), ``grpc://host:port`` (gRPC).
        model: the ensemble's name.
        timeout_s: per request.
        concurrency: requests in flight in :meth:`segment_batch`.

    One instance may be shared by threads (each gets its own connection).
    """

    def __init__(
        self, url: str = "localhost:8000", model: str = "diffcut", *, timeout_s: float = 120.0, concurrency: int = 8
    ) -> None:
        self.url, self.model = url, model
        self.protocol, address = _split_url(url)
        self.timeout_s, self.concurrency = float(timeout_s), max(1, int(concurrency))
        self._address = address
        module = triton_grpc if self.protocol == "grpc" else triton_http
        self._module = module.load()
        # tritonclient's HTTP client runs on gevent and may only be used by the thread that made it:
        # one client per thread, so a TritonSegmenter can be shared by an app's threads.
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        try:
            ready = self._client.is_model_ready(model)
        except Exception as e:  # connection refused, DNS, ...: one line, what to check
            raise DiffCutError(f"cannot reach Triton at {url} ({_message(e)}); is `diffcut-edge serve` running?") from e
        if not ready:
            raise DiffCutError(f"Triton at {url} has no ready model {model!r}; serve a triton-repo repository")
        outputs = self._outputs_of(self._client.get_model_metadata(model))
        self._output_names = [n for n in ("labels", "num_segments", "segments") if n in outputs]

    @property
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(url=self._address)
            else:
                client = self._module.InferenceServerClient(
                    url=self._address,
                    concurrency=self.concurrency,
                    connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s,
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append((threading.get_ident(), client))
        return client

    @staticmethod
    def _outputs_of(metadata: Any) -> set[str]:
        if isinstance(metadata, dict):
            return {o["name"] for o in metadata.get("outputs", [])}
        return {o.name for o in metadata.outputs}

    def _request(self, frame: Any) -> tuple[list[Any], list[Any]]:
        from diffcut_edge.runtime.preprocess import check_frame

        check_frame(frame)  # within the pixel limit the server holds too: refused here, not after the upload
        rgb = to_rgb_uint8(frame)
        tensor = self._module.InferInput("image", list(rgb.shape), "UINT8")
        tensor.set_data_from_numpy(rgb)
        return [tensor], [self._module.InferRequestedOutput(n) for n in self._output_names]

    def _result(self, response: Any, start: float) -> ServedSegmentation:
        result = ServedSegmentation(
            labels=response.as_numpy("labels").astype(np.int32, copy=False),
            num_segments=int(response.as_numpy("num_segments")[0]),
            timings={"request": (time.perf_counter() - start) * 1e3},
        )
        if "segments" in self._output_names:
            result.segments, result.vocabulary, result.num_classes = parse_segments(response.as_numpy("segments"))
        return result

    def __call__(self, frame: Any) -> ServedSegmentation:
        """Segment one frame (BGR uint8, like ``Segmenter``)."""
        inputs, outputs = self._request(frame)
        start = time.perf_counter()
        try:
            if self.protocol == "grpc":
                response = self._client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout_s)
            else:
                response = self._client.infer(self.model, inputs, outputs=outputs)
        except Exception as e:
            raise DiffCutError(f"Triton at {self.url}: {_message(e)}") from e
        return self._result(response, start)

    def segment_batch(self, frames: Any) -> list[ServedSegmentation]:
        """Segment several frames, ``concurrency`` requests in flight (results in order)."""
        frames = frame_list(frames, allow_single=False)
        if self.protocol == "grpc":
            return self._batch_grpc(frames)
        results: list[ServedSegmentation] = []
        for i in range(0, len(frames), self.concurrency):
            pending = []
            for frame in frames[i : i + self.concurrency]:
                inputs, outputs = self._request(frame)
                pending.append((time.perf_counter(), self._client.async_infer(self.model, inputs, outputs=outputs)))
            for start, handle in pending:
                try:
                    results.append(self._result(handle.get_result(), start))
                except Exception as e:
                    raise DiffCutError(f"Triton at {self.url}: {_message(e)}") from e
        return results

    def _batch_grpc(self, frames: Sequence[Any]) -> list[ServedSegmentation]:
        import queue

        results: list[ServedSegmentation | None] = [None] * len(frames)
        for i in range(0, len(frames), self.concurrency):
            done: queue.Queue = queue.Queue()
            chunk = range(i, min(i + self.concurrency, len(frames)))
            for index in chunk:
                inputs, outputs = self._request(frames[index])
                start = time.perf_counter()
                self._client.async_infer(
                    self.model,
                    inputs,
                    outputs=outputs,
                    client_timeout=self.timeout_s,
                    callback=lambda result, error, k=index, s=start: done.put((k, s, result, error)),
                )
            for _ in chunk:
                try:
                    index, start, response, error = done.get(timeout=self.timeout_s + 5)
                except queue.Empty:
                    raise DiffCutError(f"Triton at {self.url}: no answer within {self.timeout_s:.0f} s") from None
                if error is not None:
                    raise DiffCutError(f"Triton at {self.url}: {_message(error)}")
                results[index] = self._result(response, start)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Close this thread's connection (other threads' close with their thread or the process)."""
        with self._clients_lock:
            mine = [c for ident, c in self._clients if ident == threading.get_ident()]
            self._clients = [(i, c) for i, c in self._clients if i != threading.get_ident()]
        for client in mine:
            client.close()
        self._local.client = None

    def __enter__(self) -> TritonSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TritonSegmenter({self.url!r}, model={self.model!r}, protocol={self.protocol!r})"


def _message(error: BaseException) -> str:
    """tritonclient's exception text (its ``message()``) on one line."""
    message = error.message() if callable(getattr(error, "message", None)) else str(error)
    return " ".join(str(message or type(error).__name__).split())
