"""Model recipes, pipeline loading, tiny random-weight models and the UNet pass's constants.

Importing this package imports no torch/diffusers: the recipes are plain data and
every function that needs torch imports it when called.

Public API::

    ModelRecipe, get_recipe(name_or_hub_id), list_recipes(), recipe_for_family(family),
    family_of_unet(unet_config), DEFAULT_MODEL
    load_pipeline(model_id_or_folder, *, torch_dtype=None, device=None)
    make_tiny_pipeline(family, out_dir, seed=0) -> Path
    hooked_module(unet, family) -> nn.Module
    empty_prompt_conditioning(pipeline, resolution, device=None) -> Conditioning
    fixed_noise(resolution, seed=42, device=None) -> (1, 4, R/8, R/8) tensor
    noise_coefficients(pipeline, timestep=50) -> (sqrt_alpha_bar, sqrt_one_minus_alpha_bar)
"""

from __future__ import annotations

from diffcut_edge.models.conditioning import (
    Conditioning,
    ddim_scheduler,
    empty_prompt_conditioning,
    fixed_noise,
    hooked_module,
    noise_coefficients,
    pipeline_family,
    resolve_module_path,
)
from diffcut_edge.models.loading import check_pipeline_folder, load_pipeline, load_tiny_vae
from diffcut_edge.models.recipes import (
    DEFAULT_MODEL,
    FAMILIES,
    SD1,
    SDXL,
    FamilySpec,
    ModelRecipe,
    family_of_unet,
    family_spec,
    get_recipe,
    list_recipes,
    recipe_for_family,
)
from diffcut_edge.models.tiny import TINY_CHANNELS, build_tiny_pipeline, make_tiny_pipeline, make_tiny_vae

__all__ = [
    "DEFAULT_MODEL",
    "FAMILIES",
    "SD1",
    "SDXL",
    "TINY_CHANNELS",
    "Conditioning",
    "FamilySpec",
    "ModelRecipe",
    "build_tiny_pipeline",
    "check_pipeline_folder",
    "ddim_scheduler",
    "empty_prompt_conditioning",
    "family_of_unet",
    "family_spec",
    "fixed_noise",
    "get_recipe",
    "hooked_module",
    "list_recipes",
    "load_pipeline",
    "load_tiny_vae",
    "make_tiny_pipeline",
    "make_tiny_vae",
    "noise_coefficients",
    "pipeline_family",
    "recipe_for_family",
    "resolve_module_path",
]
