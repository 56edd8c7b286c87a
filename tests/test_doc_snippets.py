"""Every Python snippet in README.md and docs/*.md runs (it is code a user copies).

Each runs in a fresh namespace in a temporary folder holding what it names: the model folder
"ssd1b-1024" is the tiny SDXL export (with a vocabulary for the open-vocabulary page), "photo.jpg"
and "street.mp4" are a sample photo and a short clip, ``frame`` / ``frames`` are given, a Triton
server runs for docs/serving.md, and "cuda" reads "cpu" (the same calls on torch CPU tensors).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = [
    (path.relative_to(ROOT).as_posix(), i, code)
    for path in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S))
]


def test_there_are_snippets_to_run():
    assert len(SNIPPETS) >= 5


@pytest.fixture
def workspace(tmp_path, monkeypatch, photos):
    from helpers.fake_segmenter import make_video

    frame = np.ascontiguousarray((photos[0][:, :, ::-1] * 255).round().astype(np.uint8))
    cv2.imwrite(str(tmp_path / "photo.jpg"), frame)
    make_video(tmp_path / "street.mp4", n=6, codec="mp4v")
    monkeypatch.chdir(tmp_path)
    return tmp_path, frame


@pytest.mark.slow
@pytest.mark.parametrize("where, index, code", SNIPPETS, ids=[f"{w}#{i}" for w, i, _ in SNIPPETS])
def test_snippet_runs(where, index, code, workspace, tiny_model_dir, request):
    folder, frame = workspace
    model = tiny_model_dir("sdxl", 256, "fp32")
    if "class_name" in code or "classes=" in code:
        model = request.getfixturevalue("vocab_model_dir")
    code = code.replace('"ssd1b-1024"', repr(str(model))).replace('"cuda"', '"cpu"')
    namespace = {"frame": frame, "frames": [frame, frame[::-1].copy()], "__name__": "snippet"}
    if "TritonSegmenter(" in code:
        server = request.getfixturevalue("triton_url")
        code = code.replace('"localhost:8000"', repr(server))
    if "import torch" in code:
        pytest.importorskip("torch", reason="this snippet is the torch-tensor API (the [export] extra)")
    exec(compile(code, f"{where}#{index}", "exec"), namespace)
    written = [p.name for p in folder.iterdir()]
    if "imwrite(" in code or "AtomicVideoWriter(" in code:
        assert {"overlay.jpg", "out.mp4"} & set(written), written


@pytest.fixture
def triton_url(tiny_model_dir, tmp_path_factory):
    from diffcut_edge.serve import triton_repo as tr
    from diffcut_edge.serve.triton_server import TritonServer
    from helpers.triton import free_ports, tritonserver_binary

    work = tmp_path_factory.mktemp("doc-triton")
    repo = tr.write_repository(tiny_model_dir("sdxl", 256, "fp32"), work / "repo", tr.RepositorySpec(encoder="python"))
    http, grpc, metrics = free_ports(3)
    server = TritonServer(tritonserver_binary(), repo, work, http_port=http, grpc_port=grpc, metrics_port=metrics)
    server.start(timeout_s=180)
    try:
        yield server.url
    finally:
        server.stop()
