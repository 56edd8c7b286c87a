"""Which NVIDIA GPU (and Jetson release) this machine has, without cupy, torch or nvidia-smi.

The engine build needs it to name and record engines; ``doctor`` to say what can run here.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path

# L4T release (from /etc/nv_tegra_release) -> JetPack, for the ones docs/jetson.md covers.
JETPACK_OF_L4T = {
    (36, 4): "6.1 / 6.2",
    (36, 3): "6.0",
    (36, 2): "6.0 (developer preview)",
    (35, 6): "5.1.4",
    (35, 5): "5.1.3",
    (35, 4): "5.1.2",
    (35, 3): "5.1.1",
}
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0", "8.7"


def probe_gpu() -> GpuInfo | None:
    """The first CUDA GPU's name and compute capability, through the driver API (libcuda).

    No cuda-python, cupy or nvidia-smi needed: the driver library is present wherever
    TensorRT can run. Returns None when there is no driver or no device.
    """
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
            break
        except OSError:
            continue
    else:
        return None
    try:
        if cuda.cuInit(0) != 0:
            return None
        count = ctypes.c_int(0)
        if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return None
        device = ctypes.c_int(0)
        if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0:
            return None
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGetName(name, 256, device)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, device)
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
    except (AttributeError, OSError):
        return None
    return GpuInfo(name=name.value.decode(errors="replace").strip(), compute_capability=f"{major.value}.{minor.value}")


def jetson_release(path: Path = TEGRA_RELEASE) -> str | None:
    """ "L4T R36.4.0 (JetPack 6.1 / 6.2)" on a Jetson, None elsewhere."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", text)
    if not match:
        return "L4T (unknown release)"
    major, minor, patch = (int(g) for g in match.groups())
    jetpack = JETPACK_OF_L4T.get((major, minor))
    return f"L4T R{major}.{minor}.{patch}" + (f" (JetPack {jetpack})" if jetpack else "")
