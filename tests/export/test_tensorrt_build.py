"""TensorRT engine build: everything that does not need a GPU.

The real build (TensorRT + an NVIDIA GPU) cannot run here; it is exercised against a fake
``tensorrt`` module that records what the builder was asked for, so the orchestration, the
per-version decisions, the file naming and the manifest update are all tested.
"""

from __future__ import annotations

import shutil
import sys
import types
import weakref

import pytest

from diffcut_edge import cli
from diffcut_edge.errors import DiffCutError
from diffcut_edge.export import tensorrt_build as tb
from diffcut_edge.runtime.manifest import read_manifest, sha256_file, verify_files
from diffcut_edge.runtime.trt_compat import builder_settings, parse_version
from helpers.trt_surface import VERSIONS, real_enums, strict, surface

GPU = tb.GpuInfo(name="NVIDIA H100 80GB HBM3", compute_capability="9.0")


# ------------------------------------------------------------------ pure functions
@pytest.mark.parametrize(
    "spec, expected",
    [("1:1:4", (1, 1, 4)), ("2", (2, 2, 2)), (" 1:2:8 ", (1, 2, 8)), ((1, 1, 1), (1, 1, 1)), ([1, 3, 64], (1, 3, 64))],
)
def test_batch_spec_parsing(spec, expected):
    assert tb.parse_batch_spec(spec) == expected


@pytest.mark.parametrize("spec", ["0:1:4", "4:1:1", "1:4:2", "1:2", "1:1:4:8", "a:b:c", "1:1:100", "", (1, 2)])
def test_batch_spec_rejects_nonsense(spec):
    with pytest.raises(DiffCutError, match="batch"):
        tb.parse_batch_spec(spec)


def test_engine_file_names_carry_gpu_and_tensorrt_version():
    assert tb.engine_file_name(GPU.name, "10.3.0.26") == "encoder.nvidia-h100-80gb-hbm3.trt10.3.0.plan"
    assert tb.engine_file_name("Orin (nvgpu)", "8.6.2.3") == "encoder.orin-nvgpu.trt8.6.2.plan"
    assert tb.engine_file_name("NVIDIA GeForce RTX 4090", "11.0") == "encoder.nvidia-geforce-rtx-4090.trt11.0.0.plan"


@pytest.mark.parametrize(
    "version, precision, typed, fp16_flag, explicit, native_in",
    [
        ("8.6.2.3", "fp16", False, True, True, True),  # JetPack 6.0: weak typing, FP16 flag
        ("8.6.1", "fp32", False, False, True, True),
        ("10.3.0.30", "fp16", True, False, False, False),  # strongly typed: types come from the ONNX
        ("10.3.0", "fp32", True, False, False, False),
        ("11.0.0", "fp16", True, False, False, False),
        ("8.6.2.3", "int8", False, False, True, True),  # INT8 flag below (explicit Q/DQ quantization)
        ("10.16.0", "int8", True, False, False, False),  # strongly typed: the Q/DQ types decide
    ],
)
def test_builder_settings_per_tensorrt_version(version, precision, typed, fp16_flag, explicit, native_in):
    s = builder_settings(version, precision)
    assert (s.strongly_typed, s.fp16_flag, s.explicit_batch_flag, s.native_instancenorm) == (
        typed,
        fp16_flag,
        explicit,
        native_in,
    )
    assert s.version == parse_version(version)


@pytest.mark.parametrize("version, int8_flag", [("8.6.2.3", True), ("10.3.0", False), ("11.4.0", False)])
def test_int8_flag_only_on_weakly_typed_tensorrt(version, int8_flag):
    assert builder_settings(version, "int8").int8_flag is int8_flag
    assert builder_settings(version, "fp16").int8_flag is False


def test_old_tensorrt_is_refused():
    with pytest.raises(DiffCutError, match="too old"):
        builder_settings("8.5.2.2", "fp16")


def test_workspace_must_be_positive():
    assert tb.workspace_bytes(None) is None
    assert tb.workspace_bytes(1.5) == 3 << 29
    with pytest.raises(DiffCutError, match="workspace"):
        tb.workspace_bytes(0)


# ------------------------------------------------------------------ manifest update (fake engine bytes)
@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir("sd1", 256, "fp32"), copy)
    return copy


def test_record_engine_writes_the_plan_and_updates_the_manifest(model_copy):
    manifest = read_manifest(model_copy)
    path = tb.record_engine(model_copy, manifest, b"fake-engine-1", gpu=GPU, trt_version="10.3.0.26", batch=(1, 1, 4))
    assert path.name == "encoder.nvidia-h100-80gb-hbm3.trt10.3.0.plan" and path.read_bytes() == b"fake-engine-1"
    (record,) = read_manifest(model_copy).engines
    assert (
        record.file,
        record.gpu_name,
        record.compute_capability,
        record.tensorrt_version,
        record.batch_profile,
        record.sha256,
    ) == (path.name, GPU.name, "9.0", "10.3.0", (1, 1, 4), sha256_file(path))
    # Rebuilding for the same GPU and version replaces the record; another GPU adds one.
    tb.record_engine(
        model_copy, read_manifest(model_copy), b"fake-engine-2", gpu=GPU, trt_version="10.3.0.26", batch=(1, 2, 8)
    )
    tb.record_engine(
        model_copy,
        read_manifest(model_copy),
        b"orin",
        gpu=tb.GpuInfo("Orin", "8.7"),
        trt_version="8.6.2",
        batch=(1, 1, 1),
    )
    engines = read_manifest(model_copy).engines
    assert [(e.gpu_name, e.batch_profile) for e in engines] == [(GPU.name, (1, 2, 8)), ("Orin", (1, 1, 1))]
    verify_files(model_copy, read_manifest(model_copy))  # the ONNX record is untouched
    assert not [p for p in model_copy.iterdir() if p.name.startswith(".")]  # no temp files left


# ------------------------------------------------------------------ environment errors
def test_missing_tensorrt_names_the_extra(model_copy, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes "import tensorrt" raise ImportError
    with pytest.raises(DiffCutError, match=r"diffcut-edge\[trt\]"):
        tb.build_engine(model_copy)


def test_no_gpu_is_reported_before_building(model_copy, monkeypatch):
    fake = FakeTensorRT("10.3.0")
    monkeypatch.setattr(tb, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(tb, "probe_gpu", lambda: None)
    with pytest.raises(DiffCutError, match="no CUDA GPU"):
        tb.build_engine(model_copy)
    assert fake.builders == []


def test_probe_gpu_without_a_driver_returns_none(monkeypatch):
    import ctypes

    def no_library(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert tb.probe_gpu() is None


# ------------------------------------------------------------------ the build against a fake TensorRT
class FakeTensorRT(types.SimpleNamespace):
    """The tensorrt module as build_engine sees it, made from the real surface of ``version``.

    Enums carry the real members and values (tests/data/tensorrt/surface-*.json); every fake
    class refuses attributes the real class of that version lacks (helpers/trt_surface.py), so
    a name the project uses that a supported TensorRT does not have fails here.
    """

    def __init__(
        self, version: str, *, build_returns=b"serialized-engine", parse_ok=True, layer_types=(), accept_cache=True
    ):
        enums = real_enums(version)
        super().__init__(
            __version__=version,
            builders=[],
            parse_ok=parse_ok,
            build_returns=build_returns,
            accept_cache=accept_cache,
            alive=[],
            layer_types=list(layer_types),
            **enums,
        )
        trt = self

        @strict("Logger", version)
        class Logger:
            def __init__(self, level=None):
                pass

        for level in ("WARNING", "VERBOSE", "ERROR"):
            if level in surface(version)["classes"]["Logger"]:
                setattr(Logger, level, level)

        @strict("ITensor", version)
        class Tensor:
            def __init__(self, dtype):
                object.__setattr__(self, "dtype", dtype)

        @strict("ILayer", version)
        class Layer:
            def __init__(self, kind, dtypes):
                object.__setattr__(self, "type", kind)
                object.__setattr__(self, "num_outputs", len(dtypes))
                object.__setattr__(self, "precision", None)
                self._outputs, self._output_types = [Tensor(d) for d in dtypes], {}

            def get_output(self, j):
                return self._outputs[j]

            def set_output_type(self, j, dtype):
                self._output_types[j] = dtype

        @strict("INetworkDefinition", version)
        class Network:
            def __init__(self):
                self._layers = [Layer(kind, dtypes) for kind, dtypes in trt.layer_types]
                object.__setattr__(self, "num_layers", len(self._layers))
                trt.builders[-1]["layers"] = self._layers

            def get_layer(self, i):
                return self._layers[i]

        @strict("ITimingCache", version)
        class TimingCache:
            def __init__(self, data):
                self._data = data

            def serialize(self):
                return b"timing-cache"

        @strict("IOptimizationProfile", version)
        class Profile:
            def __init__(self):
                self._shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self._shapes[name] = (lo, opt, hi)

        @strict("IBuilderConfig", version)
        class Config:
            def __init__(self, record):
                self._record = record

            def set_memory_pool_limit(self, pool, size):
                self._record["workspace"] = size

            def set_flag(self, flag):
                self._record["flags"].add(flag)

            def add_optimization_profile(self, profile):
                self._record["profiles"].append(profile._shapes)

            def create_timing_cache(self, data):
                self._record["cache_in"] = data
                return TimingCache(data)

            def set_timing_cache(self, cache, ignore_mismatch):
                self._record.setdefault("caches_set", []).append(cache._data)
                return trt.accept_cache or cache._data == b""

        @strict("Builder", version)
        class Builder:
            def __init__(self, logger):
                self._record = {"flags": set(), "profiles": [], "workspace": None, "parser_flags": set()}
                trt.builders.append(self._record)
                trt.alive.append(weakref.ref(self))

            def create_network(self, flags):
                self._record["network_flags"] = flags
                return Network()

            def create_builder_config(self):
                return Config(self._record)

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return trt.build_returns

        @strict("OnnxParser", version)
        class OnnxParser:
            def __init__(self, network, logger):
                object.__setattr__(self, "num_errors", 0 if trt.parse_ok else 2)

            def set_flag(self, flag):
                trt.builders[-1]["parser_flags"].add(flag)

            def parse_from_file(self, path):
                trt.builders[-1]["parsed"] = path
                return trt.parse_ok

            def get_error(self, i):
                return f"node {i}: unsupported operator"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser


def _use_fake(monkeypatch, fake):
    monkeypatch.setattr(tb, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(tb, "probe_gpu", lambda: GPU)


def test_build_engine_strongly_typed_on_tensorrt_10(model_copy, monkeypatch):
    fake = FakeTensorRT("10.3.0.26")
    _use_fake(monkeypatch, fake)
    path = tb.build_engine(model_copy, workspace_gb=2, batch="1:2:4")
    (rec,) = fake.builders
    assert rec["network_flags"] == 1 << fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert rec["flags"] == set() and rec["parser_flags"] == set()
    assert rec["workspace"] == 2 << 30
    assert rec["parsed"] == str(model_copy / "encoder.onnx")
    assert rec["profiles"] == [{"image": ((1, 3, 256, 256), (2, 3, 256, 256), (4, 3, 256, 256))}]
    assert path.read_bytes() == b"serialized-engine"
    assert (model_copy / tb.timing_cache_name(GPU.name, "10.3.0.26")).read_bytes() == b"timing-cache"
    assert read_manifest(model_copy).engines[0].batch_profile == (1, 2, 4)
    # A rebuild starts from the saved timing cache.
    tb.build_engine(model_copy)
    assert fake.builders[-1]["cache_in"] == b"timing-cache"


def test_build_engine_weakly_typed_fp16_on_tensorrt_8_6(tiny_model_dir, tmp_path, monkeypatch):
    copy = tmp_path / "m16"
    shutil.copytree(tiny_model_dir("sdxl", 256, "fp16"), copy)
    fake = FakeTensorRT("8.6.2.3")
    _use_fake(monkeypatch, fake)
    tb.build_engine(copy, timing_cache=False)
    (rec,) = fake.builders
    assert rec["network_flags"] == 1 << fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    assert rec["flags"] == {fake.BuilderFlag.FP16, fake.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    assert rec["parser_flags"] == {fake.OnnxParserFlag.NATIVE_INSTANCENORM}
    assert not list(copy.glob("timing.*"))


def test_build_returning_none_explains_memory(model_copy, monkeypatch):
    _use_fake(monkeypatch, FakeTensorRT("10.3.0", build_returns=None))
    with pytest.raises(DiffCutError, match="out of memory.*--workspace"):
        tb.build_engine(model_copy)
    assert read_manifest(model_copy).engines == []
    assert not list(model_copy.glob("*.plan"))


def test_parse_errors_are_listed(model_copy, monkeypatch):
    _use_fake(monkeypatch, FakeTensorRT("10.3.0", parse_ok=False))
    with pytest.raises(DiffCutError, match="node 0: unsupported operator; node 1"):
        tb.build_engine(model_copy)


def test_tampered_onnx_is_refused_before_building(model_copy, monkeypatch):
    fake = FakeTensorRT("10.3.0")
    _use_fake(monkeypatch, fake)
    with open(model_copy / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(DiffCutError, match="does not match its manifest"):
        tb.build_engine(model_copy)
    assert fake.builders == []


# ------------------------------------------------------------------ CLI
def test_cli_build_engine_reports_errors_in_one_line(model_copy, monkeypatch, capsys):
    assert cli.main(["build-engine", "--model-dir", str(model_copy), "--batch", "4:1:1"]) == cli.EXIT_ERROR
    assert "1 <= min <= opt <= max" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert cli.main(["build-engine", "--model-dir", str(model_copy)]) == cli.EXIT_ERROR
    assert "[trt]" in capsys.readouterr().err


def test_cli_build_engine_with_fake_tensorrt(model_copy, monkeypatch, capsys):
    _use_fake(monkeypatch, FakeTensorRT("10.3.0"))
    assert cli.main(["build-engine", "--model-dir", str(model_copy), "--batch", "1:1:2", "--workspace", "1"]) == 0
    assert "encoder.nvidia-h100-80gb-hbm3.trt10.3.0.plan" in capsys.readouterr().out


def test_engine_building_code_never_imports_torch():
    # Building needs the memory torch would take (Jetson); the module chain must stay torch-free.
    import subprocess

    code = (
        "import sys, diffcut_edge.export, diffcut_edge.export.tensorrt_build as tb; "
        "tb.parse_batch_spec('1:1:4'); tb.probe_gpu(); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'onnx') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_fp16_on_tensorrt_8_6_pins_the_fp32_layers(tiny_model_dir, tmp_path, monkeypatch):
    # GPU defect 3: a weakly typed network with only the FP16 flag may run the fp32 VAE in fp16.
    # Layers whose outputs the ONNX types as float32 are pinned to float32 and the builder is told
    # to obey; fp16 layers and constants are left alone.
    copy = tmp_path / "m16"
    shutil.copytree(tiny_model_dir("sdxl", 256, "fp16"), copy)
    fake = FakeTensorRT("8.6.2.3")
    F, H = fake.DataType.FLOAT, fake.DataType.HALF
    fake.layer_types = [
        (fake.LayerType.CONVOLUTION, [F]),
        (fake.LayerType.CONSTANT, [F]),
        (fake.LayerType.CAST, [H]),
        (fake.LayerType.CONVOLUTION, [H]),
    ]
    _use_fake(monkeypatch, fake)
    tb.build_engine(copy, timing_cache=False)
    vae_conv, constant, cast, unet_conv = fake.builders[0]["layers"]
    assert vae_conv.precision == F and vae_conv._output_types == {0: F}
    assert constant.precision is None and cast.precision is None and unet_conv.precision is None


def test_fp32_and_strongly_typed_builds_pin_nothing(model_copy, monkeypatch):
    fake = FakeTensorRT("10.3.0")
    fake.layer_types = [(fake.LayerType.CONVOLUTION, [fake.DataType.FLOAT])]
    _use_fake(monkeypatch, fake)
    tb.build_engine(model_copy, timing_cache=False)
    assert fake.builders[0]["layers"][0].precision is None


def test_timing_cache_is_per_gpu_and_version_and_a_refused_one_is_replaced(model_copy, monkeypatch):
    # GPU defect 5: one timing.cache per folder was shared across GPUs, set_timing_cache's False
    # was ignored and the foreign cache written back. Now it is keyed like the engine, and a
    # refused cache gives way to a fresh one.
    fake = FakeTensorRT("10.3.0.26", accept_cache=False)
    _use_fake(monkeypatch, fake)
    name = tb.timing_cache_name(GPU.name, "10.3.0.26")
    assert name == "timing.nvidia-h100-80gb-hbm3.trt10.3.0.cache"
    (model_copy / name).write_bytes(b"from another machine")
    tb.build_engine(model_copy)
    assert fake.builders[0]["caches_set"] == [b"from another machine", b""]
    assert (model_copy / name).read_bytes() == b"timing-cache"
    assert not (model_copy / "timing.cache").exists()


def test_builder_is_freed_before_the_plan_is_written(model_copy, monkeypatch):
    # GPU defect 6: builder, network and config stayed alive while the plan was copied and written
    # (peak memory on an 8 GB Orin). The plan buffer is written as it is, once they are gone.
    fake = FakeTensorRT("10.3.0", build_returns=memoryview(b"plan-bytes"))
    _use_fake(monkeypatch, fake)
    seen = {}
    real_write = tb.atomic.write_bytes

    def write(path, data):
        if path.suffix == ".plan":
            seen["builders alive"] = [ref() is not None for ref in fake.alive]
            seen["type"] = type(data)
        return real_write(path, data)

    monkeypatch.setattr(tb.atomic, "write_bytes", write)
    path = tb.build_engine(model_copy, timing_cache=False)
    assert seen == {"builders alive": [False], "type": memoryview} and path.read_bytes() == b"plan-bytes"


@pytest.mark.parametrize("version", sorted(VERSIONS.values()))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_uses_only_names_each_real_tensorrt_has(version, precision, tiny_model_dir, tmp_path, monkeypatch):
    # GPU defect 11: the hand-written fake had names and enum values the real versions lack
    # (EXPLICIT_PRECISION next to STRONGLY_TYPED=2; TRT 11's STRONGLY_TYPED is 0 and it has no
    # EXPLICIT_BATCH or FP16 flag). The fake is now made from each version's recorded surface.
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir("sdxl", 256, precision), copy)
    fake = FakeTensorRT(version)
    fake.layer_types = [
        (fake.LayerType.CONVOLUTION, [fake.DataType.FLOAT]),
        (fake.LayerType.CONVOLUTION, [fake.DataType.HALF]),
    ]
    _use_fake(monkeypatch, fake)
    tb.build_engine(copy)
    (rec,) = fake.builders
    creation = fake.NetworkDefinitionCreationFlag
    typed = parse_version(version)[0] >= 10
    assert rec["network_flags"] == (1 << creation.STRONGLY_TYPED if typed else 1 << creation.EXPLICIT_BATCH)
    pinned = rec["layers"][0].precision if "precision" in surface(version)["classes"]["ILayer"] else None
    assert pinned == (fake.DataType.FLOAT if precision == "fp16" and not typed else None)


def test_the_fake_refuses_what_the_real_version_lacks():
    fake = FakeTensorRT("11.4.0.106")
    with pytest.raises(AttributeError, match="no BuilderFlag.FP16"):
        _ = fake.BuilderFlag.FP16
    with pytest.raises(AttributeError, match="no NetworkDefinitionCreationFlag.EXPLICIT_BATCH"):
        _ = fake.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    layer_less = FakeTensorRT("11.4.0.106", layer_types=[(0, [0])])
    builder = layer_less.Builder(None)
    network = builder.create_network(0)
    with pytest.raises(AttributeError, match="ILayer has no attribute 'precision'"):
        network.get_layer(0).precision = 0
    assert surface("8.6.1")["enums"]["NetworkDefinitionCreationFlag"] == {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}


# ------------------------------------------------------------------ INT8 folders (diffcut-edge quantize)
@pytest.fixture(scope="module")
def int8_folders(tiny_model_dir, tmp_path_factory):
    """{activations: folder} quantized from the tiny SDXL export on two sample photos."""
    from diffcut_edge.export.quantize import quantize_model
    from helpers.data import write_sample_photos

    root = tmp_path_factory.mktemp("int8")
    photos = write_sample_photos(root / "photos", 256, count=2)
    return {
        act: quantize_model(
            tiny_model_dir("sdxl", 256, "fp32"), [photos], root / act, activations=act, progress=False
        ).model_dir
        for act in ("uint8", "int8")
    }


@pytest.mark.parametrize("version", sorted(VERSIONS.values()))
def test_int8_engines_build_with_each_real_tensorrt_surface(version, int8_folders, tmp_path, monkeypatch):
    copy = tmp_path / "m8"
    shutil.copytree(int8_folders["int8"], copy)
    fake = FakeTensorRT(version)
    _use_fake(monkeypatch, fake)
    tb.build_engine(copy, timing_cache=False)
    (rec,) = fake.builders
    typed = parse_version(version)[0] >= 10
    creation = fake.NetworkDefinitionCreationFlag
    assert rec["network_flags"] == (1 << creation.STRONGLY_TYPED if typed else 1 << creation.EXPLICIT_BATCH)
    assert rec["flags"] == (set() if typed else {fake.BuilderFlag.INT8})
    assert version.startswith(read_manifest(copy).engines[0].tensorrt_version)


def test_uint8_activation_folder_is_refused_with_the_command_for_a_tensorrt_one(int8_folders, monkeypatch):
    fake = FakeTensorRT("10.3.0")
    _use_fake(monkeypatch, fake)
    with pytest.raises(DiffCutError, match="--activations int8"):
        tb.build_engine(int8_folders["uint8"])
    assert fake.builders == []  # refused before TensorRT was asked for anything
