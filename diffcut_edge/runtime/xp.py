"""Array namespaces for the post-processing: numpy, cupy, torch, or any Array API library.

NCut, assignment, PAMR and preprocessing are written once against the Array API standard
(https://data-apis.org/array-api/), through ``array_api_compat``: an array in gives its
namespace and device, every array the algorithm creates is created there, and results come
back in the input's namespace on the input's device. The standard lacks a few things the
post-processing needs -- a Fiedler-vector solver, the median filter, ARPACK's
``LinearOperator`` -- so each namespace gets them from :class:`Extras`, the one dispatch
point (numpy: scipy; cupy: cupyx; anything else: standard-only fallbacks). Host copies
happen in exactly one place, :func:`to_host` (and its inverse :func:`from_host`); CI runs
the post-processing on ``array_api_strict`` arrays on a non-default device, which refuse
every implicit host copy the way cupy does.

cupy and torch are imported only when their arrays (or ``"cuda"``) are seen.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from diffcut_edge import lazy
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import ncut_kernel

# The cupyx pieces the post-processing needs beyond cupy itself (Lanczos, the median filter).
# They load CUDA libraries (cuSPARSE, cuSOLVER, ...) that `import cupy` does not: a cupy
# without its [ctk] extra on a machine without a CUDA toolkit imports, then fails mid-NCut.
CUPYX_MODULES = ("cupyx.scipy.sparse.linalg", "cupyx.scipy.ndimage")


def gpu_postprocessing_problem() -> str | None:
    """Why NCut/PAMR cannot run with cupy here (a one-line, actionable reason), or None."""
    import importlib

    if not lazy.cupy.available():
        return "cupy is not installed: pip install 'diffcut-edge[gpu]' (Jetson: 'diffcut-edge[jetson]')"
    for name in CUPYX_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a CUDA library that fails to load
            return (
                f"cupy imports but {name} does not ({type(e).__name__}: {str(e)[:160]}): install cupy "
                f"with its CUDA libraries, pip install 'cupy-cuda12x[ctk]' (in diffcut-edge[gpu])"
            )
    return None


# --------------------------------------------------------------------------------------
# Namespaces, devices, host copies
# --------------------------------------------------------------------------------------

NUMPY = array_api_compat.array_namespace(np.empty(0))  # array_api_compat.numpy


def is_cupy_array(a: Any) -> bool:
    """True for a cupy ndarray, checked without importing cupy."""
    return array_api_compat.is_cupy_array(a)


def is_numpy_namespace(xp: Any) -> bool:
    """True for numpy itself or array_api_compat's numpy wrapper."""
    return xp is np or xp is NUMPY


def _is_array(a: Any) -> bool:
    return array_api_compat.is_array_api_obj(a) and not isinstance(a, (int, float, complex, bool))


def get_xp(*arrays_or_device: Any) -> types.ModuleType:
    """The Array API namespace of the arrays, or of a device name ("cpu" | "cuda").

    Arrays of one library give its (array_api_compat) namespace; anything that is not an
    array (lists, scalars, None) is ignored, and with no array at all the answer is numpy.
    Arrays of two libraries raise (the caller mixed devices).
    """
    if all(type(a) is np.ndarray for a in arrays_or_device):  # the host's hot path (NCut: ~300 calls a frame)
        return NUMPY
    if len(arrays_or_device) == 1 and isinstance(arrays_or_device[0], str):
        device = arrays_or_device[0].split(":")[0].lower()
        if device == "cpu":
            return NUMPY
        if device in ("cuda", "gpu"):
            return array_api_compat.array_namespace(lazy.cupy.load().empty(0))
        raise DiffCutError(f"unknown device {arrays_or_device[0]!r}: use 'cpu' or 'cuda'")
    arrays = [a for a in arrays_or_device if _is_array(a)]
    if not arrays:
        return NUMPY
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as e:
        raise DiffCutError(
            f"arrays of different libraries mixed in one call ({e}); move them to one library and device first"
        ) from e


def device_of(a: Any) -> Any:
    """The device an array lives on (None for host objects that are not arrays)."""
    if type(a) is np.ndarray:
        return "cpu"  # array_api_compat's answer for numpy, without its dispatch
    return array_api_compat.device(a) if _is_array(a) else None


def to_host(a: Any) -> np.ndarray:
    """A numpy array with ``a``'s values: the one place data leaves a device.

    numpy arrays come back as they are; cupy and torch (CUDA or CPU) are copied with their
    own calls; any other Array API array is moved to its library's CPU device first, then
    read through DLPack. Lists and scalars become numpy arrays.
    """
    if isinstance(a, np.ndarray):
        return a
    if array_api_compat.is_cupy_array(a):
        return a.get()
    if array_api_compat.is_torch_array(a):
        return a.detach().cpu().numpy()
    if _is_array(a) and not array_api_compat.is_numpy_array(a):
        xp = array_api_compat.array_namespace(a)
        return np.from_dlpack(xp.asarray(a, device=_cpu_device(xp), copy=True))
    return np.asarray(a)


def _cpu_device(xp: Any) -> Any:
    """The host device of a namespace (array_api_strict names it CPU_DEVICE)."""
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None:
        for device in info().devices():
            if "cpu" in str(device).lower():
                return device
        return info().default_device()
    return "cpu"


def from_host(a: Any, like: Any, dtype: Any = None) -> Any:
    """Host data (numpy array, list, scalar) as an array of ``like``'s namespace and device.

    The inverse of :func:`to_host`, for tables computed once on the host (interpolation
    taps, start vectors). ``like`` is an array, or a namespace (then its default device).
    """
    if isinstance(like, types.ModuleType):
        xp, device = like, None
    else:
        xp, device = get_xp(like), device_of(like)
    host = np.asarray(a)
    if is_numpy_namespace(xp):
        return host if dtype is None else host.astype(dtype, copy=False)
    return xp.asarray(host, dtype=dtype, device=device) if device is not None else xp.asarray(host, dtype=dtype)


def as_array(a: Any, like: Any = None) -> Any:
    """``a`` as an array: arrays pass through as they are; lists and scalars become arrays of
    ``like``'s namespace, on its device (numpy when ``like`` is None or not an array)."""
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return a
    device = device_of(like)
    xp = get_xp(like)
    return xp.asarray(a) if device is None else xp.asarray(a, device=device)


def linear_taps(size_in: int, size_out: int, *, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Torch's 1-D bilinear taps: source indices (i0, i1) and the float32 weight of i1, per output.

    align_corners=False: src = (o + 0.5) * in/out - 0.5, clamped below at 0 (torch's
    ``area_pixel_compute_source_index``); align_corners=True: src = o * (in-1)/(out-1).
    Step-by-step float32 arithmetic, as torch's CPU kernel (opmath of float is float);
    the upper neighbour is clamped to the last index (edge replication). Host arrays.
    """
    f32 = np.float32
    o = np.arange(size_out, dtype=f32)
    if align_corners:
        scale = f32(size_in - 1) / f32(size_out - 1) if size_out > 1 else f32(0)
        src = scale * o
    else:
        scale = f32(size_in) / f32(size_out)
        src = np.maximum(scale * (o + f32(0.5)) - f32(0.5), f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return i0, i1, (src - i0.astype(f32)).astype(f32)


def nearest_taps(size_in: int, size_out: int, *, exact: bool = False) -> np.ndarray:
    """Source indices of torch's ``nearest`` (src = floor(o * in/out)) or ``nearest-exact``
    (floor((o + 0.5) * in/out)), clamped to the last index; host int64 array.

    The scale is float32 as in torch's kernel: with a float64 scale the floor lands on the
    other side for some sizes (83 of 7930 (in, out) pairs checked against F.interpolate).
    """
    offset = np.float32(0.5) if exact else np.float32(0)
    src = (np.arange(size_out, dtype=np.float32) + offset) * np.float32(size_in / size_out)
    return np.minimum(np.floor(src).astype(np.int64), size_in - 1)


# --------------------------------------------------------------------------------------
# Standard-only helpers the algorithms share
# --------------------------------------------------------------------------------------


def pad_edge(x: Any, pad: int) -> Any:
    """``x`` (..., H, W) padded by ``pad`` on both sides of the last two axes, edge-replicated.

    A gather with clamped indices (``take`` is standard; ``pad`` is not).
    """
    if pad == 0:
        return x
    xp = get_xp(x)
    h, w = x.shape[-2], x.shape[-1]
    rows = from_host(np.clip(np.arange(-pad, h + pad), 0, h - 1), like=x)
    cols = from_host(np.clip(np.arange(-pad, w + pad), 0, w - 1), like=x)
    return xp.take(xp.take(x, rows, axis=x.ndim - 2), cols, axis=x.ndim - 1)


def submatrix(a: Any, ids: Any, *, overwrite: bool = False) -> Any:
    """``a[ids][:, ids]`` of a square matrix (two gathers; ``ix_`` is not standard).

    ``overwrite``: the caller never reads ``a`` again, so its memory may hold the result (``ids``
    ascending and unique); namespaces that cannot do that return a new array.
    """
    xp = get_xp(a)
    make = extras(xp).submatrix
    if make is not None:
        return make(a, ids, overwrite)
    return xp.take(xp.take(a, ids, axis=0), ids, axis=1)


def member_mask(sorted_ids: Any, n: int) -> Any:
    """(n,) bool: which of 0..n-1 are in ``sorted_ids`` (ascending, unique).

    A scatter ``mask[ids] = True`` is not standard; a binary search is.
    """
    xp = get_xp(sorted_ids)
    everyone = xp.arange(n, device=device_of(sorted_ids))
    if sorted_ids.shape[0] == 0:
        return everyone < 0
    pos = xp.searchsorted(sorted_ids, everyone)
    pos = xp.clip(pos, 0, sorted_ids.shape[0] - 1)
    return xp.take(sorted_ids, pos) == everyone


def rank_rows(bits: Any) -> Any:
    """(n,) int64 dense ranks of the rows of an (n, k) 0/1 matrix in lexicographic order
    (column 0 most significant): ``np.unique(bits, axis=0, return_inverse=True)[1]``.

    A least-significant-first radix sort of stable argsorts (``unique`` has no axis in the
    standard, nor ``lexsort``); k passes over n rows.
    """
    xp = get_xp(bits)
    n, k = bits.shape
    order = xp.arange(n, device=device_of(bits))
    for col in range(k - 1, -1, -1):
        key = xp.take(bits[:, col], order)
        order = xp.take(order, xp.argsort(key, stable=True))
    ranked = xp.take(bits, order, axis=0)
    changed = xp.any(ranked[1:, :] != ranked[:-1, :], axis=1)
    rank_sorted = xp.cumulative_sum(xp.astype(changed, xp.int64), include_initial=True)
    return xp.take(rank_sorted, xp.argsort(order))


# --------------------------------------------------------------------------------------
# Extras: what the standard lacks, one implementation per namespace
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenPair:
    """An eigenpair from a Lanczos solver. ``residual``: ``||A v - λ v|| / ||v||`` as the solver itself
    bounded it (our Lanczos: its Ritz estimate, which its stopping test has already held to the
    unit roundoff), or None when the solver does not say (ARPACK through scipy, cupyx)."""

    value: float
    vector: Any
    residual: float | None = None


@dataclass(frozen=True)
class Extras:
    """The non-standard pieces of the post-processing for one namespace.

    eigh_pair(m, index) -> (value, vector): eigenpair number ``index`` (ascending) of a
        dense symmetric matrix; raises ``np.linalg.LinAlgError``/``ValueError`` on failure.
    lanczos_largest(matvec, n, dtype, v0, tol) -> :class:`EigenPair`; None as the field when the
        namespace has no Lanczos solver (callers then use ``eigh_pair``).
    median_filter3(labels): 3x3 median filter, border mode 'reflect' (scipy's default).
    host_blas: whether BLAS threads of this process do the work (numpy).
    symmetric_product(m) -> (x -> m @ x) for an exactly symmetric matrix ``m`` (None: ``@``).
    gram(x) -> ``x @ x.T`` (None: ``@``).
    bin_totals(a, d, bins, nbins) -> see :func:`bin_totals` (None: the dense one-hot products).
    submatrix(a, ids, overwrite) -> ``a[ids][:, ids]``, in ``a``'s memory if ``overwrite`` and it can
        (None: two ``take``).
    affinity(x, alpha) -> ``(minmax(x xᵀ) ** alpha, rows without an exact zero)`` of unit tokens ``x``,
        ``(None, None)`` when all products are equal; None where it cannot (then ``ncut``'s array
        path runs, with the same bits).
    unit_rows(x, eps) -> ``x / max(||x||, eps)`` row by row (float32), or None where it cannot or a norm
        is not finite (then ``ncut.unit_rows``'s array path runs, with the same bits).
    lowest_ncut(g, bin_volume, bin_count, total_volume, n, min_size) -> (k, NCut_k) as
        ``ncut._lowest_ncut`` computes it, or None where it cannot (then that runs).
    """

    name: str
    eigh_pair: Callable[[Any, int], tuple[float, Any]]
    lanczos_largest: Callable[..., EigenPair] | None
    median_filter3: Callable[[Any], Any]
    host_blas: bool = False
    symmetric_product: Callable[[Any], Callable[[Any], Any]] | None = None
    gram: Callable[[Any], Any] | None = None
    bin_totals: Callable[[Any, Any, Any, int], tuple[Any, Any, Any]] | None = None
    submatrix: Callable[[Any, Any, bool], Any] | None = None
    affinity: Callable[[Any, float], tuple[Any, Any] | None] | None = None
    lowest_ncut: Callable[..., tuple[int, float] | None] | None = None
    unit_rows: Callable[[Any, float], Any | None] | None = None


def extras(xp: Any) -> Extras:
    """The :class:`Extras` of namespace ``xp``."""
    if is_numpy_namespace(xp):
        return _numpy_extras()
    if array_api_compat.is_cupy_namespace(xp):
        return _cupy_extras()
    return _generic_extras(xp)


@functools.lru_cache(maxsize=1)
def _numpy_extras() -> Extras:
    import scipy.linalg
    import scipy.linalg.lapack
    import scipy.ndimage
    import scipy.sparse
    from scipy.sparse.linalg import LinearOperator, eigsh

    def eigh_pair(m: Any, index: int) -> tuple[float, Any]:
        # LAPACK ?syevr computes only the requested pair: the call scipy.linalg.eigh(subset_by_index,
        # driver="evr") makes, without its argument checks (~30 us, a fifth of a 100-node solve).
        if m.ndim != 2 or m.dtype not in (np.float32, np.float64):
            w, v = scipy.linalg.eigh(m, subset_by_index=[index, index], driver="evr", check_finite=False)
            return float(w[0]), v[:, 0]
        syevr, syevr_lwork = scipy.linalg.lapack.get_lapack_funcs(("syevr", "syevr_lwork"), (m,))
        lwork, liwork, info = syevr_lwork(m.shape[0], lower=1)
        w, v, found, _, info = syevr(
            m, compute_v=1, range="I", lower=1, il=index + 1, iu=index + 1, lwork=int(lwork), liwork=int(liwork)
        )
        if info != 0 or found != 1:
            raise np.linalg.LinAlgError(f"?syevr failed (info {info}, {found} pairs)")
        return float(w[0]), v[:, 0]

    def lanczos_largest(matvec: Callable, n: int, dtype: Any, v0: Any, tol: float) -> EigenPair:
        found = _lanczos_reorthogonalised(matvec, v0, tol)
        if found is not None:
            return found
        # Not converged within LANCZOS_MAX_STEPS: ARPACK's implicitly restarted Lanczos decides.
        op = LinearOperator((n, n), matvec=lambda x: matvec(x.reshape(-1)), dtype=dtype)
        ncv = min(n - 1, LANCZOS_NCV)
        w, v = eigsh(op, k=1, which="LA", v0=v0, tol=tol, maxiter=EIGSH_MAXITER_PER_NODE * n, ncv=ncv)
        return EigenPair(float(w[0]), v[:, 0])

    def symmetric_product(m: Any) -> Callable[[Any], Any]:
        # BLAS ?symv reads one triangle: half the memory traffic of a ?gemv, and the Lanczos products
        # are memory-bound (2.2x faster at 1024 nodes, 1.9x at 4096; 2-core Xeon, one thread). ``m.T``
        # is the column-major view ?symv wants without a copy -- the same matrix, as ``m`` is symmetric.
        if m.ndim != 2 or m.dtype not in (np.float32, np.float64) or not m.flags.c_contiguous:
            return lambda x: m @ x
        symv = scipy.linalg.blas.ssymv if m.dtype == np.float32 else scipy.linalg.blas.dsymv
        view = m.T
        return lambda x: symv(1.0, view, x)

    def gram(x: Any) -> Any:
        # numpy's ``x @ x.T`` is BLAS ?syrk plus a triangle copy that walks the other triangle a
        # column at a time; copying it in cache-sized tiles instead gives the same bits 1.2x sooner
        # (2-core Xeon, one thread: 10.9 vs 12.6 ms at 1024x1280, 182 vs 230 ms at 4096x1280).
        # float32 only: there the bits were checked equal to numpy's at every size (float64's dsyrk
        # differs from numpy's choice in the last bit at some sizes).
        if not _syrk_takes(x):
            return x @ x.T
        m = _gram_lower(x)
        _mirror_lower(m, GRAM_TILE)
        return m

    def affinity(x: Any, alpha: float) -> tuple[Any, Any] | None:
        exponent = ncut_kernel.integer_exponent(alpha)
        if exponent is None or not _kernel_takes(x):
            return None
        found = ncut_kernel.affinity_from_lower(_gram_lower(x), exponent)
        return (None, None) if found is None else found

    def bin_totals(a: Any, d: Any, bins: Any, nbins: int) -> tuple[Any, Any, Any]:
        volumes, counts = np.bincount(bins, weights=d, minlength=nbins), np.bincount(bins, minlength=nbins)
        if _kernel_takes(a):
            return ncut_kernel.bin_sums(a, bins, nbins), volumes, counts
        # ``onehotᵀ a`` as a sparse product adds each row of ``a`` into its bin: one pass over ``a``
        # instead of a dense (n, n) x (n, nbins) product (4x sooner at 1024 and 4096 nodes).
        n = a.shape[0]
        order = np.argsort(bins, kind="stable")  # each bin's members, in the CSR layout
        starts = np.searchsorted(bins[order], np.arange(nbins + 1))
        onehot_t = scipy.sparse.csr_array((np.ones(n, dtype=a.dtype), order, starts), shape=(nbins, n))
        by_row = onehot_t @ a  # (nbins, n) dense
        return onehot_t @ by_row.T, volumes, counts  # (nbins, nbins); ``a`` is symmetric

    def submatrix(a: Any, ids: Any, overwrite: bool) -> Any:
        if _kernel_takes(a):
            return ncut_kernel.gather(a, ids, overwrite=overwrite)
        return np.take(np.take(a, ids, axis=0), ids, axis=1)

    def lowest_ncut(
        g: Any, bin_volume: Any, bin_count: Any, total_volume: Any, n: int, min_size: int
    ) -> tuple[int, float] | None:
        if not _kernel_takes(g):
            return None
        return ncut_kernel.lowest_ncut(g, bin_volume, bin_count, float(total_volume), n, min_size)

    return Extras(
        "numpy",
        eigh_pair,
        lanczos_largest,
        lambda labels: scipy.ndimage.median_filter(labels, size=3),
        host_blas=True,
        symmetric_product=symmetric_product,
        gram=gram,
        bin_totals=bin_totals,
        submatrix=submatrix,
        affinity=affinity,
        lowest_ncut=lowest_ncut,
        unit_rows=lambda x, eps: ncut_kernel.unit_rows(x, eps) if _kernel_takes(x) else None,
    )


def _syrk_takes(x: np.ndarray) -> bool:
    """Whether BLAS ?syrk computes ``x xᵀ`` here with numpy's bits (float32, C-ordered rows)."""
    return x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous


def _gram_lower(x: np.ndarray) -> np.ndarray:
    """``x xᵀ`` by BLAS ?syrk as a C-ordered (n, n) view whose lower triangle holds the products
    (the upper one is not written)."""
    import scipy.linalg.blas

    return scipy.linalg.blas.ssyrk(1.0, x.T, trans=1).T


def _kernel_takes(a: np.ndarray) -> bool:
    """Whether the compiled NCut loops take this host matrix (float32, C-ordered; numba here)."""
    return _syrk_takes(a) and ncut_kernel.available()


# Tile edge of the triangle copy in :func:`_mirror_lower` (64x64 float32: 16 KB, in L1 with its source).
GRAM_TILE = 64


def _mirror_lower(m: np.ndarray, tile: int) -> None:
    """Copy the lower triangle of square ``m`` onto its upper triangle, tile by tile."""
    n = m.shape[0]
    for r0 in range(0, n, tile):
        r1 = min(n, r0 + tile)
        for c0 in range(r1, n, tile):
            c1 = min(n, c0 + tile)
            m[r0:r1, c0:c1] = m[c0:c1, r0:r1].T
        diagonal = m[r0:r1, r0:r1]
        np.copyto(diagonal, diagonal.T, where=_strict_upper(r1 - r0))


@functools.lru_cache(maxsize=8)
def _strict_upper(size: int) -> np.ndarray:
    return np.triu(np.ones((size, size), dtype=bool), 1)


@functools.lru_cache(maxsize=1)
def _cupy_extras() -> Extras:
    cp = lazy.cupy.load()

    def eigh_pair(m: Any, index: int) -> tuple[float, Any]:
        w, v = cp.linalg.eigh(m)  # no subset solver in cuSOLVER's syevd: full, then slice
        return float(w[index]), v[:, index]

    def lanczos_largest(matvec: Callable, n: int, dtype: Any, v0: Any, tol: float) -> EigenPair:
        from cupyx.scipy.sparse.linalg import LinearOperator, eigsh

        op = LinearOperator((n, n), matvec=lambda x: matvec(x.reshape(-1)), dtype=dtype)
        # Bounded like scipy's default: cupyx's own default loops without reporting failure.
        w, v = eigsh(op, k=1, which="LA", v0=v0, tol=tol, maxiter=EIGSH_MAXITER_PER_NODE * n)
        return EigenPair(float(w[0]), v[:, 0])

    def median_filter3(labels: Any) -> Any:
        from cupyx.scipy.ndimage import median_filter

        return median_filter(labels, size=3)

    return Extras("cupy", eigh_pair, lanczos_largest, median_filter3)


def _generic_extras(xp: Any) -> Extras:
    """Standard-only fallbacks (torch, array_api_strict, ...): dense ``linalg.eigh`` and a
    sorting median filter. Exact, and on a GPU fast enough for the grids DiffCut uses."""

    def eigh_pair(m: Any, index: int) -> tuple[float, Any]:
        w, v = xp.linalg.eigh(m)
        return float(w[index]), v[:, index]

    return Extras(getattr(xp, "__name__", "array-api"), eigh_pair, None, _median_filter3_sorting)


def _median_filter3_sorting(labels: Any) -> Any:
    """3x3 median by sorting the 9 shifted copies. With a 1-pixel border scipy's 'reflect'
    mode repeats the edge value, which is what :func:`pad_edge` does."""
    xp = get_xp(labels)
    h, w = labels.shape
    padded = pad_edge(labels, 1)
    stack = xp.stack([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=-1)
    return xp.sort(stack, axis=-1)[..., 4]


# --------------------------------------------------------------------------------------
# Eigen-solvers for NCut
# --------------------------------------------------------------------------------------

# Restarted-Lanczos iterations allowed, per node of the matrix (scipy's own default, applied to
# cupyx too, whose eigsh otherwise returns whatever it has without saying it did not converge).
EIGSH_MAXITER_PER_NODE = 10
# Lanczos basis size (scipy's default for one pair: 20). Sets how many products one restart
# costs; measured per NCut in benchmarks/RESULTS.md ("Lanczos basis").
LANCZOS_NCV = 20


# Plain Lanczos steps kept (with their basis, for full reorthogonalisation) before ARPACK takes over.
# The Fiedler vectors of the planted cases converge in 8-35 steps (grids 16x16 to 64x64).
LANCZOS_MAX_STEPS = 80
# Steps before the first convergence test, and between tests (each test solves the small
# tridiagonal eigenproblem: ~30 us, half a product at 1024 nodes).
LANCZOS_FIRST_TEST = 8
LANCZOS_TEST_EVERY = 2


def _lanczos_reorthogonalised(matvec: Callable, v0: np.ndarray, tol: float) -> EigenPair | None:
    """Largest eigenpair of a symmetric operator by Lanczos with full reorthogonalisation, or None
    when it has not converged within ``LANCZOS_MAX_STEPS`` steps.

    Converged means ARPACK's own test: the Ritz estimate ``beta_j |s_j|`` is at most ``tol |theta|``
    (``tol = 0``: the dtype's unit roundoff, as ARPACK). For the one extreme pair NCut needs, this
    stops as soon as the pair has converged, where ARPACK's restarts build at least ``ncv`` products
    per node and discard some: 8-35 products a node instead of 22-42 (NCut at 32x32 and 64x64), with
    less Python per product. The basis vectors are the rows of one preallocated array.

    On NCut's deflated float32 operator with numba here, the whole loop is one compiled call
    (:func:`diffcut_edge.runtime.ncut_kernel.lanczos_solve`): the same operations in the same order and
    the same LAPACK test, where a step's ~18 array calls and the test's argument checks cost ~25 us of
    Python each (a third of a step at 1024 nodes). Its dot products are scipy's BLAS where the loop
    below uses numpy's, so the two agree to float32 rounding (tests/runtime/test_ncut_kernel.py).
    """
    n = v0.shape[0]
    dtype = v0.dtype
    tol = tol or float(np.finfo(dtype).eps) / 2
    steps = min(n, LANCZOS_MAX_STEPS)
    basis = np.empty((steps, n), dtype=dtype)
    basis[0] = v0 / np.linalg.norm(v0)
    if _compiled_lanczos_takes(matvec, dtype):
        status, done, theta, s, estimate = ncut_kernel.lanczos_solve(
            matvec.matrix, matvec.scale, matvec.u, basis, tol, LANCZOS_FIRST_TEST, LANCZOS_TEST_EVERY
        )
        if status == 2:
            raise np.linalg.LinAlgError("LAPACK ?stebz/?stein failed on the Lanczos tridiagonal matrix")
        return None if status == 1 else EigenPair(theta, s.astype(dtype) @ basis[:done], estimate)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        q = basis[j]
        w = matvec(q)
        alpha = float(q @ w)
        w -= dtype.type(alpha) * q
        if j:
            w -= dtype.type(betas[-1]) * basis[j - 1]
        done = basis[: j + 1]
        w -= (done @ w) @ done  # full reorthogonalisation: float32 Lanczos loses it within steps
        beta = float(np.sqrt(w @ w))  # np.linalg.norm's own arithmetic, without its Python
        alphas.append(alpha)
        betas.append(beta)
        last = j + 1 == steps
        scheduled = j + 1 >= LANCZOS_FIRST_TEST and (j + 1 - LANCZOS_FIRST_TEST) % LANCZOS_TEST_EVERY == 0
        if last or beta == 0.0 or scheduled:
            theta, s = _top_tridiagonal_pair(np.asarray(alphas), np.asarray(betas[:-1]))
            # beta == 0: the Krylov space is invariant, the pair exact (also every step of a full space).
            estimate = beta * abs(s[-1])  # ||M v - theta v|| for the unit Ritz vector v
            if estimate <= tol * abs(theta) or beta == 0.0 or j + 1 == n:
                return EigenPair(theta, s.astype(dtype) @ done, estimate)
        if last or beta == 0.0:
            break
        basis[j + 1] = w / dtype.type(beta)
    return None


def _compiled_lanczos_takes(matvec: Callable, dtype: np.dtype) -> bool:
    """Whether the compiled Lanczos runs this operator: NCut's deflated float32 operator on a C-ordered
    host matrix (square: it is symmetric), numba here."""
    return isinstance(matvec, DeflatedOperator) and dtype == np.float32 and _kernel_takes(matvec.matrix)


def _top_tridiagonal_pair(diagonal: np.ndarray, off_diagonal: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest eigenpair of a symmetric tridiagonal matrix (float64): the LAPACK calls of scipy's
    ``eigh_tridiagonal(select="i")`` (?stebz, then ?stein), so the same bits, without its argument
    checks, which cost more than the solve at the Lanczos sizes (~25 us a call)."""
    import scipy.linalg.lapack

    n = diagonal.shape[0]
    if n == 1:
        return float(diagonal[0]), np.ones(1)
    found, values, block, split, info = scipy.linalg.lapack.dstebz(diagonal, off_diagonal, 2, 0.0, 1.0, n, n, 0.0, "B")
    if info != 0 or found != 1:
        raise np.linalg.LinAlgError(f"?stebz found {found} eigenvalues (info {info})")
    vectors, info = scipy.linalg.lapack.dstein(diagonal, off_diagonal, values[:1], block, split)
    if info != 0:
        raise np.linalg.LinAlgError(f"?stein did not converge (info {info})")
    return float(values[0]), vectors[:, 0]


def eigh_one(matrix: Any, index: int) -> tuple[float, Any]:
    """Eigenpair number ``index`` (ascending) of a dense symmetric matrix, in its namespace."""
    return extras(get_xp(matrix)).eigh_pair(matrix, index)


def symmetric_product(matrix: Any) -> Callable[[Any], Any]:
    """x -> matrix @ x for an exactly symmetric ``matrix``, the namespace's fastest way."""
    make = extras(get_xp(matrix)).symmetric_product
    return make(matrix) if make is not None else (lambda x: matrix @ x)


def gram(x: Any) -> Any:
    """``x @ x.T`` of an (n, c) matrix, exactly symmetric, the namespace's fastest way."""
    make = extras(get_xp(x)).gram
    return make(x) if make is not None else x @ x.T


def bin_totals(a: Any, d: Any, bins: Any, nbins: int) -> tuple[Any, Any, Any]:
    """Per-bin totals of a graph whose nodes fall in bins ``0..nbins-1`` (``bins``, ints):
    ``(Gᵀ a G, Gᵀ d, Gᵀ 1)`` for the (n, nbins) one-hot G -- the symmetric square ``a`` summed
    over each pair of bins (``a``'s dtype), the sum of ``d`` (``d``'s dtype) and the count in each bin."""
    make = extras(get_xp(a)).bin_totals
    if make is not None:
        return make(a, d, bins, nbins)
    xp = get_xp(a)
    member = bins[:, None] == xp.arange(nbins, device=device_of(a))[None, :]
    onehot = xp.astype(member, a.dtype)
    return onehot.T @ (a @ onehot), xp.astype(member, d.dtype).T @ d, xp.sum(xp.astype(member, xp.int64), axis=0)


def compiled_unit_rows(x: Any, eps: float) -> Any | None:
    """``x / max(||x||, eps)`` row by row by the namespace's compiled loop; None where there is none or a
    norm is not finite (then ``ncut.unit_rows``'s array path, the same bits where both run)."""
    make = extras(get_xp(x)).unit_rows
    return None if make is None else make(x, eps)


def compiled_affinity(x: Any, alpha: float) -> tuple[Any, Any] | None:
    """``(minmax(x xᵀ) ** alpha, rows without an exact zero)`` of unit tokens by the namespace's
    compiled loops (``(None, None)``: all products equal); None where there are none, and then
    ``ncut._affinity_and_full_rows``'s array path gives the same bits."""
    make = extras(get_xp(x)).affinity
    return None if make is None else make(x, alpha)


def lowest_ncut(
    g: Any, bin_volume: Any, bin_count: Any, total_volume: Any, n: int, min_size: int
) -> tuple[int, float] | None:
    """(k, NCut_k) of the first best candidate cut from the per-bin totals (:func:`bin_totals`) by the
    namespace's compiled loop; None where there is none (then ``ncut._lowest_ncut``, the same bits)."""
    make = extras(get_xp(g)).lowest_ncut
    return None if make is None else make(g, bin_volume, bin_count, total_volume, n, min_size)


@dataclass(frozen=True)
class DeflatedOperator:
    """x -> (S A S - 2 u uᵀ) x, S = diag(scale), forming neither term; ``matrix`` exactly symmetric.
    A value (not a closure) so a solver can see the matrix it applies (the host's compiled Lanczos step)."""

    matrix: Any
    scale: Any
    u: Any
    product: Callable[[Any], Any]

    def __call__(self, x: Any) -> Any:
        return self.scale * self.product(self.scale * x) - (2 * (self.u @ x)) * self.u


def deflated_matvec(matrix: Any, scale: Any, u: Any) -> DeflatedOperator:
    """The operator ``x -> (S A S - 2 u uᵀ) x`` (:class:`DeflatedOperator`), with the namespace's fastest product."""
    return DeflatedOperator(matrix, scale, u, symmetric_product(matrix))


def eigsh_largest(matvec: Callable[[Any], Any], v0: Any, tol: float) -> EigenPair | None:
    """Largest algebraic eigenpair of the symmetric operator ``matvec`` by restarted Lanczos,
    or None when ``v0``'s namespace has no Lanczos solver.

    The solver is chosen by the namespace of the data (``v0``), never by the operator's
    type: a cupyx ``LinearOperator`` lives in module ``cupyx...``, and a check on it once
    sent cupy data to ARPACK. ``v0`` makes the start (and so the result) deterministic.
    Raises on non-convergence where the solver reports it; callers check the residual
    (:func:`eigen_residual`) where the pair does not carry its bound, since cupyx does not report
    non-convergence.
    """
    solver = extras(get_xp(v0)).lanczos_largest
    if solver is None:
        return None
    n = int(v0.shape[0])
    return solver(matvec, n, v0.dtype, v0, tol)


def eigen_residual(matvec: Callable[[Any], Any], value: float, vector: Any) -> float:
    """``||A v - λ v|| / ||v||`` of an eigenpair (a host float; one device sync on a GPU)."""
    xp = get_xp(vector)
    x = xp.reshape(vector, (-1,))
    r = matvec(x) - value * x
    return float(xp.linalg.vector_norm(r) / xp.linalg.vector_norm(x))


def single_threaded_blas(xp: Any) -> contextlib.AbstractContextManager:
    """Context in which host BLAS/LAPACK calls run on one thread.

    The NCut recursion makes hundreds of small calls (Lanczos matrix-vector products,
    eigh on a few hundred nodes); OpenBLAS wakes its threads for each, which made them
    3-8x slower with 2 threads on a 2-core machine than with one. Uses threadpoolctl when
    it is installed; otherwise, and off the host, does nothing.
    """
    controller = _blas_controller() if is_numpy_namespace(xp) else None
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found once (~5 ms), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    # scipy ships its own OpenBLAS (used by eigh/ARPACK): load it first so it is limited too.
    import scipy.linalg  # noqa: F401
    import scipy.sparse.linalg  # noqa: F401

    return ThreadpoolController()


def warm_up_host() -> None:
    """Import the host post-processing's libraries now (scipy's LAPACK, ARPACK, ndimage: ~1 s) and
    load the compiled PAMR loops, so the first frame's ncut and pamr figures are theirs, not the
    imports' and the compiler's."""
    _numpy_extras()
    _blas_controller()
    from diffcut_edge.runtime import pamr_kernel

    ncut_kernel.warm_up()
    pamr_kernel.warm_up()  # compiled (or loaded from numba's cache) before the first frame's pamr figure


def median_filter3(labels: Any) -> Any:
    """3x3 median filter with scipy's default border mode ('reflect'), in ``labels``' namespace."""
    return extras(get_xp(labels)).median_filter3(labels)
