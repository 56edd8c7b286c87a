"""Preprocessing on every tested namespace: PyTorch-exact bilinear resize, frame types, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.preprocess import image_to_rgb_float, preprocess, resize_bilinear, resize_nearest

torch = pytest.importorskip("torch", reason="torch is the yardstick for the resize semantics")
F = torch.nn.functional


def _torch_bilinear(image_hwc: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image_hwc)).permute(2, 0, 1)[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def _torch_reference_batch(frames_bgr_uint8: list[np.ndarray], r: int) -> np.ndarray:
    """The official chain: RGB float in [0, 1], then F.interpolate bilinear (no antialias)."""
    out = []
    for f in frames_bgr_uint8:
        rgb = torch.from_numpy(np.ascontiguousarray(f[..., ::-1])).float() / 255.0
        out.append(F.interpolate(rgb.permute(2, 0, 1)[None], size=(r, r), mode="bilinear", align_corners=False)[0])
    return torch.stack(out).numpy()


# Up- and down-scaling, odd sizes, exact 2x (where cv2.INTER_LINEAR takes an area shortcut),
# extreme aspect ratios and identity.
SIZES = [
    ((37, 53), (64, 64)),
    ((300, 451), (64, 64)),
    ((128, 128), (64, 64)),
    ((99, 77), (256, 256)),
    ((17, 1000), (33, 129)),
    ((1, 5), (7, 3)),
    ((64, 64), (64, 64)),
    ((255, 257), (128, 128)),
]


@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_resize_bilinear_matches_torch(in_size, out_size, ns):
    image = np.random.default_rng(sum(in_size)).random((*in_size, 3), dtype=np.float32)
    np.testing.assert_allclose(
        ns.get(resize_bilinear(ns.put(image), out_size)), _torch_bilinear(image, out_size), rtol=0, atol=1e-6
    )


def test_cv2_linear_is_not_torch_on_uint8_downscale():
    """Why the resize is hand-written: cv2's fixed-point uint8 path departs from torch."""
    import cv2

    frame = np.random.default_rng(0).integers(0, 256, (301, 451, 3), dtype=np.uint8)
    ours = preprocess(frame, 64)[0].transpose(1, 2, 0)
    ref = _torch_reference_batch([frame], 64)[0].transpose(1, 2, 0)
    via_cv2 = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_LINEAR)[..., ::-1] / np.float32(255)
    assert np.abs(ours - ref).max() < 1e-6
    assert np.abs(via_cv2 - ref).max() > 1e-3


@pytest.mark.parametrize("shape", [(480, 640, 3), (97, 131, 3), (64, 64, 3), (40, 30, 3)])
def test_preprocess_uint8_bgr_matches_official_chain(shape, ns):
    frames = [np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8) for i in range(2)]
    batch = ns.get(preprocess([ns.put(f) for f in frames], 64))
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, _torch_reference_batch(frames, 64), rtol=0, atol=1e-6)


def test_numpy_batches_are_c_contiguous():
    frame = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert preprocess([frame, frame], 64).flags.c_contiguous  # what the ONNX Runtime binding wants


def test_frames_of_different_sizes_and_4d_arrays(ns):
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (50, 70, 3), np.uint8), rng.integers(0, 256, (90, 40, 3), np.uint8)
    batch = ns.get(preprocess([ns.put(a), ns.put(b)], 64))
    np.testing.assert_array_equal(batch[0], ns.get(preprocess(ns.put(a), 64))[0])
    np.testing.assert_array_equal(batch[1], ns.get(preprocess(ns.put(b), 64))[0])
    stacked = np.stack([a, a[::-1]])
    np.testing.assert_array_equal(
        ns.get(preprocess(ns.put(stacked), 64)), ns.get(preprocess([ns.put(a), ns.put(a[::-1])], 64))
    )


def test_other_frame_types_agree_with_uint8_bgr(ns):
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)

    def rgb(frame, **kw):
        return ns.get(image_to_rgb_float(ns.put(frame), **kw))

    ref = rgb(bgr)
    np.testing.assert_allclose(ref, bgr[..., ::-1] / np.float32(255), atol=1e-7)
    # BGRA: alpha dropped
    bgra = np.concatenate([bgr, rng.integers(0, 256, (45, 61, 1), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(rgb(bgra), ref)
    # uint16 with the same relative values (x * 257 maps 255 to 65535 exactly)
    np.testing.assert_allclose(rgb(bgr.astype(np.uint16) * 257), ref, atol=1e-6)
    # float BGR in [0, 1]; and RGB order on request
    np.testing.assert_allclose(rgb(bgr / np.float32(255)), ref, atol=1e-7)
    np.testing.assert_allclose(rgb(np.ascontiguousarray(bgr[..., ::-1]), channel_order="rgb"), ref)
    # gray (H, W) and (H, W, 1): the value repeated in R, G, B
    gray = bgr[..., 1]
    g = rgb(gray)
    assert g.shape == (45, 61, 3)
    np.testing.assert_array_equal(g[..., 0], g[..., 2])
    np.testing.assert_array_equal(rgb(gray[..., None]), g)
    assert ns.get(preprocess(ns.put(gray), 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    "frame, message",
    [
        (None, "None"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10,), np.uint8), r"\(H, W\)"),
        (np.zeros((10, 10, 2), np.uint8), r"got \(10, 10, 2\)"),
        (np.zeros((4, 4, 3), np.int64), "unsupported image dtype int64"),
        (np.full((4, 4, 3), 200.0, np.float32), "divide 0..255 images by 255"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        ("frame.jpg", "got str"),
        ([np.zeros((8, 8, 3), np.uint8), "frame.jpg"], "expected an image array"),
    ],
)
def test_bad_frames_are_refused(frame, message):
    with pytest.raises(DiffCutError, match=message):
        preprocess(frame, 64)


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 2), np.uint8), r"got \(10, 10, 2\)"),
        (np.full((4, 4, 3), 200.0, np.float32), "divide 0..255 images by 255"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "unsupported image dtype"),
    ],
)
def test_bad_frames_are_refused_on_every_namespace(frame, message, ns):
    with pytest.raises(DiffCutError, match=message):
        preprocess(ns.put(frame), 64)


def test_bad_batch_and_options_are_refused():
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DiffCutError, match="empty list"):
        preprocess([], 64)
    with pytest.raises(DiffCutError, match="resolution"):
        preprocess(frame, 0)
    with pytest.raises(DiffCutError, match="channel_order"):
        image_to_rgb_float(frame, channel_order="bgra")


@pytest.mark.parametrize(
    "in_size, out_size",
    [((16, 16), (128, 128)), ((128, 128), (480, 640)), ((37, 53), (20, 21)), ((128, 128), (97, 1001))],
)
def test_resize_nearest_matches_torch(in_size, out_size, ns):
    labels = np.random.default_rng(3).integers(0, 50, in_size).astype(np.int32)
    ref = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=out_size, mode="nearest")
    out = ns.get(resize_nearest(ns.put(labels), out_size))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref[0, 0].numpy().astype(np.int32))
