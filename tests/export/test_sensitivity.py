"""export/sensitivity.py: one layer in int8 at a time, as onnxruntime would quantize it alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from diffcut_edge import cli  # noqa: E402
from diffcut_edge.export import quantize as q  # noqa: E402
from diffcut_edge.export.calibrate import RangeCollector  # noqa: E402
from diffcut_edge.export.sensitivity import fake_quantized_weight, layer_sensitivity  # noqa: E402

from .test_calibrate import feeds, make_chain  # noqa: E402

LAYERS = [("conv0", "Conv", ""), ("conv1", "Conv", ""), ("conv2", "Conv", ""), ("matmul", "MatMul", "")]


def _ranges(path: Path) -> tuple[dict, Path]:
    from onnxruntime.quantization import save_tensors_data

    data = RangeCollector(path, ["Conv", "MatMul"]).collect(feeds(2, 12))
    cache = path.with_name("ranges.json")
    save_tensors_data(data, cache)
    return {k: tuple(float(np.ravel(v)[0]) for v in d.range_value) for k, d in data.items()}, cache


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _run(path: Path) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in feeds(2, 12)()]


@pytest.mark.parametrize("activations", ["uint8", "int8"])
def test_each_layer_alone_matches_onnxruntimes_quantization_of_that_layer(tmp_path, activations):
    path = tmp_path / "chain.onnx"
    make_chain(str(path), layers=3, channels=6, size=12)
    ranges, cache = _ranges(path)
    rows = layer_sensitivity(path, LAYERS, ranges, feeds(2, 12), activations, reduce_range=activations == "uint8")
    fp32 = _run(path)
    for (name, _, _), row in zip(LAYERS, rows):
        alone = tmp_path / f"{name}.onnx"
        q._quantize_static(path, alone, cache, "minmax", activations, False, only=[name])
        theirs = np.concatenate([_cosines(f, t) for f, t in zip(fp32, _run(alone))])
        assert row.node == name
        assert row.min_cosine == pytest.approx(theirs.min(), abs=2e-6)
        assert row.mean_cosine == pytest.approx(theirs.mean(), abs=2e-6)
        assert row.min_cosine < 1.0  # int8 does move every layer's features a little


def test_fake_quantized_weights_are_onnxruntimes_per_channel_rounding():
    w = np.random.default_rng(0).normal(size=(5, 3, 3, 3)).astype(np.float32)
    w[2] *= 40  # a channel with a wide range keeps its own scale
    for reduce_range, levels in ((False, 127), (True, 64)):  # symmetric [-127, 127]; 7 bits: [-64, 64]
        out = fake_quantized_weight(w, 0, reduce_range)
        for c in range(5):
            scale = np.abs(w[c]).max() / levels
            np.testing.assert_allclose(out[c], np.round(w[c] / scale) * scale, rtol=1e-5, atol=1e-6)


def test_quantize_report_and_keep_worst_on_the_tiny_model(tmp_path, tiny_model_dir, photo_dir, capsys):
    fp32 = tiny_model_dir("sdxl", 64, "fp32")
    report = tmp_path / "report.json"
    code = cli.main(
        [
            "quantize",
            "--model-dir",
            str(fp32),
            "--calibration",
            str(photo_dir),
            "--out",
            str(tmp_path / "int8"),
            "--report",
            str(report),
            "--report-images",
            "1",
            "--keep-worst",
            "2",
            "--holdout",
            "0",  # the held-out check is test_quantize's
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    table = json.loads(report.read_text())
    rows = table["layers"]
    graph = onnx.load(str(fp32 / "encoder.onnx"), load_external_data=False).graph
    assert len(rows) == sum(n.op_type in q.OP_TYPES for n in graph.node)  # every layer, kept ones too
    assert [r["min_cosine"] for r in rows] == sorted(r["min_cosine"] for r in rows)
    assert any(r["kept_fp32"] for r in rows) and all(0.9 < r["min_cosine"] <= 1.0 for r in rows)
    worst = [r["node"] for r in rows if not r["kept_fp32"]][:2]
    manifest = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    kept = {k["node"]: k["why"] for k in manifest["quantization"]["kept_fp32"]}
    assert all(kept[name].startswith("--keep-worst 2") for name in worst)
    assert "sensitivity (" in out and str(report) in out
