"""``diffcut-edge serve``: find a ``tritonserver``, prepare its python backend, run it on a repository.

Which binary, in order: ``--tritonserver PATH`` (the binary or its install folder), the
``tritonserver`` on PATH (an NGC container's ``/opt/tritonserver``), or the one the
``nvidia-pytriton`` wheel ships (tritonserver 2.51, python backend only, CPU-only OK, Linux
x86-64 with glibc >= 2.35). Install that wheel without its dependencies — it pins numpy < 2 —
with ``pip install --no-deps nvidia-pytriton``: only its binary is used, never its package.

The python models run in the backend's stub, built per Python minor version. The wheel ships a
stub for each version beside the backend instead of in it, so :func:`prepare_backends` lays out a
backend folder with the stub of this interpreter's version; ``LD_LIBRARY_PATH`` starts with this
interpreter's libpython folder (:func:`~diffcut_edge.serve.triton_repo.libpython_dir`), so the stub
embeds this very Python, whose site folders hold diffcut_edge.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffcut_edge import versions
from diffcut_edge.errors import DiffCutError
from diffcut_edge.serve.triton_repo import libpython_dir

STUB = "triton_python_backend_stub"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


@dataclass(frozen=True)
class TritonBinary:
    """A tritonserver install: the executable, its backends folder, where it was found."""

    executable: Path
    backends: Path
    source: str

    @property
    def stubs(self) -> Path:
        """nvidia-pytriton's per-Python-version stubs (``python_backend_stubs/3.X/``)."""
        return self.executable.parent.parent / "python_backend_stubs"

    def has_backend(self, name: str) -> bool:
        return (self.backends / name).is_dir()


def _binary_at(path: Path, source: str) -> TritonBinary:
    executable = path / "bin" / "tritonserver" if path.is_dir() else path
    if not executable.is_file() or not os.access(executable, os.X_OK):
        raise DiffCutError(f"{source}: {path} is not a tritonserver executable or install folder")
    return TritonBinary(executable.resolve(), executable.resolve().parent.parent / "backends", source)


def find_tritonserver(explicit: str | os.PathLike | None = None) -> TritonBinary:
    """The tritonserver to run (see the module docstring), or a DiffCutError saying how to get one."""
    if explicit is not None:
        return _binary_at(Path(explicit), "--tritonserver")
    found = versions.installed_tritonserver()
    if found is not None:
        return _binary_at(*found)
    raise DiffCutError(
        "no tritonserver found: install the CPU-capable binary with `pip install --no-deps "
        "nvidia-pytriton` (Linux x86-64, glibc >= 2.35), give --tritonserver PATH, or run in "
        "NVIDIA's Triton container (docs/serving.md)"
    )


def prepare_backends(binary: TritonBinary, folder: Path) -> Path:
    """The ``--backend-directory`` to run with: the binary's own when its python backend has a stub,
    else ``folder`` with its backends linked and the stub of this Python's version added."""
    python = binary.backends / "python"
    if (python / STUB).is_file():
        return binary.backends
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = binary.stubs / version / STUB
    if not stub.is_file():
        have = sorted(p.name for p in binary.stubs.iterdir()) if binary.stubs.is_dir() else []
        raise DiffCutError(
            f"{binary.executable}: its python backend has no stub for Python {version}"
            + (f" (it has {', '.join(have)})" if have else "")
            + "; run diffcut-edge under one of those Pythons, or use NVIDIA's Triton container"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for backend in binary.backends.iterdir():
        if backend.name != "python":
            (folder / backend.name).symlink_to(backend)
    (folder / "python").mkdir()
    for item in python.iterdir():
        (folder / "python" / item.name).symlink_to(item)
    (folder / "python" / STUB).symlink_to(stub)
    return folder


def check_port_free(port: int, host: str, what: str) -> None:
    """A one-line error now, not a server that dies later, when ``port`` is taken."""
    if not 0 < port < 65536:
        raise DiffCutError(f"--{what}-port must be in 1..65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be opened ({e.strerror})"
            raise DiffCutError(f"{what} port {port} on {host} {reason}; pick another with --{what}-port") from e


RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"  # what a client of `serve` never needs
ADMIN_HEADER = "diffcut-admin"


def _log_problem(log: Path) -> str:
    """The first line of the server log that says why it stopped (Triton logs a lot besides)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    patterns = (r"failed to load", r"UNAVAILABLE", r"^error:", r"^E\d{4} ", r"Error")
    for pattern in patterns:
        for line in lines:
            if re.search(pattern, line):
                return re.sub(r"\s+", " ", line.strip(" |"))[:400]
    return lines[-1].strip()[:400] if lines else ""


class TritonServer:
    """A running tritonserver; ``with TritonServer(...) as server:`` starts it and waits until ready.

    Args:
        binary: from :func:`find_tritonserver`.
        repository: a model repository (``triton-repo``).
        workdir: where the backend folder and ``tritonserver.log`` go.
        host: the address the HTTP and gRPC services listen on.
    """

    def __init__(
        self,
        binary: TritonBinary,
        repository: Path,
        workdir: Path,
        *,
        http_port: int = DEFAULT_PORTS["http"],
        grpc_port: int = DEFAULT_PORTS["grpc"],
        metrics_port: int = DEFAULT_PORTS["metrics"],
        host: str = "127.0.0.1",
    ) -> None:
        self.binary, self.repository, self.workdir = binary, Path(repository), Path(workdir)
        # Model loading, shared memory, trace and logging need a header nobody is told: closed to clients.
        self.admin_key = secrets.token_urlsafe(16)
        self.ports = {"http": int(http_port), "grpc": int(grpc_port), "metrics": int(metrics_port)}
        self.host = host
        self.log = self.workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Where a local client reaches the HTTP service."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.ports['http']}"

    def _command(self, backends: Path) -> list[str]:
        p = self.ports
        return [
            str(self.binary.executable),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-port={p['http']}",
            f"--grpc-port={p['grpc']}",
            f"--metrics-port={p['metrics']}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_key}",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libdir = libpython_dir()
        if libdir:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
        return env

    def start(self, timeout_s: float = 120.0) -> TritonServer:
        """Start the server and wait until every model is ready (a DiffCutError with the log's reason if not)."""
        for what, port in self.ports.items():
            check_port_free(port, self.host, what)
        self.workdir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(self.binary, self.workdir / "backends")
        with open(self.log, "wb") as log:
            # Its own session: a Ctrl-C meant for us is forwarded as one clean SIGTERM.
            self.process = subprocess.Popen(
                self._command(backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                start_new_session=True,
            )
        self.wait_ready(timeout_s)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                problem = _log_problem(self.log)
                raise DiffCutError(
                    f"tritonserver exited with status {self.process.returncode}"
                    + (f": {problem}" if problem else "")
                    + f" (log: {self.log})"
                )
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise DiffCutError(f"tritonserver was not ready after {timeout_s:.0f} s (log: {self.log})")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests, unloads the models), then SIGKILL after
        ``timeout_s``; returns the exit status. Idempotent."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # the python stubs too
                process.wait()
        return process.returncode

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def choose_encoder(binary: TritonBinary, encoder: str) -> str:
    """The encoder model ``serve`` writes: ``auto`` is Triton's onnxruntime backend where the binary
    has it, else this project's ONNX Runtime in a python model; a named one must be there."""
    if encoder == "auto":
        return "onnxruntime" if binary.has_backend("onnxruntime") else "python"
    if encoder in ("onnxruntime", "tensorrt") and not binary.has_backend(encoder):
        raise DiffCutError(
            f"{binary.executable} has no {encoder} backend (nvidia-pytriton's has only python): "
            f"use --encoder python, or NVIDIA's Triton container"
        )
    return encoder


def serve_model(
    segmenter: Any,
    spec: Any,
    binary: TritonBinary,
    *,
    host: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
    repo: str | os.PathLike | None = None,
    ready_timeout_s: float = 300.0,
    on_starting: Callable[[Path], None] | None = None,
    on_ready: Callable[[TritonServer], None] | None = None,
) -> int | None:
    """Write the repository of ``segmenter`` (a SegmenterSpec) and ``spec`` (a RepositorySpec) — at
    ``repo`` and kept, else in a temporary folder — run tritonserver on it until Ctrl-C or SIGTERM
    (a KeyboardInterrupt), and return its exit status. A server that stops by itself is a DiffCutError."""
    from diffcut_edge.serve.triton_repo import write_repository

    workdir = Path(tempfile.mkdtemp(prefix="diffcut-serve-"))
    try:
        repository = write_repository(segmenter, Path(repo) if repo else workdir / "repository", spec)
        server = TritonServer(
            binary, repository, workdir, host=host, **{f"{k}_port": v for k, v in (ports or {}).items()}
        )
        if on_starting is not None:
            on_starting(repository)
        try:
            server.start(timeout_s=ready_timeout_s)
            if on_ready is not None:
                on_ready(server)
            while server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:  # Ctrl-C and SIGTERM: a clean stop is a success
            return server.stop()
        finally:
            server.stop()
        raise DiffCutError(f"tritonserver stopped by itself with status {server.process.returncode} (log {server.log})")
    finally:
        if repo is None:
            shutil.rmtree(workdir, ignore_errors=True)
