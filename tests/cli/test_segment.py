"""``diffcut-edge segment``: outputs, option checks, batches with bad files; cli_fake_segmenter and real segmenters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.apps import pipeline
from diffcut_edge.apps.overlay import OverlayStyle, annotate
from diffcut_edge.cli.args import SegmenterArgs
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import images as image_io
from helpers.fake_segmenter import FakeSegmenter, export_available, run_cli


@pytest.fixture
def images(tmp_path):
    from helpers.data import sample_photos

    folder = tmp_path / "in"
    folder.mkdir()
    for name, photo in zip(("astronaut", "chelsea", "coffee"), sample_photos(48)):
        cv2.imwrite(str(folder / f"{name}.png"), (photo[..., ::-1] * 255).round().astype(np.uint8))
    return folder


def test_writes_16bit_labels_overlays_and_npz(cli_fake_segmenter, images, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["segment", str(images), "--model-dir", "m", "--out", str(out), "--save-npz", "--overlay-format", "png"], capsys
    )
    assert code == 0, err
    for stem in ("astronaut", "chelsea", "coffee"):
        frame = image_io.read_image(images / f"{stem}.png")
        expected = cli_fake_segmenter(frame)
        raw = cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and np.array_equal(raw, expected.labels)
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        # segment's default look: colours, boundaries, the largest segment (the background) untinted
        assert np.array_equal(overlay, annotate(frame, expected.labels, (), OverlayStyle(tint_largest=False)))
        with np.load(out / f"{stem}.npz") as d:
            assert set(d.files) == {"labels", "mask_labels", "coarse_labels", "embeddings"}
            assert np.allclose(d["embeddings"], expected.embeddings)
    lines = stdout.strip().splitlines()
    assert len(lines) == 4 and "segments" in lines[0] and "pamr" in lines[0]
    assert lines[-1].startswith("segmented 3 image(s)")
    assert err == ""


def test_quiet_and_jpg_overlay_default(cli_fake_segmenter, images, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        ["segment", str(images / "coffee.png"), "--model-dir", "m", "--out", str(out), "-q"], capsys
    )
    assert code == 0 and len(stdout.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "coffee_labels.png",
        "coffee_overlay.jpg",
        "coffee_segments.json",
        "results.jsonl",
    ]
    # Per-segment data for every folder, with or without a vocabulary: id, area, box and the mask as COCO RLE.
    import json

    doc = json.loads((out / "coffee_segments.json").read_text())
    labels = cv2.imread(str(out / "coffee_labels.png"), cv2.IMREAD_UNCHANGED)
    assert doc["vocabulary"] is None and [s["id"] for s in doc["segments"]] == sorted(np.unique(labels).tolist())
    for segment in doc["segments"]:
        mask = labels == segment["id"]
        assert segment["area"] == mask.sum() and segment["rle"]["size"] == list(labels.shape)
        counts = segment["rle"]["counts"]  # decode COCO's column-major runs, zeros first
        flat = np.repeat(np.arange(len(counts)) % 2, counts).astype(bool)
        np.testing.assert_array_equal(flat.reshape(labels.shape[::-1]).T, mask)


def test_a_second_run_into_the_input_folder_skips_earlier_outputs(cli_fake_segmenter, images, capsys):
    argv = ["segment", str(images), "--model-dir", "m", "--out", str(images), "-q"]
    assert run_cli(argv, capsys)[0] == 0
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and stdout.startswith("segmented 3 image(s)") and "skipped 10 file(s)" in err


def test_same_stem_from_two_folders_does_not_overwrite(cli_fake_segmenter, images, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "coffee.jpg"), np.full((20, 30, 3), 90, np.uint8))
    out = tmp_path / "out"
    code, _, _ = run_cli(
        ["segment", str(images / "coffee.png"), str(other / "coffee.jpg"), "--model-dir", "m", "--out", str(out), "-q"],
        capsys,
    )
    assert code == 0
    assert cv2.imread(str(out / "coffee_2_labels.png"), cv2.IMREAD_UNCHANGED).shape == (20, 30)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tau", "-1"], "tau must be a number from 0 (no split) to 2"),
        (["--tau", "nan"], "tau must be a number from 0 (no split) to 2"),
        (["--tau", "1e308"], "tau must be a number from 0 (no split) to 2"),
        (["--alpha", "0"], "alpha must be a number > 0 and at most 1000"),
        (["--alpha", "1e20"], "alpha must be a number > 0 and at most 1000"),
        (["--mask-size", "0"], "mask_size must be (height, width) of positive integers"),
        (["--mask-size", "12x0"], "mask_size must be (height, width) of positive integers"),
        (["--mask-size", "100000"], "at most 4096 a side"),
        (["--mask-size", "12x3x4"], "expected N or HxW"),
        (["--max-segments", "-3"], "max_segments must be None or a positive integer"),
        (["--backend", "cuda-magic"], "invalid choice"),
        (["--overlay-alpha", "1.5"], "expected a number in [0, 1]"),
    ],
)
def test_out_of_range_options_are_refused(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["segment", "x.png", "--model-dir", "m", "--out", str(tmp_path), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, text, value",
    [("tau", "-1", -1.0), ("alpha", "0", 0.0), ("mask_size", "100000", 100000), ("max_segments", "-3", -3)],
)
def test_cli_and_api_refuse_the_same_values_with_the_same_words(name, text, value, capsys):
    from diffcut_edge.runtime.options import SegmenterOptions

    with pytest.raises(DiffCutError) as api:
        SegmenterOptions(**{name: value})
    flag = "--" + name.replace("_", "-")
    with pytest.raises(SystemExit):
        cli.main(["segment", "x.png", "--model-dir", "m", "--out", "o", flag, text])
    assert str(api.value) in capsys.readouterr().err


def test_tau_zero_is_accepted_and_means_no_split(monkeypatch, images, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr(
        pipeline, "open_segmenter", lambda spec, **kwargs: seen.setdefault("seg", FakeSegmenter(tau=spec.options.tau))
    )
    code, _, err = run_cli(
        ["segment", str(images / "coffee.png"), "--model-dir", "m", "--out", str(tmp_path / "o"), "--tau", "0", "-q"],
        capsys,
    )
    assert code == 0, err
    assert seen["seg"].options.tau == 0.0


def test_mask_size_accepts_hxw(monkeypatch, images, tmp_path, capsys):
    seen = {}

    def open_segmenter(spec, **kwargs):
        seen["mask_size"] = spec.options.mask_size
        return FakeSegmenter(mask_size=spec.options.mask_size)

    monkeypatch.setattr(pipeline, "open_segmenter", open_segmenter)
    assert (
        run_cli(
            [
                "segment",
                str(images / "coffee.png"),
                "--model-dir",
                "m",
                "--out",
                str(tmp_path / "o"),
                "--mask-size",
                "24x32",
                "--save-npz",
                "-q",
            ],
            capsys,
        )[0]
        == 0
    )
    with np.load(tmp_path / "o" / "coffee.npz") as d:
        assert seen["mask_size"] == (24, 32) and d["mask_labels"].shape == (24, 32)


def test_backend_choices_match_the_runtime():
    from diffcut_edge.runtime.backends import BACKENDS

    parser = cli.build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]
    backend = next(a for a in segment._actions if a.dest == "backend")
    assert tuple(backend.choices) == BACKENDS


@pytest.mark.slow
@pytest.mark.skipif(not export_available(), reason="export stage not available (needs the [export] extra)")
def test_end_to_end_on_a_tiny_exported_model(tiny_model_dir, images, tmp_path, capsys):
    model = tiny_model_dir("sdxl", 256)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        [
            "segment",
            str(images),
            "--model-dir",
            str(model),
            "--out",
            str(out),
            "--backend",
            "ort-cpu",
            "--save-npz",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    labels = image_io.read_labels_png(out / "chelsea_labels.png")
    with np.load(out / "chelsea.npz") as d:
        assert labels.shape == (48, 48) and np.array_equal(labels, d["labels"])
        assert d["coarse_labels"].shape == (8, 8) and d["embeddings"].shape[0] == d["coarse_labels"].max() + 1


@pytest.mark.slow
def test_segment_with_model_exports_once_into_the_cache_and_reuses_it(
    tiny_pipeline_dir, images, tmp_path, monkeypatch, capsys
):
    from diffcut_edge.export import onnx_export

    monkeypatch.setenv("DIFFCUT_EDGE_CACHE", str(tmp_path / "cache"))
    exports = []
    real_export = onnx_export.export_model
    monkeypatch.setattr(onnx_export, "export_model", lambda *a, **k: exports.append(a) or real_export(*a, **k))
    argv = [
        "segment",
        str(images / "coffee.png"),
        "--model",
        str(tiny_pipeline_dir("sdxl")),
        "--resolution",
        "256",
        "--backend",
        "ort-cpu",
        "-q",
    ]
    said = []
    for run in ("first", "second"):
        code, _, err = run_cli([*argv, "--out", str(tmp_path / run)], capsys)
        assert code == 0, err
        said.append(err)
    (folder,) = (tmp_path / "cache" / "exports").iterdir()
    assert len(exports) == 1 and folder.name.endswith("--r256-fp32") and (folder / "manifest.json").is_file()
    assert f"exporting {tiny_pipeline_dir('sdxl')} at 256 px (fp32) into {folder}" in said[0]  # where it went
    assert f"using the cached export of {tiny_pipeline_dir('sdxl')} in {folder}" in said[1]
    first = cv2.imread(str(tmp_path / "first" / "coffee_labels.png"), cv2.IMREAD_UNCHANGED)
    second = cv2.imread(str(tmp_path / "second" / "coffee_labels.png"), cv2.IMREAD_UNCHANGED)
    assert first is not None and np.array_equal(first, second)
    code, _, err = run_cli([*argv, "--model-dir", str(folder), "--out", str(tmp_path / "both")], capsys)
    assert code == 2 and "not both" in err
    # cache list / clear: old entries go only when asked.
    code, listed, _ = run_cli(["cache", "list"], capsys)
    assert code == 0 and str(folder) in listed and "R=256 fp32" in listed
    assert run_cli(["cache", "clear", "--older-than", "1"], capsys)[1].startswith("removed 0 entries")
    assert str(folder) in run_cli(["cache", "clear", "--dry-run"], capsys)[1] and folder.is_dir()
    code, cleared, _ = run_cli(["cache", "clear"], capsys)
    assert code == 0 and cleared.startswith("removed 1 entry") and not folder.exists()


def test_options_that_would_be_ignored_or_misread_are_said(cli_fake_segmenter, tmp_path, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    code, _, err = run_cli(
        ["segment", str(image), "--model-dir", "m", "--resolution", "512", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "drop --resolution" in err
    code, _, err = run_cli(["segment", str(image), "--model-dir", "m", "--out", str(tmp_path / "result.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and "looks like an image file name" in err
    assert not (tmp_path / "result.png").exists()
    args = cli.build_parser().parse_args(
        ["segment", str(image), "--model-dir", "m", "--classes", "cat sofa window", "--out", str(tmp_path / "o2")]
    )
    assert SegmenterArgs().build(args).classes == "cat sofa window"  # what the user typed, said back
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is ONE class" in err and '"cat, sofa, window"' in err


def test_an_unknown_flag_gets_the_verbs_usage_and_a_guess(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["segment", "x.png", "--model-dir", "m", "--out", "o", "--maks-size", "64"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: diffcut-edge segment")
    assert "unrecognized arguments: --maks-size 64 (did you mean --mask-size?)" in err


def test_results_jsonl_says_which_input_became_which_outputs(cli_fake_segmenter, images, tmp_path, capsys):
    import json

    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "coffee.jpg"), np.full((20, 30, 3), 90, np.uint8))
    (other / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code, _, _ = run_cli(
        [
            "segment",
            str(images / "coffee.png"),
            str(other / "coffee.jpg"),
            str(other / "broken.png"),
            "--model-dir",
            "m",
            "--out",
            str(out),
            "-q",
        ],
        capsys,
    )
    assert code == 2  # one image failed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["image"], r["stem"]) for r in rows] == [
        (str(images / "coffee.png"), "coffee"),
        (str(other / "coffee.jpg"), "coffee_2"),
        (str(other / "broken.png"), "broken"),
    ]
    assert rows[1]["outputs"] == ["coffee_2_labels.png", "coffee_2_overlay.jpg", "coffee_2_segments.json"]
    assert rows[0]["num_segments"] >= 1 and "total" in rows[0]["timings"] and rows[0]["error"] is None
    assert rows[2]["outputs"] == [] and "broken.png" in rows[2]["error"]


def test_save_color_and_the_overlay_flags(cli_fake_segmenter, images, tmp_path, capsys):
    from diffcut_edge.apps.overlay import colorize_labels, draw_overlay

    out = tmp_path / "out"
    argv = [
        "segment",
        str(images / "coffee.png"),
        "--model-dir",
        "m",
        "--out",
        str(out),
        "--save-color",
        "--overlay-format",
        "png",
        "--tint-largest",
        "--no-boundaries",
        "-q",
    ]
    assert run_cli(argv, capsys)[0] == 0
    frame = image_io.read_image(images / "coffee.png")
    expected = cli_fake_segmenter(frame)
    color = cv2.imread(str(out / "coffee_labels_color.png"))
    assert np.array_equal(color, colorize_labels(expected.labels))
    overlay = cv2.imread(str(out / "coffee_overlay.png"))
    assert np.array_equal(overlay, draw_overlay(frame, expected.labels))  # every segment tinted, no lines
    # A re-run over the output folder does not take the colour preview for an input.
    code, _, err = run_cli(["segment", str(out), "--model-dir", "m", "--out", str(out), "-q"], capsys)
    assert code == 2 and "no images found" in err
