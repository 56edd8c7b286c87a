"""Lazy imports, one mechanism: optional heavy modules and package attributes.

Like Polygraphy's ``mod.lazy_import``: ``cupy = LazyModule("cupy", extra="gpu",
purpose="GPU post-processing")`` costs nothing at import time; the first attribute
access imports the module, and a missing package becomes a :class:`DiffCutError`
that names the extra to install. ``cupy.available()`` asks without raising, for
code that picks a path depending on what is installed.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any

from diffcut_edge.errors import DiffCutError, missing_extra


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<table[name]>`` on first use of ``name``."""

    def __getattr__(name: str) -> Any:
        if name in table:
            module = importlib.import_module(f"{package}.{table[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


class LazyModule:
    """A module imported on first attribute access.

    Args:
        name: the module to import (``"cupy"``, ``"tensorrt"``, ``"onnxruntime"``).
        extra: the ``diffcut-edge[...]`` extra that installs it, named in the error.
        purpose: what needs it, for the error message ("the native TensorRT backend").
    """

    def __init__(self, name: str, extra: str, purpose: str) -> None:
        # Attributes are set through __dict__ so __getattr__ never sees them missing.
        self.__dict__.update(_name=name, _extra=extra, _purpose=purpose, _module=None, _error=None)

    def load(self) -> types.ModuleType:
        """Import the module (once) or raise a DiffCutError naming the extra."""
        if self._module is not None:
            return self._module
        if self._error is not None:
            raise self._error
        try:
            self.__dict__["_module"] = importlib.import_module(self._name)
        except ImportError as e:
            error = self._missing_error()
            # A present but broken install (e.g. cupy without a CUDA driver) says why.
            # (ModuleNotFoundError names the first missing package: "tritonclient" for "tritonclient.http".)
            missing = (
                isinstance(e, ModuleNotFoundError)
                and e.name is not None
                and (self._name == e.name or self._name.startswith(e.name + "."))
            )
            if not missing:
                error = DiffCutError(
                    f"{self._purpose} needs '{self._name}', which is installed but "
                    f"failed to import ({e}); reinstall or repair it"
                )
            self.__dict__["_error"] = error
            raise error from e
        return self._module

    def _missing_error(self) -> DiffCutError:
        if self._extra:
            return missing_extra(self._name, self._extra, self._purpose)
        # A base dependency: the install itself is incomplete.
        return DiffCutError(
            f"{self._purpose} needs the '{self._name}' package, which is not "
            f"installed: pip install {self._name} (or reinstall diffcut-edge)"
        )

    def available(self) -> bool:
        """Whether the module imports, without raising."""
        try:
            self.load()
        except DiffCutError:
            return False
        return True

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded"
        return f"<LazyModule {self._name!r} ({state}), extra [{self._extra}]>"


# The optional modules of the runtime, shared so each is imported at most once.
onnxruntime = LazyModule("onnxruntime", extra="cpu", purpose="the ONNX Runtime backend")
cupy = LazyModule("cupy", extra="gpu", purpose="GPU inference and post-processing")
tensorrt = LazyModule("tensorrt", extra="trt", purpose="the native TensorRT backend")
numba = LazyModule("numba", extra="cpu", purpose="the compiled PAMR kernel")
