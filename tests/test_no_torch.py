"""The rule of the house: runtime/, apps/, eval/ and their commands work with no torch, diffusers
or transformers.

Each check runs in a fresh interpreter whose import system refuses those packages (a
meta-path finder inserted first), so an accidental ``import torch`` anywhere on the
runtime path fails the test even on this machine, where torch is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers.toy_encoder import make_toy_model_dir

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "diffusers", "transformers", "torchvision", "accelerate")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}
    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the no-torch test)", name=name)
            return None
    sys.meta_path.insert(0, _Blocker())
""")


def _run_blocked(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env_code = BLOCKER + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", env_code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_blocker_really_blocks():
    proc = _run_blocked("import torch")
    assert proc.returncode != 0 and "blocked by the no-torch test" in proc.stderr


SEGMENT_ONE_FRAME = """
    import json, sys
    import numpy as np
    import diffcut_edge.runtime as runtime
    from diffcut_edge.apps.overlay import draw_overlay
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    frame[:, 80:] = (20, 200, 40)   # two flat regions plus a noisy one
    frame[60:, :80] = (200, 30, 30)
    with runtime.Segmenter.from_model_dir(sys.argv[1] if len(sys.argv) > 1 else MODEL_DIR,
                                          backend="ort-cpu") as seg:
        result = seg(frame)
        overlay = draw_overlay(frame, result.labels)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"shape": list(result.labels.shape), "k": result.num_segments,
                      "overlay": list(overlay.shape), "heavy": heavy,
                      "backend": type(seg.backend).__name__}))
"""


def _segment_without_torch(model_dir: Path) -> dict:
    proc = _run_blocked(f"MODEL_DIR = {str(model_dir)!r}\n" + textwrap.dedent(SEGMENT_ONE_FRAME))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runtime_segments_without_torch_toy_model(tmp_path):
    out = _segment_without_torch(make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16))
    assert out["shape"] == [120, 160] and out["overlay"] == [120, 160, 3]
    assert out["backend"] == "OnnxRuntimeBackend" and out["heavy"] == []


@pytest.mark.slow
def test_runtime_segments_without_torch_exported_model(tiny_model_dir):
    """The real export (tiny SDXL at 256) runs in a torch-free process."""
    out = _segment_without_torch(tiny_model_dir("sdxl", 256))
    assert out["shape"] == [120, 160] and out["k"] >= 1 and out["heavy"] == []


def test_runtime_import_is_light():
    proc = _run_blocked("""
        import sys
        import diffcut_edge.runtime, diffcut_edge.runtime.segmenter, diffcut_edge.runtime.backends
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED + ("cupy", "tensorrt", "onnxruntime"))
        print(heavy)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"  # not even onnxruntime until a backend opens


def test_every_module_of_runtime_apps_eval_and_serve_imports_without_torch():
    proc = _run_blocked("""
        import importlib, pkgutil, sys
        import diffcut_edge
        names = []
        for package in ("runtime", "apps", "eval", "serve"):
            pkg = importlib.import_module(f"diffcut_edge.{package}")
            for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
                importlib.import_module(info.name)
                names.append(info.name)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(len(names), heavy)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, heavy = proc.stdout.strip().split(" ", 1)
    assert int(count) >= 20 and heavy == "[]"


def test_cli_segment_help_without_torch():
    proc = _run_blocked("""
        import runpy, sys
        sys.argv = ["diffcut-edge", "segment", "--help"]
        runpy.run_module("diffcut_edge.cli", run_name="__main__")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--model-dir" in proc.stdout


def test_cli_segment_runs_without_torch(tmp_path):
    import cv2

    model_dir = make_toy_model_dir(tmp_path / "toy", resolution=128, channels=16)
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, 48:] = (255, 128, 0)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    proc = _run_blocked(f"""
        import sys
        from diffcut_edge.cli import main
        sys.exit(main(["segment", {str(tmp_path / "img.png")!r}, "--model-dir", {str(model_dir)!r},
                       "--out", {str(tmp_path / "out")!r}, "--backend", "ort-cpu", "--quiet"]))
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((tmp_path / "out").iterdir())


def test_segments_are_named_without_torch(vocab_model_dir, tmp_path):
    """The folder's vocabulary and classes typed at run time: ONNX Runtime and the numpy tokenizer only."""
    import cv2

    image = np.zeros((64, 96, 3), np.uint8)
    image[:, 48:] = (255, 128, 0)
    cv2.imwrite(str(tmp_path / "img.png"), image)
    for name, extra in (("folder", []), ("typed", ["--classes", "cat, sofa"])):
        out = tmp_path / name
        proc = _run_blocked(f"""
            import sys
            from diffcut_edge.cli import main
            code = main(["segment", {str(tmp_path / "img.png")!r}, "--model-dir", {str(vocab_model_dir)!r},
                         "--out", {str(out)!r}, "--backend", "ort-cpu", "--quiet", *{extra!r}])
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
            print(heavy)
            sys.exit(code)
        """)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == "[]"
        doc = json.loads((out / "img_segments.json").read_text())
        assert doc["segments"] and doc["vocabulary"] == ("voc" if name == "folder" else "run-time")


def test_open_vocabulary_eval_runs_without_torch(vocab_model_dir, tmp_path):
    """eval --open-vocab on the engine: dataset, protocol, ONNX CLIP, numpy metric; Context's classes
    are embedded with the folder's text tower (its bank is VOC's)."""
    from helpers.eval_fixtures import write_dataset

    root = write_dataset("context", tmp_path / "ctx", n_images=1)
    out = tmp_path / "results.json"
    proc = _run_blocked(
        f"""
        import sys
        from diffcut_edge.cli import main
        code = main(["eval", "--dataset", "context", "--root", {str(root)!r}, "--open-vocab", "--mask-size", "64",
                     "--model-dir", {str(vocab_model_dir)!r}, "--backend", "ort-cpu", "--out", {str(out)!r}, "-q"])
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        sys.exit(code)
    """,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    doc = json.loads(out.read_text())
    assert (
        doc["settings"]["text_bank"] == "embedded now with the folder's text tower" and len(doc["per_class_iou"]) == 60
    )
