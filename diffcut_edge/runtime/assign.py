"""Concept assignment: paint coarse NCut segments at mask resolution, on any Array API namespace.

The official code upsamples the C = 1280 normalised feature channels bilinearly to the
mask size and takes ``argmax_k <f, e_k>``. Bilinear upsampling is linear, so upsampling
the K similarity maps ``<f, e_k>`` computed on the token grid gives the same scores at
K/C of the cost. The resize is torch's ``F.interpolate(mode="bilinear")`` written as two
small interpolation matrices (rows, columns), so every namespace shares it exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.ncut import Tokens, checked_rows, unit_rows, unit_tokens
from diffcut_edge.runtime.xp import as_array, device_of, from_host, get_xp, linear_taps, single_threaded_blas


def interp_matrix(size_in: int, size_out: int, *, align_corners: bool, like: Any = None) -> Any:
    """(size_out, size_in) float32 matrix of 1-D linear interpolation, torch semantics
    (taps from :func:`diffcut_edge.runtime.xp.linear_taps`), built on the host and placed
    in ``like``'s namespace and device (numpy when None)."""
    i0, i1, lam = linear_taps(size_in, size_out, align_corners=align_corners)
    m = np.zeros((size_out, size_in), dtype=np.float32)
    rows = np.arange(size_out)
    np.add.at(m, (rows, i0), np.float32(1) - lam)
    np.add.at(m, (rows, i1), lam)
    return m if like is None else from_host(m, like=like)


def resize_bilinear(maps: Any, size: tuple[int, int], *, align_corners: bool) -> Any:
    """Resize (K, h, w) maps to (K, H, W) like torch bilinear interpolation, in their namespace."""
    xp = get_xp(maps)
    k, h, w = maps.shape
    out_h, out_w = int(size[0]), int(size[1])
    ry = interp_matrix(h, out_h, align_corners=align_corners, like=maps)
    rx = interp_matrix(w, out_w, align_corners=align_corners, like=maps)
    return ry @ xp.astype(maps, xp.float32, copy=False) @ rx.T  # broadcasts over K


def _check_coarse(coarse_labels: Any, grid: tuple[int, int], like: Any) -> Any:
    xp = get_xp(like)
    labels = as_array(coarse_labels, like)
    size = int(np.prod(labels.shape))
    if size != grid[0] * grid[1]:
        raise DiffCutError(
            f"coarse labels have {size} entries, expected {grid[0]}*{grid[1]} "
            "for the feature grid: pass the labels of recursive_ncut on the same grid"
        )
    return xp.reshape(labels, (-1,))


def segment_embeddings(features: Any, coarse_labels: Any) -> Any:
    """(K, C) float32: mean of the L2-normalised token features over each segment.

    ``features``: (N, C) raw features or :class:`~diffcut_edge.runtime.ncut.Tokens`.
    Segments are the sorted unique ids of ``coarse_labels`` (N tokens); rows follow that
    order. Not re-normalised (the official MaskPooling mean).
    """
    fn = features.unit if isinstance(features, Tokens) else unit_rows(checked_rows(features))
    xp = get_xp(fn)
    labels = xp.reshape(as_array(coarse_labels, fn), (-1,))
    if labels.shape[0] != fn.shape[0]:
        raise DiffCutError(
            f"coarse labels have {labels.shape[0]} entries but there are "
            f"{fn.shape[0]} tokens: both must come from the same grid"
        )
    return _segment_means(fn, labels)


def _segment_means(features_norm: Any, labels: Any) -> Any:
    """(K, C) means of the rows of ``features_norm`` per sorted unique label."""
    xp = get_xp(features_norm)
    _, index = xp.unique_inverse(labels)
    k = int(xp.max(index)) + 1
    onehot = xp.astype(index[None, :] == xp.arange(k, device=device_of(index))[:, None], xp.float32)
    return (onehot @ features_norm) / xp.sum(onehot, axis=1, keepdims=True)


def assign_concepts(
    features: Any,
    grid: tuple[int, int],
    coarse_labels: Any,
    mask_size: tuple[int, int] = defaults.MASK_SIZE,
    *,
    embeddings: Any = None,
) -> Any:
    """(H, W) int32 labels at ``mask_size``: argmax_k of the upsampled similarity maps.

    Args:
        features: (N, C) token features (any Array API namespace), N = h*w, or
            :class:`~diffcut_edge.runtime.ncut.Tokens`.
        grid: (h, w).
        coarse_labels: (h, w) or (N,) segment ids (any integers; sorted order defines k).
        mask_size: (H, W) output size (paper: 128x128).
        embeddings: the segments' :func:`segment_embeddings` when already computed.
    """
    tokens = unit_tokens(features, grid)
    fn, (h, w) = tokens.unit, tokens.grid
    xp = get_xp(fn)
    labels = _check_coarse(coarse_labels, (h, w), fn)
    with single_threaded_blas(xp):  # small products: BLAS threads only add wake-up latency
        emb = _segment_means(fn, labels) if embeddings is None else as_array(embeddings, fn)
        sim = xp.reshape((fn @ emb.T).T, (-1, h, w))  # (K, h, w) similarity maps on the token grid
        up = resize_bilinear(sim, mask_size, align_corners=False)
    return xp.astype(xp.argmax(up, axis=0), xp.int32)


def segment_features(
    features: Any,
    grid: tuple[int, int],
    tau: float = defaults.TAU,
    alpha: float = defaults.ALPHA,
    mask_size: tuple[int, int] = defaults.MASK_SIZE,
    max_segments: int | None = None,
    min_segment_size: int | None = None,
) -> Any:
    """DiffCut segmentation of one image's tokens: recursive NCut, then concept assignment.

    Returns (H, W) int32 labels at ``mask_size`` in the input's namespace, on its device;
    ids index the coarse segments in the official order.
    """
    from diffcut_edge.runtime.ncut import recursive_ncut

    tokens = unit_tokens(features, grid)
    coarse = recursive_ncut(
        tokens, grid, tau=tau, alpha=alpha, max_segments=max_segments, min_segment_size=min_segment_size
    )
    return assign_concepts(tokens, grid, coarse.labels, mask_size)
