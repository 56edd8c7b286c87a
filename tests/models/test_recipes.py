"""Recipes are data: every recipe's family, hook and settings; family detection from configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.models import (
    DEFAULT_MODEL,
    FAMILIES,
    family_of_unet,
    get_recipe,
    hooked_module,
    list_recipes,
    recipe_for_family,
    resolve_module_path,
)

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "model_configs"
# Which family each full-size config folder belongs to (docs/design.md, model-costs.md).
CONFIG_FAMILY = {
    "SSD-1B": "sdxl",
    "Segmind-Vega": "sdxl",
    "stable-diffusion-xl-base-1.0": "sdxl",
    "stable-diffusion-v1-4": "sd1",
}


def test_recipes_are_unique_and_cover_the_paper_models():
    recipes = list_recipes()
    assert len({r.name for r in recipes}) == len(recipes)
    assert len({r.hub_id for r in recipes}) == len(recipes)
    by_hub = {r.hub_id: r for r in recipes}
    assert by_hub["segmind/SSD-1B"].family == "sdxl"
    assert by_hub["segmind/Segmind-Vega"].family == "sdxl"
    assert by_hub["stabilityai/stable-diffusion-xl-base-1.0"].family == "sdxl"
    assert by_hub["CompVis/stable-diffusion-v1-4"].family == "sd1"
    assert recipes[0].hub_id == DEFAULT_MODEL
    for r in recipes:  # the paper's settings
        assert (r.resolution, r.timestep, r.noise_seed) == (1024, 50, 42)


def test_hook_locations_follow_the_official_code():
    # tools/ldm.py: down_blocks[-2] for SD1.4, down_blocks[-1] otherwise.
    assert get_recipe("sd1.4").hook_block == -2
    assert get_recipe("ssd-1b").hook_block == -1
    assert get_recipe("vega").hook_path == "down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1"
    assert get_recipe("sd1.4").hook_path == "down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1"


def test_recipes_are_frozen():
    with pytest.raises(Exception):  # noqa: B017 - FrozenInstanceError, whatever the dataclass version raises
        get_recipe("ssd-1b").resolution = 512


@pytest.mark.parametrize("key", ["ssd-1b", "SSD-1B", "segmind/SSD-1B", "segmind/ssd-1b"])
def test_get_recipe_by_name_or_hub_id(key):
    assert get_recipe(key).name == "ssd-1b"


def test_unknown_recipe():
    assert get_recipe("someone/other-model") is None
    with pytest.raises(DiffCutError, match="known recipes: ssd-1b"):
        get_recipe("someone/other-model", required=True)


def test_recipe_for_family():
    assert recipe_for_family("sdxl").hub_id == DEFAULT_MODEL
    assert recipe_for_family("sd1").name == "sd1.4"
    with pytest.raises(DiffCutError, match="unknown model family"):
        recipe_for_family("flux")


@pytest.mark.parametrize("folder", sorted(CONFIG_FAMILY))
def test_family_of_full_size_configs(folder):
    config = json.loads((CONFIGS / folder / "unet.json").read_text())
    assert family_of_unet(config) == CONFIG_FAMILY[folder]


def test_family_of_an_unsupported_unet():
    with pytest.raises(DiffCutError, match="cannot tell the model family"):
        family_of_unet({"addition_embed_type": "image", "down_block_types": ["DownBlock2D"] * 3})


@pytest.mark.parametrize("folder", sorted(CONFIG_FAMILY))
def test_full_size_unet_builds_on_meta_and_hook_has_1280_channels(folder):
    torch = pytest.importorskip("torch")
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / folder / "unet.json").read_text())
    with torch.device("meta"):  # architecture only, no weights
        unet = UNet2DConditionModel.from_config(config)
    attn1 = hooked_module(unet, CONFIG_FAMILY[folder])
    assert type(attn1).__name__ == "Attention"
    assert attn1.is_cross_attention is False
    assert attn1.to_q.in_features == 1280 and attn1.to_out[0].out_features == 1280
    # The hook sits after two downsamples of the latent (R/8 -> R/32).
    downsamplers_before = sum(
        1 for block in unet.down_blocks[: FAMILIES[CONFIG_FAMILY[folder]].hook_block] if block.downsamplers is not None
    )
    assert downsamplers_before == 2


@pytest.mark.parametrize("recipe", list_recipes(), ids=lambda r: r.name)
def test_every_recipe_hook_resolves_on_a_tiny_model_of_its_family(recipe, tiny_pipeline_dir):
    from diffcut_edge.models import TINY_CHANNELS, load_pipeline

    pipeline = load_pipeline(tiny_pipeline_dir(recipe.family))
    attn1 = resolve_module_path(pipeline.unet, recipe.hook_path)
    assert attn1 is hooked_module(pipeline.unet, recipe.family)
    assert family_of_unet(pipeline.unet) == recipe.family  # detected from the loaded model too
    assert attn1.to_q.in_features == TINY_CHANNELS


def test_resolve_module_path_names_the_missing_step(tiny_pipeline_dir):
    from diffcut_edge.models import load_pipeline

    unet = load_pipeline(tiny_pipeline_dir("sdxl")).unet
    with pytest.raises(DiffCutError, match=r"down_blocks\[-1\] has no attribute 'nope'"):
        resolve_module_path(unet, "down_blocks[-1].nope")
    with pytest.raises(DiffCutError, match=r"has no item \[7\]"):
        resolve_module_path(unet, "down_blocks[7]")
