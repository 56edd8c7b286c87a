"""Third-party test oracles installed once into the test-tools cache (``pip install --no-deps --target``).

For packages the project does not depend on but whose behaviour a test must match exactly (the
official evaluation's torchmetrics). Skips with the reason only where the wheels cannot be
installed (no registry).
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.triton import CACHE


def ensure_packages(modules: tuple[str, ...], packages: tuple[str, ...], folder: str, marker: str) -> Path | None:
    """Make ``modules`` importable from ``CACHE/folder`` (``marker`` a file that proves the install);
    returns the folder put on sys.path, or None when they all import already."""
    if all(importlib.util.find_spec(m) for m in modules):
        return None
    target = CACHE / folder
    if not (target / marker).is_file():
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *packages],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"cannot install {' '.join(packages)} (pip install --no-deps): {last}")
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return target


def torchmetrics():
    """torchmetrics 1.4 (the official open-vocabulary evaluation's JaccardIndex), needs torch."""
    pytest.importorskip("torch", reason="torchmetrics needs torch (the [export] extra)")
    ensure_packages(
        ("torchmetrics", "lightning_utilities"),
        ("torchmetrics==1.4.0", "lightning-utilities==0.11.9"),
        "torchmetrics-1.4.0",
        "torchmetrics/__init__.py",
    )
    return importlib.import_module("torchmetrics")
