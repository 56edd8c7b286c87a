"""The compiled PAMR loops (numba), imported by :mod:`diffcut_edge.runtime.pamr_kernel` only when numba
is there. Module-level functions, so numba's on-disk cache serves them in every process: defined inside a
function, the helpers they call were closure cells, which numba's cache key cannot match across
processes -- every process compiled them again (~7 s on the 2-core VM, at each Segmenter open).

Layout: channel-major rows with their columns edge-padded by the largest dilation P, (H, C, W + 2P),
so every neighbour of a row is a contiguous slice (no branches, no gathers: the loops over x
vectorise), and rows are clamped by index. Each output row is one thread's; the pads of a
propagated row are refreshed by the thread that wrote it, before the next round reads them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always")
def shifted_row(rows, y, c, dy, dx, pad, w):  # pragma: no cover - compiled
    """Row y + dy (clamped) of channel c, shifted by dx: a contiguous slice of the padded rows."""
    yy = min(max(y + dy, 0), rows.shape[0] - 1)
    return rows[yy, c, pad + dx : pad + dx + w]


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def weights_hjw(img, pad, dil, neighbours, window, std_eps, std_scale):  # pragma: no cover - compiled
    h, channels, padded_w = img.shape
    w = padded_w - 2 * pad
    nd, nn, nw = dil.shape[0], neighbours.shape[0], window.shape[0]
    out = np.empty((h, nd * nn, w), dtype=np.float32)
    count = np.float32(nw * nd)
    eps, scale, three = np.float32(std_eps), np.float32(std_scale), np.float32(3.0)
    for y in prange(h):
        mean = np.zeros((channels, w), dtype=np.float32)
        denom = np.zeros((channels, w), dtype=np.float32)
        for c in range(channels):  # two-pass unbiased std over the dilated 3x3 windows, centre included
            m, v = mean[c], denom[c]
            for a in range(nd):
                for b in range(nw):
                    row = shifted_row(img, y, c, window[b, 0] * dil[a], window[b, 1] * dil[a], pad, w)
                    for x in range(w):
                        m[x] += row[x]
            for x in range(w):
                m[x] = m[x] / count
            for a in range(nd):
                for b in range(nw):
                    row = shifted_row(img, y, c, window[b, 0] * dil[a], window[b, 1] * dil[a], pad, w)
                    for x in range(w):
                        d = row[x] - m[x]
                        v[x] += d * d
            for x in range(w):
                v[x] = eps + scale * np.sqrt(v[x] / (count - np.float32(1.0)))
        for a in range(nd):
            for b in range(nn):
                logit = out[y, a * nn + b]
                logit[:] = 0.0
                for c in range(channels):  # the channel mean in the array path's order: ((0 + c0) + c1) + c2
                    centre, den = img[y, c, pad : pad + w], denom[c]
                    row = shifted_row(img, y, c, neighbours[b, 0] * dil[a], neighbours[b, 1] * dil[a], pad, w)
                    for x in range(w):
                        logit[x] += abs(centre[x] - row[x]) / den[x]
                for x in range(w):
                    logit[x] = -(logit[x] / three)
        top = np.full(w, -np.inf, dtype=np.float32)
        for j in range(nd * nn):
            logit = out[y, j]
            for x in range(w):
                top[x] = max(top[x], logit[x])
        total = np.zeros(w, dtype=np.float32)
        for j in range(nd * nn):
            logit = out[y, j]
            for x in range(w):
                e = np.exp(logit[x] - top[x])
                logit[x] = e
                total[x] += e
        for j in range(nd * nn):
            logit = out[y, j]
            for x in range(w):
                logit[x] = logit[x] / total[x]
    return out


@njit(nogil=True, fastmath=False)
def refresh_pads(rows, y, pad):  # pragma: no cover - compiled
    _, channels, padded_w = rows.shape
    for c in range(channels):
        left, right = rows[y, c, pad], rows[y, c, padded_w - pad - 1]
        for x in range(pad):
            rows[y, c, x] = left
            rows[y, c, padded_w - pad + x] = right


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def padded_rows(chw, pad):  # pragma: no cover - compiled
    channels, h, w = chw.shape
    out = np.empty((h, channels, w + 2 * pad), dtype=np.float32)
    for y in prange(h):
        for c in range(channels):
            for x in range(w):
                out[y, c, pad + x] = chw[c, y, x]
        refresh_pads(out, y, pad)
    return out


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def one_hot_rows(index, k, pad):  # pragma: no cover - compiled
    h, w = index.shape
    out = np.zeros((h, k, w + 2 * pad), dtype=np.float32)
    for y in prange(h):
        for x in range(w):
            out[y, index[y, x], pad + x] = 1.0
        refresh_pads(out, y, pad)
    return out


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def propagate_hkw(src, weights, pad, oy, ox, iterations):  # pragma: no cover - compiled
    # src: rows the caller made for this call; they are overwritten (one fresh buffer, not two).
    h, k, padded_w = src.shape
    w = padded_w - 2 * pad
    nj = oy.shape[0]
    dst = np.empty_like(src)
    for _ in range(iterations):
        for y in prange(h):
            for j in range(nj):
                wrow = weights[y, j]
                for c in range(k):
                    out = dst[y, c, pad : pad + w]  # contiguous rows: the x loops vectorise
                    row = shifted_row(src, y, c, oy[j], ox[j], pad, w)
                    if j == 0:
                        for x in range(w):
                            out[x] = wrow[x] * row[x]
                    else:
                        for x in range(w):
                            out[x] += wrow[x] * row[x]
            refresh_pads(dst, y, pad)
        src, dst = dst, src
    return src
