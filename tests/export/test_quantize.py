"""INT8 quantization of a model folder and `verify --against`, on the tiny SDXL-family export.

The whole path a user takes: export (fp32) -> quantize on their photos -> segment (warned: never
verified) -> verify --against the fp32 folder (verdict in the manifest) -> segment (no warning).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.errors import DiffCutError
from diffcut_edge.export import quantize as q
from diffcut_edge.export.verify import verify_against
from diffcut_edge.runtime.manifest import read_manifest, sha256_file, verify_files

R = 256


@pytest.fixture(scope="module")
def photos_dir(photo_dir) -> Path:
    return photo_dir  # the calibration images


@pytest.fixture(scope="module")
def fp32_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("sdxl", R, "fp32")


@pytest.fixture(scope="module")
def int8_dir(fp32_dir, photos_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q") / "int8"
    q.quantize_model(fp32_dir, [photos_dir], out, progress=False)
    return out


def _features(model_dir: Path, image: np.ndarray) -> np.ndarray:
    from diffcut_edge.export.verify import onnx_features, open_session

    m = read_manifest(model_dir)
    return onnx_features(open_session(model_dir, m), m, image[None])[0]


def test_quantized_folder_is_int8_qdq_with_its_calibration_recorded(int8_dir, fp32_dir, photos_dir):
    import onnx

    m = read_manifest(int8_dir)
    verify_files(int8_dir, m)  # hashes of the new graph
    assert m.precision == "int8" and m.engines == []
    rec = m.quantization
    paths, held = q.split_holdout(sorted(photos_dir.iterdir()))
    assert len(held) == 1 and held[0] not in paths  # 4 photos: one held out of the calibration
    assert (
        rec["method"] == q.DEFAULT_METHOD == "smoothed"
        and rec["activations"] == "uint8"
        and rec["calibration_images"] == len(paths)
    )
    assert rec["calibration_sha256"] == q.calibration_sha256(paths) and rec["held_out_images"] == 1
    # Verified on the held-out photo before the folder appeared: no "never verified" note.
    assert m.verification["passed"] and m.verification_note(str(int8_dir)) is None
    assert rec["source_dir"] == str(fp32_dir.resolve())
    assert rec["source_sha256"] == sha256_file(fp32_dir / "encoder.onnx")
    ops = {n.op_type for n in onnx.load(str(int8_dir / "encoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (int8_dir / "encoder.onnx").stat().st_size < 0.5 * (fp32_dir / "encoder.onnx").stat().st_size
    # Everything else about the folder is the source's.
    src = read_manifest(fp32_dir)
    assert (m.resolution, m.grid, m.channels, m.family, m.noise_seed) == (
        src.resolution,
        src.grid,
        src.channels,
        src.family,
        src.noise_seed,
    )


def test_sensitive_layers_stay_in_float(int8_dir):
    import onnx

    kept = {k["node"]: k["why"] for k in read_manifest(int8_dir).quantization["kept_fp32"]}
    graph = onnx.load(str(int8_dir / "encoder.onnx")).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    assert convs[0] in kept and "conv_in" in convs[0] and convs[-1] in kept
    attention = [k for k, why in kept.items() if why.startswith("attention products")]
    assert attention and all("attn" in name or "attention" in name for name in attention)
    # The kept nodes read float inputs, not dequantized ones.
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for node in graph.node:
        if node.name in kept:
            assert not set(node.input) & dequantized, node.name


def test_int8_features_are_close_to_fp32(int8_dir, fp32_dir, photos_dir):
    from diffcut_edge.export.verify import load_images, token_cosines

    for _, img in load_images(sorted(photos_dir.iterdir())[:2], R):
        assert token_cosines(_features(int8_dir, img), _features(fp32_dir, img)).min() > 0.99


def test_segmenter_runs_the_int8_folder(int8_dir, photos_dir):
    from diffcut_edge.runtime import Segmenter
    from diffcut_edge.runtime.images import read_image

    frame = read_image(sorted(photos_dir.iterdir())[0])
    with Segmenter.from_model_dir(int8_dir, backend="ort-cpu") as seg:
        result = seg(frame)
    assert result.labels.shape == frame.shape[:2] and result.num_segments >= 1


def test_symmetric_int8_activations_for_tensorrt(fp32_dir, photos_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "int8-trt"
    q.quantize_model(
        fp32_dir,
        [photos_dir],
        out,
        activations="int8",
        method="percentile",
        max_images=2,
        keep_fp32=["*down_blocks.1*"],
        progress=False,
    )
    m = read_manifest(out)
    assert m.quantization["activations"] == "int8" and m.quantization["calibration_images"] == 2
    assert any(k["why"] == "--keep-fp32 *down_blocks.1*" for k in m.quantization["kept_fp32"])
    graph = onnx.load(str(out / "encoder.onnx")).graph
    inits = {t.name: t for t in graph.initializer}
    zero_points = [
        numpy_helper.to_array(inits[n.input[2]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # what TensorRT takes


def test_refusals_leave_nothing_behind(fp32_dir, int8_dir, photos_dir, tmp_path, monkeypatch):
    with pytest.raises(DiffCutError, match="quantized already"):
        q.quantize_model(int8_dir, [photos_dir], tmp_path / "x", progress=False)
    with pytest.raises(DiffCutError, match="new folder"):
        q.quantize_model(fp32_dir, [photos_dir], fp32_dir, progress=False)
    with pytest.raises(DiffCutError, match="does not exist"):
        q.quantize_model(fp32_dir, [tmp_path / "missing"], tmp_path / "x", progress=False)
    with pytest.raises(DiffCutError, match="matches no Conv/MatMul/Gemm"):
        q.quantize_model(fp32_dir, [photos_dir], tmp_path / "x", keep_fp32=["nothing*"], progress=False)
    with pytest.raises(DiffCutError, match="calibration method"):
        q.quantize_model(fp32_dir, [photos_dir], tmp_path / "x", method="kl", progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("calibration failed half way")

    monkeypatch.setattr(q, "_quantize_static", boom)
    with pytest.raises(RuntimeError, match="half way"):
        q.quantize_model(fp32_dir, [photos_dir], tmp_path / "x", progress=False)
    assert list(tmp_path.iterdir()) == []  # no partial folder, no staging left


def test_verify_against_records_the_verdict_and_segment_stops_warning(
    int8_dir, fp32_dir, photos_dir, tmp_path, capsys, monkeypatch
):
    from diffcut_edge.export import verify

    # What is tested is the recording, not INT8's quality: random-weight NCut splits near ties, so one
    # photo's label agreement moves by points with any change of rounding (94-99 % here); 90 % keeps the
    # test about the plumbing on every CPU's kernels.
    thresholds = verify.against_thresholds
    monkeypatch.setattr(verify, "against_thresholds", lambda manifest: (thresholds(manifest)[0], 0.90))
    folder = tmp_path / "int8"
    q.quantize_model(fp32_dir, [photos_dir], folder, progress=False, holdout=0)  # nothing held out: unverified
    photo = str(sorted(photos_dir.iterdir())[0])
    assert (
        cli.main(["segment", photo, "--model-dir", str(folder), "--out", str(tmp_path / "a"), "--backend", "ort-cpu"])
        == 0
    )
    assert "was never verified against full precision" in capsys.readouterr().err

    assert cli.main(["verify", "--model-dir", str(folder), "--against", str(fp32_dir), photo]) == 0
    out = capsys.readouterr().out
    assert "verify: passed" in out and "min token cosine >= 0.99" in out
    record = json.loads((folder / "manifest.json").read_text())["verification"]
    assert record["passed"] and record["images"] == 1 and record["against"] == str(fp32_dir.resolve())
    assert record["min_cosine"] > 0.99 and record["thresholds"]["min_cosine"] == 0.99
    verify_files(folder, read_manifest(folder))  # recording touched the manifest only

    assert (
        cli.main(["segment", photo, "--model-dir", str(folder), "--out", str(tmp_path / "b"), "--backend", "ort-cpu"])
        == 0
    )
    assert "never verified" not in capsys.readouterr().err


def test_verify_against_a_different_model_fails_and_says_so(int8_dir, photos_dir, tmp_path, capsys):
    # Same architecture, other random weights: every shape matches, the features do not.
    from diffcut_edge.export import export_model
    from diffcut_edge.models import make_tiny_pipeline

    other = export_model(
        make_tiny_pipeline("sdxl", tmp_path / "pipe", seed=7), tmp_path / "other", resolution=R, progress=False
    )
    folder = tmp_path / "int8"
    shutil.copytree(int8_dir, folder)
    photo = str(sorted(photos_dir.iterdir())[0])
    assert cli.main(["verify", "--model-dir", str(folder), "--against", str(other), photo]) == 2
    printed = capsys.readouterr().out
    assert "verify: FAILED" in printed and "next: calibrate on more" in printed  # the way out, printed
    m = read_manifest(folder)
    assert m.verification["passed"] is False
    assert "FAILED verification" in m.verification_note(str(folder))


def test_verify_against_refuses_folders_that_cannot_be_compared(int8_dir, tiny_model_dir):
    with pytest.raises(DiffCutError, match="same folder"):
        verify_against(int8_dir, int8_dir)
    with pytest.raises(DiffCutError, match="differ in resolution"):
        verify_against(int8_dir, tiny_model_dir("sdxl", 128, "fp32"), record=False)


def test_cli_quantize_prints_the_next_step_and_errors_in_one_line(fp32_dir, photos_dir, tmp_path, capsys):
    out = tmp_path / "cli-int8"
    assert (
        cli.main(
            [
                "quantize",
                "--model-dir",
                str(fp32_dir),
                "--calibration",
                str(photos_dir),
                "--out",
                str(out),
                "--max-images",
                "1",
                "--no-progress",
                "--method",
                "entropy",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"next: diffcut-edge verify --model-dir {out} --against {fp32_dir}" in printed
    # Only our lines: onnxruntime's histogram calibrator prints its steps, which stay off stdout.
    assert printed.startswith("quantized ") and "histogram" not in printed and len(printed.splitlines()) == 3
    # Each stage's wall time, in order (pre-processing and onnxruntime's step had no bar before).
    stages = printed.splitlines()[1]
    assert stages.startswith("stages: prepare graph ") and stages.index("calibrate") < stages.index("quantize ")
    assert (
        cli.main(
            [
                "quantize",
                "--model-dir",
                str(fp32_dir),
                "--calibration",
                str(photos_dir),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )  # not empty, no --force
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]


def test_verify_with_the_pytorch_reference_records_the_verdict_too(int8_dir, tiny_pipeline_dir, photos_dir, tmp_path):
    from diffcut_edge.export.verify import verify_model

    folder = tmp_path / "int8"
    shutil.copytree(int8_dir, folder)
    report = verify_model(str(tiny_pipeline_dir("sdxl")), folder, [sorted(photos_dir.iterdir())[0]], labels=False)
    assert report.passed and report.thresholds == (None, 0.99)
    record = read_manifest(folder).verification
    assert record["passed"] and record["against"].startswith("PyTorch reference")
    assert read_manifest(folder).verification_note(str(folder)) is None


def test_holdout_split_spreads_through_the_list_and_keeps_a_calibration():
    paths = [Path(f"{i}.png") for i in range(9)]
    calib, held = q.split_holdout(paths)
    assert [p.name for p in held] == ["3.png", "7.png"] and len(calib) == 7
    assert q.split_holdout(paths[:3]) == (paths[:3], [])  # too few to hold any out
    assert q.split_holdout(paths, 0) == (paths, [])
    with pytest.raises(DiffCutError, match="keep at least one"):
        q.split_holdout(paths[:2], 2)


def test_a_failed_held_out_check_is_said_at_once_and_recorded(fp32_dir, photos_dir, tmp_path, capsys, monkeypatch):
    from diffcut_edge.export import verify

    monkeypatch.setattr(verify, "against_thresholds", lambda manifest: (1.01, 1.01))  # nothing can pass
    out = tmp_path / "int8"
    code = cli.main(
        ["quantize", "--model-dir", str(fp32_dir), "--calibration", str(photos_dir), "--out", str(out), "--no-progress"]
    )
    printed = capsys.readouterr().out
    assert code == 2 and "held-out check FAILED" in printed and "--keep-fp32" in printed
    m = read_manifest(out)  # the folder is written, its verdict with it
    assert m.verification["passed"] is False and m.verification_note(str(out))  # segment will say so
    assert (
        cli.main(
            [
                "quantize",
                "--model-dir",
                str(fp32_dir),
                "--calibration",
                str(photos_dir),
                "--out",
                str(tmp_path / "none"),
                "--no-progress",
                "--holdout",
                "0",
            ]
        )
        == 0
    )
    assert "not verified yet" in capsys.readouterr().out


def test_labels_decide_where_they_hold_still_and_the_cosine_elsewhere():
    from diffcut_edge.export.verify import AgainstReport, ImageCheck

    def report(*images):
        return AgainstReport(Path("fast"), Path("full"), "int8", (0.99, 0.95), list(images))

    # A systematic error: cosine below the gate, labels unmoved on stable images -> passes on labels.
    shifted = report(ImageCheck("a", 0.94, 0.3, 1.0, False, 1.0), ImageCheck("b", 0.95, 0.3, 0.99, False, 1.0))
    assert shifted.passed and shifted.record()["decided_by"] == "labels"
    # Labels that move on a stable image fail, whatever the cosine.
    assert not report(ImageCheck("a", 0.9999, 0.01, 0.80, True, 1.0)).passed
    # Near-ties (the reference's own labels move under a 1e-3 error) are not counted ...
    mixed = report(ImageCheck("a", 0.999, 0.02, 0.10, True, 0.2), ImageCheck("b", 0.999, 0.02, 0.97, True, 1.0))
    assert mixed.passed and mixed.mean_label_agreement == 0.97 and mixed.record()["label_images"] == 1
    assert any("near-ties" in line for line in mixed.lines())
    # ... and where no image's labels hold still, the cosine decides.
    assert report(ImageCheck("a", 0.999, 0.02, 0.04, True, 0.14)).passed
    unstable_and_far = report(ImageCheck("a", 0.97, 0.2, 0.04, True, 0.14))
    assert not unstable_and_far.passed and "decided by cosine" in unstable_and_far.lines()[-2]


def test_label_stability_tells_planted_segments_from_near_ties():
    from diffcut_edge.export.verify import label_stability
    from diffcut_edge.runtime import segment_features
    from helpers.runtime_planted import planted_case

    case = planted_case((16, 16), 6, 0.2, 0)
    assert label_stability(case.features, case.grid, segment_features(case.features, case.grid)) == 1.0
    # Tokens that differ by 1e-4 of their size: NCut's min-max affinity blows the differences up, and a
    # 1e-3 error rewrites them (what random-weight UNets give at 1024 px).
    rng = np.random.default_rng(0)
    common = rng.standard_normal(1280).astype(np.float32)
    flat = common + 1e-4 * np.linalg.norm(common) * rng.standard_normal((256, 1280)).astype(np.float32) / 36
    assert label_stability(flat, (16, 16), segment_features(flat, (16, 16))) < 0.9


def test_big_folders_run_each_stage_in_a_process_of_its_own(fp32_dir, photos_dir, tmp_path, monkeypatch):
    import diffcut_edge.isolated as isolated

    stages = []
    real = isolated.call_isolated

    def counting(what, fn, *args):
        stages.append(what)
        return real(what, fn, *args)

    monkeypatch.setattr(isolated, "call_isolated", counting)
    monkeypatch.setattr(q, "ISOLATE_ABOVE_BYTES", 0)  # the tiny model counts as big
    report = q.quantize_model(fp32_dir, [photos_dir], tmp_path / "int8", progress=False, holdout=1)
    assert stages == ["preparation", "calibration", "quantization", "verify", "verify"]
    assert report.passed is not None and read_manifest(tmp_path / "int8").precision == "int8"


def test_each_onnx_file_is_hashed_once(fp32_dir, photos_dir, tmp_path, monkeypatch):
    # The held-out check trusts the hashes quantize has just taken (the source's at the start, the
    # new folder's as it wrote it): at 1024 px they are GBs, hashed again for nothing before.
    from diffcut_edge.runtime import manifest as manifest_module

    hashed: list[str] = []

    def counting(path, *args, **kwargs):
        hashed.append(str(Path(path).resolve()))
        return real(path, *args, **kwargs)

    real = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", counting)
    monkeypatch.setattr(q, "sha256_file", counting)
    report = q.quantize_model(fp32_dir, [photos_dir], tmp_path / "int8", progress=False, max_images=4)
    assert report.held_out is not None and report.held_out.images
    onnx_hashes = [name for name in hashed if ".onnx" in Path(name).name]
    assert len(onnx_hashes) == 2 and len(set(onnx_hashes)) == 2, onnx_hashes  # the source's, the new one's
    verify_files(tmp_path / "int8", read_manifest(tmp_path / "int8"))  # and the recorded hashes are right
