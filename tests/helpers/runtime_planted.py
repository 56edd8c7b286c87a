"""Synthetic planted-partition cases for the runtime post-processing tests and benchmark.

A Voronoi partition of ``k`` seeds is drawn on a fine grid (``sub`` x ``sub`` cells per
token); every region gets its own random direction in feature space on top of a shared
component (cosine between regions ~ ``rho``), boundary tokens mix the regions they cover,
and isotropic Gaussian noise of relative size ``noise`` is added. The RGB image for PAMR
paints each region a random colour at the mask size, with a little pixel noise.
Everything is seeded (numpy Generator), so cases are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffcut_edge.metrics import matched_agreement  # noqa: F401  (the tests' yardstick, the library's own)


@dataclass
class PlantedCase:
    features: np.ndarray  # (h*w, C) float32, row-major tokens
    grid: tuple[int, int]
    regions: np.ndarray  # (h*sub, w*sub) int region ids of the fine grid
    image: np.ndarray  # (H, W, 3) float32 RGB in [0, 1] at image_size


def voronoi(shape: tuple[int, int], k: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) ids of the nearest of ``k`` uniformly drawn seeds."""
    h, w = shape
    seeds = rng.uniform(0, 1, (k, 2)) * np.array([h, w])
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    dist = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return dist.argmin(-1)


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(size[0]) * labels.shape[0]) // size[0]
    cols = (np.arange(size[1]) * labels.shape[1]) // size[1]
    return labels[rows][:, cols]


def planted_case(
    grid: tuple[int, int],
    k: int,
    noise: float,
    seed: int,
    *,
    channels: int = 1280,
    rho: float = 0.5,
    sub: int = 4,
    image_size: tuple[int, int] = (128, 128),
) -> PlantedCase:
    rng = np.random.default_rng(seed)
    h, w = grid
    regions = voronoi((h * sub, w * sub), k, rng)
    cover = np.stack([(regions == r).reshape(h, sub, w, sub).mean(axis=(1, 3)) for r in range(k)], -1)
    common = rng.standard_normal(channels)
    common /= np.linalg.norm(common)
    dirs = rng.standard_normal((k, channels))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    feats = np.sqrt(rho) * common + np.sqrt(1 - rho) * (cover.reshape(-1, k) @ dirs)
    feats += noise * rng.standard_normal(feats.shape) / np.sqrt(channels)
    colours = rng.uniform(0.1, 0.9, (k, 3))
    image = colours[resize_nearest(regions, image_size)] + 0.03 * rng.standard_normal((*image_size, 3))
    return PlantedCase(feats.astype(np.float32), (h, w), regions, np.clip(image, 0, 1).astype(np.float32))
