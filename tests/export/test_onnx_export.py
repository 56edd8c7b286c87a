"""Exported ONNX model folders: parity with the reference, graph contract, manifest, safety.

Tiny random-weight models at 256 px (grid 8x8), exported once per session through the
conftest fixture ``tiny_model_dir`` and compared with ``diffcut_ref.extract_features``
on real photos with onnxruntime on the CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.manifest import read_manifest, sha256_file, verify_files
from helpers.export_helpers import load_tiny_pipeline, photo_batch, relative_error, run_onnx, token_cosines

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

R = 256


def _reference(tiny_pipeline_dir, family: str, images: np.ndarray) -> np.ndarray:
    from diffcut_edge.diffcut_ref import extract_features

    return extract_features(load_tiny_pipeline(str(tiny_pipeline_dir(family))), images, resolution=R)


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_fp32_onnx_matches_reference_batch_1_and_3(family, tiny_pipeline_dir, tiny_model_dir):
    model_dir = tiny_model_dir(family, R, "fp32")
    images = photo_batch(R, 3)
    ref = _reference(tiny_pipeline_dir, family, images)
    for batch in (images[:1], images):
        got = run_onnx(model_dir, batch)
        want = ref[: len(batch)]
        assert got.shape == want.shape and got.dtype == np.float32
        assert relative_error(got, want) <= 1e-4
        assert token_cosines(got, want).min() >= 0.9999


def test_fp16_onnx_matches_reference(tiny_pipeline_dir, tiny_model_dir):
    # onnxruntime's CPU provider runs every op of this graph (it inserts fp32 fallbacks for
    # fp16 ops without a CPU kernel, e.g. Sigmoid), so nothing needs a GPU here.
    model_dir = tiny_model_dir("sdxl", R, "fp16")
    images = photo_batch(R, 2)
    ref = _reference(tiny_pipeline_dir, "sdxl", images)
    got = run_onnx(model_dir, images)
    assert got.dtype == np.float32  # the contract: float32 out for both precisions
    assert token_cosines(got, ref).min() >= 0.999
    assert relative_error(got, ref) > 1e-6  # it really ran in half precision


def test_fp16_graph_is_mixed_with_explicit_casts(tiny_model_dir):
    model = onnx.load(str(tiny_model_dir("sdxl", R, "fp16") / "encoder.onnx"))
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    inits = {t.name: t.data_type for t in model.graph.initializer}
    conv_weight_types = {inits[n.input[1]] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits}
    assert conv_weight_types == {F32, F16}  # VAE convs fp32, UNet convs fp16
    cast_targets = {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    assert {F32, F16} <= cast_targets
    assert model.graph.input[0].type.tensor_type.elem_type == F32
    assert model.graph.output[0].type.tensor_type.elem_type == F32


def test_labels_from_onnx_features_equal_labels_from_pytorch(tiny_pipeline_dir, tiny_model_dir):
    from diffcut_edge.diffcut_ref import segment_features

    images = photo_batch(R, 4)
    ref = _reference(tiny_pipeline_dir, "sdxl", images)
    got = run_onnx(tiny_model_dir("sdxl", R, "fp32"), images)
    segments = []
    for ours, theirs in zip(got, ref):
        a = segment_features(ours, (R // 32, R // 32), mask_size=(64, 64))
        b = segment_features(theirs, (R // 32, R // 32), mask_size=(64, 64))
        np.testing.assert_array_equal(a, b)
        segments.append(len(np.unique(b)))
    assert max(segments) > 1  # the comparison saw real cuts, not one segment everywhere


# ------------------------------------------------------------------ graph contract
@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_graph_signature_and_checks(family, tiny_model_dir):
    model_dir = tiny_model_dir(family, R, "fp32")
    path = model_dir / "encoder.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    manifest = read_manifest(model_dir)
    assert (inp.name, dims(inp)) == ("image", ["batch", 3, R, R])
    assert (out.name, dims(out)) == ("features", ["batch", (R // 32) ** 2, manifest.channels])
    assert manifest.onnx_data_files == []  # small models embed their weights
    assert sorted(p.name for p in model_dir.iterdir()) == ["encoder.onnx", "manifest.json"]


def test_constant_folding_folds_constant_subgraphs(tmp_path):
    # features = image_flat + (A @ B): the product of two initializers is folded into one.
    from onnx import TensorProto, helper, numpy_helper

    from diffcut_edge.export.onnx_export import optimize_and_layout

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 6), dtype=np.float32), rng.standard_normal((6, 5), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["AB"]), helper.make_node("Add", ["x", "AB"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(b, "B")],
    )
    raw = tmp_path / "raw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(raw))
    assert optimize_and_layout(raw, tmp_path / "out.onnx") == []
    folded = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.op_type for n in folded.graph.node] == ["Add"]
    (const,) = [numpy_helper.to_array(t) for t in folded.graph.initializer]
    np.testing.assert_allclose(const, a @ b, rtol=1e-6)


# ------------------------------------------------------------------ manifest
def test_manifest_describes_the_files(tiny_pipeline_dir, tiny_model_dir):
    model_dir = tiny_model_dir("sd1", R, "fp32")
    m = read_manifest(model_dir)
    assert (m.family, m.resolution, m.grid, m.precision, m.timestep, m.noise_seed, m.opset) == (
        "sd1",
        R,
        (R // 32, R // 32),
        "fp32",
        50,
        42,
        17,
    )
    # The default opset is one TensorRT 8.6 (JetPack 6.0) documents: 17 (it was 18).
    import onnx

    graph = onnx.load(str(model_dir / m.onnx_file), load_external_data=False)
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert m.model_id == str(Path(tiny_pipeline_dir("sd1")).resolve())
    assert m.hook.startswith("down_blocks.2.attentions.") and m.hook.endswith(".attn1")
    assert m.channels == run_onnx(model_dir, photo_batch(R, 1)).shape[-1]
    assert m.files_sha256 == {"encoder.onnx": sha256_file(model_dir / "encoder.onnx")}
    for lib in ("torch", "diffusers", "onnx", "exporter"):
        assert m.exporter.get(lib)
    verify_files(model_dir, m)


def test_tampered_onnx_is_detected(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir("sd1", R, "fp32"), copy)
    data = bytearray((copy / "encoder.onnx").read_bytes())
    data[-100] ^= 0xFF  # flip one weight byte: same size, still parses
    (copy / "encoder.onnx").write_bytes(bytes(data))
    with pytest.raises(DiffCutError, match="does not match its manifest"):
        verify_files(copy, read_manifest(copy))


# ------------------------------------------------------------------ output folder safety
def test_export_refuses_bad_arguments_before_loading_anything(tmp_path):
    from diffcut_edge.export import export_model

    with pytest.raises(DiffCutError, match="multiple of 64"):
        export_model("does/not-matter", tmp_path / "m", resolution=1000)
    with pytest.raises(DiffCutError, match="opset"):
        export_model("does/not-matter", tmp_path / "m", resolution=512, opset=11)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DiffCutError, match="--force"):
        export_model("does/not-matter", busy, resolution=512)
    with pytest.raises(DiffCutError, match="not a model folder"):
        export_model("does/not-matter", busy, resolution=512, force=True)
    assert (busy / "notes.txt").read_text() == "mine"


def test_failed_export_leaves_nothing_behind(tiny_pipeline_dir, tmp_path, monkeypatch):
    from diffcut_edge.export import onnx_export

    def boom(*args, **kwargs):
        raise DiffCutError("simulated exporter failure")

    monkeypatch.setattr(onnx_export, "torch_to_onnx", boom)
    pipe = load_tiny_pipeline(str(tiny_pipeline_dir("sd1")))
    with pytest.raises(DiffCutError, match="simulated"):
        onnx_export.export_model_report("tiny", tmp_path / "out", resolution=128, progress=False, pipeline=pipe)
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_model_folder_atomically(tmp_path):
    from diffcut_edge.export.onnx_export import check_out_dir, move_into_place

    out = tmp_path / "m"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # an old, broken model folder
    (out / "stale.plan").write_bytes(b"old")
    with pytest.raises(DiffCutError, match="--force"):
        check_out_dir(out, force=False)
    check_out_dir(out, force=True)
    staging = tmp_path / ".m.partial-1"
    staging.mkdir()
    (staging / "encoder.onnx").write_bytes(b"new")
    move_into_place(staging, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx"]


def test_large_models_get_one_external_data_file(tiny_model_dir, tmp_path, monkeypatch):
    # Pretend the protobuf limit is tiny so the over-2-GiB layout runs on a small exported graph.
    import dataclasses

    from diffcut_edge.export import onnx_export

    source = tiny_model_dir("sd1", R, "fp32")
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 64 << 20)
    out = tmp_path / "ext"
    out.mkdir()
    files = onnx_export.optimize_and_layout(source / "encoder.onnx", out / "encoder.onnx", optimize=False)
    assert files == ["encoder.onnx.data"]
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    assert (out / "encoder.onnx").stat().st_size < (out / "encoder.onnx.data").stat().st_size / 4
    m = read_manifest(source)
    assert onnx_export.check_graph(out / "encoder.onnx", resolution=R, channels=m.channels) > 0
    images = photo_batch(R, 1)
    np.testing.assert_array_equal(run_onnx(out, images), run_onnx(source, images))
    m = dataclasses.replace(
        m, onnx_data_files=files, files_sha256={f: sha256_file(out / f) for f in ["encoder.onnx", *files]}
    )
    verify_files(out, m)
    with open(out / "encoder.onnx.data", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DiffCutError, match="encoder.onnx.data does not match"):
        verify_files(out, m)


def test_revision_is_read_from_a_hub_cache_path():
    from types import SimpleNamespace

    from diffcut_edge.export.onnx_export import pipeline_revision

    sha = "0123456789abcdef0123456789abcdef01234567"
    cached = SimpleNamespace(name_or_path=f"/cache/hub/models--segmind--SSD-1B/snapshots/{sha}", config={})
    assert pipeline_revision(cached) == sha
    assert pipeline_revision(SimpleNamespace(name_or_path="/data/my-pipeline", config={})) is None
