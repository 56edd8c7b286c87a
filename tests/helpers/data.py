"""Test data shipped in tests/data and built from scikit-image photos (seeded, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).parent.parent / "data"
PLANTED = DATA / "planted"
PLANTED_CASES = sorted(p.stem.removeprefix("planted_") for p in PLANTED.glob("planted_*.npz"))


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


def write_sample_photos(folder, size: int = 256, count: int | None = None):
    """Write the sample photos at ``size`` as PNG files p0.png, p1.png, ... into ``folder``; returns it."""
    from pathlib import Path

    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(sample_photos(size)[:count]):
        img = rgb if rgb.dtype == np.uint8 else np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"p{i}.png"), np.ascontiguousarray(img[..., ::-1]))
    return folder
