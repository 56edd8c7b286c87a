"""The ``export`` and ``verify`` verbs through ``cli.main`` on tiny models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.runtime.manifest import read_manifest, verify_files
from helpers.export_helpers import photo_batch

pytest.importorskip("torch")
pytest.importorskip("onnx")


def test_cli_export_writes_a_verified_model_folder(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "model"
    code = cli.main(
        [
            "export",
            "--model",
            str(tiny_pipeline_dir("sd1")),
            "--out",
            str(out),
            "--resolution",
            "128",
            "--precision",
            "fp32",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    from diffcut_edge.lazy import tensorrt

    # The next step that is true here: build-engine only where TensorRT imports.
    assert ("next: diffcut-edge build-engine" in printed) == tensorrt.available()
    assert tensorrt.available() or f"next: diffcut-edge segment IMAGES --model-dir {out}" in printed
    manifest = read_manifest(out)
    assert (manifest.family, manifest.resolution, manifest.grid) == ("sd1", 128, (4, 4))
    verify_files(out, manifest)
    # Exporting again into the same folder needs --force.
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(tiny_pipeline_dir("sd1")),
                "--out",
                str(out),
                "--resolution",
                "128",
                "--no-progress",
            ]
        )
        == cli.EXIT_ERROR
    )
    assert "--force" in capsys.readouterr().err


def test_cli_export_rejects_a_bad_resolution(tmp_path, capsys):
    code = cli.main(["export", "--model", "segmind/SSD-1B", "--out", str(tmp_path / "m"), "--resolution", "1000"])
    assert code == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "multiple of 64" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_cli_verify_passes_on_sample_photos(tiny_pipeline_dir, tiny_model_dir, capsys):
    code = cli.main(
        ["verify", "--model", str(tiny_pipeline_dir("sdxl")), "--model-dir", str(tiny_model_dir("sdxl", 256, "fp32"))]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [line for line in out.splitlines() if line.endswith(" ok")]
    assert [r.split()[0] for r in rows] == ["astronaut", "chelsea", "coffee", "rocket"]
    assert all("100.0%" in r for r in rows)  # identical labels from ONNX and PyTorch features
    assert out.strip().endswith("verify: passed")


def test_cli_verify_fails_below_the_thresholds(tiny_pipeline_dir, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from diffcut_edge.export import verify

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), cv2.cvtColor((photo_batch(200, 1)[0] * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    # Demand a relative error no float32 graph reaches: the verb must then exit non-zero.
    monkeypatch.setitem(verify.THRESHOLDS, "fp32", (1e-12, 0.9999))
    code = cli.main(
        [
            "verify",
            "--model",
            str(tiny_pipeline_dir("sd1")),
            "--no-labels",
            "--model-dir",
            str(tiny_model_dir("sd1", 256, "fp32")),
            str(image),
        ]
    )
    out = capsys.readouterr().out
    assert code == cli.EXIT_ERROR
    assert "photo.png" in out and "FAIL" in out and "verify: FAILED\nnext: re-export the folder" in out


def test_cli_verify_refuses_a_folder_from_another_family(tiny_pipeline_dir, tiny_model_dir, capsys):
    code = cli.main(
        ["verify", "--model", str(tiny_pipeline_dir("sd1")), "--model-dir", str(tiny_model_dir("sdxl", 256, "fp32"))]
    )
    assert code == cli.EXIT_ERROR
    assert "exported from" in capsys.readouterr().err
