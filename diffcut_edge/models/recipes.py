"""Model recipes as data: which hub model, which family, where DiffCut hooks it.

A recipe is everything the reference and the export stage need to know about a model
besides its weights. Family-level facts (where the hook sits, which pipeline class
loads it, how many text encoders it has) live in :data:`FAMILIES`; the recipes only
name their family. No torch import here: this module is pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError

SDXL, SD1 = defaults.FAMILIES


@dataclass(frozen=True)
class FamilySpec:
    """What every model of one UNet family shares.

    ``hook_block`` indexes ``unet.down_blocks``: the hooked self-attention sits in the
    last transformer block of the last attention module of that down block, which is
    at 1/32 of the input resolution in both families.
    """

    family: str
    hook_block: int
    pipeline_class: str  # diffusers class that loads a folder of this family
    text_encoders: int  # 2 for SDXL (CLIP-L + OpenCLIP-bigG), 1 for SD1.x
    vae_scaling_factor: float  # informative; the loaded VAE config is what is used
    tiny_vae: str = ""  # default `export --vae tiny` weights: madebyollin's TAESD for this family

    @property
    def hook_path(self) -> str:
        return f"down_blocks[{self.hook_block}].attentions[-1].transformer_blocks[-1].attn1"


FAMILIES: Mapping[str, FamilySpec] = {
    SDXL: FamilySpec(
        SDXL,
        hook_block=-1,
        pipeline_class="StableDiffusionXLPipeline",
        text_encoders=2,
        vae_scaling_factor=0.13025,
        tiny_vae="madebyollin/taesdxl",
    ),
    SD1: FamilySpec(
        SD1,
        hook_block=-2,
        pipeline_class="StableDiffusionPipeline",
        text_encoders=1,
        vae_scaling_factor=0.18215,
        tiny_vae="madebyollin/taesd",
    ),
}


@dataclass(frozen=True)
class ModelRecipe:
    """One known model: its short name, hub id, family and the paper's settings."""

    name: str
    hub_id: str
    family: str
    resolution: int = defaults.RESOLUTION
    timestep: int = defaults.TIMESTEP
    noise_seed: int = defaults.NOISE_SEED

    @property
    def spec(self) -> FamilySpec:
        return FAMILIES[self.family]

    @property
    def hook_block(self) -> int:
        return self.spec.hook_block

    @property
    def hook_path(self) -> str:
        return self.spec.hook_path


RECIPES: tuple[ModelRecipe, ...] = (
    ModelRecipe("ssd-1b", "segmind/SSD-1B", SDXL),
    ModelRecipe("vega", "segmind/Segmind-Vega", SDXL),
    ModelRecipe("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", SDXL),
    # SD1.4 is native at 512 px, but DiffCut runs every model at 1024 (grid 32x32).
    ModelRecipe("sd1.4", "CompVis/stable-diffusion-v1-4", SD1),
)

DEFAULT_MODEL = "segmind/SSD-1B"


def list_recipes() -> tuple[ModelRecipe, ...]:
    """All known recipes, default first."""
    return RECIPES


def get_recipe(name_or_hub_id: str, *, required: bool = False) -> ModelRecipe | None:
    """The recipe named ``name_or_hub_id`` (short name or hub id, case-insensitive).

    Returns None for an unknown model (a local folder or another hub id), or raises a
    :class:`DiffCutError` listing the choices when ``required``.
    """
    key = str(name_or_hub_id).strip().lower()
    for recipe in RECIPES:
        if key in (recipe.name, recipe.hub_id.lower()):
            return recipe
    if required:
        choices = ", ".join(f"{r.name} ({r.hub_id})" for r in RECIPES)
        raise DiffCutError(f"unknown model {name_or_hub_id!r}; known recipes: {choices}")
    return None


def family_spec(family: str) -> FamilySpec:
    """The :class:`FamilySpec` of ``family`` ("sdxl" or "sd1")."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise DiffCutError(f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}") from None


def recipe_for_family(family: str) -> ModelRecipe:
    """The first (preferred) recipe of ``family``: SSD-1B for SDXL, SD1.4 for SD1."""
    family_spec(family)  # validates the name
    return next(r for r in RECIPES if r.family == family)


def family_of_unet(unet_config: Mapping[str, Any] | Any) -> str:
    """Family of a UNet from its config: a dict, diffusers' FrozenDict, or the UNet itself.

    The SDXL family conditions on pooled text embeddings and size/crop ids through the
    "text_time" addition embedding; SD1.x has four down blocks and no added conditioning.
    """
    config = unet_config if isinstance(unet_config, Mapping) else getattr(unet_config, "config", None)
    if not isinstance(config, Mapping):
        raise DiffCutError(f"expected a UNet config (a mapping) or a UNet, got {type(unet_config).__name__}")
    addition = config.get("addition_embed_type")
    n_down = len(config.get("down_block_types") or ())
    if addition == "text_time":
        return SDXL
    if addition is None and n_down == 4:
        return SD1
    raise DiffCutError(
        f"cannot tell the model family from this UNet config (addition_embed_type={addition!r}, "
        f"{n_down} down blocks); supported: SDXL-family (text_time conditioning, e.g. {DEFAULT_MODEL}) "
        f"and SD1.x (4 down blocks, e.g. CompVis/stable-diffusion-v1-4)"
    )
