"""Image reading in every shape OpenCV hands back, refusal of broken files, atomic writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import images as image_io


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
    assert np.array_equal(image_io.read_image(tmp_path / "c.png"), photo)
    assert np.array_equal(image_io.read_image(tmp_path / "c.bmp"), photo)
    g = image_io.read_image(tmp_path / "g.png")
    assert g.shape == photo.shape and np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 2], gray)
    assert np.array_equal(image_io.read_image(tmp_path / "a.png"), photo)
    d = image_io.read_image(tmp_path / "d.png")
    assert d.dtype == np.uint8 and np.array_equal(d, photo)


def test_one_pixel_image(tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), np.array([[[1, 2, 3]]], np.uint8))
    assert image_io.read_image(tmp_path / "one.png").tolist() == [[[1, 2, 3]]]


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
        image_io.read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_jpeg_cut_short_and_closed_again_is_refused_not_grey_filled(tmp_path, photo):
    """What a failed copy often leaves: half the data, then an end marker. OpenCV and Pillow decode it
    with a grey bottom (a libjpeg warning on stderr); read_image says the file is damaged."""
    ok, buf = cv2.imencode(".jpg", photo)
    data = buf.tobytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV takes it
    with pytest.raises(DiffCutError, match="the JPEG is damaged") as err:
        image_io.read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    # Whole JPEGs (baseline, progressive, grayscale, CMYK) read as OpenCV reads them.
    from PIL import Image

    rgb = photo[:, :, ::-1]
    for name, save in [("base.jpg", {}), ("prog.jpg", {"progressive": True})]:
        Image.fromarray(rgb).save(tmp_path / name, quality=90, **save)
        assert np.array_equal(image_io.read_image(tmp_path / name), cv2.imread(str(tmp_path / name)))
    Image.fromarray(rgb).convert("L").save(tmp_path / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert image_io.read_image(tmp_path / "gray.jpg").shape == photo.shape
    assert image_io.read_image(tmp_path / "cmyk.jpg").shape == photo.shape


def test_collect_skips_non_images_in_folders_and_expands_globs(tmp_path, photo):
    for name in ("b.png", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), photo)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub").mkdir()
    images, skipped = image_io.collect_image_paths([tmp_path])
    assert [p.name for p in images] == ["a.jpg", "b.png"] and [p.name for p in skipped] == ["notes.txt"]
    images, _ = image_io.collect_image_paths([str(tmp_path / "*.png"), tmp_path / "b.png"])
    assert [p.name for p in images] == ["b.png"]  # named twice, segmented once
    explicit, _ = image_io.collect_image_paths([tmp_path / "notes.txt"])
    assert [p.name for p in explicit] == ["notes.txt"]  # named explicitly: the reader will say why it fails
    with pytest.raises(DiffCutError, match="does not exist"):
        image_io.collect_image_paths([tmp_path / "nope.png"])
    with pytest.raises(DiffCutError, match="matches no file"):
        image_io.collect_image_paths([str(tmp_path / "*.tif")])


def test_labels_png_is_16_bit_and_round_trips(tmp_path):
    labels = np.arange(12, dtype=np.int64).reshape(3, 4) * 5000 % 65536
    path = image_io.write_labels_png(tmp_path / "l.png", labels)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.ndim == 2
    assert np.array_equal(image_io.read_labels_png(path), labels)
    for bad in (np.full((2, 2), -1), np.full((2, 2), 70000), np.zeros((2, 2), np.float32)):
        with pytest.raises(DiffCutError):
            image_io.write_labels_png(tmp_path / "bad.png", bad)
    assert not (tmp_path / "bad.png").exists()


def test_npz_round_trip(tmp_path):
    arrays = {"labels": np.arange(6).reshape(2, 3), "embeddings": np.ones((2, 4), np.float32)}
    path = image_io.save_npz(tmp_path / "r.npz", **arrays)
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
    labels = image_io.write_labels_png(tmp_path / "l.png", np.zeros((4, 4), np.int32))
    for path in (written, labels):
        assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


# ------------------------------------------------------------------ hostile files
def _png_bomb(path, side: int = 30000) -> None:
    """A PNG whose header declares side x side grey pixels, with a tiny (short) pixel stream."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(b"\x00" * (side + 1) * 16, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused_from_its_header_within_bounded_memory(tmp_path):
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DiffCutError, match=r"30000x30000 pixels is over the limit .*DIFFCUT_MAX_IMAGE_PIXELS"):
        image_io.read_image(bomb)
    # The whole CLI under a 2 GB address-space limit (an 8 GB board has less free): one line, exit 2.
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
        "from diffcut_edge import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "segment",
            str(bomb),
            "--model-dir",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "DecompressionBomb" not in proc.stderr


def test_the_pixel_limit_can_be_raised(tmp_path, monkeypatch):
    from diffcut_edge.runtime.preprocess import MAX_PIXELS_ENV, check_frame

    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((20, 60, 3), np.uint8))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # one limit for files and frames (runtime.preprocess)
    with pytest.raises(DiffCutError, match="60x20 pixels is over the limit of 1000"):
        image_io.read_image(path)
    with pytest.raises(DiffCutError, match="60x20 pixels is over the limit of 1000"):
        check_frame(np.zeros((20, 60, 3), np.uint8))  # frames from the API, video, Triton requests
    monkeypatch.setenv(MAX_PIXELS_ENV, "1200")
    assert image_io.read_image(path).shape == (20, 60, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(DiffCutError, match="whole number of pixels"):
        image_io.read_image(path)


def test_a_file_name_that_is_not_utf8_is_read_not_crashed_on(tmp_path):
    import os
    import subprocess
    import sys

    folder = os.fsencode(tmp_path)
    name = folder + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), 77, np.uint8))
    with open(name, "wb") as f:
        f.write(buf.tobytes())
    # In a child: before the fix, cv2.imread on this name ended the process with SIGSEGV.
    code = (
        "import os, sys; from diffcut_edge.runtime import images as image_io; "
        "img = image_io.read_image(os.fsdecode(sys.argv[1].encode('utf-8', 'surrogateescape'))); "
        "print(img.shape, int(img[0, 0, 0]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, os.fsdecode(name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "(8, 8, 3) 77", proc.stderr


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_tiffs_with_every_orientation_are_read_upright(tmp_path, orientation):
    from PIL import Image

    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)  # as on disk (BGR here)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.tif"
    Image.fromarray(stored[..., ::-1]).save(path, exif=exif)
    image = image_io.read_image(path)
    np.testing.assert_array_equal(image, image_io._UPRIGHT[orientation](stored))
    np.testing.assert_array_equal(image_io.read_image(path, apply_orientation=False), stored)


def test_output_stems_never_collide():
    from pathlib import Path

    from diffcut_edge.apps.batch import output_stems

    paths = [Path("a/x.jpg"), Path("b/x.png"), Path("c/x_2.png"), Path("d/X.png"), Path("e/x_3.tif")]
    stems = output_stems(paths)
    assert len({s.casefold() for s in stems}) == len(paths), stems
    assert stems[0] == "x" and stems[2] == "x_2" and stems[4] == "x_3"  # a file's own stem is kept when free


def test_an_interrupt_inside_fsync_leaves_no_temporary_and_strays_are_cleared(tmp_path, monkeypatch):
    from diffcut_edge import atomic

    target = tmp_path / "out.png"
    stray = tmp_path / f".out{atomic.TEMP_MARK}killed.png"  # what a SIGKILL mid-write leaves
    stray.write_bytes(b"half")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [stray.name]  # only the old stray, no new one
    monkeypatch.undo()
    atomic.write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # the next success clears it
