"""Four steps of the host NCut as compiled loops (numba), each giving the array path's bits exactly.

The numpy path streams every (n, n) pass through numpy's element-wise calls; these loops do each pass
in one sweep of the rows, one thread (the NCut runs its BLAS on one thread too):

- :func:`scaled_power`: ``((w - lo) / span) ** e`` for an integer ``e``, by the same repeated squaring
  as :func:`diffcut_edge.runtime.ncut._power`, in place, noting which rows keep no exact zero;
- :func:`gather`: ``a[ids][:, ids]`` (each source row is in cache while its entries are picked), also
  written over ``a`` itself when the caller is done with it;
- :func:`bin_sums`: the affinity summed over each pair of threshold bins, adding rows in the order
  scipy's sparse one-hot products add them (ascending node within a bin, float32), so the cut scores
  and their ties are the array path's;
- :func:`lowest_ncut`: the 100 candidate cuts scored from those sums and the first best one picked,
  in the array path's order of additions (some 20 small array calls a node, ~120 us, become one).

Measured (2-core Xeon, one thread, 64x64 grid; ``benchmarks/bench_postprocess.py``): see
benchmarks/RESULTS.md. Without numba, or with ``DIFFCUT_NCUT_KERNEL=numpy``, the array path runs; cupy
and torch always take it. No parallel loops here, so no threading layer is needed (unlike PAMR's).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from diffcut_edge import lazy

ENV = "DIFFCUT_NCUT_KERNEL"  # "numpy": always the array path (comparisons, debugging)
# Largest integer exponent taken by repeated squaring (ncut._power's bound): 7 squarings at most.
MAX_INTEGER_EXPONENT = 64


def available() -> bool:
    """Whether the compiled loops run here (numba importable and not switched off)."""
    return os.environ.get(ENV, "").lower() != "numpy" and lazy.numba.available()


def integer_exponent(alpha: float) -> int | None:
    """``alpha`` as the integer exponent the repeated squaring takes, or None (then ``w ** alpha``)."""
    alpha = float(alpha)
    return int(alpha) if alpha == int(alpha) and 1 <= alpha <= MAX_INTEGER_EXPONENT else None


_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """The jitted loops, compiled on first use (cached on disk by numba across processes)."""
    if _KERNELS:
        return _KERNELS
    njit = lazy.numba.njit

    @njit(cache=True, fastmath=False, nogil=True)
    def scaled_power_rows(w, lo, span, exponent):  # pragma: no cover - compiled
        n, m = w.shape
        full = np.ones(n, dtype=np.bool_)
        base = np.empty(m, dtype=w.dtype)
        for i in range(n):
            row = w[i]
            for j in range(m):
                base[j] = (row[j] - lo) / span
            e = exponent
            first = True
            while e:  # ncut._power's order: the result takes the odd powers of base as they come
                if e & 1:
                    if first:
                        for j in range(m):
                            row[j] = base[j]
                        first = False
                    else:
                        for j in range(m):
                            row[j] = row[j] * base[j]
                e >>= 1
                if e:
                    for j in range(m):
                        base[j] = base[j] * base[j]
            for j in range(m):
                if row[j] == 0:
                    full[i] = False
                    break
        return full

    @njit(cache=True, fastmath=False, nogil=True)
    def gather_square(a, ids):  # pragma: no cover - compiled
        m = ids.shape[0]
        out = np.empty((m, m), dtype=a.dtype)
        for i in range(m):
            row = a[ids[i]]
            dst = out[i]
            for j in range(m):
                dst[j] = row[ids[j]]
        return out

    @njit(cache=True, fastmath=False, nogil=True)
    def gather_square_in_place(a, ids):  # pragma: no cover - compiled
        # Row-major, with ids ascending, element (i, j) goes to i*m + j <= ids[i]*n + ids[j], where it
        # is read from: every write lands on an element already read, so one buffer serves both.
        n, m = a.shape[0], ids.shape[0]
        flat = a.reshape(n * n)
        for i in range(m):
            src, dst = ids[i] * n, i * m
            for j in range(m):
                flat[dst + j] = flat[src + ids[j]]
        return flat[: m * m].reshape(m, m)

    @njit(cache=True, fastmath=False, nogil=True)
    def bin_pair_sums(a, bins, nbins):  # pragma: no cover - compiled
        n = a.shape[0]
        by_row = np.zeros((nbins, n), dtype=a.dtype)  # the rows of a added by bin: onehotᵀ a
        for k in range(n):
            dst, src = by_row[bins[k]], a[k]
            for j in range(n):
                dst[j] += src[j]
        sums = np.zeros((nbins, nbins), dtype=a.dtype)  # then by column: onehotᵀ (onehotᵀ a)ᵀ
        for q in range(nbins):
            src = by_row[q]
            for j in range(n):
                sums[bins[j], q] += src[j]
        return sums

    @njit(cache=True, fastmath=False, nogil=True, error_model="numpy")
    def first_lowest_ncut(g, bin_volume, bin_count, total_volume, n, min_size):  # pragma: no cover - compiled
        nbins = g.shape[0]
        vol_x = np.zeros(nbins + 1)  # [p] = Σ_{i >= p} bin_volume[i], added from the last bin down
        count_x = np.zeros(nbins + 1, dtype=np.int64)
        for p in range(nbins - 1, -1, -1):
            vol_x[p] = vol_x[p + 1] + bin_volume[p]
            count_x[p] = count_x[p + 1] + bin_count[p]
        columns = np.zeros(nbins)  # C[k, :], the running sum of g's rows 0..k
        best_k, best = 0, np.inf
        for k in range(nbins - 1):
            for p in range(nbins):
                columns[p] += np.float64(g[k, p])
            cut = 0.0
            for p in range(nbins - 1, k, -1):
                cut += columns[p]
            v, c = vol_x[k + 1], count_x[k + 1]
            value = cut / v + cut / (total_volume - v)
            if c < min_size or n - c < min_size or not np.isfinite(value):
                value = np.inf
            if value < best:  # strictly: the first minimum wins
                best_k, best = k, value
        return best_k, best

    _KERNELS.update(
        power=scaled_power_rows,
        gather=gather_square,
        gather_in_place=gather_square_in_place,
        bins=bin_pair_sums,
        lowest=first_lowest_ncut,
    )
    return _KERNELS


def scaled_power(w: np.ndarray, lo: Any, span: Any, exponent: int) -> np.ndarray:
    """``w <- ((w - lo) / span) ** exponent`` in place (C-ordered float32 (n, m), float32 ``lo``,
    ``span``); returns (n,) bool: the rows that hold no exact zero afterwards."""
    return _kernels()["power"](w, w.dtype.type(lo), w.dtype.type(span), int(exponent))


def gather(a: np.ndarray, ids: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """``a[ids][:, ids]`` of a C-ordered square matrix; ``overwrite``: in ``a``'s own memory (a view
    of it; ``ids`` ascending and unique), which is then no longer ``a``.

    Why in place: a fresh (m, m) array is memory the kernel must first fault in and zero -- 35 ms for
    the 3598 nodes of a 64x64 NCut's first child, against 10 ms written over its parent (this VM).
    """
    ids = np.ascontiguousarray(ids, dtype=np.intp)
    if overwrite and a.flags.writeable:
        return _kernels()["gather_in_place"](a, ids)
    return _kernels()["gather"](a, ids)


def bin_sums(a: np.ndarray, bins: np.ndarray, nbins: int) -> np.ndarray:
    """(nbins, nbins) ``Gᵀ a G`` of a C-ordered symmetric ``a`` for the one-hot G of ``bins`` (in a's dtype)."""
    return _kernels()["bins"](a, np.ascontiguousarray(bins, dtype=np.intp), int(nbins))


def lowest_ncut(
    g: np.ndarray, bin_volume: np.ndarray, bin_count: np.ndarray, total_volume: float, n: int, min_size: int
) -> tuple[int, float]:
    """(k, NCut_k) of the first candidate cut with the smallest NCut (see ``ncut._lowest_ncut``)."""
    k, value = _kernels()["lowest"](
        g,
        np.ascontiguousarray(bin_volume, dtype=np.float64),
        np.ascontiguousarray(bin_count, dtype=np.int64),
        float(total_volume),
        int(n),
        int(min_size),
    )
    return int(k), float(value)


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops on a tiny input, outside any timing."""
    if not available():
        return
    a = np.ones((2, 2), np.float32)
    ids = np.arange(2)
    scaled_power(a.copy(), 0.0, 1.0, 2)
    gather(a, ids)
    bin_sums(a, ids, 2)
    lowest_ncut(a, np.ones(2), np.ones(2, np.int64), 2.0, 2, 1)
