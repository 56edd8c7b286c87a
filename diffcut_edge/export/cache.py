"""The export cache behind ``diffcut-edge segment --model HUB_ID|DIR``: export once, reuse.

A model folder per (model, revision, resolution, precision) under the cache root
(``$DIFFCUT_EDGE_CACHE``, else ``$XDG_CACHE_HOME/diffcut-edge``, else
``~/.cache/diffcut-edge``). The export is atomic (it writes a hidden staging folder and
renames it into place), so an interrupted first run leaves nothing that a second run could
mistake for a finished folder; a folder whose manifest no longer reads is exported again.

The revision is the hub commit when the model is in the Hugging Face cache; for a local
pipeline folder it is a fingerprint of its config files (path, sizes, modification times),
so re-saving the pipeline exports it anew.

Entries are never removed by themselves: ``diffcut-edge cache list`` shows them (model, size,
last use) and ``cache clear [--older-than DAYS]`` removes them (:func:`list_cache`,
:func:`clear_cache`). Using an entry marks it used (its folder's modification time).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def cached_export(
    model: str,
    *,
    resolution: int | None = None,
    precision: str = "fp32",
    progress: bool = True,
    root: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The model folder of ``model`` at ``resolution`` / ``precision``, exported on first use;
    ``say`` is told which folder it is (and that it is being exported)."""
    from diffcut_edge.runtime.manifest import read_manifest

    resolution = resolution or default_resolution(model)
    folder = Path(root or cache_root()) / EXPORTS / cache_key(model, model_revision(model), resolution, precision)
    if folder.is_dir():
        try:
            read_manifest(folder)
            _mark_used(folder)
            if say is not None:
                say(f"using the cached export of {model} in {folder}")
            return folder
        except DiffCutError:
            pass  # unreadable: export again over it
    from diffcut_edge.export.onnx_export import export_model
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffCutError(
            f"cannot create the export cache {folder.parent} ({e.strerror or e}); set {CACHE_ENV} to a writable folder"
        ) from e
    if say is not None:
        say(
            f"exporting {model} at {resolution} px ({precision}) into {folder} (first use; reused next time, "
            f"'diffcut-edge cache list' shows it)"
        )
    return export_model(model, folder, resolution=resolution, precision=precision, progress=progress, force=True)


# ------------------------------------------------------------------------ the cache's contents
EXPORTS = "exports"
OTHER_KINDS = {"ort-trt": "TensorRT engines of onnxruntime's TensorRT provider"}


@dataclass(frozen=True)
class CacheEntry:
    """One folder of the cache: an export (model, resolution, precision from its manifest) or
    another kind of cache (``kind``)."""

    path: Path
    kind: str  # "export", or a key of OTHER_KINDS
    size_bytes: int
    last_used: float  # seconds since the epoch
    model: str | None = None
    resolution: int | None = None
    precision: str | None = None

    def line(self) -> str:
        age = max(0.0, time.time() - self.last_used) / 86400
        what = (
            f"{self.model} R={self.resolution} {self.precision}"
            if self.kind == "export"
            else OTHER_KINDS.get(self.kind, self.kind)
        )
        return f"{self.size_bytes / 1e6:9.1f} MB  {age:6.1f} days  {what}  {self.path}"


def _mark_used(folder: Path) -> None:
    try:
        os.utime(folder)
    except OSError:
        pass  # a read-only cache still serves


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def list_cache(root: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Every entry of the cache (exports, unfinished ones too, and the other kinds), oldest use first."""
    from diffcut_edge.runtime.manifest import read_manifest

    root = Path(root or cache_root())
    entries = []
    for kind in (EXPORTS, *OTHER_KINDS):
        folder = root / kind
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
            model = resolution = precision = None
            if kind == EXPORTS:
                try:
                    manifest = read_manifest(path)
                    model, resolution, precision = manifest.model_id, manifest.resolution, manifest.precision
                except DiffCutError:
                    model = "(unfinished or unreadable export)"
            entries.append(
                CacheEntry(
                    path,
                    "export" if kind == EXPORTS else kind,
                    _size(path),
                    path.stat().st_mtime,
                    model,
                    resolution,
                    precision,
                )
            )
    return sorted(entries, key=lambda e: e.last_used)


def clear_cache(
    root: str | os.PathLike | None = None, *, older_than_days: float | None = None, dry_run: bool = False
) -> list[CacheEntry]:
    """Remove the cache's entries (those unused for ``older_than_days``, else all); returns them
    (``dry_run``: only returns them)."""
    cutoff = None if older_than_days is None else time.time() - float(older_than_days) * 86400
    removed = []
    for entry in list_cache(root):
        if cutoff is not None and entry.last_used >= cutoff:
            continue
        if dry_run:
            removed.append(entry)
            continue
        try:
            shutil.rmtree(entry.path)
        except OSError as e:
            raise DiffCutError(
                f"cannot remove {entry.path} ({e.strerror or e}); "
                f"{len(removed)} entr{'y' if len(removed) == 1 else 'ies'} removed before it"
            ) from e
        removed.append(entry)
    return removed
