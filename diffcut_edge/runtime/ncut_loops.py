"""The compiled NCut loops (numba), imported by :mod:`diffcut_edge.runtime.ncut_kernel` only when numba is
there; what each computes, and why, is said there. Module-level functions, so numba's on-disk cache
serves them in every process (and they can call each other: a helper defined in a function would be a
closure cell, which numba's cache key cannot match across processes -- see ``pamr_loops``).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def lower_extremes(m):  # pragma: no cover - compiled
    lo, hi = m[0, 0], m[0, 0]
    for i in range(m.shape[0]):
        row = m[i]
        for j in range(i + 1):
            lo = min(lo, row[j])
            hi = max(hi, row[j])
    return lo, hi


@njit(cache=True, fastmath=False, nogil=True)
def power_lower_and_mirror(m, lo, span, exponent, tile):  # pragma: no cover - compiled
    n = m.shape[0]
    row_zero = np.zeros(n, dtype=np.uint8)
    column_zero = np.zeros(n, dtype=np.uint8)
    base = np.empty(n, dtype=m.dtype)
    for r0 in range(0, n, tile):
        r1 = min(n, r0 + tile)
        for i in range(r0, r1):  # the lower part of each row of the panel, as ncut._power does it
            row = m[i]
            for j in range(i + 1):
                base[j] = (row[j] - lo) / span
            e = exponent
            first = True
            while e:  # ncut._power's order: the result takes the odd powers of base as they come
                if e & 1:
                    if first:
                        for j in range(i + 1):
                            row[j] = base[j]
                        first = False
                    else:
                        for j in range(i + 1):
                            row[j] = row[j] * base[j]
                e >>= 1
                if e:
                    for j in range(i + 1):
                        base[j] = base[j] * base[j]
            zero = np.uint8(0)
            for j in range(i + 1):
                z = np.uint8(row[j] == 0.0)
                zero |= z
                column_zero[j] |= z
            row_zero[i] |= zero
        for j in range(r1):  # the panel's transpose onto the upper triangle, row segments at a time
            dst = m[j]
            for i in range(max(r0, j + 1), r1):
                dst[i] = m[i, j]
    full = np.empty(n, dtype=np.bool_)
    for i in range(n):
        full[i] = (row_zero[i] | column_zero[i]) == 0
    return full


@njit(cache=True, fastmath=False, nogil=True)
def gather_square(a, ids):  # pragma: no cover - compiled
    m = ids.shape[0]
    out = np.empty((m, m), dtype=a.dtype)
    for i in range(m):
        row = a[ids[i]]
        dst = out[i]
        for j in range(m):
            dst[j] = row[ids[j]]
    return out


@njit(cache=True, fastmath=False, nogil=True)
def gather_square_in_place(a, ids):  # pragma: no cover - compiled
    # Row-major, with ids ascending, element (i, j) goes to i*m + j <= ids[i]*n + ids[j], where it
    # is read from: every write lands on an element already read, so one buffer serves both.
    n, m = a.shape[0], ids.shape[0]
    flat = a.reshape(n * n)
    for i in range(m):
        src, dst = ids[i] * n, i * m
        for j in range(m):
            flat[dst + j] = flat[src + ids[j]]
    return flat[: m * m].reshape(m, m)


@njit(cache=True, fastmath=False, nogil=True)
def bin_pair_sums(a, bins, nbins):  # pragma: no cover - compiled
    n = a.shape[0]
    by_row = np.zeros((nbins, n), dtype=a.dtype)  # the rows of a added by bin: onehotᵀ a
    for k in range(n):
        dst, src = by_row[bins[k]], a[k]
        for j in range(n):
            dst[j] += src[j]
    sums = np.zeros((nbins, nbins), dtype=a.dtype)  # then by column: onehotᵀ (onehotᵀ a)ᵀ
    for q in range(nbins):
        src = by_row[q]
        for j in range(n):
            sums[bins[j], q] += src[j]
    return sums


@njit(cache=True, fastmath=False, nogil=True, error_model="numpy")
def first_lowest_ncut(g, bin_volume, bin_count, total_volume, n, min_size):  # pragma: no cover - compiled
    nbins = g.shape[0]
    vol_x = np.zeros(nbins + 1)  # [p] = Σ_{i >= p} bin_volume[i], added from the last bin down
    count_x = np.zeros(nbins + 1, dtype=np.int64)
    for p in range(nbins - 1, -1, -1):
        vol_x[p] = vol_x[p + 1] + bin_volume[p]
        count_x[p] = count_x[p + 1] + bin_count[p]
    columns = np.zeros(nbins)  # C[k, :], the running sum of g's rows 0..k
    best_k, best = 0, np.inf
    for k in range(nbins - 1):
        for p in range(nbins):
            columns[p] += np.float64(g[k, p])
        cut = 0.0
        for p in range(nbins - 1, k, -1):
            cut += columns[p]
        v, c = vol_x[k + 1], count_x[k + 1]
        value = cut / v + cut / (total_volume - v)
        if c < min_size or n - c < min_size or not np.isfinite(value):
            value = np.inf
        if value < best:  # strictly: the first minimum wins
            best_k, best = k, value
    return best_k, best


@njit(cache=True, fastmath=False, nogil=True)
def lanczos_step(symv, a_t, scale, u, basis, j, beta_prev, scratch, ints, ones, uplo):  # pragma: no cover
    # One step of xp._lanczos_reorthogonalised on (S A S - 2 u uᵀ), in its numpy step's order of
    # operations; the product is scipy's BLAS ?symv (the one the numpy step calls through scipy), passed
    # in as a function pointer so the compiled code stays in numba's cache; the dot products are
    # numba's (scipy's BLAS), where the numpy step's are numpy's.
    n = basis.shape[1]
    q, x, y = basis[j], scratch[0], scratch[1]
    for i in range(n):
        x[i] = scale[i] * q[i]
    c = ints.ctypes.data  # n, lda, inc
    f = ones.ctypes.data  # alpha = 1, beta = 0
    symv(uplo.ctypes.data, c, f, a_t.ctypes.data, c + 4, x.ctypes.data, c + 8, f + 4, y.ctypes.data, c + 8)
    t = np.float32(2.0) * np.dot(u, q)
    w = np.empty(n, dtype=np.float32)
    for i in range(n):
        w[i] = scale[i] * y[i] - t * u[i]
    alpha = np.float64(np.dot(q, w))
    a32 = np.float32(alpha)
    for i in range(n):
        w[i] -= a32 * q[i]
    if j:
        b32, previous = np.float32(beta_prev), basis[j - 1]
        for i in range(n):
            w[i] -= b32 * previous[i]
    done = basis[: j + 1]
    correction = np.dot(np.dot(done, w), done)  # full reorthogonalisation
    for i in range(n):
        w[i] -= correction[i]
    beta = np.float64(np.sqrt(np.dot(w, w)))
    if beta != 0.0 and j + 1 < basis.shape[0]:
        b32, following = np.float32(beta), basis[j + 1]
        for i in range(n):
            following[i] = w[i] / b32
    return alpha, beta


@njit(cache=True, fastmath=False, nogil=True)
def block_sum(a, lo, n):  # pragma: no cover - compiled
    # numpy's pairwise summation below its block size (loops_utils.h): plain up to 7 elements,
    # else 8 accumulators, combined pairwise, and the remainder added one by one.
    if n < 8:
        total = a.dtype.type(0.0)
        for i in range(n):
            total += a[lo + i]
        return total
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += a[lo + i]
        i += 1
    return total


@njit(cache=True, fastmath=False, nogil=True)
def pairwise_sum(a, n):  # pragma: no cover - compiled
    # numpy's pairwise summation (np.linalg.vector_norm's float32 reduction): above 128 elements the
    # sum of both halves, the first rounded down to a multiple of 8. Its recursion runs here on an
    # explicit stack: numba's cache crashed loading a recursive function.
    if n <= 128:
        return block_sum(a, 0, n)
    starts = np.empty(64, dtype=np.int64)
    sizes = np.empty(64, dtype=np.int64)
    stage = np.zeros(64, dtype=np.int8)
    done = np.empty(64, dtype=a.dtype)
    top, finished = 0, 0
    starts[0], sizes[0] = 0, n
    while top >= 0:
        lo, size = starts[top], sizes[top]
        half = size // 2
        half -= half % 8
        if size <= 128:
            done[finished] = block_sum(a, lo, size)
            finished += 1
            top -= 1
        elif stage[top] == 0:  # the first half
            stage[top] = 1
            top += 1
            starts[top], sizes[top], stage[top] = lo, half, 0
        elif stage[top] == 1:  # then the second
            stage[top] = 2
            top += 1
            starts[top], sizes[top], stage[top] = lo + half, size - half, 0
        else:  # both summed: first + second
            done[finished - 2] = done[finished - 2] + done[finished - 1]
            finished -= 1
            top -= 1
    return done[0]


@njit(cache=True, fastmath=False, nogil=True)
def unit_rows_kernel(x, eps):  # pragma: no cover - compiled
    n, c = x.shape
    out = np.empty((n, c), dtype=np.float32)
    squares = np.empty(c, dtype=np.float32)
    for i in range(n):
        row = x[i]
        for j in range(c):
            squares[j] = row[j] * row[j]
        norm = np.sqrt(pairwise_sum(squares, c))
        if not np.isfinite(norm):
            return out, False
        norm = max(norm, eps)
        dst = out[i]
        for j in range(c):
            dst[j] = row[j] / norm
    return out, True


@njit(cache=True, fastmath=False, nogil=True)
def top_tridiagonal_pair(
    stebz, stein, d, e, lapack_ints, lapack_doubles, lapack_chars, work, iwork, z
):  # pragma: no cover
    # xp._top_tridiagonal_pair's LAPACK calls (?stebz for the largest value by index, then ?stein for its
    # vector) through scipy's cython_lapack pointers: the same routines on the same inputs, the same bits.
    # lapack_ints: n, il, iu, m, nsplit, info, ldz, one; lapack_doubles: vl, vu, abstol; lapack_chars: "IB".
    n = d.shape[0]
    if n == 1:
        z[0] = 1.0
        return d[0], 0
    ints, doubles, chars = lapack_ints.ctypes.data, lapack_doubles.ctypes.data, lapack_chars.ctypes.data
    lapack_ints[0], lapack_ints[1], lapack_ints[2] = n, n, n
    w, iblock, isplit = work[:n], iwork[:n], iwork[n : 2 * n]
    stebz(
        chars, chars + 1, ints, doubles, doubles + 8, ints + 4, ints + 8, doubles + 16, d.ctypes.data, e.ctypes.data,
        ints + 12, ints + 16, w.ctypes.data, iblock.ctypes.data, isplit.ctypes.data,
        work[n:].ctypes.data, iwork[2 * n :].ctypes.data, ints + 20,
    )  # fmt: skip
    if lapack_ints[5] != 0 or lapack_ints[3] != 1:
        return np.nan, 1
    theta = w[0]
    lapack_ints[6], lapack_ints[7] = n, 1
    stein(
        ints, d.ctypes.data, e.ctypes.data, ints + 28, w.ctypes.data, iblock.ctypes.data, isplit.ctypes.data,
        z.ctypes.data, ints + 24, work[n:].ctypes.data, iwork[2 * n :].ctypes.data, iwork[3 * n :].ctypes.data,
        ints + 20,
    )  # fmt: skip
    return theta, lapack_ints[5]


@njit(cache=True, fastmath=False, nogil=True)
def lanczos_solve(
    symv, stebz, stein, a_t, scale, u, basis, tol, first_test, test_every, scratch, ints, ones, uplo,
    lapack_ints, lapack_doubles, lapack_chars,
):  # fmt: skip  # pragma: no cover - compiled
    # xp._lanczos_reorthogonalised's loop, test and stopping rule, every step and test compiled:
    # status 0 converged (steps, theta, Ritz coefficients, estimate), 1 not within the basis, 2 LAPACK failed.
    steps, n = basis.shape
    alphas, betas = np.empty(steps), np.empty(steps)
    # LAPACK's workspaces for an m x m tridiagonal, m <= steps: w (m) + ?stein's 5m (?stebz's 4m fits);
    # iblock, isplit (m each) + ?stebz's 3m (?stein's m and ifail fit).
    work, iwork = np.empty(6 * steps), np.empty(5 * steps + 1, dtype=np.int32)
    z = np.empty(steps)
    for j in range(steps):
        alpha, beta = lanczos_step(symv, a_t, scale, u, basis, j, betas[j - 1] if j else 0.0, scratch, ints, ones, uplo)
        alphas[j], betas[j] = alpha, beta
        last = j + 1 == steps
        scheduled = j + 1 >= first_test and (j + 1 - first_test) % test_every == 0
        if last or beta == 0.0 or scheduled:
            theta, info = top_tridiagonal_pair(
                stebz, stein, alphas[: j + 1], betas[:j], lapack_ints, lapack_doubles, lapack_chars, work, iwork, z
            )
            if info != 0:
                return 2, j + 1, theta, z[: j + 1].copy(), np.inf
            estimate = beta * abs(z[j])
            if estimate <= tol * abs(theta) or beta == 0.0 or j + 1 == n:
                return 0, j + 1, theta, z[: j + 1].copy(), estimate
        if last or beta == 0.0:
            break
    return 1, steps, 0.0, z[:0].copy(), np.inf
