"""PAMR mask refinement (Araslanov & Roth, CVPR 2020) as DiffCut applies it, on any Array API namespace.

The official module recomputes nothing between iterations except the masks, but it
materialises every shifted copy through a convolution. Here the image affinities are
turned into softmax weights once, (8·|dilations|, H, W), and each iteration is a sum of
shifted multiply-adds over one edge-padded copy of the masks (views into it, no
convolution buffers) -- elementwise work every array library runs the same way.

On numpy arrays :func:`pamr_soft` runs the same arithmetic as compiled loops when numba is
installed (:mod:`diffcut_edge.runtime.pamr_kernel`: several times faster, the masks bit-identical
given the weights); the array functions here stay the reference and serve cupy and torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import pamr_kernel
from diffcut_edge.runtime.assign import resize_bilinear
from diffcut_edge.runtime.xp import as_array, device_of, get_xp, is_numpy_namespace, median_filter3, pad_edge

# The 8 neighbours of a 3x3 kernel in the official order (row-major, centre skipped),
# in units of the dilation.
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# The std window: the full 3x3 grid, centre included.
WINDOW = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
# Official constants: affinity = -|ΔI| / (STD_EPS + STD_SCALE * σ).
STD_EPS = 1e-8
STD_SCALE = 0.1
# Rows per strip on the CPU: a strip of K masks x 1024 columns stays in L2 for K <= 8 (measured on
# 1024² x 8 segments: 16-32 rows run a round 1.9x faster than whole-image passes).
STRIP_ROWS = 16


def _shifted(padded: Any, pad: int, oy: int, ox: int, rows: tuple[int, int], w: int) -> Any:
    """View of ``padded`` (.., H+2pad, w+2pad) holding x(p + (oy, ox)) for the rows [r0, r1) of p,
    edge-replicated."""
    r0, r1 = rows
    return padded[..., pad + oy + r0 : pad + oy + r1, pad + ox : pad + ox + w]


def _pad(x: Any, d: int) -> Any:
    return pad_edge(x, d)


def _check_dilations(dilations: Sequence[int]) -> tuple[int, ...]:
    dil = tuple(int(d) for d in dilations)
    if not dil or any(d < 1 for d in dil):
        raise DiffCutError(f"dilations must be positive integers, got {tuple(dilations)!r}")
    return dil


def _strips(h: int, rows: int | None) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) covering ``h`` rows, ``rows`` at a time (one range when None)."""
    step = h if not rows else max(1, int(rows))
    return [(r0, min(r0 + step, h)) for r0 in range(0, h, step)]


def _run_strips(fn, h: int, xp: Any, rows: int | None = None, workers: int | None = None) -> None:
    """``fn(r0, r1)`` over row strips. numpy: strips of :data:`STRIP_ROWS` on host threads (numpy
    releases the GIL in its loops; a strip's working set stays in the CPU caches, about twice as
    fast as whole-image passes at 1024²); other namespaces: one strip, one kernel per step."""
    if not is_numpy_namespace(xp):
        fn(0, h)
        return
    strips = _strips(h, rows or STRIP_ROWS)
    workers = min(workers or _host_threads(), len(strips))
    if workers < 2:
        for r0, r1 in strips:
            fn(r0, r1)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda strip: fn(*strip), strips):
            pass


def _weight_rows(padded: dict, dil: tuple[int, ...], r0: int, r1: int, w: int) -> Any:
    """Softmax neighbour weights (8·|dil|, r1 - r0, w) of image rows [r0, r1) (see :func:`pamr_weights`)."""
    xp = get_xp(padded[dil[0]])

    def view(d: int, dy: int, dx: int) -> Any:
        return _shifted(padded[d], d, dy * d, dx * d, (r0, r1), w)

    n = len(WINDOW) * len(dil)
    # Two-pass unbiased std (a one-pass sum of squares cancels on flat regions).
    windows = [view(d, dy, dx) for d in dil for dy, dx in WINDOW]
    mean = _accumulate(windows, lambda v: v) / n
    var = _accumulate(windows, lambda v: (v - mean) ** 2) / (n - 1)
    denom = STD_EPS + STD_SCALE * xp.sqrt(var)
    centre = view(dil[0], 0, 0)
    logits = xp.stack(
        [-xp.mean(xp.abs(centre - view(d, dy, dx)) / denom, axis=0) for d in dil for dy, dx in NEIGHBOURS], axis=0
    )
    logits -= xp.max(logits, axis=0, keepdims=True)
    weights = xp.exp(logits)
    weights /= xp.sum(weights, axis=0, keepdims=True)
    return weights


def pamr_weights(
    image: Any,
    dilations: Sequence[int] = defaults.PAMR_DILATIONS,
    *,
    rows: int | None = None,
    workers: int | None = None,
) -> Any:
    """(8·|dilations|, H, W) float32 softmax weights of each pixel's dilated neighbours.

    image: (H, W, 3) RGB float in [0, 1] (any Array API namespace). σ is the unbiased std, per colour
    channel, of the 9·|dilations| values of the dilated 3x3 windows (centre included);
    the affinity -|I(p) - I(p+o)| / (1e-8 + 0.1·σ) is averaged over the channels, then
    soft-maxed over the neighbours. Computed in row strips (``rows``, ``workers``: numpy only).
    """
    xp = get_xp(image)
    dil = _check_dilations(dilations)
    img = xp.astype(xp.stack([image[..., c] for c in range(3)], axis=0), xp.float32)  # (3, H, W), contiguous
    _, h, w = img.shape
    padded = {d: _pad(img, d) for d in dil}
    weights = xp.empty((len(NEIGHBOURS) * len(dil), h, w), dtype=xp.float32, device=device_of(img))

    def fill(r0: int, r1: int) -> None:
        weights[:, r0:r1, :] = _weight_rows(padded, dil, r0, r1, w)

    _run_strips(fill, h, xp, rows, workers)
    return weights


def _accumulate(views: list, fn) -> Any:
    """Σ fn(v) over views, accumulated in place (float32)."""
    xp = get_xp(views[0])
    total = xp.astype(fn(views[0]), xp.float32, copy=True)
    for v in views[1:]:
        total += fn(v)
    return total


def _propagate_rows(
    padded: Any, weights: Any, offsets: list[tuple[int, int]], pad: int, r0: int, r1: int, w: int
) -> Any:
    """One round of m(p) <- Σ_o w_p(o) m(p+o) for rows [r0, r1) of the (K, H, W) masks, read from
    their edge-padded copy (views into it, no convolution buffers)."""
    acc = None
    for j, (oy, ox) in enumerate(offsets):
        term = _shifted(padded, pad, oy, ox, (r0, r1), w) * weights[j, r0:r1, :]
        if acc is None:
            acc = term
        else:
            acc += term
    return acc


def propagate(
    masks: Any,
    weights: Any,
    dilations: Sequence[int] = defaults.PAMR_DILATIONS,
    num_iter: int = defaults.PAMR_ITERATIONS,
    *,
    rows: int | None = None,
    workers: int | None = None,
) -> Any:
    """``num_iter`` rounds of m(p) <- Σ_o w_p(o) m(p+o) on (K, H, W) float32 masks.

    One edge-padded copy per round (by the largest dilation) serves every neighbour view. Each
    round is computed in row strips (numpy: on host threads, ``rows`` / ``workers``; the numbers do
    not depend on either: every output element sums the same terms in the same order).
    """
    xp = get_xp(masks)
    dil = _check_dilations(dilations)
    m = xp.astype(masks, xp.float32, copy=False)
    _, h, w = m.shape
    pad = max(dil)
    offsets = [(dy * d, dx * d) for d in dil for dy, dx in NEIGHBOURS]
    for _ in range(int(num_iter)):
        padded = _pad(m, pad)
        out = xp.empty_like(m)

        def fill(r0: int, r1: int) -> None:
            out[:, r0:r1, :] = _propagate_rows(padded, weights, offsets, pad, r0, r1, w)

        _run_strips(fill, h, xp, rows, workers)
        m = out
    return m


def _host_threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


def _one_hot(labels: Any, xp: Any) -> tuple[Any, int]:
    """(K, h, w) float32 one-hot masks in sorted-label order, and K."""
    values, index = xp.unique_inverse(labels)
    index = xp.reshape(index, labels.shape)
    k = int(values.shape[0])
    ks = xp.reshape(xp.arange(k, device=device_of(index)), (-1, 1, 1))
    return xp.astype(index[None, ...] == ks, xp.float32), k


def _check_inputs(image: Any, labels: Any, num_iter: int) -> tuple[Any, Any]:
    get_xp(image, labels)  # refuses arrays of two libraries, with the reason
    img = as_array(image, labels)
    lab = as_array(labels, img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DiffCutError(f"PAMR needs an (H, W, 3) RGB image, got shape {tuple(img.shape)}")
    if lab.ndim != 2:
        raise DiffCutError(f"PAMR needs (h, w) integer labels, got shape {tuple(lab.shape)}")
    if int(num_iter) < 0:
        raise DiffCutError(f"num_iter must be >= 0, got {num_iter!r}")
    return img, lab


def pamr_soft(
    image: Any,
    labels: Any,
    num_iter: int = defaults.PAMR_ITERATIONS,
    dilations: Sequence[int] = defaults.PAMR_DILATIONS,
) -> Any:
    """(K, H, W) float32 refined soft masks, K = sorted unique labels, at the image size.

    Labels at another size than the image are first resized bilinearly with
    align_corners=True (the official PAMR's ``F.interpolate``).
    """
    img, lab = _check_inputs(image, labels, num_iter)
    xp = get_xp(img)
    size = img.shape[:2]
    if is_numpy_namespace(xp) and pamr_kernel.available():
        return _pamr_soft_compiled(img, lab, _check_dilations(dilations), int(num_iter))
    masks, _ = _one_hot(lab, xp)
    if masks.shape[1:] != size:
        masks = resize_bilinear(masks, size, align_corners=True)
    return propagate(masks, pamr_weights(img, dilations), dilations, num_iter)


def _pamr_soft_compiled(img: Any, lab: Any, dil: tuple[int, ...], num_iter: int) -> Any:
    """:func:`pamr_soft`'s masks, weights and rounds as compiled loops, row by row; (K, H, W) out."""
    import numpy as np

    weights = pamr_kernel.weights(img, dil, NEIGHBOURS, WINDOW, STD_EPS, STD_SCALE)  # (H, J, W)
    offsets = [(dy * d, dx * d) for d in dil for dy, dx in NEIGHBOURS]
    values, index = np.unique(lab, return_inverse=True)  # sorted ids: the official order
    index = index.reshape(lab.shape)
    if lab.shape == img.shape[:2]:
        return pamr_kernel.propagate_one_hot(index, len(values), weights, offsets, num_iter)  # (K, H, W)
    masks, _ = _one_hot(lab, np)
    return pamr_kernel.propagate(resize_bilinear(masks, img.shape[:2], align_corners=True), weights, offsets, num_iter)


def pamr_refine(
    image: Any,
    labels: Any,
    num_iter: int = defaults.PAMR_ITERATIONS,
    dilations: Sequence[int] = defaults.PAMR_DILATIONS,
) -> Any:
    """(H, W) int32 refined labels: argmax of :func:`pamr_soft`, then a 3x3 median filter.

    Output ids index the sorted unique input labels (the official order; the median filter
    runs over these ids, so the order matters).
    """
    soft = pamr_soft(image, labels, num_iter, dilations)
    xp = get_xp(soft)
    return median_filter3(xp.astype(xp.argmax(soft, axis=0), xp.int32))
