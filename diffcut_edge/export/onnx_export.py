"""Export the truncated encoder to an ONNX model folder (``encoder.onnx`` + ``manifest.json``).

One step per function, chained by :func:`export_model`:

    load pipeline -> build TruncatedEncoder -> torch.onnx.export -> constant folding and
    layout of weights (embedded, or one external data file over 2 GiB) -> I/O shapes
    -> onnx.checker + shape inference -> manifest -> move into place

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``, as TensorRT's
demoDiffusion does. Measured on this project's tiny models (2-core VM): 3-11 s per export
versus 15-80 s for the dynamo exporter (torch.export + onnxscript translation + optimizer),
which matters for tests and for iterating on large models; both are within 3e-7 of PyTorch.
It is deprecated in torch 2.13, which this project pins (``[export]`` extra), so it is
present; should a later torch drop it, only :func:`torch_to_onnx` changes (dynamo=True with
batch-2 examples and ``dynamic_shapes``, tried and equal within 3e-7). Its known drawbacks
are handled here: its graph has about twice the nodes of dynamo's, which the onnxscript
constant folding of :func:`optimize_and_layout` halves again (1778 -> 906 nodes on the tiny
SDXL model; dynamo's own: 580); over 2 GiB it spills one file per initializer, which
:func:`optimize_and_layout` gathers into the single ``encoder.onnx.data``.

Precision: ``fp16`` is a mixed graph. The VAE encoder and the noising stay float32 (the SDXL
VAE overflows in fp16), the UNet part is float16, with explicit Cast nodes between, because
strongly typed TensorRT (10.x ``STRONGLY_TYPED``, always in 11) takes precision only from
the ONNX types. The input is float32 and so is the output (one Cast at the end): the
feature map is small (R/32)^2 x C, the runtime's NCut works in float32 anyway, and the
artifact's I/O contract is then the same for both precisions.

Everything is written to a temporary sibling folder and moved into place at the end, so a
failed or interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffcut_edge import atomic, defaults, versions
from diffcut_edge.errors import DiffCutError, missing_extra
from diffcut_edge.export.progress import Stages
from diffcut_edge.export.truncated import check_precision, check_resolution
from diffcut_edge.runtime.manifest import MANIFEST_NAME, Manifest, sha256_file, write_manifest

ONNX_NAME = "encoder.onnx"
DATA_NAME = ONNX_NAME + ".data"
INPUT_NAME = "image"
OUTPUT_NAME = "features"
EXAMPLE_BATCH = 2  # trace with B > 1 so no batch-1 broadcast gets baked in
PROTOBUF_LIMIT = 2 * 1024**3  # a ModelProto cannot be serialised past 2 GiB
# Kept under the hard limit: the proto carries names and the graph besides the raw data.
EMBED_MARGIN = 64 << 20
MIN_OPSET, MAX_OPSET = 17, 23  # LayerNormalization needs 17; the exporter goes up to 23
EXPORTER = "torch.onnx (torchscript, dynamo=False)"


@dataclass
class ExportReport:
    """What an export produced, for the CLI and the benchmarks."""

    model_dir: Path
    onnx_bytes: int = 0
    data_bytes: int = 0
    nodes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------- checks
def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise DiffCutError(
            f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}] (LayerNormalization "
            f"needs 17, which is also the newest opset TensorRT 8.6 documents), got {opset!r}; "
            f"{defaults.OPSET} is the default"
        )
    return opset


def _is_model_folder(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file() or (path / ONNX_NAME).is_file()


def check_vae(vae: str) -> str:
    if vae not in defaults.VAES:
        raise DiffCutError(f"vae must be one of {', '.join(defaults.VAES)}, got {vae!r}")
    return vae


def use_tiny_vae(pipeline: Any, tiny: Any) -> None:
    """Put an ``AutoencoderTiny`` in the pipeline's place of the VAE (the encoder reads ``pipeline.vae``).

    TAESD's encoder maps the [-1, 1] image (it rescales to [0, 1] itself) straight to the
    *scaled* latent space the UNet reads -- what the full VAE gives after ``* scaling_factor`` --
    and its config says ``scaling_factor = 1.0``; the truncated encoder applies the config's
    factor, so both VAEs reach the UNet on the same scale. Latent channels must match the UNet's.
    """
    if not hasattr(tiny, "encoder") or type(tiny).__name__ != "AutoencoderTiny":
        raise DiffCutError(f"--tiny-vae must be a diffusers AutoencoderTiny (TAESD), got {type(tiny).__name__}")
    latent = int(tiny.config.latent_channels)
    expected = int(pipeline.unet.config.in_channels)
    if latent != expected:
        raise DiffCutError(
            f"the tiny VAE has {latent} latent channels but the UNet takes {expected}: use the "
            f"TAESD of this model's family (madebyollin/taesdxl for SDXL, madebyollin/taesd for SD1)"
        )
    if float(tiny.config.scaling_factor) != 1.0:
        raise DiffCutError(
            f"the tiny VAE's scaling_factor is {tiny.config.scaling_factor}, not 1.0: TAESD latents "
            f"are already scaled; this is not a TAESD checkpoint"
        )
    pipeline.vae = tiny


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite a non-empty folder unless ``force``; never delete a foreign folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DiffCutError(f"--out {out_dir} is a file; pass a folder path")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise DiffCutError(f"{out_dir} is not empty; pass --force to replace it or choose another --out")
    if not _is_model_folder(out_dir):
        # --force replaces model folders only: a typo must not wipe an unrelated directory.
        raise DiffCutError(
            f"{out_dir} is not empty and is not a model folder (no {MANIFEST_NAME} or "
            f"{ONNX_NAME}); --force only replaces model folders, choose another --out"
        )


# ------------------------------------------------------------------ one step each
def _import_export_deps() -> None:
    for module in ("torch", "diffusers", "transformers", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError as e:
            raise missing_extra(module, "export", "exporting a model") from e


def torch_to_onnx(encoder: Any, path: Path, *, opset: int) -> None:
    """Trace ``encoder`` and save ``path`` (weights embedded, or spilled next to it over 2 GiB).

    Input ``image`` (B, 3, R, R) float32, output ``features`` (B, N, C); B is a dynamic axis.
    """
    import torch

    resolution = encoder.spec.resolution
    example = torch.rand(EXAMPLE_BATCH, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarnings from diffusers' shape asserts and the exporter's deprecation notice.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                encoder,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        except Exception as e:  # the exporter raises many types; keep its message
            raise DiffCutError(f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:2000]}") from e


def optimize_and_layout(raw: Path, dst: Path, *, optimize: bool = True) -> list[str]:
    """Constant-fold ``raw`` and save it as ``dst``: weights embedded, or ONE external file over 2 GiB.

    The onnxscript optimizer folds the constant sub-graphs the tracer leaves (the timestep
    embedding path, shape arithmetic) and removes dead nodes: about half the nodes go on the
    tiny models. It works on onnx_ir, which memory-maps external data, so models over 2 GiB
    go through it too. Returns the external-data file names (empty when embedded).
    """
    import onnx_ir as ir

    model = ir.load(str(raw))
    if optimize:
        from onnxscript import optimizer

        optimizer.optimize_ir(model, num_iterations=2)
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    external = needs_external_data(weights)
    if external:
        ir.save(model, str(dst), external_data=DATA_NAME)
        return [DATA_NAME]
    ir.save(model, str(dst))
    return []


def needs_external_data(nbytes: int) -> bool:
    """Whether a model of ``nbytes`` must keep its weights in one external data file."""
    return nbytes > PROTOBUF_LIMIT - EMBED_MARGIN


def declare_io_shapes(path: Path, *, resolution: int, channels: int) -> None:
    """Write the I/O shapes into the graph: ``batch`` symbolic, everything else static.

    The tracer leaves the token axis symbolic (diffusers reshapes with -1); TensorRT and
    the runtime read the declared shapes, so state them. Weights are not touched.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {
        INPUT_NAME: ("batch", 3, resolution, resolution),
        OUTPUT_NAME: ("batch", (resolution // 32) ** 2, channels),
    }
    for value in [*model.graph.input, *model.graph.output]:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[value.name]:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size
    onnx.save_model(model, str(path))


def check_graph(path: Path, *, resolution: int, channels: int) -> int:
    """onnx.checker + shape inference; check the I/O signature. Returns the node count.

    Path-based calls, so models with external data over 2 GiB are checked too.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise DiffCutError(f"the exported graph fails onnx.checker: {e}") from e
    inferred = path.with_name(path.name + ".inferred")
    try:
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred), strict_mode=True)
        model = onnx.load(str(inferred), load_external_data=False)
    except Exception as e:
        raise DiffCutError(f"ONNX shape inference failed on the exported graph: {e}") from e
    finally:
        inferred.unlink(missing_ok=True)
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise DiffCutError(
            f"exported graph has inputs {[i.name for i in inputs]} and outputs "
            f"{[o.name for o in graph.output]}, expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]"
        )
    expect_in = (None, 3, resolution, resolution)
    expect_out = (None, (resolution // 32) ** 2, channels)
    for value, expected in ((inputs[0], expect_in), (graph.output[0], expect_out)):
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
        if dims != expected or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise DiffCutError(
                f"exported {value.name!r} has shape {dims} and ONNX type "
                f"{value.type.tensor_type.elem_type}, expected {expected} float32 "
                f"(None = dynamic batch)"
            )
    return len(graph.node)


def library_versions() -> dict[str, str]:
    """Exporter and library versions for the manifest."""
    return {"exporter": EXPORTER, **versions.library_versions(versions.EXPORT_LIBRARIES)}


def pipeline_revision(pipeline: Any, model_id: str | None = None) -> str | None:
    """The hub commit a pipeline was loaded from, when it can be known offline.

    From a path inside the Hugging Face cache (``.../snapshots/<sha>/``), either the
    pipeline's own ``name_or_path`` or the cached ``model_index.json`` of ``model_id``.
    None for local folders and anything not in the cache.
    """
    import re

    candidates = [str(getattr(pipeline, "name_or_path", None) or pipeline.config.get("_name_or_path", "") or "")]
    if model_id and not Path(model_id).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model_id, "model_index.json")
            if isinstance(cached, str):
                candidates.append(cached)
        except Exception:  # a revision is nice to have; never fail an export for it
            pass
    for name in candidates:
        match = re.search(r"snapshots[/\\]([0-9a-f]{40})", name)
        if match:
            return match.group(1)
    return None


def build_manifest(
    encoder: Any,
    model_id: str,
    revision: str | None,
    folder: Path,
    *,
    opset: int,
    data_files: list[str],
    vae: str = "full",
    vae_source: str | None = None,
) -> Manifest:
    spec = encoder.spec
    files = [ONNX_NAME, *data_files]
    return Manifest(
        vae=vae,
        vae_source=vae_source,
        model_id=model_id,
        family=spec.family,
        resolution=spec.resolution,
        grid=spec.grid,
        channels=spec.channels,
        precision=spec.precision,
        timestep=spec.timestep,
        noise_seed=spec.noise_seed,
        opset=opset,
        onnx_file=ONNX_NAME,
        onnx_data_files=list(data_files),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        files_sha256={f: sha256_file(folder / f) for f in files},
        model_revision=revision,
        hook=spec.hook,
        exporter=library_versions(),
    )


def move_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by ``staging`` (:func:`diffcut_edge.atomic.replace_dir`)."""
    atomic.replace_dir(staging, out_dir)


def _model_id(model_or_pipeline_dir: str | os.PathLike) -> str:
    path = Path(model_or_pipeline_dir)
    return str(path.resolve()) if path.exists() else str(model_or_pipeline_dir)


# ------------------------------------------------------------------ orchestrator
def export_model(model_or_pipeline_dir: str | os.PathLike, out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Export DiffCut's truncated encoder of a pipeline (hub id or saved folder) to ``out_dir``;
    returns ``out_dir``. ``settings`` are :func:`export_model_report`'s keyword arguments
    (resolution, precision, opset, vae, ...), which this returns the report of.

    Writes ``encoder.onnx`` (``image`` (B,3,R,R) float32 RGB [0,1] -> ``features`` (B,(R/32)^2,C)
    float32; B dynamic), ``encoder.onnx.data`` when the weights exceed 2 GiB, and ``manifest.json``.
    """
    return export_model_report(model_or_pipeline_dir, out_dir, **settings).model_dir


def export_model_report(
    model_or_pipeline_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    resolution: int = defaults.RESOLUTION,
    precision: str = "fp32",
    opset: int = defaults.OPSET,
    progress: bool = True,
    force: bool = False,
    timestep: int = defaults.TIMESTEP,
    noise_seed: int = defaults.NOISE_SEED,
    optimize: bool = True,
    pipeline: Any = None,
    vae: str = "full",
    tiny_vae: str | os.PathLike | None = None,
) -> ExportReport:
    """:func:`export_model` returning an :class:`ExportReport` (sizes, nodes, stage times).

    ``vae="tiny"`` replaces the VAE encoder by diffusers' ``AutoencoderTiny`` (``tiny_vae``: hub id
    or folder; default the family's TAESD, ``FamilySpec.tiny_vae``).
    ``optimize=False`` skips the onnxscript constant folding (for comparisons).
    ``pipeline`` (optional) is an already loaded pipeline to use instead of loading
    ``model_or_pipeline_dir`` (which then only names the model in the manifest).
    """
    check_resolution(resolution)
    check_precision(precision)
    check_opset(opset)
    check_vae(vae)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    _import_export_deps()
    import torch

    from diffcut_edge import models
    from diffcut_edge.export.truncated import build_truncated_encoder

    stages = Stages("export", ["load pipeline", "truncate", *EXPORT_STAGES], progress)
    try:
        with stages.stage("load pipeline"):
            if pipeline is None:
                pipeline = models.load_pipeline(str(model_or_pipeline_dir), torch_dtype=torch.float32, device="cpu")
            revision = pipeline_revision(pipeline, str(model_or_pipeline_dir))
            vae_source = None
            if vae == "tiny":
                vae_source = str(tiny_vae or models.family_spec(models.pipeline_family(pipeline)).tiny_vae)
                use_tiny_vae(pipeline, models.load_tiny_vae(vae_source))
        with stages.stage("truncate"):
            encoder = build_truncated_encoder(
                pipeline, resolution=resolution, timestep=timestep, noise_seed=noise_seed, precision=precision
            )
            del pipeline  # text encoders, VAE decoder, mid/up blocks can go now
        return export_encoder(
            encoder,
            out_dir,
            model_id=_model_id(model_or_pipeline_dir),
            revision=revision,
            opset=opset,
            optimize=optimize,
            force=force,
            stages=stages,
            vae=vae,
            vae_source=vae_source,
        )
    finally:
        stages.close()


EXPORT_STAGES = ["export ONNX", "fold constants", "check graph", "manifest"]


def export_encoder(
    encoder: Any,
    out_dir: str | os.PathLike,
    *,
    model_id: str,
    revision: str | None = None,
    opset: int = defaults.OPSET,
    optimize: bool = True,
    force: bool = False,
    progress: bool = False,
    stages: Stages | None = None,
    vae: str = "full",
    vae_source: str | None = None,
) -> ExportReport:
    """Write a model folder for an already built :class:`TruncatedEncoder` (staged, then moved).

    The benchmarks use it directly with random-weight encoders; :func:`export_model` with a
    pipeline.
    """
    check_opset(opset)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    own_stages = stages is None
    stages = stages or Stages("export", list(EXPORT_STAGES), progress)
    spec = encoder.spec
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    report = ExportReport(model_dir=out_dir)
    try:
        raw_dir = staging / "raw"
        raw_dir.mkdir()
        with stages.stage("export ONNX"):
            torch_to_onnx(encoder, raw_dir / ONNX_NAME, opset=opset)
        onnx_path = staging / ONNX_NAME
        with stages.stage("fold constants"):
            data_files = optimize_and_layout(raw_dir / ONNX_NAME, onnx_path, optimize=optimize)
            shutil.rmtree(raw_dir)
            declare_io_shapes(onnx_path, resolution=spec.resolution, channels=spec.channels)
        with stages.stage("check graph"):
            report.nodes = check_graph(onnx_path, resolution=spec.resolution, channels=spec.channels)
        with stages.stage("manifest"):
            manifest = build_manifest(
                encoder, model_id, revision, staging, opset=opset, data_files=data_files, vae=vae, vae_source=vae_source
            )
            write_manifest(staging, manifest)
        report.onnx_bytes = onnx_path.stat().st_size
        report.data_bytes = sum((staging / f).stat().st_size for f in data_files)
        move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if own_stages:
            stages.close()
    report.seconds = dict(stages.seconds)
    return report
