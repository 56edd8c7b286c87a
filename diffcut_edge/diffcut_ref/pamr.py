"""Reference PAMR (pixel-adaptive mask refinement), as DiffCut applies it (PyTorch).

Faithful to ``tools/pamr.py`` (Araslanov & Roth, CVPR 2020) and ``Benchmark_Segmentation.pamr``
of the official DiffCut code: the same shifted values (replicate padding) and the same float32
reductions, so on the CPU the result matches the official one exactly.

- masks: one-hot, one channel per label in SORTED label order, resized to the image's size
  bilinearly with ``align_corners=True`` when the sizes differ;
- affinity to the neighbour at offset o (8 offsets per dilation):
  ``-|I(p) - I(p+o)| / (1e-8 + 0.1 * sigma(p))``, sigma = unbiased std of the 9*|dilations|
  values {I(p+o): 3x3 grid incl. centre, every dilation} per colour channel; averaged over
  the colour channels; softmax over the 8*|dilations| neighbours;
- ``num_iter`` times: m(p) <- sum_o w_p(o) m(p+o);
- :func:`pamr_refine` then takes the argmax and a 3x3 median filter (scipy default mode
  'reflect') over the label ids. Its values are indices into the sorted unique input labels
  (the official code's numbering): since the median runs over ids, the numbering matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import median_filter

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError

# (row, col) of the 8 neighbours in a 3x3 kernel, in the official kernel order.
_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
# The 9 cells (centre included) the official LocalStDev reads, in its order.
_CELLS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2))


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the reference needs the [export] extra
        from diffcut_edge.errors import missing_extra

        raise missing_extra("torch", "export", "The PyTorch reference (diffcut_ref)") from e
    return torch


def _local(x, cells, dilations: Sequence[int]):
    """(B,K,H,W) -> (B,K,len(cells)*|dilations|,H,W): the values at the 3x3 ``cells`` at each dilation.

    The official code gets them with replicate padding and a conv2d whose kernels hold one
    1 each; slicing the padded input gives the same values bit for bit (a one-hot
    convolution only adds exact zeros) at a third of the cost.
    """
    torch = _torch()
    B, K, H, W = x.size()
    out = []
    for d in dilations:
        padded = torch.nn.functional.pad(x.reshape(B * K, 1, H, W), [d] * 4, mode="replicate")[:, 0]
        out.extend(padded[:, r * d : r * d + H, c * d : c * d + W] for r, c in cells)
    return torch.stack(out, 1).view(B, K, -1, H, W)


def _affinity_weights(image, dilations: Sequence[int]):
    """(1, 1, 8*|dilations|, H, W) softmax weights of the neighbours, from a (1, 3, H, W) image."""
    torch = _torch()
    neighbours = _local(image, _NEIGHBOURS, dilations)
    # Official LocalAffinityAbs: |centre - neighbour| (kernel +1 at the centre, -1 at the neighbour).
    diff = torch.abs(image[:, :, None] - neighbours)
    # Official LocalStDev: unbiased std over the 9 cells (centre included) of every dilation.
    std = _local(image, _CELLS, dilations).std(2, keepdim=True)
    # 1e-8 as the official code: std is 0 only where all 36 values are equal, hence every
    # diff too; the logits there are 0 (uniform weights) instead of 0/0.
    x = -diff / (1e-8 + 0.1 * std)
    return torch.softmax(x.mean(1, keepdim=True), 2)


def _as_image_tensor(image):
    """(H, W, 3) RGB numpy/torch -> (1, 3, H, W) contiguous float32 on the input's device."""
    torch = _torch()
    t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image))
    if t.ndim != 3 or t.shape[-1] != 3:
        raise DiffCutError(f"image must be (H, W, 3) RGB float in [0, 1], got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise DiffCutError("image contains non-finite values; pass RGB floats in [0, 1]")
    return t.permute(2, 0, 1)[None].contiguous()


def _int_label_tensor(labels):
    """numpy integer labels (any width, uint16 included) -> int64 torch tensor."""
    torch = _torch()
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DiffCutError(f"labels must be integer ids, got dtype {arr.dtype}")
    return torch.from_numpy(arr.astype(np.int64))


def _one_hot(labels, device):
    """(1, K, h, w) float32 one-hot masks in sorted label order, as the official pamr()."""
    torch = _torch()
    lab = labels if isinstance(labels, torch.Tensor) else _int_label_tensor(labels)
    if lab.ndim != 2:
        raise DiffCutError(f"labels must be an (H, W) label map, got shape {tuple(lab.shape)}")
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise DiffCutError(f"labels must be integer ids, got dtype {lab.dtype}")
    lab = lab.to(device)[None, None].to(torch.float32)
    return torch.cat([1.0 * (lab == v) for v in torch.unique(lab)], dim=1)


def _check_options(num_iter: int, dilations: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    if int(num_iter) < 0:
        raise DiffCutError(f"num_iter must be >= 0, got {num_iter}")
    dil = tuple(int(d) for d in dilations)
    if not dil or min(dil) < 1:
        raise DiffCutError(f"dilations must be positive integers, got {tuple(dilations)!r}")
    return int(num_iter), dil


def _pamr_tensor(image, labels, num_iter: int, dilations: Sequence[int]):
    """(1, K, H, W) refined soft masks as a torch tensor on the image's device."""
    torch = _torch()
    num_iter, dilations = _check_options(num_iter, dilations)
    img = _as_image_tensor(image)
    if isinstance(labels, torch.Tensor) and labels.device != img.device:
        img = img.to(labels.device)
    with torch.no_grad():
        mask = _one_hot(labels, img.device)
        mask = torch.nn.functional.interpolate(mask, size=img.size()[-2:], mode="bilinear", align_corners=True)
        weights = _affinity_weights(img, dilations)
        for _ in range(num_iter):
            mask = (_local(mask, _NEIGHBOURS, dilations) * weights).sum(2)
    return mask


def pamr_soft(
    image, labels, num_iter: int = defaults.PAMR_ITERATIONS, dilations: Sequence[int] = defaults.PAMR_DILATIONS
) -> np.ndarray:
    """PAMR soft masks before the argmax.

    Args:
        image: (H, W, 3) RGB float in [0, 1] (numpy or torch); the output has its size. The
            official evaluation first resizes the image to the mask size (bilinear,
            align_corners=False, no antialias); that is the caller's step.
        labels: (h, w) integer label map (numpy or torch); resized to (H, W) bilinearly
            (align_corners=True) when the sizes differ.
        num_iter: propagation steps.
        dilations: neighbour distances.

    Returns:
        (K, H, W) float32, channel k for the k-th smallest label value.
    """
    return _pamr_tensor(image, labels, num_iter, dilations)[0].cpu().numpy().astype(np.float32)


def pamr_refine(
    image, labels, num_iter: int = defaults.PAMR_ITERATIONS, dilations: Sequence[int] = defaults.PAMR_DILATIONS
) -> np.ndarray:
    """PAMR + argmax + 3x3 median filter, as DiffCut's evaluation.

    Returns:
        (H, W) int64 indices into the SORTED unique values of ``labels`` (not the label values
        themselves: for labels 0..K-1 without gaps they coincide).
    """
    torch = _torch()
    soft = _pamr_tensor(image, labels, num_iter, dilations)
    # (1, H, W) as the official code; the size-3 window over the length-1 axis (reflect)
    # repeats each value 3 times, which leaves the 3x3 median unchanged.
    ids = 1.0 * torch.argmax(soft, dim=1)
    return median_filter(ids.cpu().numpy(), 3).astype(np.int64)[0]
