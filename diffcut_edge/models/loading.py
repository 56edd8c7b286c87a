"""Load a diffusers pipeline from a hub id or a local folder, with errors a user can act on.

A local folder must be a saved diffusers pipeline (``model_index.json`` plus ``unet``,
``vae``, ``text_encoder`` sub-folders). A hub id is first looked up in the local
Hugging Face cache without any network access; only if it is not cached and the hub is
not switched off (``HF_HUB_OFFLINE``) is it downloaded. Every failure becomes a
:class:`DiffCutError` instead of a network traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from diffcut_edge.errors import DiffCutError, missing_extra
from diffcut_edge.models.conditioning import pipeline_family
from diffcut_edge.models.recipes import SD1, family_of_unet, family_spec, get_recipe

# Sub-folders without which DiffCut cannot run (text_encoder_2 is checked for SDXL).
REQUIRED_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_TRUTHY = {"1", "true", "yes", "on"}


def _dtype_kwarg() -> str:
    """Newer diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype`` (the old name warns)."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE read at call time (huggingface_hub reads it only once, at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _offline_error(hub_id: str, cause: str = "") -> DiffCutError:
    detail = f" ({cause})" if cause else ""
    return DiffCutError(
        f"weights for {hub_id} are not available offline{detail}; download them on a machine with "
        f"network (`hf download {hub_id}`, from huggingface_hub) or pass a local folder"
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DiffCutError(f"cannot read {path}: {e}; the pipeline folder looks damaged, save it again") from e


def check_pipeline_folder(folder: str | Path) -> str:
    """Validate a saved diffusers pipeline folder and return its family ("sdxl" or "sd1")."""
    folder = Path(folder)
    if not folder.exists():
        raise DiffCutError(
            f"model folder {folder} does not exist; pass a hub id (e.g. segmind/SSD-1B) "
            f"or a folder written by save_pretrained / 'diffcut-edge models make-tiny'"
        )
    if not folder.is_dir():
        raise DiffCutError(f"{folder} is a file, not a diffusers pipeline folder")
    if not (folder / "model_index.json").is_file():
        if (folder / "manifest.json").is_file():  # an exported model folder given where a pipeline goes
            raise DiffCutError(
                f"{folder} is an exported model folder, not a diffusers pipeline: pass it as --model-dir {folder}"
            )
        raise DiffCutError(
            f"{folder} is not a diffusers pipeline: it has no model_index.json "
            f"(save the pipeline with pipeline.save_pretrained(folder))"
        )
    index = _read_json(folder / "model_index.json")
    missing = [p for p in REQUIRED_PARTS if not (folder / p).is_dir() or p not in index]
    if missing:
        raise DiffCutError(
            f"pipeline folder {folder} lacks {', '.join(missing)}; DiffCut needs the "
            f"unet, the vae, the text encoder(s), tokenizer(s) and the scheduler"
        )
    family = family_of_unet(_read_json(folder / "unet" / "config.json"))
    if family_spec(family).text_encoders == 2:
        missing = [p for p in ("text_encoder_2", "tokenizer_2") if not (folder / p).is_dir()]
        if missing:
            raise DiffCutError(f"SDXL-family pipeline folder {folder} lacks {', '.join(missing)}")
    return family


def _pipeline_class(family: str):
    try:
        import diffusers
    except ImportError as e:
        raise missing_extra("diffusers", "export", "loading a diffusion pipeline") from e
    return getattr(diffusers, family_spec(family).pipeline_class)


def _from_pretrained(source: str, family: str, torch_dtype, local_only: bool):
    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if torch_dtype is not None:
        kwargs[_dtype_kwarg()] = torch_dtype
    if family == SD1:  # DiffCut never decodes images: do not load the safety checker
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return _pipeline_class(family).from_pretrained(source, **kwargs)


def _cached_snapshot(hub_id: str) -> Path | None:
    """The local cache folder of ``hub_id``, or None when it is not cached. No network."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover
        raise missing_extra("huggingface_hub", "export", "loading a model from the hub") from e
    # HF_HUB_CACHE read at call time, like HF_HUB_OFFLINE (huggingface_hub reads it at import).
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(hub_id, local_files_only=True, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exception family a failed download raises (requests/httpx/huggingface_hub/OSError)."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub import errors as hf_errors

        errors += [
            getattr(hf_errors, n)
            for n in ("HfHubHTTPError", "OfflineModeIsEnabled", "LocalEntryNotFoundError")
            if hasattr(hf_errors, n)
        ]
    except ImportError:  # pragma: no cover
        pass
    for module, name in (("requests", "RequestException"), ("httpx", "HTTPError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _load_from_hub(hub_id: str, torch_dtype) -> Any:
    snapshot = _cached_snapshot(hub_id)
    if snapshot is not None and (snapshot / "model_index.json").is_file():
        return _from_pretrained(str(snapshot), check_pipeline_folder(snapshot), torch_dtype, local_only=True)
    if _hub_offline():
        raise _offline_error(hub_id, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    recipe = get_recipe(hub_id)
    try:
        if recipe is not None:
            return _from_pretrained(recipe.hub_id, recipe.family, torch_dtype, local_only=False)
        from diffusers import DiffusionPipeline

        kwargs = {} if torch_dtype is None else {_dtype_kwarg(): torch_dtype}
        return DiffusionPipeline.from_pretrained(hub_id, **kwargs)
    except _network_errors() as e:
        raise _offline_error(hub_id, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _is_local(model_id_or_folder: str | Path) -> bool:
    """A Path, an existing path, or anything that is neither a recipe name nor 'owner/name'."""
    text = str(model_id_or_folder)
    return (
        isinstance(model_id_or_folder, Path)
        or Path(text).expanduser().exists()
        or (get_recipe(text) is None and not _HUB_ID.match(text))
    )


def load_pipeline(model_id_or_folder: str | Path, *, torch_dtype=None, device=None) -> Any:
    """A diffusers pipeline (``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline``).

    ``model_id_or_folder``: a local folder saved with ``save_pretrained`` (an existing path
    always wins), a recipe name ("ssd-1b") or a hub id ("segmind/SSD-1B"). ``torch_dtype``
    (e.g. ``torch.float16``) is passed to ``from_pretrained``; ``device`` moves the pipeline
    (default: it stays on the CPU).
    """
    if _is_local(model_id_or_folder):
        folder = Path(model_id_or_folder).expanduser()
        pipeline = _from_pretrained(str(folder), check_pipeline_folder(folder), torch_dtype, local_only=True)
    else:
        recipe = get_recipe(str(model_id_or_folder))
        pipeline = _load_from_hub(recipe.hub_id if recipe else str(model_id_or_folder), torch_dtype)
    pipeline_family(pipeline)  # a hub pipeline of another kind fails here, clearly
    if device is not None:
        pipeline = pipeline.to(device)
    return pipeline


def load_tiny_vae(id_or_folder: str | Path) -> Any:
    """diffusers' ``AutoencoderTiny`` (TAESD / TAESDXL) from a local folder or the hub cache (fp32, CPU).

    Like :func:`load_pipeline`: an existing path always wins; a hub id is read from the local
    Hugging Face cache first and downloaded only when the hub is reachable and not offline.
    """
    from diffusers import AutoencoderTiny

    text = str(id_or_folder)
    folder = Path(text).expanduser()
    if folder.exists() or not _HUB_ID.match(text):
        if not (folder / "config.json").is_file():
            raise DiffCutError(
                f"{folder} is not an AutoencoderTiny folder (no config.json); pass a TAESD folder "
                f"saved with save_pretrained, or a hub id such as madebyollin/taesdxl"
            )
        return AutoencoderTiny.from_pretrained(str(folder), local_files_only=True)
    snapshot = _cached_snapshot(text)
    if snapshot is not None and (snapshot / "config.json").is_file():
        return AutoencoderTiny.from_pretrained(str(snapshot), local_files_only=True)
    if _hub_offline():
        raise _offline_error(text, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return AutoencoderTiny.from_pretrained(text)
    except _network_errors() as e:
        raise _offline_error(text, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def quiet_third_party_logs() -> None:
    """Silence diffusers/transformers info chatter and loading bars (the CLI shows its own progress).

    Library users keep the libraries' defaults; only the command line calls this.
    """
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:  # load_pipeline reports the missing extra itself
        return
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
