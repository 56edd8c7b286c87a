"""``SegmenterOptions``: the post-processing knobs, their defaults and their validation, once.

The API (``Segmenter``), the CLI (its argparse types call :func:`parse_option`) and the
docs accept exactly the same values, because they all go through this dataclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    """A finite number, also for integers too large for a float (a JSON body may carry 400 digits)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: Any) -> str:
    """A value for a message, cut to a readable length (a 400-digit integer is not repeated whole)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class SegmenterOptions:
    """Post-processing options (the paper's defaults), validated on construction.

    tau: NCut threshold (>= 0): a split is kept while its NCut value is below tau. NCut
        values are >= 0, so tau = 0 keeps no split: one segment.
    alpha: affinity exponent (> 0), W <- W^alpha.
    mask_size: (height, width) of the assignment / PAMR label map (paper: 128 x 128), each
        side at most ``defaults.MAX_MASK_SIDE``; one integer means a square.
    refine: run PAMR on the mask-size labels.
    max_segments / min_segment_size: optional caps passed to the NCut (None = off).
    pamr_iterations / pamr_dilations: PAMR settings (paper: 10, (1, 2, 4, 8)).
    """

    tau: float = defaults.TAU
    alpha: float = defaults.ALPHA
    mask_size: tuple[int, int] = defaults.MASK_SIZE
    refine: bool = True
    max_segments: int | None = None
    min_segment_size: int | None = None
    pamr_iterations: int = defaults.PAMR_ITERATIONS
    pamr_dilations: tuple[int, ...] = defaults.PAMR_DILATIONS

    def __post_init__(self) -> None:
        if not (_is_number(self.tau) and _finite(self.tau) and 0 <= self.tau <= defaults.MAX_TAU):
            raise DiffCutError(
                f"tau must be a number from 0 (no split) to {defaults.MAX_TAU:g} (an NCut value is at "
                f"most 2: every cut), got {_short(self.tau)}"
            )
        if not (_is_number(self.alpha) and _finite(self.alpha) and 0 < self.alpha <= defaults.MAX_ALPHA):
            raise DiffCutError(
                f"alpha must be a number > 0 and at most {defaults.MAX_ALPHA:g} (the paper: 10), "
                f"got {_short(self.alpha)}"
            )
        object.__setattr__(self, "tau", float(self.tau))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "mask_size", _check_mask_size(self.mask_size))
        for name in ("max_segments", "min_segment_size"):
            value = getattr(self, name)
            if value is not None and not _is_positive_int(value):
                raise DiffCutError(f"{name} must be None or a positive integer, got {value!r}")
        if not isinstance(self.refine, (bool, np.bool_)):
            raise DiffCutError(f"refine must be True or False, got {self.refine!r}")
        if not (
            isinstance(self.pamr_iterations, (int, np.integer))
            and not isinstance(self.pamr_iterations, bool)
            and self.pamr_iterations >= 0
        ):
            raise DiffCutError(f"pamr_iterations must be an integer >= 0, got {self.pamr_iterations!r}")
        dilations = tuple(self.pamr_dilations) if isinstance(self.pamr_dilations, (tuple, list)) else ()
        if not dilations or not all(_is_positive_int(d) for d in dilations):
            raise DiffCutError(f"pamr_dilations must be positive integers, got {self.pamr_dilations!r}")
        object.__setattr__(self, "pamr_dilations", tuple(int(d) for d in dilations))


def _check_mask_size(size: Any) -> tuple[int, int]:
    if _is_positive_int(size):
        size = (int(size), int(size))  # a single side means a square
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_positive_int(s) for s in size)):
        raise DiffCutError(f"mask_size must be (height, width) of positive integers, got {size!r}")
    if max(size) > defaults.MAX_MASK_SIDE:
        raise DiffCutError(
            f"mask_size {size[0]}x{size[1]} is too large: at most {defaults.MAX_MASK_SIDE} "
            f"a side (the paper uses 128; labels are resized to the frame afterwards)"
        )
    return int(size[0]), int(size[1])


OPTION_NAMES = tuple(f.name for f in fields(SegmenterOptions))


def check_option(name: str, value: Any) -> Any:
    """``value`` as :class:`SegmenterOptions` stores option ``name``, or a DiffCutError saying why not."""
    if name not in OPTION_NAMES:
        raise DiffCutError(f"unknown option {name!r}; options: {', '.join(OPTION_NAMES)}")
    return getattr(SegmenterOptions(**{name: value}), name)


def parse_option(name: str, text: str) -> Any:
    """Parse a command-line string for option ``name`` and validate it like the API does.

    Numbers for tau/alpha, positive integers for the caps, ``N`` or ``HxW`` for mask_size.
    """
    value: Any
    try:
        if name == "mask_size":
            parts = text.lower().split("x")
            if len(parts) not in (1, 2):
                raise ValueError
            value = tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0])
        elif name in ("tau", "alpha"):
            value = float(text)
        else:
            value = int(text)
    except ValueError:
        kind = "N or HxW" if name == "mask_size" else "a number" if name in ("tau", "alpha") else "an integer"
        raise DiffCutError(f"expected {kind}, got {text!r}") from None
    return check_option(name, value)
