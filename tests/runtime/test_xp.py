"""The array-module helpers, on numpy (the cupy branches are one-liners over the same API)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import xp as rxp

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def test_numpy_inputs_and_cpu_get_numpy():
    for obj in (np.zeros(3), [1.0, 2.0], 3.0, "cpu", "CPU"):
        assert rxp.get_xp(obj) is rxp.NUMPY
    assert rxp.get_xp() is rxp.NUMPY
    assert rxp.is_numpy_namespace(rxp.NUMPY) and rxp.is_numpy_namespace(np)
    assert not rxp.is_cupy_array(np.zeros(3))


@pytest.mark.skipif(HAS_CUPY, reason="checks the message shown when cupy is missing")
def test_cuda_without_cupy_names_the_extra():
    with pytest.raises(DiffCutError, match=r"diffcut-edge\[gpu\]"):
        rxp.get_xp("cuda")


def test_unknown_device_is_rejected():
    with pytest.raises(DiffCutError, match="'cpu' or 'cuda'"):
        rxp.get_xp("tpu")


def test_host_and_as_array_round_trip(ns):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert rxp.to_host(a) is a
    assert rxp.as_array(a) is a  # arrays pass through
    b = rxp.as_array([[1, 2]])
    assert isinstance(b, np.ndarray) and b.shape == (1, 2)
    np.testing.assert_array_equal(ns.get(rxp.as_array([[1, 2]], like=ns.put(a))), [[1, 2]])


def test_to_host_and_from_host_are_the_explicit_copies(ns):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    dev = ns.put(host)
    back = rxp.to_host(dev)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    placed = rxp.from_host(np.ones(3, np.int64), like=dev)
    np.testing.assert_array_equal(ns.get(placed), 1)  # same namespace and device as ``dev``


def test_the_strict_device_refuses_an_implicit_host_copy():
    # What makes the strict namespace a stand-in for cupy: np.asarray on a device array raises.
    from helpers.namespaces import make

    strict = make("strict")
    with pytest.raises((RuntimeError, TypeError, ValueError)):
        np.asarray(strict.put(np.zeros(3)))


def test_pad_edge_is_numpy_edge_padding(ns):
    x = np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32)
    for pad in (0, 1, 3, 9):
        np.testing.assert_array_equal(
            ns.get(rxp.pad_edge(ns.put(x), pad)), np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
        )


def test_submatrix_and_member_mask(ns):
    a = np.arange(36, dtype=np.float32).reshape(6, 6)
    ids = np.array([0, 2, 5])
    np.testing.assert_array_equal(ns.get(rxp.submatrix(ns.put(a), ns.put(ids))), a[np.ix_(ids, ids)])
    np.testing.assert_array_equal(ns.get(rxp.member_mask(ns.put(ids), 7)), np.isin(np.arange(7), ids))
    np.testing.assert_array_equal(ns.get(rxp.member_mask(ns.put(np.zeros(0, np.int64)), 4)), False)


def test_rank_rows_is_unique_rows_inverse(ns):
    bits = np.random.default_rng(3).integers(0, 2, (200, 6)).astype(np.int8)
    expected = np.unique(bits, axis=0, return_inverse=True)[1].reshape(-1)
    np.testing.assert_array_equal(ns.get(rxp.rank_rows(ns.put(bits))), expected)


def test_extras_per_namespace(ns):
    ex = rxp.extras(ns.xp)
    if ns.name == "numpy":
        assert ex.name == "numpy" and ex.lanczos_largest is not None and ex.host_blas
    else:  # standard-only fallbacks: dense eigh, sorting median
        assert ex.lanczos_largest is None
        assert rxp.eigsh_largest(lambda x: x, v0=ns.put(np.ones(10, np.float32)), tol=0.0) is None
    m = _symmetric(12, 4).astype(np.float32)
    value, vec = rxp.eigh_one(ns.put(m), 1)
    w, v = np.linalg.eigh(m)
    assert value == pytest.approx(w[1], rel=1e-4)
    assert abs(ns.get(vec) @ v[:, 1]) == pytest.approx(1.0, abs=1e-4)


def _symmetric(n: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((n, n))
    return m + m.T


def test_eigh_one_is_the_requested_pair():
    m = _symmetric(40, 0)
    w, v = np.linalg.eigh(m)
    value, vec = rxp.eigh_one(m, 1)
    assert value == pytest.approx(w[1])
    assert abs(vec @ v[:, 1]) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eigh_one_is_scipys_subset_eigh_bit_for_bit(dtype):
    # The host calls LAPACK ?syevr itself; the Fiedler vectors (so the partitions) must stay scipy's.
    for n, index in ((2, 1), (9, 1), (100, 1), (144, 0)):
        m = _symmetric(n, n).astype(dtype)
        w, v = scipy.linalg.eigh(m, subset_by_index=[index, index], driver="evr", check_finite=False)
        value, vec = rxp.eigh_one(m, index)
        assert value == w[0]
        np.testing.assert_array_equal(vec, v[:, 0])


def test_deflated_lanczos_finds_the_next_pair():
    m = _symmetric(60, 1)
    w, v = scipy.linalg.eigh(m)
    top = v[:, -1]
    # Deflating the top eigenvector by 2*|top| sends its eigenvalue far below: the largest
    # pair of the operator is then the second one of m.
    scale = np.linspace(0.5, 2.0, 60)
    # S A S with A = S^-1 m S^-1 is m itself: the operator must apply the scaling exactly.
    matvec = rxp.deflated_matvec(m / w[-1] / np.outer(scale, scale), scale, top)
    pair = rxp.eigsh_largest(matvec, v0=np.ones(60), tol=1e-12)
    value, vec = pair.value, pair.vector
    assert value * w[-1] == pytest.approx(w[-2], rel=1e-8)
    assert abs(vec @ v[:, -2]) == pytest.approx(1.0, abs=1e-8)


def test_median_filter_is_scipy_default_reflect():
    labels = np.random.default_rng(2).integers(0, 5, (17, 23)).astype(np.int32)
    np.testing.assert_array_equal(rxp.median_filter3(labels), scipy.ndimage.median_filter(labels, size=3))


def test_runtime_postprocessing_imports_no_torch_or_cupy():
    code = (
        "import sys, diffcut_edge.runtime as r\n"
        "import diffcut_edge.runtime.ncut, diffcut_edge.runtime.assign, diffcut_edge.runtime.pamr\n"
        "r.segment_features, r.pamr_refine\n"
        "bad = [m for m in ('torch', 'cupy', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_threaded_blas_works_with_and_without_threadpoolctl(monkeypatch):
    m = _symmetric(30, 3)
    with rxp.single_threaded_blas(rxp.NUMPY):
        inside = rxp.eigh_one(m, 1)[0]
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import now fails: a no-op context
    rxp._blas_controller.cache_clear()
    with rxp.single_threaded_blas(rxp.NUMPY):
        assert rxp.eigh_one(m, 1)[0] == inside
    rxp._blas_controller.cache_clear()


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    "size_in,size_out", [(45, 129), (58, 333), (72, 1000), (150, 129), (500, 128), (1023, 1024), (7, 3), (1, 5)]
)
def test_nearest_taps_equal_torch_interpolate(size_in, size_out, exact):
    # (45, 129), (58, 333, exact), (72, 1000), (150, 129, exact) are sizes where a float64 scale
    # floors to another source index than torch's float32 kernel.
    torch = pytest.importorskip("torch", reason="nearest parity is checked against torch's F.interpolate")
    x = torch.arange(size_in, dtype=torch.float32)[None, None, :, None]
    mode = "nearest-exact" if exact else "nearest"
    expected = torch.nn.functional.interpolate(x, size=(size_out, 1), mode=mode)[0, 0, :, 0].long().numpy()
    np.testing.assert_array_equal(rxp.nearest_taps(size_in, size_out, exact=exact), expected)


def test_eigsh_dispatches_on_the_data_namespace_not_the_operator(monkeypatch):
    # GPU defect 1: a cupyx LinearOperator lives in module "cupyx...", so dispatching on the
    # operator's type sent cupy data to scipy's ARPACK (TypeError on every grid above ~192
    # tokens). Now the operator is a plain function and the namespace of the data (v0) picks
    # the solver; here v0 is "cupy" and a stand-in cupyx records the call, bounded iterations
    # included (cupyx's own default loops without reporting non-convergence).
    import types

    from diffcut_edge import lazy

    calls = []

    class FakeLinearOperator:
        def __init__(self, shape, matvec, dtype):
            self.shape, self.matvec, self.dtype = shape, matvec, dtype

    def fake_eigsh(op, k, which, v0, tol, maxiter):
        calls.append((type(op).__name__, k, which, maxiter, float(op.matvec(np.ones(op.shape[0]))[0])))
        return np.array([2.0]), np.ones((op.shape[0], 1))

    linalg = types.ModuleType("cupyx.scipy.sparse.linalg")
    linalg.eigsh, linalg.LinearOperator = fake_eigsh, FakeLinearOperator
    for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.sparse"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "cupyx.scipy.sparse.linalg", linalg)
    fake = lazy.LazyModule("cupy", extra="gpu", purpose="test")
    fake.__dict__["_module"] = types.ModuleType("cupy")
    monkeypatch.setattr(lazy, "cupy", fake)
    cupy_namespace = types.ModuleType("cupy")  # what array_api_compat calls a cupy namespace
    monkeypatch.setattr(rxp, "get_xp", lambda *a: cupy_namespace)
    rxp._cupy_extras.cache_clear()
    try:
        pair = rxp.eigsh_largest(lambda x: 3 * x, v0=np.ones(12), tol=0.0)
    finally:
        rxp._cupy_extras.cache_clear()
    assert calls == [("FakeLinearOperator", 1, "LA", 120, 3.0)] and pair.value == 2.0 and pair.vector.shape == (12,)
    assert pair.residual is None  # cupyx does not bound it: NCut measures it


def test_eigen_residual_of_a_true_and_a_wrong_pair():
    m = np.diag(np.arange(1.0, 6.0))
    e5 = np.eye(5)[4]
    assert rxp.eigen_residual(lambda x: m @ x, 5.0, e5) == 0.0
    assert rxp.eigen_residual(lambda x: m @ x, 5.0, np.ones(5)) == pytest.approx(
        np.linalg.norm(np.arange(1.0, 6.0) - 5) / np.sqrt(5)
    )


def test_cupy_that_imports_without_its_cuda_libraries_is_caught_up_front(monkeypatch):
    # GPU defect 4: `import cupy` succeeds without a CUDA toolkit while cupyx.scipy.sparse.linalg
    # fails, so the failure showed only mid-NCut. A stand-in cupy without cupyx shows the check.
    import sys
    import types

    from diffcut_edge import lazy

    fake = lazy.LazyModule("cupy", extra="gpu", purpose="test")
    fake.__dict__["_module"] = types.ModuleType("cupy")
    monkeypatch.setattr(lazy, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupyx", None)  # import cupyx... raises ImportError
    problem = rxp.gpu_postprocessing_problem()
    assert "cupyx.scipy.sparse.linalg does not" in problem and "cupy-cuda12x[ctk]" in problem


def test_missing_cupy_is_reported_with_the_extras():
    from diffcut_edge import lazy

    if lazy.cupy.available():
        pytest.skip("cupy is installed here")
    assert "diffcut-edge[gpu]" in rxp.gpu_postprocessing_problem()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetric_product_reads_one_triangle_and_matches_the_full_product(dtype):
    m = _symmetric(50, 3).astype(dtype)
    x = np.random.default_rng(4).standard_normal(50).astype(dtype)
    product = rxp.symmetric_product(m)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(product(x), m @ x, rtol=tol, atol=tol)
    assert product(x).dtype == dtype
    # It reads one triangle: a matrix that is not symmetric shows it (the other triangle is ignored).
    lopsided = np.triu(m).astype(dtype)
    assert not np.allclose(rxp.symmetric_product(lopsided)(x), lopsided @ x)
    # Strided views and other dtypes take the plain product.
    view = np.asarray(m[::2, ::2])
    np.testing.assert_allclose(rxp.symmetric_product(m[::2, ::2])(x[::2]), view @ x[::2], rtol=tol)


@pytest.mark.parametrize("n", [1, 2, 31, 63, 64, 65, 200, 1024])
def test_gram_is_bit_identical_to_the_matmul_and_symmetric(n):
    # numpy's own ``x @ x.T`` is BLAS syrk plus a triangle copy; ours copies the triangle in
    # tiles: the same products, so the same bits (NCut's partitions depend on them).
    x = np.random.default_rng(n).standard_normal((n, 1280 if n == 1024 else 48)).astype(np.float32)
    g = rxp.gram(x)
    assert g.dtype == np.float32 and g.shape == (n, n)
    np.testing.assert_array_equal(g, x @ x.T)
    np.testing.assert_array_equal(g, g.T)
    # Views that BLAS cannot take as they are, and other dtypes, go to the plain product.
    np.testing.assert_array_equal(rxp.gram(x[:, ::2]), x[:, ::2] @ x[:, ::2].T)
    y = x.astype(np.float64)
    np.testing.assert_array_equal(rxp.gram(y), y @ y.T)


def test_bin_totals_equal_the_one_hot_products(ns):
    rng = np.random.default_rng(5)
    a = _symmetric(70, 6).astype(np.float32)
    d = rng.random(70)
    bins = rng.integers(0, 9, 70)
    bins[bins == 4] = 5  # an empty bin in the middle
    onehot = (bins[:, None] == np.arange(9)[None, :]).astype(np.float64)
    sums, volume, count = (ns.get(v) for v in rxp.bin_totals(ns.put(a), ns.put(d), ns.put(bins), 9))
    np.testing.assert_allclose(sums, onehot.T @ a @ onehot, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(volume, onehot.T @ d, rtol=1e-12)
    np.testing.assert_array_equal(count, onehot.sum(axis=0))
    assert sums.shape == (9, 9) and count[4] == 0 and volume[4] == 0


def _deflated_case(n: int, seed: int, dtype=np.float64):
    """The deflated operator of a normalised-affinity-like spectrum (top 1, then 0.8, the rest
    in [-0.5, 0.6]): its largest pair is m's second, (w[-2], v[:, -2])."""
    rng = np.random.default_rng(seed)
    w = np.sort(np.concatenate([rng.uniform(-0.5, 0.6, n - 2), [0.8, 1.0]]))
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    m = (v * w) @ v.T
    matvec = rxp.deflated_matvec(m.astype(dtype), np.ones(n, dtype), v[:, -1].astype(dtype))
    return matvec, w, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reorthogonalised_lanczos_agrees_with_arpack(dtype):
    from scipy.sparse.linalg import LinearOperator, eigsh

    matvec, w, v = _deflated_case(300, 7, dtype)
    v0 = np.random.default_rng(0).standard_normal(300).astype(dtype)
    solver_tol = 0.0 if dtype == np.float32 else 1e-12  # as NCut asks: unit roundoff in float32
    pair = rxp._lanczos_reorthogonalised(matvec, v0, solver_tol)
    value, vec = pair.value, pair.vector
    op = LinearOperator((300, 300), matvec=lambda x: matvec(x.reshape(-1)), dtype=dtype)
    arpack_w, _ = eigsh(op, k=1, which="LA", v0=v0, tol=solver_tol)
    tol = 1e-5 if dtype == np.float32 else 1e-10
    assert value == pytest.approx(w[-2], rel=tol) and value == pytest.approx(arpack_w[0], rel=tol)
    assert abs(vec @ v[:, -2]) / np.linalg.norm(vec) == pytest.approx(1.0, abs=tol)
    assert vec.dtype == dtype
    # Converged by ARPACK's own test: the residual is at the dtype's rounding level, and the bound the
    # pair carries (its Ritz estimate, which NCut trusts instead of one more product) holds it.
    residual = rxp.eigen_residual(matvec, value, vec)
    assert residual <= (100 * np.finfo(dtype).eps if dtype == np.float32 else 1e-10)
    assert pair.residual <= max(solver_tol, np.finfo(dtype).eps) * abs(value)
    assert residual <= pair.residual + 100 * np.finfo(dtype).eps  # the estimate is the residual, up to rounding


def test_lanczos_that_does_not_converge_hands_over_to_arpack(monkeypatch):
    matvec, w, v = _deflated_case(120, 8)
    v0 = np.random.default_rng(0).standard_normal(120)
    monkeypatch.setattr(rxp, "LANCZOS_MAX_STEPS", 3)  # far too few for 1e-12
    assert rxp._lanczos_reorthogonalised(matvec, v0, 1e-12) is None
    pair = rxp.eigsh_largest(matvec, v0=v0, tol=1e-12)  # the numpy extra falls back to ARPACK
    assert pair.value == pytest.approx(w[-2], rel=1e-10) and pair.residual is None  # ARPACK's: NCut measures it
    assert abs(pair.vector @ v[:, -2]) == pytest.approx(1.0, abs=1e-8)


def test_lanczos_stops_exactly_on_an_invariant_subspace():
    # An exact eigenvector as the start: the first residual is exactly zero (beta == 0, before
    # any scheduled convergence test), and that pair is returned, not handed to ARPACK.
    m = np.diag(np.arange(20.0))
    v0 = np.zeros(20)
    v0[3] = 2.0
    pair = rxp._lanczos_reorthogonalised(lambda x: m @ x, v0, 0.0)
    assert pair.value == 3.0 and pair.residual == 0.0
    np.testing.assert_array_equal(np.abs(pair.vector), np.eye(20)[3])


def test_top_tridiagonal_pair_is_scipys_bits():
    # The Lanczos test calls ?stebz/?stein directly; the Ritz vectors (so the partitions) must be
    # those of scipy's eigh_tridiagonal, which made the same calls after its argument checks.
    import scipy.linalg

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 8, 34, 80):
        diagonal, off = rng.standard_normal(n), np.abs(rng.standard_normal(n - 1))
        theirs_value, theirs_vector = scipy.linalg.eigh_tridiagonal(
            diagonal, off, select="i", select_range=(n - 1, n - 1)
        )
        value, vector = rxp._top_tridiagonal_pair(diagonal, off)
        assert value == theirs_value[0]
        np.testing.assert_array_equal(vector, theirs_vector[:, 0])
