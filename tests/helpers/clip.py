"""open_clip and timm for the tests, without torchvision.

The export extra pins the local CPU torch build; the index's torchvision does not match it, and a
torchvision that fails to import breaks diffusers' pipelines too, so the project never installs it.
open_clip and timm are installed here once with ``pip install --no-deps --target`` into a cache
folder (as docs/open-vocabulary.md tells users to, with --no-deps) and put on ``sys.path``; the
library's ``models.clip.import_open_clip`` supplies the torchvision stand-in. Skips with the reason
only where the wheels cannot be installed (no registry).
"""

from __future__ import annotations

import os

from helpers.tools import ensure_packages
from helpers.triton import CACHE

# ftfy (and its wcwidth) come from the [clip] extra, which [dev] includes: only the two packages that
# would pull torchvision are installed without their dependencies.
PACKAGES = ("open_clip_torch==3.3.0", "timm==1.0.31")
TARGET = CACHE / "open_clip-3.3.0"


def ensure_open_clip() -> str | None:
    """Make ``open_clip`` and ``timm`` importable; returns the folder added to sys.path (or None)."""
    target = ensure_packages(("open_clip", "timm"), PACKAGES, TARGET.name, "open_clip/bpe_simple_vocab_16e6.txt.gz")
    return None if target is None else str(target)


def subprocess_env() -> dict[str, str]:
    """The environment for a child process that must import open_clip as this one does."""
    extra = ensure_open_clip()
    env = dict(os.environ)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
    return env
