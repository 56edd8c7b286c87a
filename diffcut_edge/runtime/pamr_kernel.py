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
    """Whether the compiled kernels can run here (numba importable, not switched off, a thread-safe
    threading layer found)."""
    return os.environ.get(ENV, "").lower() != "numpy" and not _BROKEN and lazy.numba.available()


def _threadsafe_layer(numba: Any) -> None:
    """Only a thread-safe threading layer (TBB or OpenMP): the default fallback, "workqueue", aborts
    the process when two threads run a parallel loop at once (an app segmenting in two threads).
    A layer the user chose (NUMBA_THREADING_LAYER) is kept."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"


def give_up(error: BaseException) -> None:
    """Record that the kernels cannot run here (no thread-safe threading layer): the array path from now on."""
    _BROKEN.append(f"{type(error).__name__}: {error}")


def is_missing_threading_layer(error: BaseException) -> bool:
    """Whether ``error`` is numba finding no thread-safe threading layer (TBB / OpenMP) here."""
    return isinstance(error, ValueError) and "threading layer" in str(error)


_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """The jitted functions, compiled on first use (cached on disk by numba across processes).

    Layout: channel-major rows with their columns edge-padded by the largest dilation P, (H, C, W + 2P),
    so every neighbour of a row is a contiguous slice (no branches, no gathers: the loops over x
    vectorise), and rows are clamped by index. Each output row is one thread's; the pads of a
    propagated row are refreshed by the thread that wrote it, before the next round reads them.
    """
    if _KERNELS:
        return _KERNELS
    numba = lazy.numba
    _threadsafe_layer(numba)
    njit, prange = numba.njit, numba.prange

    @njit(inline="always")
    def shifted_row(rows, y, c, dy, dx, pad, w):  # pragma: no cover - compiled
        """Row y + dy (clamped) of channel c, shifted by dx: a contiguous slice of the padded rows."""
        yy = min(max(y + dy, 0), rows.shape[0] - 1)
        return rows[yy, c, pad + dx : pad + dx + w]

    @njit(parallel=True, cache=True, fastmath=False, nogil=True)
    def weights_hjw(img, pad, dil, neighbours, window, std_eps, std_scale):  # pragma: no cover - compiled
        h, channels, padded_w = img.shape
        w = padded_w - 2 * pad
        nd, nn, nw = dil.shape[0], neighbours.shape[0], window.shape[0]
        out = np.empty((h, nd * nn, w), dtype=np.float32)
        count = np.float32(nw * nd)
        eps, scale, three = np.float32(std_eps), np.float32(std_scale), np.float32(3.0)
        for y in prange(h):
            mean = np.zeros((channels, w), dtype=np.float32)
            denom = np.zeros((channels, w), dtype=np.float32)
            for c in range(channels):  # two-pass unbiased std over the dilated 3x3 windows, centre included
                m, v = mean[c], denom[c]
                for a in range(nd):
                    for b in range(nw):
                        row = shifted_row(img, y, c, window[b, 0] * dil[a], window[b, 1] * dil[a], pad, w)
                        for x in range(w):
                            m[x] += row[x]
                for x in range(w):
                    m[x] = m[x] / count
                for a in range(nd):
                    for b in range(nw):
                        row = shifted_row(img, y, c, window[b, 0] * dil[a], window[b, 1] * dil[a], pad, w)
                        for x in range(w):
                            d = row[x] - m[x]
                            v[x] += d * d
                for x in range(w):
                    v[x] = eps + scale * np.sqrt(v[x] / (count - np.float32(1.0)))
            for a in range(nd):
                for b in range(nn):
                    logit = out[y, a * nn + b]
                    logit[:] = 0.0
                    for c in range(channels):  # the channel mean in the array path's order: ((0 + c0) + c1) + c2
                        centre, den = img[y, c, pad : pad + w], denom[c]
                        row = shifted_row(img, y, c, neighbours[b, 0] * dil[a], neighbours[b, 1] * dil[a], pad, w)
                        for x in range(w):
                            logit[x] += abs(centre[x] - row[x]) / den[x]
                    for x in range(w):
                        logit[x] = -(logit[x] / three)
            top = np.full(w, -np.inf, dtype=np.float32)
            for j in range(nd * nn):
                logit = out[y, j]
                for x in range(w):
                    top[x] = max(top[x], logit[x])
            total = np.zeros(w, dtype=np.float32)
            for j in range(nd * nn):
                logit = out[y, j]
                for x in range(w):
                    e = np.exp(logit[x] - top[x])
                    logit[x] = e
                    total[x] += e
            for j in range(nd * nn):
                logit = out[y, j]
                for x in range(w):
                    logit[x] = logit[x] / total[x]
        return out

    @njit(nogil=True, fastmath=False)
    def refresh_pads(rows, y, pad):  # pragma: no cover - compiled
        _, channels, padded_w = rows.shape
        for c in range(channels):
            left, right = rows[y, c, pad], rows[y, c, padded_w - pad - 1]
            for x in range(pad):
                rows[y, c, x] = left
                rows[y, c, padded_w - pad + x] = right

    @njit(parallel=True, cache=True, fastmath=False, nogil=True)
    def padded_rows(chw, pad):  # pragma: no cover - compiled
        channels, h, w = chw.shape
        out = np.empty((h, channels, w + 2 * pad), dtype=np.float32)
        for y in prange(h):
            for c in range(channels):
                for x in range(w):
                    out[y, c, pad + x] = chw[c, y, x]
            refresh_pads(out, y, pad)
        return out

    @njit(parallel=True, cache=True, fastmath=False, nogil=True)
    def one_hot_rows(index, k, pad):  # pragma: no cover - compiled
        h, w = index.shape
        out = np.zeros((h, k, w + 2 * pad), dtype=np.float32)
        for y in prange(h):
            for x in range(w):
                out[y, index[y, x], pad + x] = 1.0
            refresh_pads(out, y, pad)
        return out

    @njit(parallel=True, cache=True, fastmath=False, nogil=True)
    def propagate_hkw(src, weights, pad, oy, ox, iterations):  # pragma: no cover - compiled
        # src: rows the caller made for this call; they are overwritten (one fresh buffer, not two).
        h, k, padded_w = src.shape
        w = padded_w - 2 * pad
        nj = oy.shape[0]
        dst = np.empty_like(src)
        for _ in range(iterations):
            for y in prange(h):
                for j in range(nj):
                    wrow = weights[y, j]
                    for c in range(k):
                        out = dst[y, c, pad : pad + w]  # contiguous rows: the x loops vectorise
                        row = shifted_row(src, y, c, oy[j], ox[j], pad, w)
                        if j == 0:
                            for x in range(w):
                                out[x] = wrow[x] * row[x]
                        else:
                            for x in range(w):
                                out[x] += wrow[x] * row[x]
                refresh_pads(dst, y, pad)
            src, dst = dst, src
        return src

    with _openmp_threads_kept():  # numba starts its thread pool on the first parallel call
        padded_rows(np.zeros((1, 1, 1), np.float32), 1)
    _KERNELS.update(weights=weights_hjw, propagate=propagate_hkw, rows=padded_rows, one_hot=one_hot_rows)
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
    try:
        w = weights(image, (1,), ((0, 1),), ((0, 0), (0, 1)), 1e-8, 0.1)
        propagate(np.zeros((1, 4, 4), np.float32), w, ((0, 1),), 1)
    except ValueError as e:
        if not is_missing_threading_layer(e):
            raise
        give_up(e)
