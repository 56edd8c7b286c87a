"""The CLIP that names segments: open_clip import, loading, and a tiny random-weight CLIP.

The official open-vocabulary code uses open_clip ``convnext_large_d_320`` with the
``laion2b_s29b_b131k_ft_soup`` weights (:data:`DEFAULT_CLIP`). ``--clip`` takes ``MODEL:TAG``
(open_clip's pretrained registry; the weights come from the Hugging Face cache, so offline only
when already downloaded) or ``local-dir:DIR`` (open_clip's folder layout:
``open_clip_config.json`` + ``open_clip_model.safetensors``), which is how tests load the tiny CLIP.

open_clip and timm import torchvision at module level, for data transforms this project never
uses. Where torchvision is missing or does not match the installed torch build (a CPU torch from
a local wheel with the index's torchvision: "operator torchvision::nms does not exist"),
:func:`import_open_clip` imports them with a stand-in torchvision (:func:`torchvision_stand_in`)
and removes it again, so nothing else in the process (transformers, diffusers) sees it.
Install the ``[clip]`` extra (their other dependencies, ftfy with wcwidth among them), then the two
without their dependencies: ``pip install --no-deps open_clip_torch timm``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diffcut_edge.errors import DiffCutError

DEFAULT_CLIP = "convnext_large_d_320:laion2b_s29b_b131k_ft_soup"
LOCAL_DIR = "local-dir:"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's BPE merges, shipped inside open_clip


# ----------------------------------------------------------------------------- torchvision stand-in
def _refuse(*args: Any, **kwargs: Any) -> None:
    raise DiffCutError(
        "this part of torchvision is a stand-in (torchvision does not import with this torch "
        "build); diffcut-edge uses no torchvision code"
    )


class _StandInMeta(type):
    """Classes whose every attribute is another stand-in class (``InterpolationMode.BICUBIC``)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _stand_in_class(f"{cls.__name__}.{name}")


def _stand_in_class(name: str) -> type:
    return _StandInMeta(name, (), {"__init__": _refuse, "__module__": "torchvision"})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _stand_in_class(name)
        setattr(self, name, value)
        return value


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds every ``torchvision`` and ``torchvision.*`` module as a stand-in module."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []  # a package: submodules resolve through this finder
        module.__version__ = "0.0+diffcut-edge-stand-in"
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _drop_modules(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


@contextlib.contextmanager
def torchvision_stand_in() -> Iterator[None]:
    """While active, ``import torchvision[.x]`` gives stand-in modules; afterwards none is left."""
    finder = _StandInFinder()
    _drop_modules("torchvision")  # a half-imported broken torchvision
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        _drop_modules("torchvision")


def _torchvision_works() -> bool:
    try:
        importlib.import_module("torchvision")
        return True
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        _drop_modules("torchvision")
        return False


def import_open_clip() -> types.ModuleType:
    """``open_clip`` (with timm), using a torchvision stand-in where torchvision cannot import."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    missing = [m for m in ("open_clip", "timm") if importlib.util.find_spec(m) is None]
    if missing:
        raise DiffCutError(
            f"{' and '.join(missing)} not installed: install the [clip] extra, then "
            f"`pip install --no-deps open_clip_torch timm` (--no-deps keeps your torch; "
            f"docs/open-vocabulary.md)"
        )
    if _torchvision_works():
        return importlib.import_module("open_clip")
    # open_clip imports transformers (its HF text towers) when installed: import it first, so it
    # records that torchvision is absent instead of seeing the stand-in and relying on it later.
    for module in ("transformers", "diffusers"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
            with contextlib.suppress(Exception):  # their availability flags, computed now
                importlib.import_module(f"{module}.utils.import_utils")
    with torchvision_stand_in():
        # Import everything model creation touches while the stand-in is there.
        importlib.import_module("timm")
        importlib.import_module("timm.models")
        importlib.import_module("timm.layers")
        module = importlib.import_module("open_clip")
        importlib.import_module("open_clip.timm_model")
    return module


# ----------------------------------------------------------------------------- loading
def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """``MODEL:TAG`` -> (model, tag); ``local-dir:DIR`` -> ("local-dir:DIR", None)."""
    if spec.startswith(LOCAL_DIR):
        folder = Path(spec[len(LOCAL_DIR) :]).expanduser()
        if not (folder / CONFIG_NAME).is_file():
            raise DiffCutError(
                f"--clip {spec}: {folder} has no {CONFIG_NAME} (open_clip's local-dir layout; "
                f"`diffcut-edge models make-tiny-clip --out DIR` writes one)"
            )
        return f"{LOCAL_DIR}{folder}", None
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise DiffCutError(f"--clip {spec!r}: expected MODEL:TAG (e.g. {DEFAULT_CLIP}) or local-dir:DIR")
    model, tag = spec.split(":")
    return model, tag


def load_clip(spec: str = DEFAULT_CLIP) -> Any:
    """The open_clip model for ``spec``, in eval mode on the CPU (float32)."""
    open_clip = import_open_clip()
    model_name, tag = parse_clip_spec(spec)
    try:
        if tag is None:
            model = open_clip.create_model(model_name)
        else:
            model = open_clip.create_model(model_name, pretrained=tag)
    except (RuntimeError, ValueError, OSError) as e:
        raise DiffCutError(f"cannot load CLIP {spec}: {' '.join(str(e).split())[:300]}") from e
    if not hasattr(getattr(model, "visual", None), "trunk") or not hasattr(model.visual.trunk, "stem"):
        raise DiffCutError(
            f"CLIP {spec} is not a ConvNeXt (timm) CLIP: the dense path needs visual.trunk.stem, "
            f"stages and norm_pre (as convnext_large_d_320)"
        )
    return model.eval()


def bpe_vocabulary_path() -> Path:
    """The BPE merges file inside the installed open_clip."""
    open_clip = import_open_clip()
    path = Path(open_clip.__file__).parent / BPE_NAME
    if not path.is_file():
        raise DiffCutError(f"open_clip has no {BPE_NAME} next to {open_clip.__file__}")
    return path


# ----------------------------------------------------------------------------- tiny CLIP
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "timm_model_name": "convnext_atto",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "mlp",
        "timm_drop": 0.0,
        "timm_drop_path": 0.0,
        "image_size": 64,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_local_dir(
    model: Any, model_cfg: dict[str, Any], out: str | os.PathLike, preprocess_cfg: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` in open_clip's local-dir layout (``open_clip_config.json`` + safetensors weights),
    each file atomically, so ``create_model("local-dir:OUT")`` loads it."""
    from safetensors.torch import save

    from diffcut_edge import atomic

    out = Path(out)
    atomic.make_dirs(out)
    config = {"model_cfg": model_cfg, **({"preprocess_cfg": preprocess_cfg} if preprocess_cfg else {})}
    atomic.write_bytes(out / WEIGHTS_NAME, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    atomic.write_text(out / CONFIG_NAME, json.dumps(config, indent=2))
    return out


def make_tiny_clip(out: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random-weight ConvNeXt CLIP (timm ``convnext_atto`` trunk, a 2-layer text tower) in
    open_clip's local-dir layout, loadable with ``open_clip.create_model("local-dir:OUT")``."""
    import torch

    open_clip = import_open_clip()
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_CLIP_CONFIG)))
    with torch.no_grad():  # a non-trivial logit scale, below the clamp of 100
        model.logit_scale.fill_(float(torch.log(torch.tensor(50.0))))
    return save_local_dir(
        model,
        TINY_CLIP_CONFIG,
        out,
        {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    )
