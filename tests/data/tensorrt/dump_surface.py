"""Record the TensorRT Python API surface this project relies on, from the real binding wheels.

The binding wheels (tensorrt-bindings 8.6.1, tensorrt-cu12-bindings 10.x / 11.x) install from
the public index and import without a GPU once their libnvinfer libraries resolve: stand-in
shared objects that define the few C symbols the bindings call at import are enough for a dump
of names (nothing is built or run). One JSON per version lands beside this file; the fake
TensorRT of the tests is made from them and refuses any name a real version lacks.

    python tests/data/tensorrt/dump_surface.py 8.6.1 10.3.0 10.16.0.72 11.4.0.106

Needs pip, gcc and nm; downloads about 1.3 MB per version.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The classes and enums the project touches (export/tensorrt_build.py, runtime/trt_compat.py,
# runtime/backends/tensorrt.py), by their binding names.
CLASSES = (
    "Logger",
    "Builder",
    "IBuilderConfig",
    "INetworkDefinition",
    "ILayer",
    "ITensor",
    "OnnxParser",
    "IOptimizationProfile",
    "ITimingCache",
    "IHostMemory",
    "Runtime",
    "ICudaEngine",
    "IExecutionContext",
)
ENUMS = (
    "NetworkDefinitionCreationFlag",
    "BuilderFlag",
    "MemoryPoolType",
    "OnnxParserFlag",
    "DataType",
    "LayerType",
    "TensorIOMode",
)
PLATFORM = [
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
]


def _wheel(version: str, folder: Path) -> Path:
    name = "tensorrt-bindings" if version.startswith("8.") else "tensorrt-cu12-bindings"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            *PLATFORM,
            "-d",
            str(folder),
            f"{name}=={version}",
        ],
        check=True,
    )
    return next(folder.glob("tensorrt*bindings-*.whl"))


def _stand_ins(extension: Path, folder: Path) -> None:
    """Empty-ish libnvinfer* libraries defining the TensorRT C symbols the extension imports."""
    missing = [
        line.split()[0]
        for line in subprocess.run(["ldd", str(extension)], capture_output=True, text=True).stdout.splitlines()
        if "not found" in line
    ]
    undefined = subprocess.run(
        ["nm", "-D", "--undefined-only", str(extension)], capture_output=True, text=True
    ).stdout.split()
    ours = sorted({s for s in undefined if re.search(r"Infer|NvOnnx|Plugin|nvuffparser|nvcaffeparser", s)})
    source = folder / "stub.c"
    source.write_text("".join(f"void* {s}(void) {{ return 0; }}\n" for s in ours))
    for lib in missing:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / lib), str(source)], check=True)


DUMP = """
import json, sys
sys.path.insert(0, sys.argv[1])
import tensorrt_bindings as trt
public = lambda obj: sorted(n for n in dir(obj) if not n.startswith("_"))
out = {"version": trt.__version__, "module": public(trt), "classes": {}, "enums": {}}
for name in json.loads(sys.argv[2]):
    if hasattr(trt, name):
        out["classes"][name] = public(getattr(trt, name))
for name in json.loads(sys.argv[3]):
    if hasattr(trt, name):
        out["enums"][name] = {k: int(v) for k, v in getattr(trt, name).__members__.items()}
print(json.dumps(out, indent=1, sort_keys=True))
"""


def dump(version: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(_wheel(version, tmp)) as wheel:
            wheel.extractall(tmp / "site")
        extension = next((tmp / "site").glob("tensorrt_bindings/tensorrt*.so"))
        _stand_ins(extension, tmp)
        env = {**os.environ, "LD_LIBRARY_PATH": str(tmp)}
        text = subprocess.run(
            [sys.executable, "-c", DUMP, str(tmp / "site"), json.dumps(CLASSES), json.dumps(ENUMS)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    return json.loads(text)


def main(versions: list[str]) -> None:
    for version in versions:
        surface = dump(version)
        path = HERE / f"surface-{'.'.join(version.split('.')[:2])}.json"
        path.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path} ({len(surface['module'])} module names)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["8.6.1", "10.3.0", "10.16.0.72", "11.4.0.106"])
