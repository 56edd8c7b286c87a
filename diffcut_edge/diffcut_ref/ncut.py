"""Reference recursive Normalized Cut and concept assignment (PyTorch, device-agnostic).

Faithful to ``diffcut/recursive_normalized_cut.py`` of the official DiffCut code (commit
aa16df4): the same float32 operations in the same order, so that on the CPU the partitions
match the official ones exactly. Work happens on the device of a torch input (numpy input:
CPU); results come back as numpy.

Quirks reproduced on purpose (they shape the official results):

- the features are L2-normalised twice (once per channel axis of the feature map, once
  more inside the recursion), exactly as the official code does;
- with ``alpha = 10``, ``W ** alpha`` underflows to exact zeros in float32 for low
  affinities, and the least similar pair is exactly 0 after min-max scaling; below level 0
  every node whose row of the masked affinity holds an exact zero is dropped from the
  node's graph (the official "null values" rule);
- the kept nodes are listed in the order of a Python ``set`` difference, as in the
  official code (it only changes float rounding, but it is free to keep);
- a cut is scored on 100 thresholds with Python ``min`` / ``np.argmin`` over the list of
  NCut values (first minimum wins; a NaN first value wins too, as in the official code).

Defects of the official code that are fixed here (see docs/design.md):

- the grid ``(h, w)`` is explicit and may be non-square; ``N != h*w`` is an error;
- non-finite features raise :class:`DiffCutError` (one NaN would poison the whole affinity);
- an eigen-solver failure, a non-finite Fiedler vector, a single node or constant features
  end the recursion at that node (the official code crashes on ``None``): constant
  features give one segment;
- labels are assembled from exact membership codes instead of float32 codes that collide
  past ~two dozen splits and overflow to inf past ~128 (same labels wherever the official
  float codes are exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError

# Number of candidate thresholds per cut and their span, as in the official get_bipartition.
NUM_THRESHOLDS = 100
THRESHOLD_SPAN = 0.99


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the reference needs the [export] extra
        from diffcut_edge.errors import missing_extra

        raise missing_extra("torch", "export", "The PyTorch reference (diffcut_ref)") from e
    return torch


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


def _check_pair(value: Sequence[int], name: str, what: str) -> tuple[int, int]:
    """A (rows, cols) pair of positive ints, or a DiffCutError naming ``name``."""
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise DiffCutError(f"{name} must be a pair {what}, got {value!r}") from e
    if a < 1 or b < 1:
        raise DiffCutError(f"{name} must have positive sides, got {(a, b)}")
    return a, b


def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
    return _check_pair(grid, "grid", "(h, w) of token rows and columns")


def _as_feature_tensor(features, grid: Sequence[int]):
    """(N, C) features (numpy or torch) -> float32 torch tensor on the input's device (numpy: CPU).

    A leading batch axis of one, ``(1, N, C)``, is accepted (the official ``generate_masks``
    takes ``features[j:j+1]``); anything else must be 2-D with ``N == h*w``.
    """
    torch = _torch()
    h, w = _check_grid(grid)
    # np.array copies: read-only or non-contiguous arrays are fine and never modified.
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.array(features))
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise DiffCutError(
            f"features must be (N, C) tokens of one image, got shape {tuple(x.shape)}; "
            "segment a batch one image at a time"
        )
    if x.shape[0] != h * w:
        raise DiffCutError(
            f"features have N={x.shape[0]} tokens but grid {(h, w)} needs h*w={h * w}; "
            "pass the grid the features were extracted with (resolution/32 per side)"
        )
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise DiffCutError(
            f"features contain non-finite values (NaN/inf) in {bad} of {x.shape[0]} tokens; "
            "check the encoder output (fp16 overflow?) before segmenting"
        )
    return x


def _feature_map(x, grid: tuple[int, int]):
    """(N, C) float32 -> (1, C, h, w) L2-normalised over C, as the official generate_masks."""
    torch = _torch()
    h, w = grid
    feats = x.reshape(1, h, w, -1).permute(0, 3, 1, 2).to(torch.float32)
    return torch.nn.functional.normalize(feats, dim=1)


# --------------------------------------------------------------------------------------
# Recursive NCut
# --------------------------------------------------------------------------------------


def _affinity(feats_norm, alpha: float):
    """Level-0 affinity: cosine of the re-normalised tokens, min-max scaled, raised to alpha.

    Returns ``None`` when the scaled affinity is not finite (constant features make
    max == min, hence 0/0): such a graph has nothing to cut.
    """
    torch = _torch()
    _, c, h, w = feats_norm.shape
    x = torch.nn.functional.normalize(feats_norm.reshape(c, h * w), p=2, dim=0)
    affinity = torch.t(x) @ x
    affinity = (affinity - affinity.min()) / (affinity.max() - affinity.min())
    affinity = affinity**alpha
    if not bool(torch.isfinite(affinity).all()):
        return None
    return affinity


def _mask_explored(affinity, painting, mask):
    """Add ``mask`` to the painted set and zero W_ij wherever i and j are both painted."""
    torch = _torch()
    painting = painting + mask.unsqueeze(0)
    painting[painting > 0] = 1
    painting[painting <= 0] = 0
    flat = painting.reshape(1, -1)
    affinity = affinity * (1 - torch.t(flat) @ flat)
    return affinity, painting


def _kept_nodes(affinity, level: int) -> list:
    """Nodes of this recursion node's graph: all at level 0, else rows with no exact zero.

    The list order is that of the official Python ``set`` difference.
    """
    torch = _torch()
    size = affinity.shape[0]
    all_idx = set(np.arange(0, size, 1))
    if level == 0:
        return list(all_idx)
    null_idx = set(torch.unique(torch.where(affinity == 0)[0]).tolist())
    return list(all_idx - null_idx)


def _fiedler_vector(A, D):
    """y = D^-1/2 v, v the eigenvector of the second-smallest eigenvalue of D^-1/2 (D-A) D^-1/2.

    Returns ``None`` when the solver fails or the vector is not finite (the official code
    returns ``None`` on failure and then crashes; we end the recursion at this node).
    Sign fixed so that the largest-magnitude entry is positive (first one on ties).
    """
    torch = _torch()
    d_inv_sqrt = torch.diag(1 / torch.diag(D) ** 0.5)
    try:
        _, vecs = torch.linalg.eigh(d_inv_sqrt @ (D - A) @ d_inv_sqrt)
    except torch.linalg.LinAlgError:
        return None
    y = d_inv_sqrt @ vecs[:, 1]
    if not bool(torch.isfinite(y).all()):
        return None
    sign = torch.sign(y[torch.argmax(torch.abs(y))])
    return y * sign


def _best_bipartition(y, A, D):
    """Best of 100 threshold cuts of y by NCut value: (x as 0/1 float over kept nodes, ncut)."""
    torch = _torch()
    # Python floats of the same float32 ends: the same thresholds as the official tensor
    # arguments, and valid whatever device y is on (the thresholds live on the CPU).
    lo, hi = float(y.min() * THRESHOLD_SPAN), float(y.max() * THRESHOLD_SPAN)
    thresholds = torch.linspace(lo, hi, NUM_THRESHOLDS)
    partitions = [1.0 * (y > t) for t in thresholds]
    L = D - A
    sum_d = torch.sum(D)
    diag_d = torch.diag(D)
    values = []
    for part in partitions:
        s = 2 * part - 1
        k = torch.sum(diag_d * (s > 0)) / sum_d
        b = k / (1 - k)
        r = (1 + s) - b * (1 - s)
        values.append(((r @ L @ r) / (r @ D @ r)).item())
    # Python min and np.argmin over the list, as the official code (first minimum wins).
    return partitions[int(np.argmin(values))], min(values)


@dataclass
class NCutTrace:
    """What one recursive NCut did.

    ``masks``: recorded (h, w) float32 0/1 cut masks (torch), in recursion order.
    ``nodes``: recursion calls (leaves included). ``eigensolves``: nodes with more than one
    kept node (an eigen-decomposition was attempted). ``failures``: nodes where the solver
    failed or gave a non-finite vector (the official code would crash there).
    """

    grid: tuple[int, int]
    tau: float
    masks: list = field(default_factory=list)
    nodes: int = 0
    eigensolves: int = 0
    failures: int = 0


def _recurse(state: NCutTrace, affinity, painting, mask, level: int) -> None:
    """One node of the official recursion (depth-first: complement first, then the cut)."""
    torch = _torch()
    state.nodes += 1
    h, w = state.grid
    affinity, painting = _mask_explored(affinity, painting, mask)
    keep = _kept_nodes(affinity, level)
    if len(keep) <= 1:
        return
    A = affinity[:, keep][keep, :]
    D = torch.diag(torch.sum(A, axis=1))
    state.eigensolves += 1
    y = _fiedler_vector(A, D)
    if y is None:
        state.failures += 1
        return
    part, ncut = _best_bipartition(y, A, D)
    if not ncut < state.tau:
        return
    full = torch.zeros((1, h * w), dtype=affinity.dtype, device=affinity.device)
    full[:, keep] = part
    cut = 1.0 * full.reshape(h, w)
    state.masks.append(cut)
    _recurse(state, affinity, painting, 1 - cut, level + 1)
    _recurse(state, affinity, painting, cut, level + 1)


def _recursive_ncut_map(feats_norm, tau: float, alpha: float) -> NCutTrace:
    """Recursive NCut of the normalised (1, C, h, w) feature map."""
    torch = _torch()
    _, _, h, w = feats_norm.shape
    state = NCutTrace(grid=(h, w), tau=float(tau))
    with torch.no_grad():
        affinity = _affinity(feats_norm, alpha)
        if affinity is None:
            # Constant features: nothing to cut (the official code would crash in eigh).
            state.nodes = 1
            return state
        zeros = torch.zeros((h, w), dtype=torch.float32, device=feats_norm.device)
        _recurse(state, affinity, zeros, zeros.clone(), level=0)
    return state


def recursive_ncut_trace(
    features, grid: Sequence[int], tau: float = defaults.TAU, alpha: float = defaults.ALPHA
) -> NCutTrace:
    """:func:`recursive_ncut` with the recursion's counts (see :class:`NCutTrace`)."""
    g = _check_grid(grid)
    return _recursive_ncut_map(_feature_map(_as_feature_tensor(features, g), g), tau, alpha)


def recursive_ncut(features, grid: Sequence[int], tau: float = defaults.TAU, alpha: float = defaults.ALPHA) -> list:
    """Recursive NCut of one image's tokens: the recorded cut masks, in recursion order.

    Args:
        features: (N, C) token features (numpy or torch, any float dtype), N = h*w, row-major.
            Not necessarily normalised (they are, twice, as in the official code).
        grid: (h, w) token grid.
        tau: stop splitting a node when its best NCut value is not below tau.
        alpha: affinity exponent.

    Returns:
        list of (h, w) float32 0/1 masks, torch tensors on the features' device (numpy input:
        CPU). Empty when nothing was cut (one segment).

    Raises:
        DiffCutError: N != h*w, a bad grid, or non-finite features.
    """
    return recursive_ncut_trace(features, grid, tau, alpha).masks


# --------------------------------------------------------------------------------------
# Label assembly
# --------------------------------------------------------------------------------------


def assemble_labels(masks: Sequence, grid: Sequence[int]) -> np.ndarray:
    """Coarse labels 0..K-1 from the recorded cut masks, numbered as the official code.

    The official ``assemble_clusters`` adds mask_i * c_i in order, with c_0 = 1 and
    c_i = (max code so far) + 1, then numbers the codes by sorted value. Since c_i exceeds
    every code present before mask i, two tokens' codes compare like their membership bits
    read from the LAST mask to the first (lexicographically). We sort those bit rows
    exactly, so distinct memberships never share a label (the float32 codes of the official
    code do past ~24 splits) and, wherever the float codes are exact, the numbering is the
    official one.

    Args:
        masks: (h, w) 0/1 masks (numpy or torch), in recursion order.
        grid: (h, w).

    Returns:
        (h, w) int64 labels 0..K-1. No mask: all zeros (one segment).
    """
    h, w = _check_grid(grid)
    if len(masks) == 0:
        return np.zeros((h, w), dtype=np.int64)
    bits = np.stack([_to_numpy(m).reshape(-1) > 0 for m in masks[::-1]], axis=1)
    if bits.shape[0] != h * w:
        raise DiffCutError(f"masks have {bits.shape[0]} cells but grid {(h, w)} needs {h * w}")
    _, labels = np.unique(bits.astype(np.uint8), axis=0, return_inverse=True)
    return labels.reshape(h, w).astype(np.int64)


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


# --------------------------------------------------------------------------------------
# Concept assignment
# --------------------------------------------------------------------------------------


def _segment_embeddings(feats_norm, coarse):
    """(K, C) embeddings: mean of the normalised features over each segment (sorted label ids).

    Computed like the official MaskPooling: einsum with mask / (count + 1e-8).
    """
    torch = _torch()
    _, c, _, _ = feats_norm.shape
    ids = torch.unique(coarse)
    emb = torch.zeros(len(ids), c, dtype=torch.float32, device=feats_norm.device)
    for k, idx in enumerate(ids):
        mask = (coarse == idx)[None, None]
        # 1e-8 as MaskPooling: keeps the division defined (a segment here is never empty).
        denom = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
        emb[k, :] = torch.einsum("bchw,bqhw->bqc", feats_norm, mask / denom)[0]
    return emb


def _assign(feats_norm, coarse, mask_size: tuple[int, int]):
    """argmax_k <upsampled normalised feature, e_k> at mask_size (bilinear, align_corners=False)."""
    torch = _torch()
    hm, wm = mask_size
    _, c, _, _ = feats_norm.shape
    with torch.no_grad():
        emb = _segment_embeddings(feats_norm, coarse)
        up = torch.nn.Upsample(size=(hm, wm), mode="bilinear")(feats_norm)
        scores = torch.t(up.reshape(c, hm * wm)) @ torch.t(emb)
        return torch.argmax(scores, dim=1).reshape(hm, wm).cpu().numpy().astype(np.int64)


def _check_mask_size(mask_size: Sequence[int]) -> tuple[int, int]:
    return _check_pair(mask_size, "mask_size", "(H, W)")


def _coarse_tensor(coarse_labels, grid: tuple[int, int], device):
    torch = _torch()
    if isinstance(coarse_labels, torch.Tensor):
        c = coarse_labels
    else:
        arr = np.asarray(coarse_labels)
        if not np.issubdtype(arr.dtype, np.integer):
            raise DiffCutError(f"coarse_labels must be integer ids, got dtype {arr.dtype}")
        c = torch.from_numpy(arr.astype(np.int64))
    if tuple(c.shape) != grid:
        raise DiffCutError(f"coarse_labels must have the grid's shape {grid}, got {tuple(c.shape)}")
    return c.to(device)


def segment_embeddings(features, grid: Sequence[int], coarse_labels) -> np.ndarray:
    """(K, C) float32 segment embeddings: mean of the normalised features over each segment.

    Rows follow the SORTED unique values of ``coarse_labels``; not re-normalised (as the
    official MaskPooling, including its ``count + 1e-8`` denominator).
    """
    torch = _torch()
    g = _check_grid(grid)
    feats_norm = _feature_map(_as_feature_tensor(features, g), g)
    with torch.no_grad():
        emb = _segment_embeddings(feats_norm, _coarse_tensor(coarse_labels, g, feats_norm.device))
    return emb.cpu().numpy().astype(np.float32)


def assign_concepts(
    features, grid: Sequence[int], coarse_labels, mask_size: Sequence[int] = defaults.MASK_SIZE
) -> np.ndarray:
    """High-resolution concept assignment of coarse segments.

    e_k = mean of the normalised features over segment k (not re-normalised); the
    normalised (1, C, h, w) feature map is upsampled bilinearly (align_corners=False) to
    ``mask_size``; each pixel takes argmax_k <f, e_k>.

    Returns:
        (H, W) int64: indices into the SORTED unique values of ``coarse_labels`` (for labels
        0..K-1 from :func:`assemble_labels` that is the label itself). A segment may win no
        pixel (as in the official code).
    """
    g = _check_grid(grid)
    x = _as_feature_tensor(features, g)
    feats_norm = _feature_map(x, g)
    return _assign(feats_norm, _coarse_tensor(coarse_labels, g, feats_norm.device), _check_mask_size(mask_size))


def segment_features(
    features,
    grid: Sequence[int],
    tau: float = defaults.TAU,
    alpha: float = defaults.ALPHA,
    mask_size: Sequence[int] = defaults.MASK_SIZE,
) -> np.ndarray:
    """The official ``generate_masks``: recursive NCut, assembly, concept assignment.

    Args:
        features: (N, C) token features of one image (numpy or torch; (1, N, C) accepted).
        grid: (h, w) token grid, N = h*w (row-major tokens).
        tau, alpha: NCut stopping threshold and affinity exponent.
        mask_size: output (H, W).

    Returns:
        (H, W) int64 labels (indices of the coarse segments, 0..K-1).
    """
    torch = _torch()
    g = _check_grid(grid)
    size = _check_mask_size(mask_size)
    x = _as_feature_tensor(features, g)
    with torch.no_grad():
        feats_norm = _feature_map(x, g)
        masks = _recursive_ncut_map(feats_norm, tau, alpha).masks
        coarse = torch.from_numpy(assemble_labels(masks, g)).to(feats_norm.device)
        return _assign(feats_norm, coarse, size)
