"""``manifest.json``: the single source of truth of an exported model folder.

The export stage writes it (``diffcut_edge.export``), the runtime reads it. A folder
whose manifest is missing, malformed, from a newer format or out of step with its
files is refused with a message that says what to do.

Layout of a model folder::

    MODEL_DIR/
      manifest.json
      encoder.onnx            (+ encoder.onnx.data when the weights are external)
      encoder.<gpu>.trt<ver>.plan   (optional, one per GPU/TensorRT pair)
      timing.<gpu>.trt<ver>.cache   (optional, TensorRT timing cache, per GPU and version)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffcut_edge import atomic
from diffcut_edge.defaults import FAMILIES, FOLDER_PRECISIONS, VAES
from diffcut_edge.errors import DiffCutError

MANIFEST_NAME = "manifest.json"
# Bump when a field changes meaning; readers refuse newer formats.
FORMAT_VERSION = 1


# What every manifest must say about its model (the rest has defaults); reports show these too.
REQUIRED_FIELDS = (
    "model_id",
    "family",
    "resolution",
    "grid",
    "channels",
    "precision",
    "timestep",
    "noise_seed",
    "opset",
)


@dataclass
class EngineRecord:
    """One TensorRT engine built from ``encoder.onnx`` on a given GPU."""

    file: str  # file name inside the model folder
    gpu_name: str  # e.g. "NVIDIA H100 80GB HBM3" or "Orin"
    compute_capability: str  # e.g. "9.0", "8.7"
    tensorrt_version: str  # e.g. "10.3.0"
    batch_profile: tuple[int, int, int]  # (min, opt, max) batch of the one profile
    sha256: str = ""


MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few kB; a larger file is not one
MAX_RESOLUTION = 4096  # the paper uses 1024; 4096 px is already 4x its cost
MAX_CHANNELS = 16384  # SDXL's attention has 1280


@dataclass
class Manifest:
    """What the runtime needs to know about an exported encoder."""

    model_id: str  # hub id or folder the pipeline came from
    family: str  # "sdxl" | "sd1"
    resolution: int  # R: the graph takes (B, 3, R, R)
    grid: tuple[int, int]  # feature grid (R/32, R/32)
    channels: int  # C of the features
    precision: str  # "fp32" | "fp16" (UNet part; the VAE stays fp32) | "int8" (quantize)
    timestep: int
    noise_seed: int
    opset: int
    onnx_file: str = "encoder.onnx"
    onnx_data_files: list[str] = field(default_factory=list)
    input_name: str = "image"
    output_name: str = "features"
    files_sha256: dict[str, str] = field(default_factory=dict)  # onnx + data files
    model_revision: str | None = None
    hook: str = ""  # hooked module path, for the record
    exporter: dict[str, str] = field(default_factory=dict)  # library versions
    engines: list[EngineRecord] = field(default_factory=list)
    vae: str = "full"  # "full" (the model's VAE encoder) | "tiny" (AutoencoderTiny, `export --vae tiny`)
    vae_source: str | None = None  # hub id or folder of the tiny VAE
    # Set by `diffcut-edge quantize`: method, activation type, calibration set hash, kept layers,
    # the source folder. None for a plain export.
    quantization: dict[str, Any] | None = None
    # Set by `diffcut-edge verify --against`: the verdict against a full-precision folder.
    verification: dict[str, Any] | None = None
    # Set by `diffcut-edge export-vocab`: the CLIP graphs, tokenizer and text bank that name segments
    # (runtime/labeling.py: VOCABULARY_FILES, clip, clip_id, embed_dim, ...), with their SHA-256.
    vocabulary: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def needs_verification(self) -> bool:
        """True for folders that trade fidelity for speed (INT8, a tiny VAE), which must be checked
        on the user's own images before they are trusted."""
        return self.quantization is not None or self.vae == "tiny"

    def verification_note(self, model_dir: str | os.PathLike) -> str | None:
        """One line for `segment`/`bench` when a faster folder was never verified or failed, else None."""
        if not self.needs_verification:
            return None
        source = (self.quantization or {}).get("source_dir", "FULL_PRECISION_DIR")
        how = f"diffcut-edge verify --model-dir {model_dir} --against {source} [IMAGES]"
        what = self.precision + (", tiny VAE" if self.vae == "tiny" else "")
        if not self.verification:
            return f"{model_dir} ({what}) was never verified against full precision: run {how}"
        if not self.verification.get("passed"):
            return (
                f"{model_dir} ({what}) FAILED verification against {self.verification.get('against')} "
                f"(min cosine {self.verification.get('min_cosine', float('nan')):.4f}); its labels may "
                f"differ from full precision: re-quantize (more calibration images, --keep-fp32) and {how}"
            )
        return None

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise DiffCutError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise DiffCutError(f"{source}: no integer 'format_version'; re-export the model folder")
        if version > FORMAT_VERSION:
            raise DiffCutError(
                f"{source}: manifest format {version} is newer than this diffcut-edge understands "
                f"({FORMAT_VERSION}); upgrade diffcut-edge or re-export with this version"
            )
        known = set(cls.__dataclass_fields__)
        missing = [k for k in REQUIRED_FIELDS if k not in data]
        if missing:
            raise DiffCutError(f"{source}: missing field(s) {', '.join(missing)}; re-export the model folder")
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            kwargs["grid"] = tuple(int(v) for v in kwargs["grid"])
            kwargs["engines"] = [
                EngineRecord(**{**e, "batch_profile": tuple(e["batch_profile"])}) for e in kwargs.get("engines", [])
            ]
            manifest = cls(**kwargs)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise DiffCutError(f"{source}: malformed field ({str(e)[:200]}); re-export the model folder") from e
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        """Check types, bounds and internal consistency (not the files: see :func:`verify_files`).
        A manifest is input like any other: every field has the type the runtime relies on, and every
        file it names is a plain name inside the folder."""
        for name, kind in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise DiffCutError(
                    f"{source}: {name} must be {_KIND_WORDS[kind]}, got {type(value).__name__}; "
                    f"re-export the model folder"
                )
        names = [self.onnx_file, *self.onnx_data_files, *self.files_sha256, *(e.file for e in self.engines)]
        if isinstance(self.vocabulary, dict):
            names += list(self.vocabulary.get("files") or {})
        for name in names:
            if not _plain_name(name):
                raise DiffCutError(
                    f"{source}: the file name {str(name)[:80]!r} is not a plain file name of the "
                    f"folder (no '/', '..' or absolute paths); re-export the model folder"
                )
        if not 0 < self.resolution <= MAX_RESOLUTION:
            raise DiffCutError(f"{source}: resolution {self.resolution} is outside 64..{MAX_RESOLUTION}")
        if not 0 < self.channels <= MAX_CHANNELS:
            raise DiffCutError(f"{source}: channels {self.channels} is outside 1..{MAX_CHANNELS}")
        if self.family not in FAMILIES:
            raise DiffCutError(f"{source}: family {self.family!r} is not one of {FAMILIES}")
        if self.precision not in FOLDER_PRECISIONS:
            raise DiffCutError(f"{source}: precision {self.precision!r} is not one of {FOLDER_PRECISIONS}")
        if self.resolution <= 0 or self.resolution % 64:
            raise DiffCutError(f"{source}: resolution {self.resolution} is not a positive multiple of 64")
        expected_grid = (self.resolution // 32, self.resolution // 32)
        if tuple(self.grid) != expected_grid:
            raise DiffCutError(
                f"{source}: grid {self.grid} does not match resolution {self.resolution} (expected {expected_grid})"
            )
        if self.channels <= 0:
            raise DiffCutError(f"{source}: channels must be positive, got {self.channels}")
        if self.vae not in VAES:
            raise DiffCutError(f"{source}: vae {self.vae!r} is not one of {VAES}")


_FIELD_TYPES = {
    "model_id": str,
    "family": str,
    "resolution": int,
    "channels": int,
    "precision": str,
    "timestep": int,
    "noise_seed": int,
    "opset": int,
    "onnx_file": str,
    "onnx_data_files": list,
    "input_name": str,
    "output_name": str,
    "files_sha256": dict,
    "engines": list,
    "vae": str,
    "exporter": dict,
    "hook": str,
}
_KIND_WORDS = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def verify_vocabulary_files(model_dir: str | os.PathLike, manifest: Manifest) -> dict[str, Any]:
    """The folder's vocabulary record, its files checked against their SHA-256 (as the encoder's)."""
    record = manifest.vocabulary
    if not record:
        raise DiffCutError(
            f"{model_dir} has no vocabulary: add one with `diffcut-edge export-vocab --model-dir "
            f"{model_dir} --vocab voc|context|coco-object|FILE.txt`"
        )
    model_dir = Path(model_dir)
    for name, expected in record.get("files", {}).items():
        path = folder_file(model_dir, name, "vocabulary file")
        if not path.is_file():
            raise DiffCutError(f"{path} is missing; the vocabulary is incomplete, re-run export-vocab")
        got = sha256_file(path)
        if got != expected:
            raise DiffCutError(
                f"{path} does not match its manifest (sha256 {got[:12]}… != {expected[:12]}…): "
                f"the file was modified or replaced; re-run export-vocab"
            )
    return record


def _plain_name(name: Any) -> bool:
    """A file name of the folder itself: no separator, no parent, not absolute, not empty."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not os.path.isabs(name)
    )


def folder_file(model_dir: str | os.PathLike, name: Any, what: str = "file") -> Path:
    """``model_dir / name`` for a name the manifest gives, confined to the folder: a plain name (no
    separator or ``..``), no link leading out of the folder, and a regular file (a FIFO or a device
    would hang the hashing). A missing file is returned as is (the caller says what is missing)."""
    model_dir = Path(model_dir)
    if not _plain_name(name):
        raise DiffCutError(
            f"{model_dir}/{MANIFEST_NAME}: the {what} name {str(name)[:80]!r} is not a plain file "
            f"name of the folder (no '/', '..' or absolute paths); re-export the model folder"
        )
    path = model_dir / name
    if not os.path.lexists(path):
        return path
    real = path.resolve()
    if real.parent != model_dir.resolve():
        raise DiffCutError(
            f"{path} is a link that leads outside the model folder (to {real}); copy the file into the folder instead"
        )
    try:
        mode = real.stat().st_mode
    except OSError as e:
        raise DiffCutError(f"{path}: cannot read it ({e.strerror or e})") from e
    if not stat.S_ISREG(mode):
        raise DiffCutError(f"{path} is not a regular file (a device, FIFO or folder); re-export the model folder")
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: str | os.PathLike) -> Manifest:
    """Read and validate ``MODEL_DIR/manifest.json`` (does not hash the files)."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise DiffCutError(
            f"{model_dir} is a file, not a model folder: pass the folder written by "
            f"'diffcut-edge export' (the one holding manifest.json and encoder.onnx)"
        )
    if not model_dir.is_dir():
        raise DiffCutError(
            f"model folder {model_dir} does not exist; create it with "
            f"'diffcut-edge export --model HUB_ID|DIR --out {model_dir}'"
        )
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        if (model_dir / "model_index.json").is_file():  # a diffusers pipeline given where a model folder goes
            raise DiffCutError(
                f"{model_dir} is a diffusers pipeline folder, not an exported model folder: pass it "
                f"as --model {model_dir} (exported on first use), or export it once with "
                f"'diffcut-edge export --model {model_dir} --out MODEL_DIR'"
            )
        raise DiffCutError(
            f"{model_dir} has no {MANIFEST_NAME}: it is not an exported model folder "
            f"(run 'diffcut-edge export ... --out {model_dir}')"
        )
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise DiffCutError(
                f"{path} is {path.stat().st_size} bytes, not a manifest (at most "
                f"{MAX_MANIFEST_BYTES}); re-export the model folder"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffCutError(f"{path} is not valid JSON ({e}); re-export the model folder") from e
    except RecursionError:
        raise DiffCutError(f"{path} nests too deeply to be a manifest; re-export the model folder") from None
    except OSError as e:
        raise DiffCutError(f"{path}: cannot read it ({e.strerror or e})") from e
    return Manifest.from_dict(data, source=str(path))


def write_manifest(model_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Write the manifest atomically (diffcut_edge.atomic)."""
    manifest.validate()
    return atomic.write_text(Path(model_dir) / MANIFEST_NAME, manifest.to_json() + "\n")


def verify_files(model_dir: str | os.PathLike, manifest: Manifest) -> None:
    """Check that the ONNX file (and its data) exist and match the recorded SHA-256."""
    model_dir = Path(model_dir)
    for name in [manifest.onnx_file, *manifest.onnx_data_files]:
        path = folder_file(model_dir, name, "ONNX")
        if not path.is_file():
            raise DiffCutError(f"{path} is missing; the model folder is incomplete, re-export it")
        expected = manifest.files_sha256.get(name)
        if expected is None:
            raise DiffCutError(f"manifest records no SHA-256 for {name}; re-export the model folder")
        got = sha256_file(path)
        if got != expected:
            raise DiffCutError(
                f"{path} does not match its manifest (sha256 {got[:12]}… != "
                f"{expected[:12]}…): the file was modified or truncated; re-export"
            )
