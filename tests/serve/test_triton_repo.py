"""``triton-repo``: every config.pbtxt parses with tritonclient's model-config protobuf, the ensemble's
wiring is checked, the files are what each Triton backend loads, and bad requests for a repository
are one-line errors that write nothing."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from diffcut_edge import cli
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.manifest import EngineRecord, read_manifest, write_manifest
from diffcut_edge.runtime.options import SegmenterOptions
from diffcut_edge.runtime.spec import SegmenterSpec
from diffcut_edge.serve import triton_repo as tr

pytest.importorskip("tritonclient.grpc", reason="triton-repo needs the [triton] extra (tritonclient)")


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir("sdxl", 256, "fp32")


def _configs(repo: Path) -> dict:
    return {p.parent.name: tr.parse_config(p) for p in repo.glob("*/config.pbtxt")}


def test_onnxruntime_repository_is_what_triton_loads(model_dir, tmp_path):
    spec = tr.RepositorySpec(max_batch=8, instances=2, post_instances=3, queue_delay_us=500)
    segmenter = SegmenterSpec(model_dir, options=SegmenterOptions(tau=0.4, refine=False))
    repo = tr.write_repository(segmenter, tmp_path / "repo", spec)
    manifest = read_manifest(model_dir)
    configs = _configs(repo)
    assert set(configs) == set(tr.MODELS)
    enc = configs[tr.ENCODER]
    assert enc.platform == "onnxruntime_onnx" and enc.max_batch_size == 8
    assert [tuple(t.dims) for t in enc.input] == [(3, manifest.resolution, manifest.resolution)]
    assert [tuple(t.dims) for t in enc.output] == [(manifest.num_tokens, manifest.channels)]
    assert enc.dynamic_batching.max_queue_delay_microseconds == 500
    assert enc.instance_group[0].count == 2
    assert (repo / tr.ENCODER / "1" / "model.onnx").read_bytes() == (model_dir / manifest.onnx_file).read_bytes()
    post = configs[tr.POSTPROCESS]
    assert post.backend == "python" and post.instance_group[0].count == 3
    served = json.loads(post.parameters["segmenter"].string_value)
    assert "model_dir" not in served  # the model opens the files beside it, not this machine's folder
    assert SegmenterSpec.from_dict({**served, "model_dir": "x"}).options == segmenter.options
    env = json.loads(post.parameters["environment"].string_value)
    assert env["site_dirs"] and all(os.path.isdir(d) for d in env["site_dirs"])
    # the contract clients see
    ens = configs[tr.ENSEMBLE]
    assert [(t.name, t.data_type, tuple(t.dims)) for t in ens.input] == [("image", 2, (-1, -1, 3))]  # TYPE_UINT8
    assert [t.name for t in ens.output] == ["labels", "num_segments"]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [tr.PREPROCESS, tr.ENCODER, tr.POSTPROCESS]
    assert not list(tmp_path.glob(".repo.partial-*"))


def test_python_encoder_carries_a_model_folder_that_opens(model_dir, tmp_path):
    from diffcut_edge.runtime.backends import open_backend

    repo = tr.write_repository(model_dir, tmp_path / "repo", tr.RepositorySpec(encoder="python"))
    config = _configs(repo)[tr.ENCODER]
    assert config.backend == "python" and config.parameters["role"].string_value == "encoder"
    with open_backend(repo / tr.ENCODER / "1" / "model", "ort-cpu") as backend:  # hashes checked
        assert backend.manifest.resolution == 256


def test_tensorrt_repository_uses_the_engine_and_its_profile(model_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for item in model_dir.iterdir():
        os.link(item, folder / item.name)
    (folder / "encoder.h100.plan").write_bytes(b"plan bytes")
    manifest = read_manifest(folder)
    engine = EngineRecord("encoder.h100.plan", "NVIDIA H100", "9.0", "10.3.0", (1, 2, 3))
    write_manifest(folder, replace(manifest, engines=[engine]))
    repo = tr.write_repository(folder, tmp_path / "repo", tr.RepositorySpec(encoder="tensorrt", max_batch=8))
    config = _configs(repo)[tr.ENCODER]
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 3  # capped by the profile
    assert (repo / tr.ENCODER / "1" / "model.plan").read_bytes() == b"plan bytes"

    write_manifest(folder, replace(manifest, engines=[engine, replace(engine, file="encoder.orin.plan")]))
    with pytest.raises(DiffCutError, match="pick the one built for the server's GPU with --engine"):
        tr.write_repository(folder, tmp_path / "repo2", tr.RepositorySpec(encoder="tensorrt"))
    write_manifest(folder, replace(manifest, engines=[replace(engine, batch_profile=(2, 2, 4))]))
    with pytest.raises(DiffCutError, match="rebuild it with --batch 1:1:4"):
        tr.write_repository(folder, tmp_path / "repo3", tr.RepositorySpec(encoder="tensorrt"))
    assert not (tmp_path / "repo2").exists() and not (tmp_path / "repo3").exists()


def test_no_engine_says_what_to_do(model_dir, tmp_path):
    with pytest.raises(DiffCutError, match="build-engine"):
        tr.write_repository(model_dir, tmp_path / "repo", tr.RepositorySpec(encoder="tensorrt"))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"encoder": "openvino"}, "--encoder must be one of"),
        ({"max_batch": 0}, "max-batch must be an integer >= 1"),
        ({"post_instances": 0}, "post-instances must be an integer >= 1"),
        ({"queue_delay_us": -1}, "queue-delay-us"),
        ({"engine": "x.plan"}, "--engine picks a TensorRT plan"),
    ],
)
def test_spec_refuses_bad_values(change, message):
    with pytest.raises(DiffCutError, match=message):
        tr.RepositorySpec(**change)


def test_an_earlier_repository_is_replaced_another_folder_never(model_dir, tmp_path):
    repo = tr.write_repository(model_dir, tmp_path / "repo", tr.RepositorySpec(max_batch=2))
    tr.write_repository(model_dir, repo, tr.RepositorySpec(max_batch=6))
    assert _configs(repo)[tr.ENCODER].max_batch_size == 6
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"x")
    with pytest.raises(DiffCutError, match="is not a diffcut-edge Triton repository"):
        tr.write_repository(model_dir, other)
    assert [p.name for p in other.iterdir()] == ["keep.jpg"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda repo: (repo / tr.ENCODER / "config.pbtxt").write_text("max_batch_size: 'four'"), "not a valid Triton"),
        (lambda repo: (repo / tr.ENCODER / "config.pbtxt").write_text('name: "other"'), "is not its folder's"),
        (lambda repo: shutil.rmtree(repo / tr.POSTPROCESS / "1"), "no version folder"),
        (
            lambda repo: _edit(repo / tr.ENSEMBLE / "config.pbtxt", 'value: "pixels"', 'value: "pixelz"', 1),
            "reads \\['pixels'\\], which no earlier step",
        ),
        (
            lambda repo: _edit(repo / tr.ENSEMBLE / "config.pbtxt", 'key: "num_segments"', 'key: "segments"'),
            "has no output",
        ),
        (
            lambda repo: _edit(repo / tr.ENSEMBLE / "config.pbtxt", 'value: "num_segments"', 'value: "count"'),
            "no step produces output",
        ),
        (
            lambda repo: _edit(
                repo / tr.ENSEMBLE / "config.pbtxt", 'model_name: "diffcut_postprocess"', 'model_name: "diffcut_post"'
            ),
            "is not in",
        ),
    ],
)
def test_validation_catches_what_triton_would_refuse(model_dir, tmp_path, breakage, message):
    repo = tr.write_repository(model_dir, tmp_path / "repo")
    breakage(repo)
    with pytest.raises(DiffCutError, match=message):
        tr.validate_repository(repo)


def _edit(path: Path, old: str, new: str, count: int = -1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


def test_cli_writes_the_repository_and_refuses_bad_options(model_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    assert (
        cli.main(
            [
                "triton-repo",
                "--model-dir",
                str(model_dir),
                "--out",
                str(out),
                "--encoder",
                "python",
                "--max-batch",
                "2",
                "--tau",
                "0.3",
                "--no-refine",
            ]
        )
        == 0
    )
    assert "wrote the Triton model repository" in capsys.readouterr().out
    options = json.loads(_configs(out)[tr.POSTPROCESS].parameters["segmenter"].string_value)["options"]
    assert options["tau"] == 0.3 and options["refine"] is False
    assert cli.main(["triton-repo", "--model-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and not (tmp_path / "r2").exists()


def test_a_folder_with_a_vocabulary_serves_segments(vocab_model_dir, model_dir, tmp_path):
    """export-vocab's files travel to the post-processing model, which gets the pixels for CLIP and
    answers the segments document as UINT8 (BYTES tensors are empty under numpy 2 in 2.51)."""
    repo = tr.write_repository(vocab_model_dir, tmp_path / "repo", tr.RepositorySpec(encoder="python"))
    configs = _configs(repo)
    ens, post = configs[tr.ENSEMBLE], configs[tr.POSTPROCESS]
    assert [(t.name, t.data_type) for t in ens.output][-1] == (tr.SEGMENTS, 2)  # TYPE_UINT8
    step = ens.ensemble_scheduling.step[2]
    assert step.input_map["pixels"] == "pixels" and step.output_map[tr.SEGMENTS] == tr.SEGMENTS
    assert json.loads(post.parameters["segmenter"].string_value)["name_segments"] is None  # the folder's rule
    record = read_manifest(vocab_model_dir).vocabulary
    for name in record["files"]:
        assert (repo / tr.POSTPROCESS / "1" / name).read_bytes() == (vocab_model_dir / name).read_bytes()
    # Off on request; on request without a vocabulary, the error says what to run.
    plain = tr.write_repository(SegmenterSpec(vocab_model_dir, name_segments=False), tmp_path / "plain")
    assert [t.name for t in _configs(plain)[tr.ENSEMBLE].output] == ["labels", "num_segments"]
    with pytest.raises(DiffCutError, match="export-vocab"):
        tr.write_repository(SegmenterSpec(model_dir, name_segments=True), tmp_path / "none")
    assert not (tmp_path / "none").exists()
