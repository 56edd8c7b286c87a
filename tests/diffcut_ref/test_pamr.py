"""Reference PAMR (diffcut_ref.pamr): parity with the official outputs and behaviour on toy images."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch ([export] extra)")

from diffcut_edge.diffcut_ref.pamr import pamr_refine, pamr_soft  # noqa: E402
from diffcut_edge.errors import DiffCutError  # noqa: E402
from diffcut_edge.metrics import hungarian_miou  # noqa: E402


def conv_pamr_soft(image: np.ndarray, labels: np.ndarray, num_iter=10, dilations=(1, 2, 4, 8)) -> np.ndarray:
    """The official formulation, written with conv2d one-hot shift kernels, to check the slicing."""
    F = torch.nn.functional
    cells = [(r, c) for r in range(3) for c in range(3)]
    neighbours = [rc for rc in cells if rc != (1, 1)]

    def kernel(rcs, centre, value):
        k = torch.zeros(len(rcs), 1, 3, 3)
        for i, (r, c) in enumerate(rcs):
            k[i, 0, 1, 1] = centre
            k[i, 0, r, c] = value
        return k

    def local(x, k):
        b, n, h, w = x.shape
        x = x.reshape(b * n, 1, h, w)
        out = [F.conv2d(F.pad(x, [d] * 4, mode="replicate"), k, dilation=d) for d in dilations]
        return torch.cat(out, 1).view(b, n, -1, h, w)

    img = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    lab = torch.from_numpy(labels)[None, None].float()
    mask = torch.cat([1.0 * (lab == v) for v in torch.unique(lab)], dim=1)
    mask = F.interpolate(mask, size=img.shape[-2:], mode="bilinear", align_corners=True)
    std = local(img, kernel(cells, 0.0, 1.0)).std(2, keepdim=True)
    x = F.softmax((-local(img, kernel(neighbours, 1.0, -1.0)).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True), 2)
    copy = kernel(neighbours, 0.0, 1.0)
    for _ in range(num_iter):
        mask = (local(mask, copy) * x).sum(2)
    return mask[0].numpy()


def one_to_one(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


def step_image(h=128, w=128, edge=64) -> np.ndarray:
    img = np.full((h, w, 3), 0.2, dtype=np.float32)
    img[:, edge:] = (0.9, 0.7, 0.6)
    return img


# ----------------------------------------------------------------------------- parity


def test_pamr_refine_reproduces_official(planted):
    refined = pamr_refine(planted["image"], planted["official_labels"])
    official = planted["official_pamr"]
    assert refined.dtype == np.int64 and refined.shape == official.shape
    assert one_to_one(refined, official), f"{planted['name']}: PAMR partition differs from the official one"
    np.testing.assert_array_equal(refined, official)
    if planted["name"].startswith("blobs"):
        # Blobs follow image edges: after PAMR the over-segmented NCut labels match the truth.
        n_classes = int(planted["gt"].max()) + 1
        assert hungarian_miou([refined], [planted["gt"]], n_classes) >= 0.95


def test_soft_masks_equal_the_conv2d_formulation_bitwise():
    rng = np.random.default_rng(0)
    image = rng.random((40, 56, 3), dtype=np.float32)
    labels = rng.integers(0, 4, size=(10, 14))
    ours = pamr_soft(image, labels)
    assert ours.shape == (4, 40, 56) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, conv_pamr_soft(image, labels))


# ----------------------------------------------------------------------------- behaviour


def test_soft_masks_are_distributions():
    rng = np.random.default_rng(1)
    soft = pamr_soft(rng.random((32, 32, 3), dtype=np.float32), rng.integers(0, 3, size=(32, 32)))
    assert soft.min() >= 0
    np.testing.assert_allclose(soft.sum(0), 1.0, atol=1e-5)


def test_constant_image_keeps_straight_label_edges():
    image = np.full((128, 128, 3), 0.5, dtype=np.float32)
    labels = np.broadcast_to(np.arange(128) // 32, (128, 128)).copy()
    np.testing.assert_array_equal(pamr_refine(image, labels), labels)


def test_label_edge_moves_to_the_image_edge():
    image = step_image(edge=64)
    labels = np.zeros((128, 128), dtype=np.int64)
    labels[:, 58:] = 1
    refined = pamr_refine(image, labels)
    first_right = (refined == 1).argmax(axis=1)  # first column of label 1 in each row
    assert np.all(np.abs(first_right - 64) <= 1), f"label edge at columns {np.unique(first_right)}, image edge 64"


def test_ids_are_indices_into_sorted_labels_and_sizes_may_differ():
    # Labels {3, 7} at 32x32, image 64x96: masks resized to the image, ids 0 (for 3) and 1 (for 7).
    image = step_image(64, 96, edge=48)
    labels = np.full((32, 32), 7, dtype=np.int64)
    labels[:, :16] = 3
    refined = pamr_refine(image, labels)
    assert refined.shape == (64, 96)
    assert set(np.unique(refined)) == {0, 1}
    assert refined[:, :40].max() == 0 and refined[:, 56:].min() == 1


def test_bad_inputs_are_rejected():
    image = np.zeros((16, 16, 3), dtype=np.float32)
    with pytest.raises(DiffCutError, match="RGB"):
        pamr_refine(image[..., 0], np.zeros((16, 16), dtype=np.int64))
    with pytest.raises(DiffCutError, match="integer"):
        pamr_refine(image, np.zeros((16, 16), dtype=np.float32))
    with pytest.raises(DiffCutError, match="dilations"):
        pamr_refine(image, np.zeros((16, 16), dtype=np.int64), dilations=())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for torch")
def test_cuda_labels_give_the_cpu_result():
    image = step_image(edge=64)
    labels = np.zeros((128, 128), dtype=np.int64)
    labels[:, 58:] = 1
    on_gpu = pamr_refine(torch.from_numpy(image).cuda(), torch.from_numpy(labels).cuda())
    np.testing.assert_array_equal(on_gpu, pamr_refine(image, labels))
