"""Image reading in every shape OpenCV hands back, refusal of broken files, atomic writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffcut_edge.apps import io
from diffcut_edge.errors import DiffCutError


@pytest.fixture
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(cv2.resize(data.coffee(), (64, 48))[..., ::-1])  # BGR uint8


def test_colour_gray_rgba_and_16bit_all_come_back_bgr_uint8(tmp_path, photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = 7  # alpha must not leak into the colours
    deep = photo.astype(np.uint16) * 257  # 16-bit with the same 8 most significant bits
    for name, img in [("c.png", photo), ("g.png", gray), ("a.png", bgra), ("d.png", deep), ("c.bmp", photo)]:
        cv2.imwrite(str(tmp_path / name), img)
    assert np.array_equal(io.read_image(tmp_path / "c.png"), photo)
    assert np.array_equal(io.read_image(tmp_path / "c.bmp"), photo)
    g = io.read_image(tmp_path / "g.png")
    assert g.shape == photo.shape and np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 2], gray)
    assert np.array_equal(io.read_image(tmp_path / "a.png"), photo)
    d = io.read_image(tmp_path / "d.png")
    assert d.dtype == np.uint8 and np.array_equal(d, photo)


def test_one_pixel_image(tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), np.array([[[1, 2, 3]]], np.uint8))
    assert io.read_image(tmp_path / "one.png").tolist() == [[[1, 2, 3]]]


@pytest.mark.parametrize("case", ["empty", "truncated-jpg", "truncated-png", "garbage", "missing"])
def test_broken_files_raise_one_clear_error(tmp_path, photo, case):
    path = tmp_path / ("x.jpg" if "jpg" in case else "x.png")
    if case == "empty":
        path.write_bytes(b"")
        expected = "empty"
    elif case.startswith("truncated"):
        ok, buf = cv2.imencode(path.suffix, photo)
        path.write_bytes(buf.tobytes()[: len(buf) // 2])
        expected = "truncated"
    elif case == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
        expected = "decode"
    else:
        expected = "no such file"
    with pytest.raises(DiffCutError, match=expected) as err:
        io.read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_collect_skips_non_images_in_folders_and_expands_globs(tmp_path, photo):
    for name in ("b.png", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), photo)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    images, skipped = io.collect_image_paths([tmp_path])
    assert [p.name for p in images] == ["a.jpg", "b.png"] and [p.name for p in skipped] == ["notes.txt"]
    images, _ = io.collect_image_paths([str(tmp_path / "*.png"), tmp_path / "b.png"])
    assert [p.name for p in images] == ["b.png"]  # named twice, segmented once
    explicit, _ = io.collect_image_paths([tmp_path / "notes.txt"])
    assert [p.name for p in explicit] == ["notes.txt"]  # named explicitly: the reader will say why it fails
    with pytest.raises(DiffCutError, match="does not exist"):
        io.collect_image_paths([tmp_path / "nope.png"])
    with pytest.raises(DiffCutError, match="matches no file"):
        io.collect_image_paths([str(tmp_path / "*.tif")])


def test_labels_png_is_16_bit_and_round_trips(tmp_path):
    labels = np.arange(12, dtype=np.int64).reshape(3, 4) * 5000 % 65536
    path = io.write_labels_png(tmp_path / "l.png", labels)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.ndim == 2
    assert np.array_equal(io.read_labels_png(path), labels)
    for bad in (np.full((2, 2), -1), np.full((2, 2), 70000), np.zeros((2, 2), np.float32)):
        with pytest.raises(DiffCutError):
            io.write_labels_png(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()


def test_npz_round_trip(tmp_path):
    arrays = {"labels": np.arange(6).reshape(2, 3), "embeddings": np.ones((2, 4), np.float32)}
    path = io.save_npz(tmp_path / "r.npz", **arrays)
    with np.load(path) as d:
        assert set(d.files) == set(arrays) and all(np.array_equal(d[k], v) for k, v in arrays.items())


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the committed file has open()'s mode instead,
    so a web server, a container's user or a colleague can read the label maps and manifests."""
    import os
    import stat

    from diffcut_edge import atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = atomic.write_text(tmp_path / "atomic.txt", "x")
    labels = io.write_labels_png(tmp_path / "l.png", np.zeros((4, 4), np.int32))
    for path in (written, labels):
        assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
