"""The extras never put onnxruntime and onnxruntime-gpu in one environment (GPU issue, defect 4)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
ORT = {"onnxruntime", "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower()


def _resolve(extras: tuple[str, ...]) -> list[str]:
    """The requirements of the base install plus ``extras``, following self-references."""
    out = list(PROJECT["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in PROJECT["optional-dependencies"][extra]:
            if _name(req) == PROJECT["name"]:
                pending += re.search(r"\[(.*)\]", req).group(1).split(",")
            else:
                out.append(req)
    return out


def test_the_base_install_has_no_onnxruntime_of_either_kind():
    assert not ORT & {_name(r) for r in PROJECT["dependencies"]}


@pytest.mark.parametrize(
    "extras",
    [(e,) for e in PROJECT["optional-dependencies"]] + [("export", "dev"), ("export", "gpu"), ("jetson", "trt")],
)
def test_no_install_the_docs_name_gets_both_onnxruntimes(extras):
    names = {_name(r) for r in _resolve(extras)}
    assert len(names & ORT) <= 1, f"{extras} installs {sorted(names & ORT)}"


def test_gpu_installs_the_cuda_libraries_cupyx_needs_and_jetson_no_onnxruntime():
    gpu = _resolve(("gpu",))
    assert any(r.startswith("cupy-cuda12x[ctk]") for r in gpu) and "onnxruntime-gpu" in {_name(r) for r in gpu}
    assert not ORT & {_name(r) for r in _resolve(("jetson",))}


def test_the_readme_setup_command_gets_the_cpu_onnxruntime():
    assert {_name(r) for r in _resolve(("export", "dev"))} & ORT == {"onnxruntime"}


@pytest.mark.slow
def test_a_built_wheel_carries_the_data_files_and_installs(tmp_path):
    """README's wheel route: `pip wheel --no-deps -w dist .`, then an install elsewhere finds the live page,
    the vocabularies and the eval data (package data), not only the code."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("diffcut_edge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "diffcut_edge/apps/live_page.html",
        "diffcut_edge/runtime/vocabularies/voc.txt",
        "diffcut_edge/runtime/vocabularies/coco-object.txt",
        "diffcut_edge/eval/data/coco_val2017_curated.txt",
    ):
        assert needed in names, needed
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import diffcut_edge, importlib.resources as r; "
        "assert diffcut_edge.__file__.startswith(sys.argv[1]), diffcut_edge.__file__; "
        "print(len(r.files('diffcut_edge.apps').joinpath('live_page.html').read_text()) > 100, "
        "'aeroplane' in r.files('diffcut_edge.runtime').joinpath('vocabularies/voc.txt').read_text())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.stdout.split() == ["True", "True"], proc.stderr[-2000:]
