"""``diffcut-edge doctor`` on this machine (no GPU) and on stand-ins for what it lacks."""

from __future__ import annotations

import importlib.metadata
import json

from diffcut_edge import lazy
from diffcut_edge.apps import doctor
from diffcut_edge.runtime import gpu
from helpers.fake_segmenter import run_cli
from helpers.toy_encoder import make_toy_model_dir


def _finding(report, name):
    return next(f for f in report.findings if f.name == name)


def test_doctor_here_says_plainly_there_is_no_gpu_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu, "probe_gpu", lambda: None)  # also on a CI machine that has one
    model = make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16)
    code, out, err = run_cli(["doctor", "--model-dir", str(model)], capsys)
    assert code == 0 and err == ""
    assert "--  gpu          no NVIDIA GPU" in out and "ok  onnxruntime" in out
    assert out.strip().splitlines()[-1] == "=>  can run with backend ort (CPU)"
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["gpu"] is None and data["can_run"] is True
    assert {f["name"] for f in data["findings"]} >= {"python", "numpy", "onnxruntime", "gpu", "cupy", "tensorrt"}


def test_without_onnxruntime_the_folder_cannot_run_and_the_line_says_what_to_install(tmp_path, monkeypatch):
    missing = lazy.LazyModule("onnxruntime_not_installed_here", extra="cpu", purpose="test")
    monkeypatch.setattr(doctor, "onnxruntime", missing)
    model = make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16)
    report = doctor.diagnose(model)
    assert not report.can_run and report.backend == "ort (onnxruntime is missing)"
    assert "diffcut-edge[cpu]" in _finding(report, "onnxruntime").detail


def test_both_onnxruntime_wheels_installed_is_flagged(monkeypatch):
    monkeypatch.setattr(doctor.versions, "dist_version", lambda name: "1.20.0")
    finding = _finding(doctor.diagnose(), "onnxruntime")
    assert not finding.ok and "overwrite each other's files" in finding.detail


def test_jetson_release_names_the_jetpack(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    assert gpu.jetson_release(release) == "L4T R36.4.0 (JetPack 6.1 / 6.2)"
    assert gpu.jetson_release(tmp_path / "absent") is None


def test_a_faster_folder_says_whether_it_was_verified_and_the_live_extra_is_reported(tmp_path, monkeypatch):
    import importlib.util

    from diffcut_edge.runtime.manifest import read_manifest, write_manifest

    monkeypatch.setattr(gpu, "probe_gpu", lambda: None)
    model = make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16)
    assert all(f.name != "verified" for f in doctor.diagnose(model).findings)  # a plain export: nothing to say
    m = read_manifest(model)
    m.precision, m.quantization = "int8", {"source_dir": "/models/fp32", "activations": "uint8"}
    write_manifest(model, m)
    finding = _finding(doctor.diagnose(model), "verified")
    assert not finding.ok and "never verified" in finding.detail and "--against /models/fp32" in finding.detail
    m.verification = {"passed": True, "against": "/models/fp32", "min_cosine": 0.999}
    write_manifest(model, m)
    assert _finding(doctor.diagnose(model), "verified").ok
    live = _finding(doctor.diagnose(), "live view")
    assert live.ok == (importlib.util.find_spec("aiohttp") is not None)


def test_the_optional_stages_and_the_folders_vocabulary_are_reported(tmp_path, monkeypatch, vocab_model_dir):
    from diffcut_edge import versions

    real = versions.dist_version
    gone = {"timm", "ray", "nvidia-pytriton"}
    monkeypatch.setattr(versions, "dist_version", lambda *names: None if set(names) & gone else real(*names))
    real_distribution = importlib.metadata.distribution

    def distribution(name):
        if name in gone:
            raise importlib.metadata.PackageNotFoundError(name)
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr("shutil.which", lambda name: None)
    report = doctor.diagnose(vocab_model_dir)
    clip, ray, server = (_finding(report, n) for n in ("clip", "ray", "tritonserver"))
    assert not clip.ok and "timm" in clip.detail and "export-vocab" in clip.detail
    assert not ray.ok and "--engine ray" in ray.detail
    assert not server.ok and "nvidia-pytriton" in server.detail
    assert report.can_run  # optional stages never decide whether the runtime can run
    model, vocabulary = _finding(report, "model"), _finding(report, "vocabulary")
    assert model.detail.startswith(f"{vocab_model_dir}: exported from")  # the folder, then its source
    assert vocabulary.ok and vocabulary.detail.startswith("voc (21 classes")
    plain = doctor.diagnose(make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16))
    assert not _finding(plain, "vocabulary").ok and "export-vocab" in _finding(plain, "vocabulary").detail


def test_a_tritonserver_on_path_is_the_one_serve_would_run(tmp_path, monkeypatch, vocab_model_dir):
    """doctor and serve find the binary by the same lookup: here a stand-in executable on PATH."""
    from diffcut_edge.serve.triton_server import find_tritonserver

    executable = tmp_path / "bin" / "tritonserver"
    executable.parent.mkdir()
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    monkeypatch.setenv("PATH", str(executable.parent))
    server = _finding(doctor.diagnose(vocab_model_dir), "tritonserver")
    assert server.ok and server.detail.startswith(f"{executable} (PATH)")
    assert find_tritonserver().executable == executable.resolve()
