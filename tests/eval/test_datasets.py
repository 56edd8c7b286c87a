"""Dataset layouts, label decoding and the protocol transforms (numpy/cv2 only)."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.eval import datasets
from helpers.eval_fixtures import RAW_VALUES, SIZE, voc_colormap, write_dataset, write_palette_png


# ------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("name", datasets.DATASETS)
def test_each_layout_lists_pairs_and_maps_labels(tmp_path, name):
    root = write_dataset(name, tmp_path / name, n_images=3)
    samples = datasets.list_samples(name, root)
    assert len(samples) == 3
    assert len(datasets.list_samples(name, root, limit=2)) == 2
    spec = datasets.get_spec(name)
    r0, r1, ignore = RAW_VALUES[name]
    for s in samples:
        assert s.image.is_file() and s.label.is_file()
        raw = datasets.read_label(s.label)
        assert raw.shape == (SIZE, SIZE) and raw.ndim == 2
        found = set(np.unique(raw).tolist())
        assert found == {r0, r1} | ({ignore} if ignore is not None else set())
        classes = spec.map_labels(raw)
        assert classes[-1, 0] != classes[-1, -1]  # the two regions are two classes
        assert classes[-1, 0] >= 0 and classes[-1, -1] >= 0
        if ignore is not None:
            assert (classes[0] == datasets.IGNORE).all()
        image = datasets.read_sample_image(s.image)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8


def test_pascal_voc_d2_layout_is_detected(tmp_path):
    import cv2

    from helpers.eval_fixtures import scene

    bgr, regions = scene(64)
    (tmp_path / "images" / "validation").mkdir(parents=True)
    (tmp_path / "annotations_pascal20" / "validation").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "validation" / "a.jpg"), bgr)
    cv2.imwrite(
        str(tmp_path / "annotations_pascal20" / "validation" / "a.png"),
        np.where(regions == 0, 14, 255).astype(np.uint8),
    )  # person, background
    assert datasets.detect_layout("voc", tmp_path) == "pascal_voc_d2"
    (sample,) = datasets.list_samples("voc", tmp_path)
    spec = datasets.get_spec("voc", layout="pascal_voc_d2")
    classes = spec.map_labels(datasets.read_label(sample.label))
    assert set(np.unique(classes).tolist()) == {14, 20}
    assert spec.class_names[14] == "person" and spec.class_names[20] == "background"


def test_missing_folder_and_label_are_actionable(tmp_path):
    with pytest.raises(DiffCutError, match="eval.md"):
        datasets.list_samples("ade20k", tmp_path)
    root = write_dataset("ade20k", tmp_path / "a", n_images=2)
    next((root / "annotations" / "validation").iterdir()).unlink()
    with pytest.raises(DiffCutError, match="missing"):
        datasets.list_samples("ade20k", root)
    with pytest.raises(DiffCutError, match="unknown dataset"):
        datasets.get_spec("imagenet")


def test_file_list_restricts_and_orders(tmp_path):
    root = write_dataset("coco-stuff", tmp_path / "coco", n_images=3)
    names = tmp_path / "subset.txt"
    names.write_text("img002\nimg000\n")
    assert [s.name for s in datasets.list_samples("coco-stuff", root, file_list=names)] == ["img002", "img000"]


def test_label_mappings_follow_the_documented_rules():
    voc = datasets.get_spec("voc")
    assert voc.map_labels(np.array([0, 1, 20, 255])).tolist() == [20, 0, 19, 20]  # void -> background
    assert datasets.get_spec("voc", ignore_void=True).map_labels(np.array([255])).tolist() == [-1]
    ctx = datasets.get_spec("context")
    assert ctx.map_labels(np.array([0, 58, 255])).tolist() == [0, 58, 59]
    city = datasets.get_spec("cityscapes")
    assert city.map_labels(np.array([0, 6, 7, 33, 255])).tolist() == [-1, -1, 0, 26, -1]
    ade = datasets.get_spec("ade20k")
    assert ade.map_labels(np.array([0, 1, 150])).tolist() == [-1, 0, 149]
    obj = datasets.get_spec("coco-object")
    # person (id 1), toothbrush (id 90) -> 0 and 79; stuff and unlabeled -> background 80
    assert obj.map_labels(np.array([0, 89, 91, 181, 255])).tolist() == [0, 79, 80, 80, 80]
    stuff = datasets.get_spec("coco-stuff")
    fine = np.array([0, 1, 148, 156, 105, 255])  # person, bicycle, road, sky-other, clouds, unlabeled
    coarse = stuff.map_labels(fine)
    names = [stuff.class_names[c] if c >= 0 else None for c in coarse]
    assert names == ["person", "vehicle", "ground", "sky", "sky", None]


def test_coco_stuff_groups_partition_the_171_classes():
    ids = [i for group in datasets.COCO_STUFF_COARSE.values() for i in group]
    assert len(datasets.COCO_STUFF_COARSE) == 27
    assert len(ids) == len(set(ids)) == 171
    assert set(ids) == set(datasets.COCO_THING_IDS) | set(range(92, 183))


def test_user_label_map(tmp_path):
    path = tmp_path / "map.json"
    path.write_text('{"num_classes": 3, "background": 2, "map": {"10": 0, "20": 1, "0": 2}}')
    spec = datasets.spec_from_file(path)
    assert spec.map_labels(np.array([10, 20, 0, 7])).tolist() == [0, 1, 2, -1]
    assert spec.background == 2
    path.write_text('{"num_classes": 2, "map": {"1": 5}}')
    with pytest.raises(DiffCutError, match="classes must lie"):
        datasets.spec_from_file(path)


# -------------------------------------------------------------------- label files
def test_palette_png_reads_indices_not_colours(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    indices = rng.choice([0, 1, 7, 15, 20, 255], size=(37, 53)).astype(np.uint8)
    path = tmp_path / "voc.png"
    write_palette_png(path, indices, voc_colormap())
    got = datasets.read_label(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, indices)
    np.testing.assert_array_equal(got, np.array(Image.open(path)))  # what PIL (and torchvision) read


def test_palette_that_repeats_a_colour_still_gives_its_indices(tmp_path):
    # Indexed PNGs are read as indices (Pillow), not colours mapped back through the palette:
    # two classes drawn in one colour stay two classes (the hand-written reader refused this).
    palette = voc_colormap()
    palette[3] = palette[1]
    path = tmp_path / "dup.png"
    indices = np.array([[1, 3], [0, 255]], dtype=np.uint8)
    write_palette_png(path, indices, palette)
    np.testing.assert_array_equal(datasets.read_label(path), indices)


def test_colour_label_png_is_refused(tmp_path):
    import cv2

    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DiffCutError, match="is a RGB image; expected one channel"):
        datasets.read_label(path)


# ---------------------------------------------------------------------- protocol
@pytest.mark.parametrize(
    "shape, expected",
    [
        ((375, 500), (0, 63, 374)),  # (500 - 374) / 2 = 63
        ((100, 160), (0, 30, 99)),  # 30.5 rounds half to even -> 30; short side 0.5 -> 0
        ((100, 162), (0, 32, 99)),  # 31.5 -> 32
        ((163, 100), (32, 0, 99)),  # 32 exactly
    ],
)
def test_center_crop_box_matches_torchvision_rounding(shape, expected):
    assert datasets.center_crop_box(*shape) == expected


def test_protocol_transforms_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 30, size=(141, 203)).astype(np.uint8)
    image = rng.integers(0, 256, size=(141, 203, 3)).astype(np.uint8)
    top, left, side = datasets.center_crop_box(141, 203)
    for resolution in (256, 96):
        # Labels: torchvision Resize(nearest-exact) to R, then F.interpolate's default nearest to 128.
        t = torch.from_numpy(raw[top : top + side, left : left + side].copy())[None, None].float()
        t = F.interpolate(t, size=(resolution, resolution), mode="nearest-exact")
        t = F.interpolate(t, size=(128, 128))
        np.testing.assert_array_equal(datasets.protocol_labels(raw, resolution), t[0, 0].numpy().astype(np.uint8))
        # Open vocabulary: nearest-exact to R, then nearest-exact to the mask size (official 1024).
        t = torch.from_numpy(raw[top : top + side, left : left + side].copy())[None, None].float()
        t = F.interpolate(t, size=(resolution, resolution), mode="nearest-exact")
        t = F.interpolate(t, size=(300, 300), mode="nearest-exact")
        np.testing.assert_array_equal(
            datasets.protocol_labels(raw, resolution, (300, 300), exact_mask=True), t[0, 0].numpy().astype(np.uint8)
        )
        # Image: RGB / 255, then bilinear (align_corners=False, no antialias).
        rgb = torch.from_numpy(image[top : top + side, left : left + side, ::-1].copy()).permute(2, 0, 1)[None] / 255.0
        ref = F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", align_corners=False)
        got = datasets.protocol_image(image, resolution)
        np.testing.assert_allclose(got, ref[0].permute(1, 2, 0).numpy(), atol=2e-6)


def test_eval_loop_runs_without_torch(tmp_path):
    """The engine-side eval (datasets, protocol, metrics, bench) imports no torch."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['torch'] = None\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from pathlib import Path\n"
        "from diffcut_edge.eval import bench, protocol\n"
        "from helpers.eval_fixtures import OraclePredictor, write_dataset\n"
        f"root = write_dataset('ade20k', Path({str(tmp_path)!r}), n_images=1)\n"
        "print(protocol.run_eval('ade20k', root, OraclePredictor(), progress=False).miou)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == 1.0


def test_curated_coco_list_is_the_official_subset(tmp_path):
    """--file-list curated: the shipped list of the official evaluation (2175 ids of val2017)."""
    import hashlib

    path = datasets.CURATED_LISTS["coco-object"]
    # The official file byte for byte (sha256 of PaulCouairon/DiffCut aa16df4's copy).
    assert (
        hashlib.sha256(path.read_bytes()).hexdigest()
        == "90cdc2116a1c2bef94bc1cefeb98a672444fddaa44b8370127016d98b16108a4"
    )
    names = path.read_text(encoding="utf-8").split()
    assert len(names) == len(set(names)) == 2175 and all(len(n) == 12 and n.isdigit() for n in names)
    root = write_dataset("coco-object", tmp_path / "coco", n_images=1)
    with pytest.raises(DiffCutError, match="000000000139"):  # its first image is not in this folder
        datasets.list_samples("coco-object", root, file_list="curated")
    with pytest.raises(DiffCutError, match="COCO subset"):
        datasets.list_samples("voc", write_dataset("voc", tmp_path / "voc", n_images=1), file_list="curated")
