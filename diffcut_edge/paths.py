"""Where diffcut-edge keeps what it builds for the user: one cache root for every stage."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DIFFCUT_EDGE_CACHE"


def cache_root() -> Path:
    """``$DIFFCUT_EDGE_CACHE``, else ``$XDG_CACHE_HOME/diffcut-edge``, else ``~/.cache/diffcut-edge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffcut-edge"
