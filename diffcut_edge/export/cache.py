"""The export cache behind ``diffcut-edge segment --model HUB_ID|DIR``: export once, reuse.

A model folder per (model, revision, resolution, precision) under the cache root
(``$DIFFCUT_EDGE_CACHE``, else ``$XDG_CACHE_HOME/diffcut-edge``, else
``~/.cache/diffcut-edge``). The export is atomic (it writes a hidden staging folder and
renames it into place), so an interrupted first run leaves nothing that a second run could
mistake for a finished folder; a folder whose manifest no longer reads is exported again.

The revision is the hub commit when the model is in the Hugging Face cache; for a local
pipeline folder it is a fingerprint of its config files (path, sizes, modification times),
so re-saving the pipeline exports it anew.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.paths import CACHE_ENV, cache_root


def _local_fingerprint(folder: Path) -> str:
    parts = [str(folder.resolve())]
    for config in sorted(folder.glob("*.json")) + sorted(folder.glob("*/config.json")):
        stat = config.stat()
        parts.append(f"{config.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def model_revision(model: str) -> str:
    """The hub commit (or "unknown" when not cached) or a local folder's fingerprint."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return "local-" + _local_fingerprint(folder)
    from diffcut_edge.models.loading import _cached_snapshot
    from diffcut_edge.models.recipes import get_recipe

    recipe = get_recipe(model)
    snapshot = _cached_snapshot(recipe.hub_id if recipe else model)
    return snapshot.name if snapshot is not None else "unknown"


def cache_key(model: str, revision: str, resolution: int, precision: str) -> str:
    """A folder name: readable model slug + revision + R + precision."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(model).name if Path(model).expanduser().is_dir() else model)
    return f"{slug.strip('-').lower() or 'model'}--{revision[:12]}--r{resolution}-{precision}"


def default_resolution(model: str) -> int:
    from diffcut_edge.models.recipes import get_recipe

    recipe = get_recipe(model)
    return recipe.resolution if recipe else defaults.RESOLUTION


def cached_export(model: str, *, resolution: int | None = None, precision: str = "fp32",
                  progress: bool = True, root: str | os.PathLike | None = None) -> Path:
    """The model folder of ``model`` at ``resolution`` / ``precision``, exported on first use."""
    from diffcut_edge.runtime.manifest import read_manifest

    resolution = resolution or default_resolution(model)
    folder = Path(root or cache_root()) / "exports" / cache_key(model, model_revision(model), resolution, precision)
    if folder.is_dir():
        try:
            read_manifest(folder)
            return folder
        except DiffCutError:
            pass  # unreadable: export again over it
    from diffcut_edge.export.onnx_export import export_model
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffCutError(f"cannot create the export cache {folder.parent} ({e.strerror or e}); "
                           f"set {CACHE_ENV} to a writable folder") from e
    return export_model(model, folder, resolution=resolution, precision=precision, progress=progress, force=True)
