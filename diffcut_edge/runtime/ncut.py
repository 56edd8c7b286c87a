"""Recursive Normalized Cut on token features, on any Array API namespace (one code path).

Same partitions as the official DiffCut recursion (docs/design.md, "NCut"),
computed the fast way:

- the affinity ``W = minmax(F Fᵀ) ** alpha`` is built once in float32 -- float32 on
  purpose: ``W ** 10`` underflows to exact zeros there, and the official rule drops every
  node whose row holds an exact zero from all levels below the first;
- an explicit work list replaces the recursion and visits nodes in the official order
  (pre-order, the side above the threshold first); a node works on the submatrix of its
  own nodes instead of a masked copy of the full matrix, cut from its parent's submatrix
  when the parent splits (a gather over the parent, not the whole grid). The painted-set bookkeeping of
  the official code reduces to: below level 0 a child keeps its side of the cut minus
  the "zero-row" nodes;
- only the Fiedler vector is computed (LAPACK subset ``eigh`` on small graphs, Lanczos on
  the deflated normalised affinity on large ones), in float32 like the official solver;
- the 100 candidate cuts are nested (thresholds on one vector), so all of them are scored
  in one pass: ``NCut = cut/vol(x) + cut/vol(~x)``, which is what the official
  ``rᵀ(D−A)r / rᵀDr`` evaluates to, with every cut read off the affinity summed by
  threshold bin (one product with a one-hot matrix instead of 100 quadratic forms);
- degenerate input (constant features, one token, a solver failure) ends a node as one
  segment instead of crashing; non-finite features are rejected up front;
- labels come from exact membership codes in the official numbering order.
"""

from __future__ import annotations

import heapq
import types
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.xp import (
    as_array,
    bin_totals,
    compiled_affinity,
    compiled_unit_rows,
    deflated_matvec,
    device_of,
    eigen_residual,
    eigh_one,
    eigsh_largest,
    from_host,
    get_xp,
    gram,
    is_numpy_namespace,
    lowest_ncut,
    member_mask,
    rank_rows,
    single_threaded_blas,
    submatrix,
    symmetric_product,
)

SOLVERS = ("auto", "eigh", "eigsh")
# Official candidate cuts: 100 thresholds in [0.99 min y, 0.99 max y].
NUM_THRESHOLDS = 100
THRESHOLD_SPAN = 0.99
# Up to this many nodes a LAPACK subset eigh beats Lanczos (float32, 2-core CPU, the nodes of a
# 32x32 NCut: 0.30 vs 0.32 ms at 134 nodes, 0.67 vs 0.22 ms at 195, 1.45 vs 0.52 ms at 283).
EIGH_MAX_NODES = 144
# Lanczos residual tolerance in float64 (float32 uses machine precision, tol=0): the
# Fiedler vector must match the dense solver's closely enough that no token changes side.
EIGSH_TOL = 1e-10
# Largest Lanczos residual ||M v - λ v|| accepted; above it the dense solver decides. Measured
# float32 residuals on planted cases (grids 24x40 to 64x64): 2e-7 to 6e-7. cupyx's eigsh never
# reports non-convergence, so this check is what catches it there.
EIGSH_MAX_RESIDUAL = 1e-4
# Below this many nodes Lanczos is never used, even when asked for: ARPACK needs n > k + 1 and
# cupyx's eigsh fails on n <= 3; a dense solve of a handful of nodes costs microseconds.
LANCZOS_MIN_NODES = 8
# Precision of the eigen-solve, float32 like the official torch eigh: half the memory
# traffic of float64 per Lanczos product, and the same partitions on every parity case
# (planted noise 0.2-0.6, grids 16x16 to 32x32). float64 is kept selectable for studies.
EIGEN_DTYPE = "float32"
# Elements of the affinity transformed at a time on the host (256 KB of float32: in L2).
AFFINITY_BLOCK_ELEMENTS = 65536
# F.normalize's epsilon: a zero token stays zero instead of dividing by zero.
NORM_EPS = 1e-12


@dataclass
class NCutResult:
    """Outcome of the recursive NCut on one image's tokens.

    Attributes:
        labels: (h, w) int32 coarse segment ids 0..K-1 (the input's namespace and device),
            numbered in the official order (sorted membership codes).
        num_segments: K.
        num_masks: cuts recorded (NCut < tau); K == num_masks + 1.
        nodes_visited: recursion nodes entered (the official count includes empty ones).
        eigen_solves: Fiedler vectors computed.
    """

    labels: Any
    num_segments: int
    num_masks: int
    nodes_visited: int
    eigen_solves: int


@dataclass
class _Counters:
    visited: int = 0
    solves: int = 0


@dataclass
class _Node:
    """A pending node: the token ids (into the full grid) it partitions, their affinity
    submatrix (None when fewer than two), and its place in the recursion."""

    ids: Any
    affinity: Any | None
    level: int


@dataclass
class _Split:
    """A recorded cut: the side above the threshold (the mask), and the two children."""

    mask: Any
    above: _Node
    below: _Node


def _check_options(
    tau: float, alpha: float, max_segments: int | None, min_segment_size: int | None, solver: str
) -> None:
    if solver not in SOLVERS:
        raise DiffCutError(f"unknown NCut solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    from diffcut_edge.runtime.options import SegmenterOptions

    # The one validation of the options (same bounds and words as the CLI and SegmenterSpec).
    SegmenterOptions(tau=tau, alpha=alpha, max_segments=max_segments, min_segment_size=min_segment_size)


@dataclass(frozen=True)
class Tokens:
    """One image's tokens, checked and L2-normalised once (float32 (N, C), row-major on ``grid``).

    NCut, the segment means and the assignment all read the normalised tokens: the
    post-processing makes this once and hands it to each (they accept raw features too).
    """

    unit: Any
    grid: tuple[int, int]


def _checked_shape(features: Any, grid: tuple[int, int]) -> tuple[Any, tuple[int, int]]:
    try:
        h, w = (int(g) for g in grid)
    except (TypeError, ValueError) as e:
        raise DiffCutError(f"grid must be a pair (h, w) of token rows and columns, got {grid!r}") from e
    x = as_array(features)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0, ...]
    if x.ndim != 2 or x.shape[0] != h * w or h < 1 or w < 1:
        raise DiffCutError(
            f"features must be (N, C) tokens with N = h*w = {h}*{w} = {h * w} for grid {(h, w)}, "
            f"got shape {tuple(x.shape)}; pass the grid of the exported model (manifest 'grid')"
        )
    return checked_rows(x), (h, w)


def checked_rows(features: Any) -> Any:
    """(N, C) or (1, N, C) floating features as float32 (N, C) rows (no grid involved)."""
    x = as_array(features)
    xp = get_xp(x)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0, ...]
    if x.ndim != 2:
        raise DiffCutError(f"features must be (N, C) tokens, got shape {tuple(x.shape)}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise DiffCutError(f"features must be floating point, got dtype {x.dtype}")
    return xp.astype(x, xp.float32, copy=False)


def _non_finite() -> DiffCutError:
    return DiffCutError(
        "features contain NaN or inf: check the encoder output (precision fp16 "
        "overflow?) before segmenting; one non-finite token poisons the affinity"
    )


def unit_tokens(features: Any, grid: tuple[int, int]) -> Tokens:
    """:class:`Tokens` of raw (N, C) or (1, N, C) features of any float dtype, validated against
    the grid (shape, finite values), or ``features`` itself when it is already Tokens on this grid."""
    if isinstance(features, Tokens):
        if tuple(features.grid) != tuple(int(g) for g in grid):
            raise DiffCutError(f"tokens were prepared for grid {features.grid}, not {tuple(grid)}")
        return features
    x, grid = _checked_shape(features, grid)
    return Tokens(unit_rows(x), grid)


def unit_rows(x: Any) -> Any:
    """The float32 rows of (N, C) ``x``, checked finite and L2-normalised (no grid involved)."""
    compiled = compiled_unit_rows(x, NORM_EPS)  # one pass, where there is a compiled loop
    if compiled is not None:
        return compiled
    xp = get_xp(x)
    with np.errstate(over="ignore", invalid="ignore"):  # numpy's warnings; overflow is handled below
        norms = xp.linalg.vector_norm(x, axis=1, keepdims=True)
    # A NaN or inf token has a non-finite norm: one pass checks and normalises. Finite tokens
    # whose float32 norm overflows (|x| > 1e19) are rare enough to pay a float64 norm.
    if not bool(xp.all(xp.isfinite(norms))):
        if not bool(xp.all(xp.isfinite(x))):
            raise _non_finite()
        norms = xp.astype(xp.linalg.vector_norm(xp.astype(x, xp.float64), axis=1, keepdims=True), xp.float32)
    return normalize_tokens(x, norms)


def normalize_tokens(features: Any, norms: Any = None) -> Any:
    """L2-normalise each token (row), like F.normalize: x / max(||x||, 1e-12), float32
    (``norms``: the (N, 1) row norms when already known)."""
    xp = get_xp(features)
    if norms is None:
        norms = xp.linalg.vector_norm(features, axis=1, keepdims=True)
    return features / xp.clip(norms, min=NORM_EPS)


def affinity(features_norm: Any, alpha: float) -> Any | None:
    """``minmax(F Fᵀ) ** alpha`` in float32 (N, N); None when all affinities are equal."""
    found = _affinity_and_full_rows(features_norm, alpha)
    return None if found is None else found[0]


def _affinity_and_full_rows(features_norm: Any, alpha: float) -> tuple[Any, Any] | None:
    """The :func:`affinity` and, per node, whether its row holds no exact zero (the nodes that
    stay in the graph below level 0); None when all affinities are equal."""
    compiled = compiled_affinity(features_norm, alpha)  # the compiled loops, where there are some
    if compiled is not None:
        return None if compiled[0] is None else compiled
    xp = get_xp(features_norm)
    w = gram(features_norm)
    lo, hi = xp.min(w), xp.max(w)
    span = hi - lo
    if not bool(span > 0):
        return None  # constant features: the official code divides 0 by 0 (-> one segment)
    # On the host, a few rows at a time: each block's temporaries stay in cache instead of
    # streaming two fresh (N, N) arrays through memory (same operations, same bits).
    n = w.shape[0]
    rows = max(1, AFFINITY_BLOCK_ELEMENTS // n) if is_numpy_namespace(xp) else n
    blocks = []
    for r0 in range(0, n, rows):
        block = w[r0 : r0 + rows, :]
        block -= lo
        block /= span
        block = _power(block, alpha)
        blocks.append(~xp.any(block == 0, axis=1))
        w[r0 : r0 + rows, :] = block
    return w, xp.concat(blocks)


def _power(w: Any, alpha: float) -> Any:
    """``w ** alpha`` in float32, in place; integer exponents by repeated squaring.

    powf costs ~50x a multiply; squaring differs from it by a few ulps, and decides
    underflow to exact zero differently only for values within ~1e-7 (relative) of the
    underflow point -- the same order as torch's own (Sleef) pow differs from libm.
    """
    xp = get_xp(w)
    if float(alpha) != int(alpha) or int(alpha) > 64:
        return w ** float(alpha)
    e = int(alpha)
    result = None
    base = w
    while e:
        if e & 1:
            result = xp.asarray(base, copy=True) if result is None else _imul(result, base)
        e >>= 1
        if e:
            base = base * base if base is w else _imul(base, base)
    return result


def _imul(a: Any, b: Any) -> Any:
    a *= b
    return a


def _fiedler(a: Any, d: Any, solver: str) -> Any | None:
    """y = D^-1/2 v for v the 2nd eigenvector of D^-1/2 (D-A) D^-1/2, sign-fixed; float64.

    Both solvers work on ``M = D^-1/2 A D^-1/2`` in ``EIGEN_DTYPE``: "eigsh" takes the
    largest pair of ``M - 2 u uᵀ`` (u = sqrt(d)/|sqrt(d)|, the trivial eigenvector, whose
    eigenvalue 1 moves to -1, below every other one) by Lanczos, applying the scaling and
    the rank-one term inside the product so M is never formed; "eigh" (and the fallback
    when Lanczos does not converge, or the namespace has no Lanczos) takes pair #1 of the
    dense ``I - M``.
    Returns None if the solvers fail or yield non-finite values (the node is then not split).
    """
    xp = get_xp(a)
    n = a.shape[0]
    dtype = getattr(xp, EIGEN_DTYPE)
    s = 1.0 / xp.sqrt(d)
    s_m = xp.astype(s, dtype)
    v = None
    if n >= LANCZOS_MIN_NODES and (solver == "eigsh" or (solver == "auto" and n > EIGH_MAX_NODES)):
        v = _lanczos_fiedler(xp.astype(a, dtype, copy=False), s_m, d)
    if v is None:
        m = xp.astype(a, dtype)  # a copy: I - M is built in place
        m *= -s_m[:, None]
        m *= s_m[None, :]
        m += xp.eye(n, dtype=dtype, device=device_of(a))
        try:
            _, v = eigh_one(m, 1)
        except (np.linalg.LinAlgError, ValueError, RuntimeError):
            return None
    y = s * xp.astype(v, xp.float64)
    if not bool(xp.all(xp.isfinite(y))):
        return None
    # Official sign rule: the largest-magnitude entry (first on ties) is positive.
    peak = y[int(xp.argmax(xp.abs(y)))]
    return -y if bool(peak < 0) else y


def _lanczos_fiedler(a: Any, s: Any, d: Any) -> Any | None:
    """Largest eigenvector of ``diag(s) a diag(s) - 2 u uᵀ`` (see :func:`_fiedler`), or None."""
    xp = get_xp(a)
    u = xp.sqrt(d)
    u /= xp.linalg.vector_norm(u)
    matvec = deflated_matvec(a, s, xp.astype(u, a.dtype))
    # Fixed start vector: deterministic results; a Gaussian is never orthogonal to v in practice.
    v0 = from_host(np.random.default_rng(0).standard_normal(a.shape[0]), like=a, dtype=a.dtype)
    try:
        found = eigsh_largest(matvec, v0=v0, tol=EIGSH_TOL if a.dtype == xp.float64 else 0.0)
    except (np.linalg.LinAlgError, RuntimeError, ValueError, TypeError):
        return None
    if found is None:  # no Lanczos in this namespace: the dense solver decides
        return None
    residual = found.residual if found.residual is not None else eigen_residual(matvec, found.value, found.vector)
    if not residual <= EIGSH_MAX_RESIDUAL:  # also refuses NaN
        return None
    return found.vector


def _thresholds(y: Any) -> Any:
    xp = get_xp(y)
    lo, hi = float(xp.min(y)), float(xp.max(y))  # host scalars: one sync on a GPU
    return xp.linspace(THRESHOLD_SPAN * lo, THRESHOLD_SPAN * hi, NUM_THRESHOLDS, dtype=y.dtype, device=device_of(y))


def _suffix_sum(x: Any, axis: int) -> Any:
    """``out[p] = Σ_{i >= p} x[i]`` along ``axis``, with one trailing zero slice (length + 1)."""
    xp = get_xp(x)
    return xp.flip(xp.cumulative_sum(xp.flip(x, axis=axis), axis=axis, include_initial=True), axis=axis)


def _best_cut(a: Any, d: Any, y: Any, min_size: int) -> tuple[float, Any]:
    """Score the 100 threshold cuts of y at once; return (min NCut, boolean side x = y > t).

    Candidate k keeps x_k = {y > t_k}; the cuts are nested, so with bin b_i = #{k: t_k < y_i}
    node i is in x_k iff b_i > k. Aggregating the affinity by bin gives a small matrix G, and
    ``cut_k = Σ_{p>k, q<=k} G_pq`` -- a sum of positive terms, so no cancellation -- while
    ``vol(x_k)`` sums the degrees of the bins above k. ``NCut = cut/vol(x) + cut/vol(~x)`` is
    what the official ``rᵀ(D−A)r / rᵀDr`` evaluates to. Cuts leaving a side empty (or smaller
    than ``min_size``) score +inf; the first minimum wins, as in the official code.
    """
    xp = get_xp(a)
    t = _thresholds(y)
    totals = (
        *bin_totals(a, d, xp.searchsorted(t, y, side="left"), NUM_THRESHOLDS + 1),
        xp.sum(d),
        a.shape[0],
        min_size,
    )
    found = lowest_ncut(*totals)  # the compiled loop, where there is one
    best, value = found if found is not None else _lowest_ncut(*totals)
    return value, y > t[best]


def _lowest_ncut(
    g: Any, bin_volume: Any, bin_count: Any, total_volume: Any, n: int, min_size: int
) -> tuple[int, float]:
    """(k, NCut_k) of the first candidate cut with the smallest NCut, from the per-bin totals.

    Candidate k keeps the bins p > k: ``cut_k = Σ_{p > k} C[k, p]`` with ``C[k, p] = Σ_{q <= k} g[q, p]``
    (a running sum down the rows), both sums running from the last bin down, the order the host's
    compiled loop adds in (:func:`diffcut_edge.runtime.xp.lowest_ncut`), so both give the same bits.
    """
    xp = get_xp(g)
    nbins = g.shape[0]
    candidates = nbins - 1
    columns = xp.cumulative_sum(xp.astype(g, xp.float64), axis=0)[:candidates, :]
    right = _suffix_sum(columns, 1)  # (candidates, nbins + 1): [k, p] = Σ_{i >= p} C[k, i]
    diagonal_next = xp.arange(candidates, device=device_of(g)) * (nbins + 2) + 1  # flat index of [k, k + 1]
    cut = xp.take(xp.reshape(right, (-1,)), diagonal_next)
    vol_x = _suffix_sum(bin_volume, 0)[1:nbins]
    count_x = _suffix_sum(bin_count, 0)[1:nbins]
    with np.errstate(divide="ignore", invalid="ignore"):  # numpy's warnings only
        ncut = cut / vol_x + cut / (total_volume - vol_x)
    small = (count_x < min_size) | (n - count_x < min_size)
    ncut = xp.where(small | ~xp.isfinite(ncut), xp.inf, ncut)
    best = int(xp.argmin(ncut))
    return best, float(ncut[best])


def _assemble(masks: list[Any], n: int, xp: types.ModuleType, device: Any) -> tuple[Any, int]:
    """Labels from recorded masks (sorted token id arrays), numbered like the official codes.

    The official code sums mask_i * (running max + 1), so each weight exceeds every earlier
    code: codes order tokens lexicographically by membership, last mask most significant.
    Here the membership bits are ranked exactly (no float codes to collide).
    """
    if not masks:
        return xp.zeros(n, dtype=xp.int32, device=device), 1
    member = xp.stack([member_mask(ids, n) for ids in reversed(masks)], axis=1)  # (n, masks), last first
    labels = xp.astype(rank_rows(xp.astype(member, xp.int8)), xp.int32)
    return labels, int(xp.max(labels)) + 1


def _split_node(
    node: _Node, keep_deep: Any, solver: str, min_size: int, tau: float, counts: _Counters
) -> _Split | None:
    """Bipartition one node, or None to stop here."""
    counts.visited += 1
    a = node.affinity
    if a is None:
        return None
    xp = get_xp(a)
    # Degrees by a float32 matrix-vector product (BLAS; the official sum is float32 too).
    d = xp.astype(symmetric_product(a)(xp.ones(a.shape[0], dtype=a.dtype, device=device_of(a))), xp.float64)
    y = _fiedler(a, d, solver)
    counts.solves += 1
    if y is None:
        return None
    ncut, side = _best_cut(a, d, y, min_size)
    if not ncut < tau:
        return None
    # Below level 0 the zero-row nodes leave the graph; each child's submatrix is cut from this
    # node's (a gather over the node, not over the whole grid), the larger one last and into this
    # node's own memory, which nothing reads afterwards.
    keep = xp.take(keep_deep, node.ids)
    above, below = xp.nonzero(side & keep)[0], xp.nonzero(~side & keep)[0]
    if above.shape[0] >= below.shape[0]:
        small = _child(node, a, below, overwrite=False)
        return _Split(node.ids[side], _child(node, a, above, overwrite=True), small)
    small = _child(node, a, above, overwrite=False)
    return _Split(node.ids[side], small, _child(node, a, below, overwrite=True))


def _child(parent: _Node, a: Any, positions: Any, *, overwrite: bool) -> _Node:
    """The child of ``parent`` made of its nodes at ``positions`` (ascending), with their submatrix of
    ``a`` (``overwrite``: written over ``a``, which the caller never reads again)."""
    xp = get_xp(a)
    ids = xp.take(parent.ids, positions)
    sub = submatrix(a, positions, overwrite=overwrite) if positions.shape[0] >= 2 else None
    return _Node(ids, sub, parent.level + 1)


def recursive_ncut(
    features: Any,
    grid: tuple[int, int],
    *,
    tau: float = defaults.TAU,
    alpha: float = defaults.ALPHA,
    max_segments: int | None = None,
    min_segment_size: int | None = None,
    solver: str = "auto",
) -> NCutResult:
    """Recursive Normalized Cut of one image's tokens.

    Args:
        features: (N, C) (or (1, N, C)) token features of any Array API library (numpy,
            cupy, torch, ...), any float dtype
            (computed in float32); N = h*w, row-major tokens; or :class:`Tokens`.
        grid: (h, w) token grid.
        tau: a cut is kept while its NCut value is below tau (paper: 0.5); NCut values are
            >= 0, so 0 keeps no cut (one segment).
        alpha: affinity exponent (paper: 10).
        max_segments: at most this many segments; when set, nodes are split coarse-first
            (breadth-first) and splitting stops at the budget. None: no limit (paper).
        min_segment_size: candidate cuts leaving fewer tokens than this on a side are not
            considered. None: no limit (paper).
        solver: Fiedler solver, one of ``SOLVERS``: "eigh" (dense LAPACK subset),
            "eigsh" (Lanczos on the deflated affinity) or "auto" (eigh up to
            ``EIGH_MAX_NODES`` nodes, Lanczos above).

    Returns:
        NCutResult with (h, w) int32 labels on the input's device.
    """
    _check_options(tau, alpha, max_segments, min_segment_size, solver)
    tokens = unit_tokens(features, grid)
    x, grid = tokens.unit, tokens.grid
    budget = None if max_segments is None else int(max_segments) - 1
    # One BLAS thread throughout: the per-node calls are small, and idle-spinning OpenBLAS
    # threads slowed them 3-8x. Giving the affinity product alone 2 threads (2-core VM, same
    # partitions) saves 17-21 % of the wall time (21.5 -> 18.1 ms at 32x32, 240 -> 190 ms at
    # 64x64) for 45-70 % more CPU, mostly OpenBLAS threads spinning after it: CPU that the live
    # loop's optical-flow propagation, running beside the keyframe worker, needs more (RESULTS.md).
    with single_threaded_blas(get_xp(x)):
        return _ncut_tree(x, grid, alpha, tau, budget, int(min_segment_size or 1), solver)


def _ncut_tree(
    x: Any, grid: tuple[int, int], alpha: float, tau: float, budget: int | None, min_size: int, solver: str
) -> NCutResult:
    """The recursion on the (N, N) affinity of unit tokens ``x``, as an explicit work list."""
    h, w = grid
    n = h * w
    xp = get_xp(x)
    dev = device_of(x)
    found = _affinity_and_full_rows(x, alpha)
    if found is None:  # constant features: one segment
        return NCutResult(xp.zeros(grid, dtype=xp.int32, device=dev), 1, 0, 1, 0)
    # Nodes whose affinity row has an exact zero leave the graph below level 0.
    a_full, keep_deep = found
    del found
    root = _Node(xp.arange(n, device=dev), a_full if n >= 2 else None, 0)
    del a_full  # the root node owns it, and frees it once split

    # Pending nodes keyed by their path (0 = side above the threshold, visited first):
    # path order is the official pre-order; with a budget, (level, path) is coarse-first.
    pending: list[tuple[tuple, tuple, int]] = []
    nodes: list[_Node | None] = []

    def push(node: _Node, path: tuple) -> None:
        nodes.append(node)
        key = (len(path), path) if budget is not None else path
        heapq.heappush(pending, (key, path, len(nodes) - 1))

    push(root, ())
    del root
    recorded: list[tuple[tuple, Any]] = []
    counts = _Counters()
    while pending and (budget is None or len(recorded) < budget):
        _, path, index = heapq.heappop(pending)
        node = nodes[index]
        nodes[index] = None  # free its submatrix once split
        split = _split_node(node, keep_deep, solver, min_size, tau, counts)
        if split is None:
            continue
        recorded.append((path, split.mask))
        push(split.above, path + (0,))
        push(split.below, path + (1,))

    recorded.sort(key=lambda item: item[0])  # official (pre-order) numbering
    labels, k = _assemble([m for _, m in recorded], n, xp, dev)
    return NCutResult(xp.reshape(labels, (h, w)), k, len(recorded), counts.visited, counts.solves)
