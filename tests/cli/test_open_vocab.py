"""The open-vocabulary commands end to end: export-vocab, segment with the folder's vocabulary or
--classes (<stem>_segments.json covering every id of the label PNG, names on the overlay), and bad
input as one line with nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diffcut_edge.runtime import images as image_io
from diffcut_edge.runtime.vocabulary import load_vocabulary
from helpers.fake_segmenter import run_cli


@pytest.fixture(scope="module")
def model(vocab_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-vocab") / "model"
    shutil.copytree(vocab_model_dir, folder)
    return folder


def _segments(out, stem):
    return json.loads((out / f"{stem}_segments.json").read_text(encoding="utf-8"))


def test_segment_writes_the_classes_of_every_segment(model, photo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["segment", str(photo_dir), "--model-dir", str(model), "--out", str(out), "--backend", "ort-cpu"], capsys
    )
    assert code == 0, err
    for png in sorted(photo_dir.glob("*.png")):
        doc = _segments(out, png.stem)
        labels = image_io.read_labels_png(out / f"{png.stem}_labels.png")
        assert doc["vocabulary"] == "voc" and doc["num_classes"] == 21
        assert [s["id"] for s in doc["segments"]] == sorted(int(i) for i in np.unique(labels))
        assert sum(s["area"] for s in doc["segments"]) == labels.size
        for s in doc["segments"]:
            assert set(s) == {"id", "class_index", "class_name", "score", "area", "bbox", "pooling", "rle"}
            assert 0 <= s["class_index"] < 21 and 0.0 < s["score"] <= 1.0


def test_classes_at_run_time_and_names_on_the_overlay(model, photo_dir, tmp_path, capsys):
    image = sorted(photo_dir.glob("*.png"))[0]
    typed = tmp_path / "typed"
    code, stdout, err = run_cli(
        [
            "segment",
            str(image),
            "--model-dir",
            str(model),
            "--out",
            str(typed),
            "--backend",
            "ort-cpu",
            "--classes",
            "cat, sofa, window",
            "--overlay-format",
            "png",
        ],
        capsys,
    )
    assert code == 0, err
    doc = _segments(typed, image.stem)
    assert doc["vocabulary"] == "run-time" and doc["num_classes"] == 3
    assert {s["class_name"] for s in doc["segments"]} <= {"cat", "sofa", "window"}
    assert any(name in stdout for name in ("(cat", "(sofa", "(window", ", sofa", ", window"))
    import cv2

    from diffcut_edge.apps.overlay import OverlayStyle, annotate

    frame = image_io.read_image(image)
    labels = image_io.read_labels_png(typed / f"{image.stem}_labels.png")
    overlay = cv2.imread(str(typed / f"{image.stem}_overlay.png"))
    unnamed = annotate(frame, labels, (), OverlayStyle(tint_largest=False))
    assert not np.array_equal(overlay, unnamed)  # the names are drawn on it


@pytest.mark.parametrize("classes, message", [("", "empty name"), ("cat, Cat", "repeats class 1")])
def test_bad_classes_are_one_line(model, photo_dir, tmp_path, capsys, classes, message):
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["segment", str(photo_dir), "--model-dir", str(model), "--out", str(out), "--classes", classes], capsys
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_classes_without_a_vocabulary_say_what_to_do(tiny_model_dir, photo_dir, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "segment",
            str(photo_dir),
            "--model-dir",
            str(tiny_model_dir("sdxl", 256, "fp32")),
            "--out",
            str(tmp_path / "o"),
            "--classes",
            "cat",
        ],
        capsys,
    )
    assert code == 2 and "export-vocab" in err and len(err.strip().splitlines()) == 1


def test_export_vocab_cli_and_a_bad_file_writes_nothing(model, tiny_clip_dir, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    before = (folder / "manifest.json").read_bytes()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("chat\nfen\xeatre\n".encode("latin-1"))
    code, _, err = run_cli(
        ["export-vocab", "--model-dir", str(folder), "--clip", f"local-dir:{tiny_clip_dir}", "--vocab", str(bad)],
        capsys,
    )
    assert code == 2 and "not UTF-8 text" in err and len(err.strip().splitlines()) == 1
    assert (folder / "manifest.json").read_bytes() == before
    good = tmp_path / "mine.txt"
    good.write_text("chat, cat\nfenêtre, window\n", encoding="utf-8")
    code, stdout, err = run_cli(
        [
            "export-vocab",
            "--model-dir",
            str(folder),
            "--clip",
            f"local-dir:{tiny_clip_dir}",
            "--vocab",
            str(good),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert "added the vocabulary mine.txt (2 classes" in stdout
    code, _, err = run_cli(["export-vocab", "--model-dir", str(folder), "--clip", "local-dir:/no/such/clip"], capsys)
    assert code == 2 and "open_clip_config.json" in err


def test_make_tiny_clip_cli(tmp_path, capsys):
    from helpers.clip import ensure_open_clip

    ensure_open_clip()
    code, stdout, _ = run_cli(["models", "make-tiny-clip", "--out", str(tmp_path / "c")], capsys)
    assert code == 0 and "--clip local-dir:" in stdout
    assert (tmp_path / "c" / "open_clip_config.json").is_file()


@pytest.mark.slow
def test_ten_thousand_classes_typed_at_run_time(model, photo_dir):
    """10 000 classes (140 000 prompts) go through the text tower in bounded chunks (what bounds the
    memory: a chunk's prompts, then one averaged row per synonym), then every segment is named."""
    from diffcut_edge.runtime import labeling
    from diffcut_edge.runtime.preprocess import preprocess

    labeler = labeling.SegmentLabeler.from_model_dir(model)
    session = labeler._session(labeling.TEXT_NAME)
    sizes = []

    class Recording:
        def run(self, names, feed):
            sizes.append(len(feed["tokens"]))
            return session.run(names, feed)

    labeler._sessions[labeling.TEXT_NAME] = Recording()
    bank = labeler.text_bank([f"object number {i}" for i in range(10_000)])
    assert bank.embeddings.shape == (10_000, 32) and len(bank.class_names) == 10_000
    assert sum(sizes) == 140_000 and max(sizes) == labeling.SYNONYMS_PER_TEXT_CALL * 14
    labeler.bank = bank
    frame = image_io.read_image(sorted(photo_dir.glob("*.png"))[0])
    labels = np.zeros(frame.shape[:2], np.int32)
    labels[:, frame.shape[1] // 2 :] = 1
    named = labeler.label(preprocess([frame], 256), labels)
    assert [s.id for s in named] == [0, 1] and all(s.class_name.startswith("object number") for s in named)


def test_video_frames_are_named_and_the_overlay_shows_it(model, photos):
    """iter_segmented (video, webcam) names each frame's segments; the tracked overlay writes them."""
    from diffcut_edge.apps.overlay import annotate
    from diffcut_edge.apps.pipeline import iter_segmented
    from diffcut_edge.apps.tracking import TrackedOverlay
    from diffcut_edge.runtime.segmenter import Segmenter

    frames = [np.ascontiguousarray((p[:, :, ::-1] * 255).round().astype(np.uint8)) for p in photos[:2]]
    draw = TrackedOverlay(track=True)
    with Segmenter.from_model_dir(model, backend="ort-cpu", classes="cat, sofa") as seg:
        items = list(iter_segmented(frames, seg, every=2))
        assert [i.reused_features for i in items] == [False, True]
        for item in items:
            ids = sorted(int(i) for i in np.unique(item.result.labels))
            assert [s.id for s in item.result.segments] == ids
            assert "label" in item.result.timings
            drawn = draw(item.frame, item.result)
            assert not np.array_equal(drawn, annotate(item.frame, draw.last_labels, (), draw.style))
            assert {n.id for n in draw.last_names} <= set(np.unique(draw.last_labels).tolist())


# ------------------------------------------------------------------ eval --open-vocab
def _eval_open_vocab(capsys, root, dataset, out, *extra):
    code, stdout, err = run_cli(
        [
            "eval",
            "--dataset",
            dataset,
            "--root",
            str(root),
            "--open-vocab",
            "--mask-size",
            "128",
            "--out",
            str(out),
            "-q",
            *extra,
        ],
        capsys,
    )
    assert code == 0, err
    return json.loads(out.read_text()), stdout


@pytest.mark.slow
def test_eval_open_vocab_engine_agrees_with_the_reference(model, tiny_pipeline_dir, tiny_clip_dir, tmp_path, capsys):
    """The exported encoder + ONNX CLIP and the reference (hooked UNet, torch NCut/PAMR, open_clip
    associate_label) score the official open-vocabulary protocol alike."""
    from helpers.eval_fixtures import write_dataset

    root = write_dataset("voc", tmp_path / "voc", n_images=2)
    engine, stdout = _eval_open_vocab(
        capsys, root, "voc", tmp_path / "engine.json", "--model-dir", str(model), "--backend", "ort-cpu"
    )
    assert "voc: mIoU" in stdout and "dataset mIoU" in stdout
    settings = engine["settings"]
    assert settings["protocol"] == "open-vocabulary" and settings["refine"] is True
    assert settings["text_bank"] == "exported text bank" and settings["clip"] == f"local-dir:{tiny_clip_dir}"
    assert settings["mask_size"] == [128, 128] and settings["resolution"] == 256
    assert set(engine["per_class_iou"]) == set(load_vocabulary("voc").class_names)
    assert 0.0 <= engine["miou"] <= 1.0 and engine["dataset_miou"] is not None
    reference, _ = _eval_open_vocab(
        capsys,
        root,
        "voc",
        tmp_path / "reference.json",
        "--model-dir",
        str(model),
        "--reference",
        "--model",
        str(tiny_pipeline_dir("sdxl")),
    )
    assert reference["settings"]["backend"] == "reference" and reference["settings"]["clip"] == settings["clip"]
    # The random tiny CLIP names few segments right, so the class maps themselves are compared in
    # tests/eval/test_open_vocab.py; here the two command paths must report alike.
    assert abs(reference["miou"] - engine["miou"]) < 0.02
    assert abs(reference["pixel_accuracy"] - engine["pixel_accuracy"]) < 0.02


def test_eval_open_vocab_embeds_another_dataset_vocabulary_without_torch(model, tmp_path, capsys):
    """The folder's bank is VOC: Context's 60 classes are embedded with the folder's text tower."""
    from helpers.eval_fixtures import write_dataset

    root = write_dataset("context", tmp_path / "ctx", n_images=3)
    data, _ = _eval_open_vocab(
        capsys,
        root,
        "context",
        tmp_path / "ctx.json",
        "--model-dir",
        str(model),
        "--backend",
        "ort-cpu",
        "--no-refine",
        "--batch",
        "2",
    )
    assert data["settings"]["text_bank"] == "embedded now with the folder's text tower"
    assert data["settings"]["refine"] is False and data["settings"]["pamr"] is None
    assert len(data["per_class_iou"]) == 60 and data["num_images"] == 3
    assert sorted(data["per_image"]) == ["img000", "img001", "img002"]
    assert data["miou"] == pytest.approx(np.mean(list(data["per_image"].values())))


def test_eval_open_vocab_bad_input_is_one_line(model, vocab_model_dir, tiny_model_dir, tmp_path, capsys):
    from helpers.eval_fixtures import write_dataset

    root = write_dataset("voc", tmp_path / "voc", n_images=1)
    small = tmp_path / "small.txt"
    small.write_text("background\ncat\n", encoding="utf-8")
    cases = {
        "covers voc, context, coco-object": [
            "--dataset",
            "ade20k",
            "--root",
            str(root),
            "--open-vocab",
            "--model-dir",
            str(model),
        ],
        "has 2 classes; voc scores 21": [
            "--dataset",
            "voc",
            "--root",
            str(root),
            "--open-vocab",
            "--model-dir",
            str(model),
            "--vocab",
            str(small),
        ],
        "export-vocab": [
            "--dataset",
            "voc",
            "--root",
            str(root),
            "--open-vocab",
            "--model-dir",
            str(tiny_model_dir("sdxl")),
        ],
        "--mask-size goes with --open-vocab": [
            "--dataset",
            "voc",
            "--root",
            str(root),
            "--model-dir",
            str(model),
            "--mask-size",
            "64",
        ],
    }
    for needle, argv in cases.items():
        code, _, err = run_cli(["eval", *argv, "--out", str(tmp_path / "r.json")], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (needle, err)
        assert not (tmp_path / "r.json").exists()
