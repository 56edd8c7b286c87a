"""The array namespaces the post-processing tests run on.

- ``numpy``: the CPU path users run.
- ``strict``: ``array_api_strict`` on its non-default ``Device("device1")``. It implements
  nothing beyond the standard, refuses arrays from two devices in one operation, and refuses
  ``np.asarray`` on its arrays -- where cupy would fail on a GPU (scikit-learn tests its
  GPU paths this way). Passing here means no hidden host copy and no numpy-only call.
- ``torch``: CPU tensors through array_api_compat's torch wrapper (torch has its own
  dtype and device objects and no negative-step slicing).

``NS.put`` moves a numpy array there; ``NS.get`` checks that a result came back in that
namespace and on that device before reading it back, so every test also asserts "results in
the input's namespace, on its device".
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffcut_edge.runtime.xp import device_of, get_xp, to_host

HAS_TORCH = importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class NS:
    """One namespace under test."""

    name: str
    put: Callable[[np.ndarray], Any]
    xp: Any
    device: Any

    def get(self, a: Any) -> np.ndarray:
        """``a`` as numpy, after checking it is in this namespace and on this device."""
        assert get_xp(a).__name__ == self.xp.__name__, f"result in {get_xp(a).__name__}, not {self.xp.__name__}"
        if self.device is not None:
            assert str(device_of(a)) == str(self.device), f"result on {device_of(a)}, not {self.device}"
        return to_host(a)


def make(name: str) -> NS:
    if name == "numpy":
        xp = get_xp(np.empty(0))
        return NS("numpy", lambda a: np.asarray(a), xp, None)
    if name == "strict":
        import array_api_strict

        device = array_api_strict.Device("device1")
        return NS(
            "strict",
            lambda a: array_api_strict.asarray(np.asarray(a), device=device),
            get_xp(array_api_strict.asarray(0, device=device)),
            device,
        )
    if name == "torch":
        import torch

        return NS("torch", lambda a: torch.from_numpy(np.array(a)), get_xp(torch.zeros(1)), torch.device("cpu"))
    raise ValueError(name)


NAMES = ["numpy", "strict", "torch"]
