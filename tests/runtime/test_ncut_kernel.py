"""The compiled NCut loops (numba) against the array path they replace: the same bits, the same partitions."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge import lazy
from diffcut_edge.runtime import ncut, ncut_kernel, recursive_ncut
from diffcut_edge.runtime import xp as rt_xp
from helpers.runtime_planted import planted_case

if not ncut_kernel.available():  # numba comes with the [cpu] and [dev] extras
    pytest.skip(
        "numba is not installed: the compiled NCut loops cannot run (pip install numba)", allow_module_level=True
    )


def _gram(seed: int, n: int = 150) -> np.ndarray:
    x = ncut.normalize_tokens(np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32))
    return rt_xp.gram(x)


@pytest.mark.parametrize("exponent", [1, 2, 3, 10, 64])
def test_scaled_power_is_the_array_paths_bits(monkeypatch, exponent):
    w = _gram(exponent)
    lo, hi = w.min(), w.max()
    compiled = w.copy()
    rows = rt_xp.scaled_power(compiled, lo, hi - lo, float(exponent))
    monkeypatch.setenv(ncut_kernel.ENV, "numpy")
    assert rt_xp.scaled_power(w.copy(), lo, hi - lo, float(exponent)) is None  # switched off: the caller's path
    array = ncut._power((w - lo) / (hi - lo), exponent)
    np.testing.assert_array_equal(compiled, array)
    np.testing.assert_array_equal(rows, ~(array == 0).any(axis=1))
    if exponent == 10:
        assert 0 < (~rows).sum() < w.shape[0]  # both kinds of rows: the zero-row quirk is exercised


def test_a_fractional_exponent_is_left_to_the_array_path():
    w = _gram(0)
    before = w.copy()
    assert rt_xp.scaled_power(w, w.min(), w.max() - w.min(), 2.5) is None
    np.testing.assert_array_equal(w, before)  # untouched


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
