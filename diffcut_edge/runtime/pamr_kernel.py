"""PAMR on the CPU as two compiled loops (numba): the same arithmetic as :mod:`diffcut_edge.runtime.pamr`,
pixel by pixel instead of image by image.

Why numba: the array path streams the K masks through memory once per neighbour and iteration
(8·|dilations| · iterations passes; 64 · 15 with the open-vocabulary settings), so it is bound by
memory traffic, not arithmetic. Looping over pixels with the masks channels-last (H, W, K) touches
the ~15 rows a pixel's neighbours live in, which stay in the core's cache while a row is done. numba
is what the scientific-Python field uses for such kernels (no C toolchain on the user's machine, wheels
for x86-64 and aarch64/Jetson), and the loops stay readable Python. Without numba (or with
``DIFFCUT_PAMR_KERNEL=numpy``) the array path runs; cupy and torch always take the array path.

Numbers: propagation sums the same float32 products in the same order as the array path (no fused
multiply-add: numba leaves contraction off), so given the same weights it is bit-identical; the
weights differ from the array path's by float32 rounding only (exp and the order of the channel mean).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from diffcut_edge import lazy

ENV = "DIFFCUT_PAMR_KERNEL"  # "numpy": always the array path (comparisons, debugging)


_BROKEN: list[str] = []  # why the kernels cannot run in this process, once found out


def available() -> bool:
    """Whether the compiled kernels can run here: numba importable, not switched off, and a thread-safe
    threading layer found -- found out once, by starting numba's thread pool (loading the kernels)."""
    if os.environ.get(ENV, "").lower() == "numpy" or _BROKEN or not lazy.numba.available():
        return False
    try:
        _kernels()
    except ValueError as e:  # numba found no thread-safe threading layer (TBB / OpenMP) here
        if "threading layer" not in str(e):
            raise
        _BROKEN.append(f"{type(e).__name__}: {e}")  # the array path from now on
        return False
    return True


def _threadsafe_layer(numba: Any) -> None:
    """Only a thread-safe threading layer (TBB or OpenMP): the default fallback, "workqueue", aborts
    the process when two threads run a parallel loop at once (an app segmenting in two threads).
    A layer the user chose (NUMBA_THREADING_LAYER) is kept."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"


_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """The jitted loops (:mod:`diffcut_edge.runtime.pamr_loops`), compiled on first use and cached on
    disk by numba across processes; numba's thread pool started once, keeping the app's OpenMP threads."""
    if _KERNELS:
        return _KERNELS
    _threadsafe_layer(lazy.numba.load())
    from diffcut_edge.runtime import pamr_loops

    with _openmp_threads_kept():  # numba starts its thread pool on the first parallel call
        pamr_loops.padded_rows(np.zeros((1, 1, 1), np.float32), 1)
    _KERNELS.update(
        weights=pamr_loops.weights_hjw,
        propagate=pamr_loops.propagate_hkw,
        rows=pamr_loops.padded_rows,
        one_hot=pamr_loops.one_hot_rows,
    )
    return _KERNELS


@contextlib.contextmanager
def _openmp_threads_kept() -> Iterator[None]:
    """Keep the OpenMP thread counts of the libraries loaded so far across numba's pool start.

    numba's OpenMP layer sets the process's OpenMP thread count when it starts its pool, and that
    reaches libgomp copies loaded before it -- torch's: ``torch.get_num_threads()`` went 1 -> 2 in an
    app that opened a Segmenter. Restoring the counts afterwards leaves numba's own pool as it is
    (it passes its thread count at each parallel region). threadpoolctl is a core dependency.
    """
    from threadpoolctl import ThreadpoolController

    before = {lib.filepath: lib.num_threads for lib in ThreadpoolController().select(user_api="openmp").lib_controllers}
    try:
        yield
    finally:
        for lib in ThreadpoolController().select(user_api="openmp").lib_controllers:
            if lib.filepath in before and lib.num_threads != before[lib.filepath]:
                lib.set_num_threads(before[lib.filepath])


def _padded_rows(array_chw: np.ndarray, pad: int) -> np.ndarray:
    """(C, H, W) -> (H, C, W + 2·pad) float32, columns edge-replicated (one allocation)."""
    return _kernels()["rows"](np.asarray(array_chw, dtype=np.float32), int(pad))  # any strides: one copy


def weights(
    image: np.ndarray,
    dilations: Sequence[int],
    neighbours: Sequence[tuple[int, int]],
    window: Sequence[tuple[int, int]],
    std_eps: float,
    std_scale: float,
) -> np.ndarray:
    """(H, 8·|dilations|, W) float32 softmax weights of an (H, W, 3) float image, neighbour order as
    :func:`diffcut_edge.runtime.pamr.pamr_weights` (dilation-major)."""
    pad = max(int(d) for d in dilations)
    img = _padded_rows(np.moveaxis(np.asarray(image, np.float32), -1, 0), pad)
    return _kernels()["weights"](
        img,
        pad,
        np.asarray(dilations, np.int64),
        np.asarray(neighbours, np.int64),
        np.asarray(window, np.int64),
        float(std_eps),
        float(std_scale),
    )


def _pad_of(offsets: Sequence[tuple[int, int]]) -> tuple[np.ndarray, int]:
    off = np.asarray(offsets, np.int64).reshape(-1, 2)
    return off, max(1, int(np.abs(off[:, 1]).max()))


def _propagate_rows(
    rows: np.ndarray, weights_hjw: np.ndarray, off: np.ndarray, pad: int, iterations: int
) -> np.ndarray:
    out = _kernels()["propagate"](
        rows,
        np.ascontiguousarray(weights_hjw, dtype=np.float32),
        pad,
        np.ascontiguousarray(off[:, 0]),
        np.ascontiguousarray(off[:, 1]),
        int(iterations),
    )
    return np.moveaxis(out[:, :, pad : out.shape[2] - pad], 1, 0)


def propagate(
    masks: np.ndarray, weights_hjw: np.ndarray, offsets: Sequence[tuple[int, int]], iterations: int
) -> np.ndarray:
    """``iterations`` rounds of m(p) <- Σ_j w_p(j) m(p + offset_j) on (K, H, W) float32 masks,
    edge-replicated; returns (K, H, W) (a view of the rows the kernel wrote)."""
    off, pad = _pad_of(offsets)
    return _propagate_rows(_padded_rows(masks, pad), weights_hjw, off, pad, iterations)


def propagate_one_hot(
    index: np.ndarray, k: int, weights_hjw: np.ndarray, offsets: Sequence[tuple[int, int]], iterations: int
) -> np.ndarray:
    """:func:`propagate` of the one-hot masks of an (H, W) map of ids 0..k-1, built in place (no
    (K, H, W) float copy first)."""
    off, pad = _pad_of(offsets)
    rows = _kernels()["one_hot"](np.ascontiguousarray(index, dtype=np.int64), int(k), pad)
    return _propagate_rows(rows, weights_hjw, off, pad, iterations)


def warm_up() -> None:
    """Compile (or load from numba's cache) both kernels on a tiny input, outside any timing."""
    if not available():
        return
    image = np.zeros((4, 4, 3), np.float32)
    w = weights(image, (1,), ((0, 1),), ((0, 0), (0, 1)), 1e-8, 0.1)
    propagate(np.zeros((1, 4, 4), np.float32), w, ((0, 1),), 1)
