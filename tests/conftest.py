"""Shared fixtures: planted-partition cases, real photos, tiny models (built once per session).

Tiny pipelines and exports are expensive-ish (seconds), so they are cached per session
and shared by every test that asks for them. Everything is seeded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
PLANTED = DATA / "planted"
PLANTED_CASES = sorted(p.stem.removeprefix("planted_") for p in PLANTED.glob("planted_*.npz"))


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


def load_planted(name: str) -> dict[str, np.ndarray]:
    """One planted case with the official implementation's outputs at its own noise, grid 16.

    Keys: gt (128,128), image (128,128,3) RGB float32, features (256,1280), grid (16,16),
    official_labels / official_pamr (128,128) for the entry matching grid 16 and the stored noise.
    """
    with np.load(PLANTED / f"planted_{name}.npz", allow_pickle=False) as d:
        noise = float(d["noise"])
        match = np.flatnonzero((d["official_grid"] == 16) & np.isclose(d["official_noise"], noise))
        assert match.size == 1, f"{name}: expected one official entry for grid 16, noise {noise}"
        i = int(match[0])
        return {
            "name": name,
            "gt": d["gt"].astype(np.int64),
            "image": np.ascontiguousarray(d["image128"].transpose(1, 2, 0)),
            "features": d["features"],
            "grid": (int(d["h"]), int(d["w"])),
            "noise": noise,
            "official_labels": d["official_labels"][i].astype(np.int64),
            "official_pamr": d["official_pamr"][i].astype(np.int64),
        }


@pytest.fixture(params=PLANTED_CASES)
def planted(request) -> dict[str, np.ndarray]:
    return load_planted(request.param)


def sample_photos(size: int | None = None) -> list[np.ndarray]:
    """Real photos shipped with scikit-image, as (H, W, 3) RGB float32 in [0, 1]."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for p in photos:
        img = p[..., :3].astype(np.float32) / 255.0
        if size is not None:
            import cv2

            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out.append(img)
    return out


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    return sample_photos()


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """Callable ``family -> Path`` of a tiny random-weight pipeline saved with save_pretrained."""
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
            cache[key] = Path(export_model(tiny_pipeline_dir(family), out, resolution=resolution,
                                           precision=precision, progress=False))
        return cache[key]

    return get


@pytest.fixture
def cli_fake_segmenter(monkeypatch):
    """A fast stand-in Segmenter behind every CLI verb (tests/fake_segmenter.py)."""
    from fake_segmenter import FakeSegmenter

    from diffcut_edge import cli

    seg = FakeSegmenter()
    monkeypatch.setattr(cli, "_open_segmenter", lambda args: seg)
    return seg
