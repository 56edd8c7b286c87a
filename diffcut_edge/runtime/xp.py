"""One array module for the post-processing: numpy on the CPU, cupy on an NVIDIA GPU.

NCut, assignment and PAMR are written once against an ``xp`` namespace (the numpy API,
which cupy mirrors). The few places where numpy and cupy differ -- moving data to the
host, the eigen-solvers, the median filter -- live here, so the algorithm modules hold
no device branches. cupy is imported only when a cupy array (or ``"cuda"``) is seen.
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import Any

import numpy as np

from diffcut_edge import lazy
from diffcut_edge.errors import DiffCutError


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
            return (f"cupy imports but {name} does not ({type(e).__name__}: {str(e)[:160]}): install cupy "
                    f"with its CUDA libraries, pip install 'cupy-cuda12x[ctk]' (in diffcut-edge[gpu])")
    return None


def _cupy() -> types.ModuleType:
    return lazy.cupy.load()  # the one lazy import of cupy (names the [gpu] extra when missing)


def is_cupy_array(a: Any) -> bool:
    """True for a cupy ndarray, checked by type name so cupy need not be installed."""
    return type(a).__module__.split(".")[0] == "cupy"


def get_xp(array_or_device: Any) -> types.ModuleType:
    """The array module for an array (numpy/cupy) or a device name ("cpu" | "cuda").

    Anything that is not a cupy array or a CUDA device name (lists, numpy arrays, scalars)
    gets numpy.
    """
    if isinstance(array_or_device, str):
        device = array_or_device.split(":")[0].lower()
        if device == "cpu":
            return np
        if device in ("cuda", "gpu"):
            return _cupy()
        raise DiffCutError(f"unknown device {array_or_device!r}: use 'cpu' or 'cuda'")
    if is_cupy_array(array_or_device):
        return _cupy()
    return np


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


def to_host(a: Any) -> np.ndarray:
    """A numpy copy/view of ``a`` (cupy arrays are copied from the GPU)."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def asarray(a: Any, xp: types.ModuleType, dtype: Any = None) -> Any:
    """``a`` as an array of module ``xp`` (copies across devices only when needed)."""
    if xp is np:
        return np.asarray(to_host(a), dtype=dtype)
    return xp.asarray(a, dtype=dtype)


# --------------------------------------------------------------------------------------
# Eigen-solvers: the one place numpy (scipy) and cupy (cupyx) differ for NCut.
# --------------------------------------------------------------------------------------


def eigh_one(matrix: Any, index: int) -> tuple[float, Any]:
    """Eigenpair number ``index`` (ascending) of a dense symmetric matrix.

    numpy: LAPACK ``?syevr`` computes only the requested pair (``subset_by_index``);
    cupy has no subset solver, so it runs the full ``eigh`` and slices.
    Raises ``np.linalg.LinAlgError`` when the solver fails.
    """
    if is_cupy_array(matrix):
        w, v = _cupy().linalg.eigh(matrix)
        return float(w[index]), v[:, index]
    import scipy.linalg

    w, v = scipy.linalg.eigh(matrix, subset_by_index=[index, index], driver="evr", check_finite=False)
    return float(w[0]), v[:, 0]


def deflated_operator(matrix: Any, scale: Any, u: Any) -> Any:
    """LinearOperator x -> (S A S - 2 u uᵀ) x, S = diag(scale), forming neither term.

    scipy's LinearOperator for numpy, cupyx's for cupy (same API).
    """
    if is_cupy_array(matrix):
        from cupyx.scipy.sparse.linalg import LinearOperator
    else:
        from scipy.sparse.linalg import LinearOperator

    def matvec(x: Any) -> Any:
        x = x.reshape(-1)
        return scale * (matrix @ (scale * x)) - (2 * (u @ x)) * u

    return LinearOperator(matrix.shape, matvec=matvec, dtype=matrix.dtype)


def _is_cupy_namespace(xp: types.ModuleType) -> bool:
    return getattr(xp, "__name__", "").split(".")[0] == "cupy"


# Restarted-Lanczos iterations allowed, per node of the matrix (scipy's own default, applied to
# cupyx too, whose eigsh otherwise returns whatever it has without saying it did not converge).
EIGSH_MAXITER_PER_NODE = 10


def eigsh_largest(operator: Any, v0: Any, tol: float, xp: types.ModuleType) -> tuple[float, Any]:
    """Largest algebraic eigenpair of a symmetric matrix or LinearOperator by implicitly restarted Lanczos.

    ``xp`` is the namespace of the data (numpy: ``scipy.sparse.linalg.eigsh``, ARPACK; cupy:
    ``cupyx.scipy.sparse.linalg.eigsh``). It is passed explicitly because the operator's own type
    says nothing reliable: a cupyx ``LinearOperator`` lives in module ``cupyx...``, so a check on
    it sent cupy data to ARPACK. ``v0`` makes the start (and so the result) deterministic.
    Raises on non-convergence where the solver reports it; callers check the residual anyway
    (:func:`eigen_residual`), since cupyx does not report it.
    """
    if _is_cupy_namespace(xp):
        from cupyx.scipy.sparse.linalg import eigsh
    else:
        from scipy.sparse.linalg import eigsh
    n = int(operator.shape[0])
    w, v = eigsh(operator, k=1, which="LA", v0=v0, tol=tol, maxiter=EIGSH_MAXITER_PER_NODE * n)
    return float(w[0]), v[:, 0]


def eigen_residual(operator: Any, value: float, vector: Any) -> float:
    """``||A v - λ v|| / ||v||`` of an eigenpair (a host float; one device sync on cupy)."""
    x = vector.reshape(-1)
    r = operator.matvec(x) - value * x
    xp = get_xp(x)
    return float(xp.linalg.norm(r.reshape(-1)) / xp.linalg.norm(x))


def single_threaded_blas(xp: types.ModuleType) -> contextlib.AbstractContextManager:
    """Context in which host BLAS/LAPACK calls run on one thread.

    The NCut recursion makes hundreds of small calls (Lanczos matrix-vector products,
    eigh on a few hundred nodes); OpenBLAS wakes its threads for each, which made them
    3-8x slower with 2 threads on a 2-core machine than with one. Uses threadpoolctl when
    it is installed (optional); otherwise, and for cupy, does nothing.
    """
    controller = _blas_controller() if xp is np else None
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


def median_filter3(labels: Any) -> Any:
    """3x3 median filter with scipy's default border mode ('reflect'), numpy or cupy."""
    if is_cupy_array(labels):
        from cupyx.scipy.ndimage import median_filter
    else:
        from scipy.ndimage import median_filter
    return median_filter(labels, size=3)
