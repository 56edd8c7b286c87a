"""What moves DiffCut's labels: label agreement against the minimum token cosine of a feature error.

The INT8 gate of ``verify --against`` is a minimum token cosine (0.99) plus a label agreement. This
measures, on planted features whose segmentation is known (``tests/helpers/runtime_planted``: SSD-1B's
1280 channels, Voronoi regions, a shared component and token noise), how far labels move when the
features carry an error of a given size, for three shapes of error:

- ``random``: an independent random direction per token (rounding noise);
- ``systematic``: one direction added to every token (a biased layer: the issue's "every token off");
- ``channel``: each channel scaled by its own factor (per-channel scale errors).

Each error is scaled so that the minimum token cosine against the clean features is the target.
Agreement: the runtime's NCut + assignment on both, Hungarian-matched pixel agreement (mean and worst
over the cases). A feature gate is justified at the cosine above which labels stay put.

    python benchmarks/bench_gate.py                       # grids 16, 32; noise 0.2, 0.4; 3 seeds
    python benchmarks/bench_gate.py --json gate.json

Also shown per case: the agreement when *random* noise of rel. error 1e-3 is added, a measure of how
close the clean segmentation is to its near-ties (1.0: stable).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from diffcut_edge.export.verify import label_stability, token_cosines

TARGETS = (0.9999, 0.9995, 0.999, 0.995, 0.99, 0.98, 0.95, 0.9)
KINDS = ("random", "systematic", "channel")


def _error(features: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A unit-size error of the given shape (scaled by the caller)."""
    n, c = features.shape
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if kind == "random":
        e = rng.standard_normal((n, c))
        return norms * e / np.linalg.norm(e, axis=1, keepdims=True)
    if kind == "systematic":
        d = rng.standard_normal(c)
        return norms * (d / np.linalg.norm(d))[None, :]
    return features * rng.standard_normal(c)[None, :]  # channel scales: x_c (1 + s g_c)


def affinity_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest change of NCut's normalised similarity ``minmax(F̂ F̂ᵀ)`` (before the power) between two
    feature sets: what the NCut reads, invariant to what minmax absorbs."""

    def similarity(f: np.ndarray) -> np.ndarray:
        u = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = u @ u.T
        return (s - s.min()) / (s.max() - s.min())

    return float(np.abs(similarity(a) - similarity(b)).max())


def _scaled(features: np.ndarray, error: np.ndarray, target: float) -> np.ndarray:
    """features + s * error with s chosen (bisection) so that the minimum token cosine is ``target``."""
    lo, hi = 0.0, 1.0
    while token_cosines(features, features + hi * error).min() > target:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if token_cosines(features, features + mid * error).min() > target:
            lo = mid
        else:
            hi = mid
    return (features + hi * error).astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    p.add_argument("--noise", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--regions", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from diffcut_edge.metrics import matched_agreement
    from diffcut_edge.runtime import segment_features
    from helpers.runtime_planted import planted_case

    rows: dict[tuple[str, float], list[float]] = {}
    errors: dict[tuple[str, float], list[float]] = {}
    stability = []
    for g in args.grids:
        for noise in args.noise:
            for seed in range(args.seeds):
                case = planted_case((g, g), args.regions, noise, seed)
                clean = segment_features(case.features, case.grid)
                stability.append(label_stability(case.features, case.grid, clean, seed=1000 + seed))
                for kind in KINDS:
                    error = _error(case.features, kind, np.random.default_rng(seed))
                    for target in TARGETS:
                        moved_features = _scaled(case.features, error, target)
                        moved = segment_features(moved_features, case.grid)
                        rows.setdefault((kind, target), []).append(matched_agreement(clean, moved))
                        errors.setdefault((kind, target), []).append(affinity_error(case.features, moved_features))
    cases = len(stability)
    print(
        f"label agreement (mean / worst of {cases} planted cases: grids {args.grids}, noise {args.noise}, "
        f"{args.seeds} seeds, {args.regions} regions) against the min token cosine of the error"
    )
    print(f"stability probe (random error, rel. 1e-3): mean {np.mean(stability):.3f}, worst {min(stability):.3f}")
    print(f"{'min cos':>8} " + " ".join(f"{k + ': labels mean/worst, affinity err':>42}" for k in KINDS))
    for target in TARGETS:
        cells = [(rows[(k, target)], errors[(k, target)]) for k in KINDS]
        print(f"{target:>8} " + " ".join(f"{np.mean(c):>19.3f} / {min(c):.3f}, {max(e):>8.4f}" for c, e in cells))
    pairs = sorted((max(errors[key]), min(rows[key])) for key in rows)
    print("worst agreement against the largest affinity error (all kinds, sorted by error):")
    for err, agree in pairs:
        print(f"  affinity error {err:.4f}: worst labels {agree:.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cases": cases,
                    "stability": stability,
                    "rows": [
                        {"kind": k, "min_cosine": t, "agreement": v, "affinity_error": errors[(k, t)]}
                        for (k, t), v in rows.items()
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
