"""The compiled NCut loops (numba) against the array path they replace: the same bits, the same partitions."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge import lazy
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import ncut, ncut_kernel, recursive_ncut
from diffcut_edge.runtime import xp as rt_xp
from helpers.runtime_planted import planted_case

if not ncut_kernel.available():  # numba comes with the [cpu] and [dev] extras
    pytest.skip(
        "numba is not installed: the compiled NCut loops cannot run (pip install numba)", allow_module_level=True
    )


def _unit(seed: int, n: int) -> np.ndarray:
    return ncut.normalize_tokens(np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32))


def _gram(seed: int, n: int) -> np.ndarray:
    return rt_xp.gram(_unit(seed, n))


@pytest.mark.parametrize("exponent", [1, 2, 3, 10, 64])
@pytest.mark.parametrize("n", [1, 63, 64, 150, 200])  # panels of 64 rows: one short, one exact, several
def test_affinity_is_the_array_paths_bits(monkeypatch, exponent, n):
    x = _unit(exponent + n, n)
    compiled = rt_xp.compiled_affinity(x, float(exponent))
    monkeypatch.setenv(ncut_kernel.ENV, "numpy")
    assert rt_xp.compiled_affinity(x, float(exponent)) is None  # switched off: ncut's array path
    if n == 1:  # one product: all equal, one segment
        assert compiled == (None, None) and ncut._affinity_and_full_rows(x, exponent) is None
        return
    array, array_rows = ncut._affinity_and_full_rows(x, float(exponent))
    np.testing.assert_array_equal(compiled[0], array)  # both triangles: the copied one too
    np.testing.assert_array_equal(compiled[1], array_rows)
    np.testing.assert_array_equal(array_rows, ~(array == 0).any(axis=1))
    if exponent == 10 and n >= 150:
        assert 0 < (~array_rows).sum() < n  # both kinds of rows: the zero-row quirk is exercised


def test_a_fractional_exponent_is_left_to_the_array_path():
    assert rt_xp.compiled_affinity(_unit(0, 40), 2.5) is None


@pytest.mark.parametrize("overwrite", [False, True])
def test_gather_picks_the_submatrix(overwrite):
    rng = np.random.default_rng(1)
    a = _gram(1, 300)
    for keep in (300, 299, 151, 2):
        ids = np.sort(rng.choice(a.shape[0], keep, replace=False))
        expected = a[np.ix_(ids, ids)]
        source = a.copy()
        sub = rt_xp.submatrix(source, ids, overwrite=overwrite)
        np.testing.assert_array_equal(sub, expected)
        assert np.shares_memory(sub, source) == overwrite  # in place: the parent's memory holds it


def test_bin_sums_add_in_the_sparse_products_order(monkeypatch):
    # float32 sums depend on their order: values spread over 8 decades make any other order show.
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 1, (257, 257)).astype(np.float32) * np.float32(10.0) ** rng.integers(-4, 4, (257, 257))
    a = (a + a.T).astype(np.float32)
    bins = rng.integers(0, 101, 257)
    d = a.sum(axis=1, dtype=np.float64)
    compiled = rt_xp.bin_totals(a, d, bins, 101)
    monkeypatch.setenv(ncut_kernel.ENV, "numpy")
    array = rt_xp.bin_totals(a, d, bins, 101)
    for ours, theirs in zip(compiled, array, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert compiled[0].dtype == np.float32


def test_partitions_are_the_array_paths(monkeypatch):
    cases = [((32, 32), 10, 0.2, 0, {}), ((24, 40), 7, 0.4, 1, {"max_segments": 5}), ((32, 32), 6, 0.6, 2, {})]
    cases.append(((16, 16), 8, 0.4, 1, {"alpha": 3.0, "min_segment_size": 4}))
    compiled = [recursive_ncut(planted_case(g, k, n, s).features, g, **kw) for g, k, n, s, kw in cases]
    monkeypatch.setenv(ncut_kernel.ENV, "numpy")
    for (g, k, n, s, kw), ours in zip(cases, compiled, strict=True):
        theirs = recursive_ncut(planted_case(g, k, n, s).features, g, **kw)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
        assert ours.num_segments > 1


def test_without_numba_the_array_path_runs(monkeypatch):
    monkeypatch.setattr(lazy, "numba", lazy.LazyModule("numba_not_installed_here", extra="cpu", purpose="test"))
    assert not ncut_kernel.available()
    case = planted_case((16, 16), 4, 0.2, 0)
    assert recursive_ncut(case.features, (16, 16)).num_segments > 1


def test_lowest_ncut_is_the_array_paths_pick_and_value():
    rng = np.random.default_rng(3)
    for trial in range(40):
        g = rng.uniform(0, 1, (101, 101)).astype(np.float32) * np.float32(10.0) ** rng.integers(-6, 2, (101, 101))
        g = np.ascontiguousarray((g + g.T).astype(np.float32))
        g[:, rng.integers(0, 101, 30)] = 0  # empty bins: equal neighbouring candidates, the first must win
        g[rng.integers(0, 101, 30), :] = 0
        volume = g.sum(axis=1, dtype=np.float64) + rng.uniform(0, 1, 101)
        count = rng.integers(0, 5, 101)
        n = int(count.sum())
        min_size = int(rng.integers(1, 40)) if trial % 2 else 1
        args = (g, volume, count, volume.sum(), n, min_size)
        compiled = rt_xp.lowest_ncut(*args)
        assert compiled == ncut._lowest_ncut(*args)  # the same index and the same float64 bits
    nothing = (np.zeros((101, 101), np.float32), np.zeros(101), np.zeros(101, np.int64), 0.0, 0, 1)
    assert rt_xp.lowest_ncut(*nothing) == ncut._lowest_ncut(*nothing) == (0, np.inf)  # no valid cut


def _deflated(n: int, seed: int) -> rt_xp.DeflatedOperator:
    a = ncut.affinity(_unit(seed, n), 10.0)
    d = a.sum(axis=1, dtype=np.float64)
    u = np.sqrt(d) / np.linalg.norm(np.sqrt(d))
    return rt_xp.deflated_matvec(a, (1 / np.sqrt(d)).astype(np.float32), u.astype(np.float32))


@pytest.mark.parametrize("n", [300, 24, 9])  # 24 and 9: the basis fills up (LAPACK workspaces at their largest)
def test_compiled_lanczos_follows_the_numpy_loop(n):
    # The same operations in the same order and the same LAPACK test; only the dot products come from
    # scipy's BLAS instead of numpy's, so the two agree to float32 rounding.
    operator = _deflated(n, 5)
    v0 = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    assert rt_xp._compiled_lanczos_takes(operator, np.dtype(np.float32))
    pair = rt_xp._lanczos_reorthogonalised(operator, v0, 0.0)
    reference = rt_xp._lanczos_reorthogonalised(lambda x: operator(x), v0, 0.0)  # a closure: the numpy loop
    assert pair.value == pytest.approx(reference.value, rel=1e-6)
    assert abs(pair.vector @ reference.vector) == pytest.approx(1.0, abs=1e-5)
    assert pair.residual == pytest.approx(reference.residual, abs=1e-6)
    assert rt_xp.eigen_residual(operator, pair.value, pair.vector) <= 1e-5


def test_compiled_lanczos_that_does_not_converge_hands_over_to_arpack(monkeypatch):
    operator = _deflated(200, 6)
    v0 = np.random.default_rng(0).standard_normal(200).astype(np.float32)
    monkeypatch.setattr(rt_xp, "LANCZOS_MAX_STEPS", 3)
    assert rt_xp._lanczos_reorthogonalised(operator, v0, 0.0) is None
    pair = rt_xp.eigsh_largest(operator, v0=v0, tol=0.0)  # ARPACK's answer, measured by NCut
    assert pair.residual is None and rt_xp.eigen_residual(operator, pair.value, pair.vector) <= 1e-4


@pytest.mark.parametrize("channels", [1, 7, 8, 9, 128, 129, 640, 1280, 1281])
def test_unit_rows_are_the_array_paths_bits(monkeypatch, channels):
    # numpy's float32 norm sums the squares pairwise (8 accumulators, halves above 128): any other
    # order shows in the last bits at these widths, and every later step reads these tokens.
    rng = np.random.default_rng(channels)
    x = (rng.standard_normal((40, channels)) * rng.uniform(1e-3, 1e3, (40, 1))).astype(np.float32)
    x[3] = 0  # a zero token stays zero
    compiled = ncut.unit_rows(x)
    assert rt_xp.compiled_unit_rows(x, ncut.NORM_EPS) is not None  # the compiled loop ran
    monkeypatch.setenv(ncut_kernel.ENV, "numpy")
    np.testing.assert_array_equal(compiled, ncut.unit_rows(x))
    assert not compiled[3].any()


def test_unit_rows_whose_norm_overflows_go_to_the_array_path():
    x = np.ones((3, 4), np.float32)
    x[1] = [3e20, -4e20, 0, 0]  # finite, but the float32 sum of its squares is inf
    assert rt_xp.compiled_unit_rows(x, ncut.NORM_EPS) is None
    np.testing.assert_allclose(ncut.unit_rows(x)[1], [0.6, -0.8, 0, 0], rtol=1e-6)  # the array path's float64 norm
    x[2, 0] = np.nan
    with pytest.raises(DiffCutError, match="NaN or inf"):
        ncut.unit_rows(x)
