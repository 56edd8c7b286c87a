"""Stand-ins for the tensorrt module made from the real API surfaces in tests/data/tensorrt/.

``surface(version)`` is what ``dump_surface.py`` recorded from the real binding wheel;
``real_enums(version)`` gives its enums with their real member values; ``Strict`` makes a fake
class refuse, like the real bindings would, any public attribute the real class lacks in that
version. A fake that reads ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS`` on TensorRT 11, or calls
a method 8.6 does not have, fails the test instead of passing by construction.
"""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path

SURFACES = Path(__file__).resolve().parents[1] / "data" / "tensorrt"
VERSIONS = {"8.6": "8.6.1", "10.3": "10.3.0", "10.16": "10.16.0.72", "11.4": "11.4.0.106"}


@functools.cache
def surface(version: str) -> dict:
    """The recorded surface of the release line of ``version`` ("10.3.0.26" -> surface-10.3.json)."""
    major_minor = ".".join(version.split(".")[:2])
    path = SURFACES / f"surface-{major_minor}.json"
    if not path.is_file():
        raise KeyError(f"no recorded TensorRT surface for {version}; record one with {SURFACES / 'dump_surface.py'}")
    return json.loads(path.read_text())


class _Enum(types.SimpleNamespace):
    def __getattr__(self, name):  # only reached for missing members
        raise AttributeError(f"TensorRT {self._version} has no {self._name}.{name}")


def real_enums(version: str) -> dict[str, _Enum]:
    """``{enum name: namespace of its real members and values}`` for ``version``."""
    enums = {}
    for name, members in surface(version)["enums"].items():
        enum = _Enum(**members)
        enum.__dict__.update(_name=name, _version=version)
        enums[name] = enum
    return enums


class Strict:
    """Mixin: public attributes must exist on the real ``_real`` class of ``_version``."""

    _real = ""
    _version = ""

    def __getattribute__(self, name):
        if not name.startswith("_"):
            cls = type(self)
            real = surface(cls._version)["classes"][cls._real]
            if name not in real:
                raise AttributeError(f"TensorRT {cls._version} {cls._real} has no attribute {name!r}")
        return object.__getattribute__(self, name)

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            cls = type(self)
            if name not in surface(cls._version)["classes"][cls._real]:
                raise AttributeError(f"TensorRT {cls._version} {cls._real} has no attribute {name!r}")
        object.__setattr__(self, name, value)


def strict(real: str, version: str):
    """Class decorator: the fake stands for real class ``real`` of TensorRT ``version``."""

    def wrap(cls):
        return type(cls.__name__, (Strict, cls), {"_real": real, "_version": version})

    return wrap
