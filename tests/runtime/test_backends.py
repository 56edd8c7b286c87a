"""Backends: provider choice, engine selection, input validation, corrupt files (CPU-only parts)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from diffcut_edge import lazy
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime import trt_compat
from diffcut_edge.runtime.backends import (
    OnnxRuntimeBackend,
    TensorRTBackend,
    check_image_batch,
    choose_providers,
    find_engine,
    open_backend,
    select_engine,
)
from diffcut_edge.runtime.backends.onnxrt import CPU_EP, CUDA_EP, TRT_EP, TRT_EP_CACHE_DIR
from diffcut_edge.runtime.backends.tensorrt import check_engine_io, check_profile
from diffcut_edge.runtime.manifest import EngineRecord, read_manifest, sha256_file, write_manifest
from helpers.toy_encoder import make_toy_model_dir, toy_features
from helpers.trt_surface import strict

R = 64  # the smallest resolution the manifest accepts: keeps these tests instant
ALL_EPS = [TRT_EP, CUDA_EP, CPU_EP]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    return make_toy_model_dir(tmp_path_factory.mktemp("toy-backend"), resolution=R, channels=8)


@pytest.fixture
def manifest(toy_dir):
    return read_manifest(toy_dir)


def _batch(b: int, r: int = R, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((b, 3, r, r), dtype=np.float32)


def _engine(gpu="NVIDIA H100 80GB HBM3", cc="9.0", trt="10.3.0", batch=(1, 1, 4)) -> EngineRecord:
    return EngineRecord(
        file=f"encoder.{cc}.trt{trt}.plan",
        gpu_name=gpu,
        compute_capability=cc,
        tensorrt_version=trt,
        batch_profile=batch,
    )


# --------------------------------------------------------------------------- provider choice
def test_providers_best_first_with_trt_ep_options(manifest, tmp_path):
    chosen = choose_providers(ALL_EPS, manifest, cache_dir=tmp_path / "cache", max_batch=3)
    assert [name for name, _ in chosen] == ALL_EPS
    trt_opts = chosen[0][1]
    assert trt_opts["trt_engine_cache_enable"] is True
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert trt_opts["trt_fp16_enable"] is False  # the toy manifest is fp32
    assert trt_opts["trt_profile_max_shapes"] == f"image:3x3x{R}x{R}"


def test_trt_ep_never_sets_the_fp16_flag_and_names_the_device(manifest):
    # GPU defects 3 and 8: the EP's network is weakly typed, where the FP16 flag lets TensorRT run
    # the fp32 VAE of the mixed fp16 graph in fp16; and the EP was not told which GPU to use.
    manifest.precision = "fp16"
    (name, opts), (cuda, cuda_opts), _ = choose_providers(ALL_EPS, manifest, device_id=1)
    assert name == TRT_EP and opts["trt_fp16_enable"] is False
    assert opts["device_id"] == 1 and cuda == CUDA_EP and cuda_opts == {"device_id": 1}


def test_int8_folders_on_the_trt_ep(manifest):
    # Symmetric int8 Q/DQ (quantize --activations int8): the weakly typed EP network needs the INT8 flag.
    manifest.precision = "int8"
    manifest.quantization = {"activations": "int8", "source_dir": "fp32-dir"}
    (name, opts), *_ = choose_providers(ALL_EPS, manifest)
    assert name == TRT_EP and opts["trt_int8_enable"] is True and opts["trt_fp16_enable"] is False
    # uint8 activations (the onnxruntime CPU default) cannot be built by TensorRT: "ort" skips the
    # EP, "ort-trt" refuses with the command that makes a TensorRT folder.
    manifest.quantization = {"activations": "uint8", "source_dir": "fp32-dir"}
    assert [n for n, _ in choose_providers(ALL_EPS, manifest)] == [CUDA_EP, CPU_EP]
    with pytest.raises(DiffCutError, match="--activations int8"):
        choose_providers(ALL_EPS, manifest, backend="ort-trt")


def test_trt_ep_cache_moves_to_the_user_cache_when_the_model_folder_cannot_hold_it(manifest, tmp_path, monkeypatch):
    from diffcut_edge.runtime.backends.onnxrt import trt_ep_cache_dir

    monkeypatch.setenv("DIFFCUT_EDGE_CACHE", str(tmp_path / "user-cache"))
    writable = tmp_path / "model"
    writable.mkdir()
    assert trt_ep_cache_dir(writable, manifest) == writable / TRT_EP_CACHE_DIR
    blocked = tmp_path / "read-only-model"
    blocked.mkdir()
    (blocked / TRT_EP_CACHE_DIR).write_text("a file where the cache folder would go")
    cache = trt_ep_cache_dir(blocked, manifest)
    assert cache.parent == tmp_path / "user-cache" / "ort-trt" and cache.is_dir()


@pytest.mark.parametrize(
    "available, backend, expected",
    [
        ([CPU_EP], "ort", [CPU_EP]),
        ([CUDA_EP, CPU_EP], "ort", [CUDA_EP, CPU_EP]),
        (["AzureExecutionProvider", CPU_EP], "ort", [CPU_EP]),
        (ALL_EPS, "ort-cpu", [CPU_EP]),
        (ALL_EPS, "ort-cuda", [CUDA_EP, CPU_EP]),
        (ALL_EPS, "ort-trt", ALL_EPS),
        ([TRT_EP, CPU_EP], "ort-trt", [TRT_EP, CPU_EP]),
    ],
)
def test_provider_order(manifest, available, backend, expected):
    assert [name for name, _ in choose_providers(available, manifest, backend=backend)] == expected


@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt"])
def test_missing_gpu_provider_names_the_package(manifest, backend):
    with pytest.raises(DiffCutError, match=r"onnxruntime-gpu"):
        choose_providers([CPU_EP], manifest, backend=backend)


def test_unknown_backend_is_refused(manifest, toy_dir):
    with pytest.raises(DiffCutError, match="unknown"):
        choose_providers(ALL_EPS, manifest, backend="ort-rocm")
    with pytest.raises(DiffCutError, match="choose one of"):
        open_backend(toy_dir, backend="cuda")


def test_session_gets_trt_cache_in_model_folder(toy_dir, monkeypatch):
    """With every EP 'available', the session is asked for TRT (cache in the folder) > CUDA > CPU."""
    ort = lazy.onnxruntime.load()
    seen = {}

    class FakeSession:
        def __init__(self, path, sess_options=None, providers=None):
            seen["path"], seen["providers"] = path, providers

        def get_providers(self):
            return [p[0] for p in seen["providers"]]

        def get_inputs(self):
            r = read_manifest(toy_dir).resolution
            return [types.SimpleNamespace(name="image", shape=["B", 3, r, r])]

        def get_outputs(self):
            return [types.SimpleNamespace(name="features")]

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL_EPS))
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    backend = open_backend(toy_dir)
    assert isinstance(backend, OnnxRuntimeBackend)
    assert [p[0] for p in seen["providers"]] == ALL_EPS
    assert seen["providers"][0][1]["trt_engine_cache_path"] == str(toy_dir / TRT_EP_CACHE_DIR)
    assert backend.device == "cuda" and backend.max_batch == 4  # the TRT EP profile bounds the batch


# --------------------------------------------------------------------------- onnxruntime on the CPU
def test_ort_cpu_matches_plain_session(toy_dir):
    x = _batch(3)
    with open_backend(toy_dir, backend="ort-cpu", threads=1) as backend:
        assert backend.device == "cpu" and backend.providers == [CPU_EP]
        out = backend.infer({"image": x})
    assert list(out) == ["features"]
    np.testing.assert_array_equal(out["features"], toy_features(x, toy_dir))
    assert out["features"].shape == (3, (R // 32) ** 2, 8)


def test_backend_from_onnx_path_and_close(toy_dir):
    backend = OnnxRuntimeBackend(toy_dir / "encoder.onnx", backend="ort-cpu", threads=1)
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(DiffCutError, match="closed"):
        backend.infer({"image": _batch(1)})


def _copy_toy(toy_dir: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in toy_dir.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_onnx_names_file_and_reexport(toy_dir, tmp_path):
    folder = _copy_toy(toy_dir, tmp_path / "corrupt")
    (folder / "encoder.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    with pytest.raises(DiffCutError, match="modified or truncated"):  # the hash catches it first
        open_backend(folder)
    with pytest.raises(DiffCutError, match=r"encoder\.onnx.*re-export"):
        open_backend(folder, verify=False)
    # Same bytes with a matching hash (a broken export): the load error still names the file.
    m = read_manifest(folder)
    m.files_sha256["encoder.onnx"] = sha256_file(folder / "encoder.onnx")
    write_manifest(folder, m)
    with pytest.raises(DiffCutError, match=r"could not load .*encoder\.onnx"):
        open_backend(folder, backend="ort-cpu")


def test_manifest_names_must_match_graph(toy_dir, tmp_path):
    folder = _copy_toy(toy_dir, tmp_path / "renamed")
    m = read_manifest(folder)
    m.output_name = "attn1_out"
    write_manifest(folder, m)
    with pytest.raises(DiffCutError, match="attn1_out"):
        open_backend(folder, backend="ort-cpu")


# --------------------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "array, message",
    [
        (_batch(1).astype(np.float64), "dtype float64"),
        (_batch(1).astype(np.float16), "dtype float16"),
        (_batch(1, r=R + 32), rf"\(1, 3, {R + 32}, {R + 32}\)"),
        (_batch(1)[0], rf"\(3, {R}, {R}\)"),
        (np.zeros((1, 4, R, R), np.float32), "expected shape"),
        ([[1.0]], "dtype None"),
    ],
)
def test_input_validation_says_expected_vs_got(manifest, array, message):
    with pytest.raises(DiffCutError, match=message) as info:
        check_image_batch(array, manifest)
    assert f"(B, 3, {R}, {R}) float32" in str(info.value)


def test_batch_range_and_feed_keys(toy_dir):
    with OnnxRuntimeBackend(toy_dir, backend="ort-cpu", max_batch=2, threads=1) as backend:
        assert backend.infer({"image": _batch(2)})["features"].shape[0] == 2
        with pytest.raises(DiffCutError, match=r"batch 3 .*1\.\.2"):
            backend.infer({"image": _batch(3)})
        with pytest.raises(DiffCutError, match="'image'"):
            backend.infer({"images": _batch(1)})
        with pytest.raises(DiffCutError, match="dict"):
            backend.infer(_batch(1))


# --------------------------------------------------------------------------- native TensorRT, CPU parts
def test_engine_selection(manifest, toy_dir):
    h100, orin = _engine(), _engine(gpu="Orin", cc="8.7", trt="8.6.2")
    manifest.engines = [orin, h100]
    assert find_engine(manifest, "NVIDIA H100 80GB HBM3", "9.0", "10.3.0.30") is h100  # build no. ignored
    assert find_engine(manifest, "Orin", "8.7", "8.6.2.3") is orin
    assert find_engine(manifest, "NVIDIA H100 80GB HBM3", "9.0", "10.4.0") is None  # other TRT
    assert find_engine(manifest, "NVIDIA H100 PCIe", "9.0", "10.3.0") is None  # other GPU
    with pytest.raises(DiffCutError) as info:
        select_engine(manifest, "NVIDIA A100-SXM4-40GB", "8.0", "10.3.0", toy_dir)
    text = str(info.value)
    assert "Orin (sm 8.7) / TRT 8.6.2" in text and "NVIDIA A100-SXM4-40GB (sm 8.0) / TRT 10.3.0" in text
    assert f"build-engine --model-dir {toy_dir}" in text


def test_no_engine_at_all_suggests_build_or_ort(manifest):
    with pytest.raises(DiffCutError, match=r"no TensorRT engine.*build-engine.*--backend ort"):
        select_engine(manifest, "Orin", "8.7", "10.3.0")


def test_trt_version_parsing():
    assert trt_compat.version_tuple("10.3.0.30") == (10, 3, 0)
    assert trt_compat.version_tuple("8.6") == (8, 6, 0)
    assert trt_compat.version_tuple("11.0.0b1") == (11, 0, 0)
    assert trt_compat.same_trt_version("10.3.0", "10.3.0.30")
    assert not trt_compat.same_trt_version("10.3.0", "10.3.1")


def test_trt_dtype_mapping():
    assert trt_compat.numpy_dtype(types.SimpleNamespace(name="FLOAT")) == np.float32
    assert trt_compat.numpy_dtype(types.SimpleNamespace(name="HALF")) == np.float16
    assert trt_compat.numpy_dtype("DataType.INT64") == np.int64  # str() form of older bindings
    with pytest.raises(DiffCutError, match="BF16"):
        trt_compat.numpy_dtype(types.SimpleNamespace(name="BF16"))


def test_engine_io_and_profile_checks(manifest):
    good = [("image", True, np.dtype(np.float32)), ("features", False, np.dtype(np.float16))]
    check_engine_io(good, manifest)
    with pytest.raises(DiffCutError, match="inputs"):
        check_engine_io([("sample", True, np.dtype(np.float32)), good[1]], manifest)
    with pytest.raises(DiffCutError, match="float16, expected float32"):
        check_engine_io([("image", True, np.dtype(np.float16)), good[1]], manifest)
    with pytest.raises(DiffCutError, match="int32"):
        check_engine_io([good[0], ("features", False, np.dtype(np.int32))], manifest)
    record = _engine(batch=(1, 2, 4))
    check_profile((1, 3, R, R), (4, 3, R, R), manifest, record)
    with pytest.raises(DiffCutError, match="rebuild"):
        check_profile((1, 3, R, R), (8, 3, R, R), manifest, record)


class _FakeTrt:
    """Just enough of the tensorrt module for deserialisation, returning None like TRT does;
    its classes refuse names the real 10.3 lacks (tests/data/tensorrt/surface-10.3.json)."""

    __version__ = "10.3.0"

    @strict("Logger", "10.3.0")
    class Logger:
        ERROR = "ERROR"

        def __init__(self, level=None):
            pass

    @strict("Runtime", "10.3.0")
    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return None


def test_undeserializable_engine_is_a_clear_error():
    with pytest.raises(DiffCutError, match=r"x\.plan is not a TensorRT engine .*TensorRT 10\.3\.0.*build-engine"):
        trt_compat.deserialize_engine(_FakeTrt, b"\x00garbage", "x.plan")
    with pytest.raises(DiffCutError, match="not a TensorRT engine"):
        trt_compat.deserialize_engine(_FakeTrt, b"", "empty.plan")


@pytest.mark.skipif(not lazy.tensorrt.available(), reason="tensorrt is not installed (the [trt] extra)")
def test_real_tensorrt_refuses_garbage_bytes():
    # A real trt.Runtime needs a CUDA device: without one this test cannot say anything.
    from diffcut_edge.runtime.gpu import probe_gpu

    if probe_gpu() is None:
        pytest.skip("tensorrt is installed but there is no NVIDIA GPU for its Runtime")
    with pytest.raises(DiffCutError, match="not a TensorRT engine"):
        trt_compat.deserialize_engine(lazy.tensorrt.load(), b"\x00" * 64 + b"garbage" * 100, "garbage.plan")


def test_tensorrt_backend_without_packages_names_the_extra(toy_dir, manifest):
    if lazy.tensorrt.available() and lazy.cupy.available():
        pytest.skip("tensorrt and cupy are installed: the missing-package path cannot be exercised")
    with pytest.raises(DiffCutError, match=r"diffcut-edge\[(trt|gpu)\]"):
        TensorRTBackend(toy_dir, manifest=manifest)
    manifest.engines = [_engine()]
    with pytest.raises(DiffCutError, match=r"diffcut-edge\[(trt|gpu)\]"):
        open_backend(toy_dir, backend="tensorrt", manifest=manifest)
    # auto falls back to onnxruntime when native TensorRT cannot run here.
    with open_backend(toy_dir, manifest=manifest, threads=1) as backend:
        assert isinstance(backend, OnnxRuntimeBackend)


def _has_cuda_gpu() -> bool:
    if not (lazy.tensorrt.available() and lazy.cupy.available()):
        return False
    try:
        return lazy.cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_gpu(), reason="needs an NVIDIA GPU with tensorrt + cupy")
def test_tensorrt_backend_matches_onnxruntime(toy_dir, tmp_path):
    """Build an engine for this GPU with the export stage, then compare with onnxruntime."""
    from diffcut_edge.export import build_engine

    folder = _copy_toy(toy_dir, tmp_path / "trt")
    build_engine(folder, batch=(1, 1, 4))
    x = _batch(2)
    with open_backend(folder, backend="tensorrt", keep_on_device=True) as backend:
        out = backend.infer({"image": x})["features"]
        assert type(out).__module__.startswith("cupy")
        np.testing.assert_allclose(out.get(), toy_features(x, folder), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- lazy imports
def test_lazy_module_names_the_extra():
    missing = lazy.LazyModule("no_such_module_for_diffcut", extra="gpu", purpose="the test")
    assert not missing.available()
    with pytest.raises(DiffCutError, match=r"pip install 'diffcut-edge\[gpu\]'"):
        _ = missing.zeros
    base = lazy.LazyModule("no_such_base_module_for_diffcut", extra="", purpose="the test")
    with pytest.raises(DiffCutError, match="pip install no_such_base_module_for_diffcut"):
        base.load()
    present = lazy.LazyModule("json", extra="", purpose="the test")
    assert present.available() and present.dumps([1]) == "[1]"


def test_tensorrt_backend_orders_its_stream_after_the_input_and_names_its_device(manifest, monkeypatch):
    # GPU defects 2 and 8: the engine's non-blocking stream must wait for the stream that wrote
    # the input (preprocess runs on cupy's current stream), and every call names the CUDA device
    # (Device(id).use() is per thread; the video worker is another thread). A stand-in cupy
    # records the order of events; the real one is exercised by the GPU acceptance script.
    import types

    from diffcut_edge.runtime.backends import tensorrt as trt_backend

    log: list[str] = []

    class Buffer(np.ndarray):
        @property
        def data(self):
            return types.SimpleNamespace(ptr=id(self))

    class Stream:
        ptr = 7

        def __init__(self, name):
            self.name = name

        def record(self):
            log.append(f"record {self.name}")
            return f"event of {self.name}"

        def wait_event(self, event):
            log.append(f"{self.name} waits for {event}")

        def synchronize(self):
            log.append(f"sync {self.name}")

        def __enter__(self):
            log.append(f"enter {self.name}")

        def __exit__(self, *exc):
            log.append(f"exit {self.name}")

    class Device:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            log.append(f"device {self.index}")

        def __exit__(self, *exc):
            pass

    current = Stream("current")
    fake_cp = types.SimpleNamespace(
        cuda=types.SimpleNamespace(get_current_stream=lambda: current, Device=Device),
        asarray=lambda a, dtype=None: np.asarray(a, dtype=dtype).view(Buffer),
        ascontiguousarray=lambda a: np.ascontiguousarray(a).view(Buffer),
        empty=lambda shape, dtype: np.zeros(shape, dtype).view(Buffer),
        asnumpy=lambda a: np.asarray(a),
    )
    monkeypatch.setattr(trt_backend, "cp", fake_cp)

    class Context:
        def set_input_shape(self, name, shape):
            return True

        def get_tensor_shape(self, name):
            return (1, manifest.num_tokens, manifest.channels)

        def set_tensor_address(self, name, ptr):
            pass

        def execute_async_v3(self, stream):
            log.append("execute")
            return True

    backend = trt_backend.TensorRTBackend.__new__(trt_backend.TensorRTBackend)
    backend.input_name, backend.output_name = manifest.input_name, manifest.output_name
    backend._stream, backend._context, backend._out_dtype = Stream("engine"), Context(), np.float32
    backend.device_id, backend.outputs_on_device = 1, False
    r = manifest.resolution
    out = backend._infer_impl(np.zeros((1, 3, r, r), np.float32))[manifest.output_name]
    assert out.shape == (1, manifest.num_tokens, manifest.channels)
    assert log[:3] == ["device 1", "record current", "engine waits for event of current"]
    assert log.index("engine waits for event of current") < log.index("execute") < log.index("sync engine")


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "10.16.0.72", "11.4.0.106"])
def test_every_supported_tensorrt_has_the_names_the_native_backend_calls(version):
    # runtime/trt_compat.py and runtime/backends/tensorrt.py, against the recorded real surfaces.
    from helpers.trt_surface import surface

    real = surface(version)
    used = {
        "ICudaEngine": (
            "num_io_tensors",
            "get_tensor_name",
            "get_tensor_mode",
            "get_tensor_dtype",
            "get_tensor_profile_shape",
            "create_execution_context",
        ),
        "IExecutionContext": ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"),
        "Runtime": ("deserialize_cuda_engine",),
        "Logger": ("ERROR", "WARNING", "VERBOSE"),
    }
    missing = {cls: [n for n in names if n not in real["classes"][cls]] for cls, names in used.items()}
    assert missing == {cls: [] for cls in used}
    assert set(real["enums"]["TensorIOMode"]) >= {"INPUT", "OUTPUT"}
    assert {trt_compat.numpy_dtype(types.SimpleNamespace(name=n)) for n in ("FLOAT", "HALF")} == {
        np.dtype(np.float32),
        np.dtype(np.float16),
    } and {"FLOAT", "HALF"} <= set(real["enums"]["DataType"])


def test_a_missing_subpackage_names_the_extra_not_a_broken_install():
    # ModuleNotFoundError names the first missing package ("tritonclient" for "tritonclient.http"): that is a
    # missing extra, not an installed package that failed to import. (A made-up name: whatever ran before.)
    missing = lazy.LazyModule("no_such_package_of_diffcut.http", extra="triton", purpose="the Triton client")
    with pytest.raises(DiffCutError, match=r"pip install 'diffcut-edge\[triton\]'") as err:
        missing.load()
    assert "failed to import" not in str(err.value)
