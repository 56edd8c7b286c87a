"""Shared fixtures: planted-partition cases, real photos, tiny models (built once per session).

Tiny pipelines and exports are expensive-ish (seconds), so they are cached per session
and shared by every test that asks for them. Everything is seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.data import PLANTED_CASES, load_planted, sample_photos


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch intra-op thread for the whole session.

    The official outputs in tests/data/planted were computed with one thread (reduction
    order matters where float32 rounding decides a cut), and on a 2-core CI machine torch
    threads only contend with onnxruntime's. Without torch installed this does nothing.
    """
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=PLANTED_CASES)
def planted(request) -> dict[str, np.ndarray]:
    return load_planted(request.param)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return sample_photos()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """Callable ``family -> Path`` of a tiny random-weight pipeline saved with save_pretrained.

    Skips (at fixture level, with the reason) where the [export] extra is not installed."""
    for module in ("torch", "diffusers"):
        pytest.importorskip(module, reason="tiny models need the [export] extra (torch, diffusers)")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            from diffcut_edge.models import make_tiny_pipeline

            cache[family] = Path(make_tiny_pipeline(family, tmp_path_factory.mktemp(f"tiny-{family}"), seed=0))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_pipeline_dir):
    """Callable ``(family, resolution=256, precision="fp32") -> Path`` of an exported model folder."""
    cache: dict[tuple, Path] = {}

    def get(family: str, resolution: int = 256, precision: str = "fp32") -> Path:
        key = (family, resolution, precision)
        if key not in cache:
            from diffcut_edge.export import export_model

            out = tmp_path_factory.mktemp(f"export-{family}-{resolution}-{precision}")
            cache[key] = Path(
                export_model(tiny_pipeline_dir(family), out, resolution=resolution, precision=precision, progress=False)
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random-weight ConvNeXt CLIP in open_clip's local-dir layout (models.clip.make_tiny_clip)."""
    from helpers.clip import ensure_open_clip

    ensure_open_clip()
    from diffcut_edge.models.clip import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture(scope="session")
def vocab_model_dir(tmp_path_factory, tiny_model_dir, tiny_clip_dir) -> Path:
    """The tiny SDXL export (256 px) with the tiny CLIP and the VOC vocabulary (export-vocab)."""
    import shutil

    from diffcut_edge.export.clip_export import export_vocabulary
    from diffcut_edge.runtime.vocabulary import load_vocabulary

    folder = tmp_path_factory.mktemp("vocab-model") / "model"
    shutil.copytree(tiny_model_dir("sdxl", 256, "fp32"), folder)
    export_vocabulary(folder, f"local-dir:{tiny_clip_dir}", load_vocabulary("voc"))
    return folder


@pytest.fixture
def cli_fake_segmenter(monkeypatch):
    """A fast stand-in Segmenter behind every CLI verb (tests/helpers/fake_segmenter.py)."""
    from diffcut_edge.apps import pipeline
    from helpers.fake_segmenter import FakeSegmenter

    seg = FakeSegmenter()
    monkeypatch.setattr(pipeline, "open_segmenter", lambda spec, **kwargs: seg)
    return seg


@pytest.fixture(params=["numpy", "strict", "torch"])
def ns(request):
    """The array namespace a post-processing test runs on (tests/helpers/namespaces.py)."""
    from helpers import namespaces

    if request.param == "torch" and not namespaces.HAS_TORCH:
        pytest.skip("torch is not installed (the [export] extra): the torch namespace is not tested")
    return namespaces.make(request.param)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """A folder of the sample photos at 256 px as PNG files p0.png ... p3.png."""
    from helpers.data import write_sample_photos

    return write_sample_photos(tmp_path_factory.mktemp("photos"), 256)
