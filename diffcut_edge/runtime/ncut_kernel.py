"""Steps of the host NCut as compiled loops (numba), giving the array path's bits (Lanczos: see below).

The numpy path streams every (n, n) pass through numpy's element-wise calls; these loops do each pass
in one sweep of the rows, one thread (the NCut runs its BLAS on one thread too):

- :func:`unit_rows`: the tokens' L2 normalisation, norm (numpy's pairwise float32 sum) and division in
  one pass over the rows;
- :func:`affinity_from_lower`: ``((w - lo) / span) ** e`` for an integer ``e`` on the lower triangle
  BLAS ?syrk fills, by the same repeated squaring as :func:`diffcut_edge.runtime.ncut._power`, mirrored
  onto the upper one panel by panel, noting which rows keep no exact zero;
- :func:`gather`: ``a[ids][:, ids]`` (each source row is in cache while its entries are picked), also
  written over ``a`` itself when the caller is done with it;
- :func:`bin_sums`: the affinity summed over each pair of threshold bins, adding rows in the order
  scipy's sparse one-hot products add them (ascending node within a bin, float32), so the cut scores
  and their ties are the array path's;
- :func:`lowest_ncut`: the 100 candidate cuts scored from those sums and the first best one picked,
  in the array path's order of additions (some 20 small array calls a node, ~120 us, become one);
- :func:`lanczos_solve`: the whole Lanczos loop of ``xp._lanczos_reorthogonalised`` with its LAPACK
  test, scipy's ``ssymv``, ``dstebz`` and ``dstein`` called through function pointers (numba passes them
  as arguments, so its disk cache still serves the loop); its dot products are scipy's BLAS where the
  Python loop's are numpy's, the one place these loops are not the array path's bits (float32 rounding).

Measured (2-core Xeon, one thread, 64x64 grid; ``benchmarks/bench_postprocess.py``): see
benchmarks/RESULTS.md. Without numba, or with ``DIFFCUT_NCUT_KERNEL=numpy``, the array path runs; cupy
and torch always take it. No parallel loops here, so no threading layer is needed (unlike PAMR's).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from diffcut_edge import lazy

ENV = "DIFFCUT_NCUT_KERNEL"  # "numpy": always the array path (comparisons, debugging)
# Largest integer exponent taken by repeated squaring (ncut._power's bound): 7 squarings at most.
MAX_INTEGER_EXPONENT = 64
# Rows per panel of the affinity's min/max: the triangles of the diagonal blocks take the compiled loop.
EXTREMES_PANEL = 256
# Rows per panel of the affinity's triangle copy (64 rows: their cache lines at the copied columns stay in L1).
MIRROR_TILE = 64


def available() -> bool:
    """Whether the compiled loops run here (numba importable and not switched off)."""
    return os.environ.get(ENV, "").lower() != "numpy" and lazy.numba.available()


def integer_exponent(alpha: float) -> int | None:
    """``alpha`` as the integer exponent the repeated squaring takes, or None (then ``w ** alpha``)."""
    alpha = float(alpha)
    return int(alpha) if alpha == int(alpha) and 1 <= alpha <= MAX_INTEGER_EXPONENT else None


_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """The jitted loops (:mod:`diffcut_edge.runtime.ncut_loops`), compiled on first use and cached on disk
    by numba across processes."""
    if _KERNELS:
        return _KERNELS
    lazy.numba.load()
    from diffcut_edge.runtime import ncut_loops

    _KERNELS.update(
        unit=ncut_loops.unit_rows_kernel,
        solve=ncut_loops.lanczos_solve,
        extremes=ncut_loops.lower_extremes,
        power=ncut_loops.power_lower_and_mirror,
        gather=ncut_loops.gather_square,
        gather_in_place=ncut_loops.gather_square_in_place,
        bins=ncut_loops.bin_pair_sums,
        lowest=ncut_loops.first_lowest_ncut,
    )
    return _KERNELS


def affinity_from_lower(m: np.ndarray, exponent: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``minmax(m) ** exponent`` of a symmetric C-ordered float32 ``m`` of which only the lower triangle
    is filled (BLAS ?syrk's output), in place and mirrored: ``(m, rows without an exact zero)``;
    None when all its entries are equal.

    Half the elements are transformed, and the other half copied from them a panel at a time while
    the panel is in cache: the array path's bits (``ncut._affinity_and_full_rows``), without its
    separate triangle copy and its passes over the whole matrix.
    """
    kernels = _kernels()
    lo, hi = _lower_extremes(m, kernels["extremes"])
    span = hi - lo  # in float32, as the array path's
    if not span > 0:
        return None
    return m, kernels["power"](m, lo, span, int(exponent), MIRROR_TILE)


def _lower_extremes(m: np.ndarray, diagonal_extremes: Callable) -> tuple[np.generic, np.generic]:
    """The smallest and largest entries of the lower triangle of square ``m`` (as ``m``'s scalars).

    A minimum is exact in any order: numpy's vectorised reductions take the rectangles left of
    each diagonal block, the compiled loop (which does not vectorise) only the blocks' triangles.
    """
    n = m.shape[0]
    lo = hi = m[0, 0]
    for r0 in range(0, n, EXTREMES_PANEL):
        r1 = min(n, r0 + EXTREMES_PANEL)
        block_lo, block_hi = diagonal_extremes(m[r0:r1, r0:r1])
        lo, hi = min(lo, m.dtype.type(block_lo)), max(hi, m.dtype.type(block_hi))
        if r0:
            left = m[r0:r1, :r0]
            lo, hi = min(lo, left.min()), max(hi, left.max())
    return lo, hi


def unit_rows(x: np.ndarray, eps: float) -> np.ndarray | None:
    """``x / max(||x||, eps)`` row by row of float32 (n, c) ``x`` in one pass (numpy's norm and division
    bits), or None when a row's float32 norm is not finite (then the array path checks and copes)."""
    out, finite = _kernels()["unit"](x, np.float32(eps))
    return out if finite else None


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


def _cython_function(module: str, name: str, arguments: int) -> Any:
    """Routine ``name`` of scipy's ``cython_blas`` / ``cython_lapack`` (what scipy.linalg.blas/lapack call)
    as a ctypes function of ``arguments`` pointers, which numba calls without holding it in its cache key."""
    from numba.extending import get_cython_function_address

    signature = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * arguments)
    return signature(get_cython_function_address(f"scipy.linalg.cython_{module}", name))


@functools.lru_cache(maxsize=1)
def _routines() -> tuple[Any, Any, Any]:
    """scipy's ``ssymv``, ``dstebz`` and ``dstein``."""
    return (
        _cython_function("blas", "ssymv", 10),
        _cython_function("lapack", "dstebz", 18),
        _cython_function("lapack", "dstein", 13),
    )


def lanczos_solve(
    a: np.ndarray, scale: np.ndarray, u: np.ndarray, basis: np.ndarray, tol: float, first_test: int, test_every: int
) -> tuple[int, int, float, np.ndarray, float]:
    """``xp._lanczos_reorthogonalised``'s whole loop as one compiled call on ``S A S - 2 u uᵀ`` (float32,
    ``a`` C-ordered and exactly symmetric), the first basis row set: ``(status, steps, theta, Ritz
    coefficients, estimate)``; status 0 converged, 1 not within ``basis``'s rows, 2 LAPACK failed."""
    symv, stebz, stein = _routines()
    n = a.shape[0]
    status, steps, theta, coefficients, estimate = _kernels()["solve"](
        symv, stebz, stein,
        a.T,  # the column-major view ?symv reads: its upper triangle, as scipy.linalg.blas.ssymv does
        np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(u, np.float32),
        basis, float(tol), int(first_test), int(test_every),
        np.empty((2, n), np.float32),  # the scaled vector and its product
        np.array([n, n, 1], np.int32),  # ?symv's n, lda, inc
        np.array([1.0, 0.0], np.float32),  # ?symv's alpha, beta
        np.frombuffer(b"U", np.uint8),
        np.zeros(8, np.int32),  # ?stebz/?stein's integers
        np.array([0.0, 1.0, 0.0]),  # vl, vu (unused for a range by index), abstol: scipy's values
        np.frombuffer(b"IB", np.uint8),  # range by index, order by block
    )  # fmt: skip
    return int(status), int(steps), float(theta), coefficients, float(estimate)


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops on a tiny input, outside any timing."""
    if not available():
        return
    a = np.ones((2, 2), np.float32)
    ids = np.arange(2)
    affinity_from_lower(np.array([[1.0, 0.0], [0.5, 1.0]], np.float32), 2)
    unit_rows(a, 1e-12)
    gather(a, ids)
    bin_sums(a, ids, 2)
    lowest_ncut(a, np.ones(2), np.ones(2, np.int64), 2.0, 2, 1)
    basis = np.eye(2, dtype=np.float32)
    lanczos_solve(a, np.ones(2, np.float32), np.array([0.0, 1.0], np.float32), basis, 1e-7, 1, 1)
