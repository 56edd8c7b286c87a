"""Atomic file output, one helper for every writer (label maps, overlays, videos, manifests,
engines, results).

A file is written under a fresh temporary name in the target's folder, made by
``tempfile.mkstemp`` (exclusive create: a planted file or symlink of that name is never
followed or overwritten), flushed to disk, then renamed over the target. On any error,
Ctrl-C and SIGTERM included (the CLI turns SIGTERM into an exception), the temporary file
is removed and the target is untouched: a reader never sees half a file, and a re-run after
a crash finds nothing in its way. Temporary names carry :data:`TEMP_MARK`, so input
collection can skip them.

OS errors while writing become one-line :class:`OutputError` messages that name the file
("no space left on device writing PATH"), which batch commands treat as fatal: every
later file would fail the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path

from diffcut_edge.errors import DiffCutError

TEMP_MARK = ".diffcut-tmp-"

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a parent of it is not a folder",
}


class OutputError(DiffCutError):
    """Writing an output failed for a reason that will not go away by itself (disk full, no
    permission): a batch stops instead of failing every remaining item the same way."""


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


# Read once, at import: os.umask is process-wide, so reading it later from a writer thread could
# briefly give another thread's new files the wrong mode.
_UMASK = _read_umask()


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of this module's temporary names."""
    return TEMP_MARK in name


def output_error(path: str | os.PathLike, error: OSError) -> OutputError:
    """A one-line error for an OS error while writing ``path``."""
    reason = _REASONS.get(error.errno or 0, error.strerror or str(error))
    return OutputError(f"{reason} writing {path}")


class AtomicFile:
    """A temporary file next to ``path`` that becomes ``path`` on :meth:`commit`.

    ``tmp`` keeps the target's extension (OpenCV picks the format from it). Use
    :func:`atomic_path` for a block; this class is for writers that stay open (video).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.stem}{TEMP_MARK}", suffix=self.path.suffix, dir=self.path.parent
            )
        except OSError as e:
            raise output_error(self.path, e) from e
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        """Flush the temporary file to disk and rename it over the target, with the permissions a
        plain ``open(path, "w")`` would give (``mkstemp`` makes it 0600: unreadable to a web server,
        a container's user or a colleague)."""
        try:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(self.tmp, 0o666 & ~_UMASK)
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise output_error(self.path, e) from e
        except BaseException:  # Ctrl-C or SIGTERM inside the fsync: no temporary file stays behind
            self.discard()
            raise
        self._remove_strays()
        return self.path

    def _remove_strays(self) -> None:
        """Temporaries of this same target that an earlier run left (killed with SIGKILL, power cut):
        the target is good now, they can only mislead."""
        for stray in self.path.parent.glob(
            f".{glob_escape(self.path.stem)}{TEMP_MARK}*{glob_escape(self.path.suffix)}"
        ):
            with contextlib.suppress(OSError):
                stray.unlink()

    def discard(self) -> None:
        """Remove the temporary file (idempotent)."""
        with contextlib.suppress(OSError):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` if the block succeeds."""
    handle = AtomicFile(path)
    try:
        yield handle.tmp
    except OSError as e:
        handle.discard()
        raise output_error(path, e) from e
    except BaseException:
        handle.discard()
        raise
    handle.commit()


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically (a buffer is written as is, without a copy)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p``, with an OS error as a one-line :class:`OutputError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e) from e
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail now, before any work, unless ``path`` is or can become a writable folder.

    Nothing is created: the nearest existing ancestor must be a writable folder.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise DiffCutError(f"{what} {path}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise DiffCutError(f"{what} {path} {where}; give a folder")
    # Ask the file system, not the permission bits: root passes os.access everywhere, and
    # read-only mounts (or /sys) refuse anyway.
    try:
        fd, name = tempfile.mkstemp(prefix=f".probe{TEMP_MARK}", dir=probe)
    except OSError as e:
        reason = _REASONS.get(e.errno or 0, e.strerror or str(e))
        where = "is not writable" if probe == path else f"cannot be created in {probe}"
        raise DiffCutError(f"{what} {path} {where} ({reason})") from e
    os.close(fd)
    os.unlink(name)
    return path


def replace_dir(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder ``staging`` at ``target`` (same file system): a rename, and an earlier
    ``target`` renamed aside first and removed after, so ``target`` is never half-written."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target
