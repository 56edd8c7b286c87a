"""A tiny stand-in for :class:`diffcut_edge.runtime.Segmenter` for the application tests.

Same surface (``__call__``, ``encode``, ``postprocess``, ``options`` / ``update_options``, context
manager) and a
result with the fields of ``SegmentationResult``, but the "features" are the frame's mean
colours on a 4x4 grid and segments are intensity terciles: milliseconds per frame, and
the outputs still depend on the input so tests cannot pass by construction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

GRID = (4, 4)


@dataclass
class FakeResult:
    labels: np.ndarray
    mask_labels: np.ndarray
    coarse_labels: np.ndarray
    num_segments: int
    embeddings: np.ndarray
    timings: dict = field(default_factory=dict)
    segments: list | None = None  # the fields of SegmentationResult, as the loop reads them
    vocabulary: str | None = None
    class_names: tuple | None = None


class FakeSegmenter:
    def __init__(
        self, mask_size=(16, 16), refine: bool = True, fail_on_frame: int | None = None, tau: float = 0.5
    ) -> None:
        from diffcut_edge.runtime.options import SegmenterOptions

        self.options = SegmenterOptions(tau=tau, mask_size=mask_size, refine=refine)  # the real validation
        self.encode_calls = 0
        self.encode_threads: set[str] = set()
        self.fail_on_frame = fail_on_frame
        self.closed = False

    @property
    def mask_size(self) -> tuple[int, int]:
        return self.options.mask_size

    @property
    def refine(self) -> bool:
        return self.options.refine

    def update_options(self, **changes):
        import dataclasses

        self.options = dataclasses.replace(self.options, **changes)
        return self.options

    def encode(self, frames) -> np.ndarray:
        self.encode_calls += 1
        self.encode_threads.add(threading.current_thread().name)
        if self.fail_on_frame is not None and self.encode_calls - 1 == self.fail_on_frame:
            raise RuntimeError("encoder exploded")
        feats = [cv2.resize(f, GRID[::-1], interpolation=cv2.INTER_AREA).reshape(-1, 3) for f in frames]
        return np.stack(feats).astype(np.float32) / 255.0 + 0.05  # (B, 16, 3), never all-zero

    def postprocess(self, frame: np.ndarray, features: np.ndarray) -> FakeResult:
        intensity = features.mean(axis=1)
        edges = np.quantile(intensity, [1 / 3, 2 / 3])
        coarse = np.searchsorted(edges, intensity).reshape(GRID)
        _, coarse = np.unique(coarse, return_inverse=True)
        coarse = coarse.reshape(GRID).astype(np.int32)
        k = int(coarse.max()) + 1
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        emb = np.stack([unit[coarse.ravel() == i].mean(axis=0) for i in range(k)]).astype(np.float32)
        mask = cv2.resize(coarse, self.mask_size[::-1], interpolation=cv2.INTER_NEAREST)
        labels = cv2.resize(mask, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        return FakeResult(
            labels.astype(np.int32),
            mask.astype(np.int32),
            coarse,
            k,
            emb,
            {
                "preprocess": 0.1,
                "encoder": 1.0,
                "ncut": 0.2,
                "assign": 0.1,
                "pamr": 0.3 if self.refine else 0.0,
                "total": 1.7,
            },
        )

    def encode_frame(self, frame: np.ndarray):
        """Stage 1 (runtime.segmenter.FrameSegmenter): this fake's features of one frame."""
        from diffcut_edge.runtime.segmenter import EncodedFrame

        return EncodedFrame(frame, self.encode([frame])[0], None, {"preprocess": 0.1, "encoder": 1.0})

    def finish(self, encoded) -> FakeResult:
        """Stage 2: the segmentation from stage 1's features."""
        return self.postprocess(encoded.frame, encoded.features)

    def __call__(self, frame: np.ndarray) -> FakeResult:
        return self.postprocess(frame, self.encode([frame])[0])

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeSegmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_video(path, n: int = 10, size=(96, 128), fps: float = 10.0, codec: str = "MJPG") -> list[np.ndarray]:
    """Write a small moving-photo video (scikit-image astronaut panning) and return its frames."""
    from skimage import data

    h, w = size
    photo = cv2.resize(data.astronaut()[..., ::-1], (2 * w, h), interpolation=cv2.INTER_AREA)
    frames = [np.ascontiguousarray(photo[:, 6 * i : 6 * i + w]) for i in range(n)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened(), f"cannot write {path} with {codec}"
    for f in frames:
        writer.write(f)
    writer.release()
    return frames


def export_available() -> bool:
    """Whether the export stage can run here (the [export] extra: torch, diffusers, onnx)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers", "onnx"))


def run_cli(argv, capsys):
    """Run ``diffcut-edge ARGV`` in-process: (exit code, stdout, stderr)."""
    from diffcut_edge import cli

    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err
