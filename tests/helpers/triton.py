"""A real tritonserver for the tests: the one ``serve`` would find, else nvidia-pytriton's binary
installed once (``pip install --no-deps --target``) into a cache folder outside the environment.

Skips with the reason only where that wheel cannot be installed (no registry, not Linux x86-64,
glibc < 2.35): the tests then cannot run a server at all.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.serve.triton_server import TritonBinary, find_tritonserver

PYTRITON = "nvidia-pytriton==0.7.0"  # tritonserver 2.51 with the python backend
CACHE = Path(os.environ.get("DIFFCUT_TEST_TOOLS", Path.home() / ".cache" / "diffcut-edge" / "test-tools"))


def _glibc_ok() -> bool:
    name, version = platform.libc_ver()
    try:
        return name == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        return False


def tritonserver_binary() -> TritonBinary:
    try:
        return find_tritonserver()
    except DiffCutError:
        pass
    target = CACHE / "pytriton-0.7.0"
    binary = target / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        if platform.machine() != "x86_64" or not _glibc_ok():
            pytest.skip("the nvidia-pytriton tritonserver needs Linux x86-64 with glibc >= 2.35")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), PYTRITON],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0 or not binary.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"cannot install {PYTRITON} (pip install --no-deps) for a real tritonserver: {last}")
    return find_tritonserver(binary)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
