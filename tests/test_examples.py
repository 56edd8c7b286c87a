"""examples/opencv_app.py runs headless on a generated video (fake and real segmenters)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from diffcut_edge.runtime.segmenter import Segmenter
from helpers.fake_segmenter import FakeSegmenter, export_available, make_video

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "opencv_app.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("opencv_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("example") / "clip.avi"
    make_video(path, n=5)
    return path


def test_example_is_short():
    assert len(EXAMPLE.read_text().splitlines()) <= 60


def test_example_runs_headless_with_a_fake_segmenter(monkeypatch, clip, capsys):
    monkeypatch.setattr(Segmenter, "from_model_dir", classmethod(lambda cls, *a, **k: FakeSegmenter()))
    assert _load_example().main(["model", str(clip), "--headless"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(" fps " in line and "seg  refine on" in line for line in lines)
    assert " key" in lines[0] and all(" age " in line for line in lines[1:])  # carried by flow after frame 0


def test_example_every_1_segments_every_frame(monkeypatch, clip, capsys):
    fake = FakeSegmenter()
    monkeypatch.setattr(Segmenter, "from_model_dir", classmethod(lambda cls, *a, **k: fake))
    assert _load_example().main(["model", str(clip), "--headless", "--keyframes", "every:1"]) == 0
    assert fake.encode_calls == 5 and all(" key" in line for line in capsys.readouterr().out.splitlines())


def test_example_without_a_display_says_so_instead_of_a_traceback(monkeypatch, clip, capsys):
    import diffcut_edge.apps.hud as hud

    monkeypatch.setattr(hud, "gui_problem", lambda: "this OpenCV has no GUI")
    monkeypatch.delenv("DIFFCUT_HEADLESS", raising=False)
    module = _load_example()
    monkeypatch.setattr(module, "gui_problem", lambda: "this OpenCV has no GUI")
    assert module.main(["model", str(clip)]) == 2
    assert capsys.readouterr().err.strip() == "this OpenCV has no GUI; or run with --headless"


def test_example_reports_a_source_it_cannot_open(tmp_path, capsys):
    assert _load_example().main(["model", str(tmp_path / "none.mp4"), "--headless"]) == 1
    assert "cannot open" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not export_available(), reason="export stage not available (needs the [export] extra)")
def test_example_runs_headless_on_a_tiny_exported_model(tiny_model_dir, clip, monkeypatch, capsys):
    monkeypatch.setenv("DIFFCUT_HEADLESS", "1")
    assert _load_example().main([str(tiny_model_dir("sdxl", 256)), str(clip)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
