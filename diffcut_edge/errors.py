"""The one exception type users see.

Every error the toolkit raises on purpose is a :class:`DiffCutError` whose message
names the file or tensor involved, what was expected and what was found, and where
possible the command to run next. The CLI prints the message on one line and exits
non-zero; library users catch it like any exception.
"""

from __future__ import annotations


class DiffCutError(Exception):
    """A user-actionable error (bad input, wrong model folder, missing extra, ...)."""


def missing_extra(module: str, extra: str, purpose: str) -> DiffCutError:
    """Error for an optional dependency that is not installed."""
    if module == "onnxruntime":  # one of three extras installs it, never two
        how = (
            "pip install 'diffcut-edge[cpu]' (CPU) or 'diffcut-edge[gpu]' (NVIDIA GPU); on Jetson "
            "NVIDIA's onnxruntime-gpu wheel (docs/jetson.md)"
        )
    else:
        how = f"pip install 'diffcut-edge[{extra}]' (in a clone: pip install '.[{extra}]')"
    return DiffCutError(f"{purpose} needs the '{module}' package, which is not installed: {how}")
