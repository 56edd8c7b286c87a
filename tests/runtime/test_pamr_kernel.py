"""The compiled PAMR loops (numba) against the array path they replace on numpy inputs."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge import lazy
from diffcut_edge.runtime import pamr, pamr_kernel
from helpers.runtime_planted import planted_case

if not pamr_kernel.available():  # numba comes with the [cpu] and [dev] extras
    pytest.skip(
        "numba is not installed: the compiled PAMR kernel cannot run (pip install numba)", allow_module_level=True
    )


def _offsets(dil):
    return [(dy * d, dx * d) for d in dil for dy, dx in pamr.NEIGHBOURS]


@pytest.mark.parametrize(
    "size, k, dil, iters",
    [
        ((48, 40), 5, (1, 2, 4, 8), 10),
        ((30, 70), 3, (1, 2, 4, 8, 12, 24, 32, 64), 15),  # dilations past the image
        ((17, 9), 1, (3,), 2),
    ],
)
def test_propagation_is_bit_identical_to_the_array_path(size, k, dil, iters):
    rng = np.random.default_rng(len(dil))
    image = rng.random((*size, 3), dtype=np.float32)
    masks = rng.random((k, *size), dtype=np.float32)
    weights = pamr.pamr_weights(image, dil)
    expected = pamr.propagate(masks, weights, dil, iters)
    got = pamr_kernel.propagate(masks, np.ascontiguousarray(np.moveaxis(weights, 0, 1)), _offsets(dil), iters)
    assert np.array_equal(got, expected)  # the same float32 sums in the same order


@pytest.mark.parametrize("dil", [(1, 2, 4, 8), (1, 2, 4, 8, 12, 24, 32, 64)])
def test_weights_differ_from_the_array_path_by_rounding_only(dil):
    image = planted_case((8, 8), 3, 0.1, 2, image_size=(40, 30)).image.astype(np.float32)
    expected = pamr.pamr_weights(image, dil)
    got = np.moveaxis(pamr_kernel.weights(image, dil, pamr.NEIGHBOURS, pamr.WINDOW, pamr.STD_EPS, pamr.STD_SCALE), 1, 0)
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=0), 1.0, rtol=1e-6)


def test_refined_labels_are_the_array_paths(monkeypatch):
    case = planted_case((16, 16), 6, 0.3, 0, image_size=(96, 80))
    compiled = pamr.pamr_refine(case.image, case.regions, 10, (1, 2, 4, 8))
    monkeypatch.setenv(pamr_kernel.ENV, "numpy")
    assert not pamr_kernel.available()
    array = pamr.pamr_refine(case.image, case.regions, 10, (1, 2, 4, 8))
    assert np.array_equal(compiled, array)


def test_without_numba_the_array_path_runs(monkeypatch):
    monkeypatch.setattr(lazy, "numba", lazy.LazyModule("numba_not_installed_here", extra="cpu", purpose="test"))
    assert not pamr_kernel.available()
    case = planted_case((8, 8), 3, 0.1, 3, image_size=(32, 32))
    assert pamr.pamr_refine(case.image, case.regions).shape == (32, 32)


def test_without_a_thread_safe_threading_layer_the_array_path_runs(tmp_path):
    """numba's fallback layer aborts when two threads run a parallel loop at once; where only that one
    exists the kernels step aside (simulated by asking for TBB, which this environment lacks)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from diffcut_edge.runtime import pamr, pamr_kernel\n"
        "rng = np.random.default_rng(0)\n"
        "img = rng.random((40, 40, 3)).astype(np.float32); lab = rng.integers(0, 4, (40, 40))\n"
        "out = pamr.pamr_refine(img, lab)\n"
        "import os; os.environ[pamr_kernel.ENV] = 'numpy'\n"
        "print(bool((out == pamr.pamr_refine(img, lab)).all()), bool(pamr_kernel._BROKEN))\n"
    )
    env = {**os.environ, "NUMBA_THREADING_LAYER": "tbb"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same, gave_up = proc.stdout.split()
    assert same == "True"  # either TBB is there and the kernel ran, or it stepped aside: same labels


def test_starting_the_kernels_keeps_the_apps_openmp_threads():
    """numba's OpenMP layer set the process's OpenMP threads (torch's libgomp too) when it started its
    pool: an app at one torch thread had two after opening a Segmenter. Fresh process: the pool starts once."""
    import subprocess
    import sys

    pytest.importorskip("torch", reason="torch brings the app's own libgomp; it comes with the [export] extra")
    code = (
        "import torch; torch.set_num_threads(1); assert torch.get_num_threads() == 1\n"  # an app that used torch
        "import numba, numpy as np\n"
        "from diffcut_edge.runtime import xp\n"
        "xp.warm_up_host()\n"  # scipy's libraries first, then the kernels: the order that showed it
        "@numba.njit(parallel=True)\n"
        "def ids(n):\n"
        "    out = np.zeros(n, np.int64)\n"
        "    for i in numba.prange(n):\n"
        "        out[i] = numba.np.ufunc.parallel._get_thread_id()\n"
        "    return out\n"
        "print(torch.get_num_threads(), numba.get_num_threads(), len(np.unique(ids(10000))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_threads, numba_threads, used = map(int, proc.stdout.split())
    assert torch_threads == 1
    assert used == numba_threads  # numba's pool still runs its own count


def test_compiled_loops_are_loaded_from_numbas_cache_in_the_next_process(tmp_path):
    """Each process compiled the PAMR loops again (~7 s at each Segmenter open) while their helpers were
    closure cells; the second process must find every loop, PAMR's and NCut's, in numba's disk cache."""
    import os
    import subprocess
    import sys

    code = (
        "from diffcut_edge.runtime import ncut_kernel, pamr_kernel, xp\n"
        "xp.warm_up_host()\n"
        "loops = list(pamr_kernel._KERNELS.values()) + list(ncut_kernel._KERNELS.values())\n"
        "print(sum(sum(f.stats.cache_hits.values()) for f in loops), "
        "sum(sum(f.stats.cache_misses.values()) for f in loops))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(tuple(map(int, proc.stdout.split())))
    (_, first_misses), (second_hits, second_misses) = runs
    assert first_misses > 0  # a fresh cache: compiled there
    assert second_misses == 0 and second_hits >= first_misses
