"""``diffcut-edge bench`` and ``diffcut-edge eval`` end to end through cli.main."""

from __future__ import annotations

import json

import pytest

from diffcut_edge import cli
from diffcut_edge.eval import bench, datasets
from helpers.eval_fixtures import write_dataset
from helpers.toy_encoder import make_toy_model_dir


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return make_toy_model_dir(tmp_path_factory.mktemp("toy"), resolution=128, channels=32)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_dataset("voc", tmp_path_factory.mktemp("voc"), n_images=2)


def _export_available() -> bool:
    try:
        from diffcut_edge.export import export_model  # noqa: F401
    except ImportError:
        return False
    return True


def _mean_iou(data: dict) -> float:
    """mIoU recomputed from the per-class IoUs the JSON reports (None = class absent)."""
    import math

    values = data["per_class_iou"].values() if isinstance(data["per_class_iou"], dict) else data["per_class_iou"]
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present)


def _bench_json(capsys, model_dir, *extra) -> dict:
    code = cli.main(["bench", "--model-dir", str(model_dir), "--json", "--iters", "2", "--warmup", "1", *extra])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # exactly one JSON document: anything else on stdout fails here


def test_bench_json_on_the_toy_model(capsys, toy_dir):
    data = _bench_json(capsys, toy_dir, "--batch", "1,2", "--no-refine")
    for stage in bench.STAGES:
        assert data[stage]["median_ms"] >= 0
    assert [b["batch"] for b in data["batches"]] == [1, 2]
    assert data["batches"][0]["stages"]["pamr"]["median_ms"] < 5  # --no-refine: PAMR skipped
    assert data["model"]["model_id"] == "toy-encoder" and data["model"]["resolution"] == 128
    assert "OnnxRuntimeBackend" in data["backend"] and data["refine"] is False


def test_bench_table_names_device_backend_and_stages(capsys, toy_dir, tmp_path):
    import cv2

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), bench.synthetic_image(96, 128))
    assert cli.main(["bench", "--model-dir", str(toy_dir), "--iters", "1", "--warmup", "0", "--image", str(image)]) == 0
    out = capsys.readouterr().out
    assert "device" in out and "backend" in out and "frames/s" in out and str(image) in out
    assert all(stage in out for stage in bench.STAGES)


def test_eval_on_the_toy_model_writes_results(capsys, toy_dir, voc_root, tmp_path):
    out = tmp_path / "results.json"
    assert (
        cli.main(
            [
                "eval",
                "--dataset",
                "voc",
                "--root",
                str(voc_root),
                "--model-dir",
                str(toy_dir),
                "--out",
                str(out),
                "--refine",
                "-q",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    from diffcut_edge.eval import protocol

    library = protocol.run_eval("voc", voc_root, protocol.engine_predictor(toy_dir), refine=True, progress=False)
    assert data["miou"] == pytest.approx(library.miou) == pytest.approx(_mean_iou(data))
    assert data["pixel_accuracy"] == pytest.approx(library.pixel_accuracy)
    assert data["num_images"] == 2 and data["settings"]["refine"] is True
    assert data["settings"]["model"]["model_id"] == "toy-encoder"
    assert "mIoU" in capsys.readouterr().out


def test_eval_errors_are_one_line_and_actionable(capsys, voc_root, tmp_path):
    assert cli.main(["eval", "--dataset", "voc", "--root", str(voc_root)]) == cli.EXIT_ERROR
    assert "--model-dir" in capsys.readouterr().err
    assert cli.main(["eval", "--dataset", "voc", "--root", str(voc_root), "--reference"]) == cli.EXIT_ERROR
    assert "--model" in capsys.readouterr().err
    assert (
        cli.main(["eval", "--dataset", "ade20k", "--root", str(tmp_path), "--model-dir", str(tmp_path)])
        == cli.EXIT_ERROR
    )


def test_cli_dataset_choices_are_the_library_table():
    parser = cli.build_parser()
    evaluate = parser._subparsers._group_actions[0].choices["eval"]
    dataset = next(a for a in evaluate._actions if a.dest == "dataset")
    assert tuple(dataset.choices) == datasets.DATASETS


@pytest.mark.slow
@pytest.mark.skipif(not _export_available(), reason="diffcut_edge.export.export_model has not landed")
def test_bench_and_eval_on_the_tiny_export(capsys, tiny_model_dir, voc_root, tmp_path):
    model_dir = tiny_model_dir("sdxl")
    data = _bench_json(capsys, model_dir)
    assert data["model"]["family"] == "sdxl" and data["total"]["median_ms"] > 0
    out = tmp_path / "results.json"
    assert (
        cli.main(
            [
                "eval",
                "--dataset",
                "voc",
                "--root",
                str(voc_root),
                "--model-dir",
                str(model_dir),
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["num_images"] == 2 and data["miou"] == pytest.approx(_mean_iou(data))
    assert data["settings"]["model"]["family"] == "sdxl"


@pytest.mark.slow
@pytest.mark.skipif(not _export_available(), reason="diffcut_edge.export.export_model has not landed")
def test_eval_reference_agrees_with_the_engine(capsys, tiny_pipeline_dir, tiny_model_dir, voc_root, tmp_path):
    """--reference (hooked full UNet + torch NCut/PAMR) and the exported engine score alike."""
    pytest.importorskip("torch")
    model_dir = tiny_model_dir("sdxl")
    scores = {}
    for name, extra in {"engine": [], "reference": ["--reference", "--model", str(tiny_pipeline_dir("sdxl"))]}.items():
        out = tmp_path / f"{name}.json"
        assert (
            cli.main(
                [
                    "eval",
                    "--dataset",
                    "voc",
                    "--root",
                    str(voc_root),
                    "--model-dir",
                    str(model_dir),
                    "--limit",
                    "2",
                    "--refine",
                    "--out",
                    str(out),
                    "-q",
                    *extra,
                ]
            )
            == 0
        )
        scores[name] = json.loads(out.read_text())
    ref = scores["reference"]
    assert ref["settings"]["backend"] == "reference" and ref["settings"]["resolution"] == 256
    assert ref["num_images"] == 2 and ref["miou"] == pytest.approx(_mean_iou(ref))
    # Same features up to float rounding: the same segments but for a few pixels.
    assert abs(ref["miou"] - scores["engine"]["miou"]) < 0.01
    assert abs(ref["pixel_accuracy"] - scores["engine"]["pixel_accuracy"]) < 0.01
