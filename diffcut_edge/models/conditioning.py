"""The constant inputs of DiffCut's UNet pass: hook location, empty prompt, noise, scheduler.

The reference computes them per call; the export stage computes them once and bakes
them into the graph, so both use exactly these functions. torch is imported lazily.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError
from diffcut_edge.models.recipes import SDXL, family_of_unet, family_spec

if TYPE_CHECKING:  # pragma: no cover
    import torch

_STEP = re.compile(r"^(?P<attr>[A-Za-z_]\w*)(?P<index>(\[-?\d+\])*)$")


def resolve_module_path(root: Any, path: str) -> Any:
    """Follow a dotted path with list indices, e.g. ``down_blocks[-1].attentions[-1].attn1``.

    Raises :class:`DiffCutError` naming the step that does not exist.
    """
    node = root
    walked = type(root).__name__
    for step in path.split("."):
        match = _STEP.match(step)
        if match is None:
            raise DiffCutError(f"malformed module path {path!r} at {step!r}")
        attr = match["attr"]
        if not hasattr(node, attr):
            raise DiffCutError(f"{walked} has no attribute {attr!r} (resolving {path!r})")
        node = getattr(node, attr)
        walked = f"{walked}.{attr}"
        for index in re.findall(r"-?\d+", match["index"]):
            try:
                node = node[int(index)]
            except (IndexError, TypeError):
                raise DiffCutError(f"{walked} has no item [{index}] (resolving {path!r})") from None
            walked = f"{walked}[{index}]"
    return node


def hooked_module(unet: Any, family: str | None = None) -> Any:
    """The self-attention module (``attn1``) whose output DiffCut uses as features.

    ``family`` defaults to the one detected from ``unet.config``.
    """
    family = family or family_of_unet(unet.config)
    return resolve_module_path(unet, family_spec(family).hook_path)


def pipeline_family(pipeline: Any) -> str:
    """Family of a loaded diffusers pipeline, from its UNet config."""
    unet = getattr(pipeline, "unet", None)
    if unet is None:
        raise DiffCutError(f"{type(pipeline).__name__} has no 'unet'; pass a Stable Diffusion (XL) pipeline")
    return family_of_unet(unet.config)


@dataclass
class Conditioning:
    """The text conditioning of the empty prompt, batch 1.

    ``prompt_embeds`` (1, 77, D); SDXL family only: ``pooled_embeds`` (1, P) and
    ``time_ids`` (1, 6) = (R, R, 0, 0, R, R).
    """

    prompt_embeds: torch.Tensor
    pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def added_cond_kwargs(self, batch: int) -> dict | None:
        """``added_cond_kwargs`` for a UNet call on ``batch`` images (None for SD1)."""
        if self.pooled_embeds is None:
            return None
        return {"text_embeds": self.pooled_embeds.expand(batch, -1), "time_ids": self.time_ids.expand(batch, -1)}

    def to(self, device=None, dtype=None) -> Conditioning:
        """A copy on ``device`` / in ``dtype`` (absent SD1 fields stay None)."""

        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return Conditioning(move(self.prompt_embeds), move(self.pooled_embeds), move(self.time_ids))


def empty_prompt_conditioning(pipeline: Any, resolution: int, device=None) -> Conditioning:
    """Encode "" with the pipeline's own ``encode_prompt``, no classifier-free guidance.

    As the official code does, the SDXL size/crop ids come from the pipeline's own
    ``_get_add_time_ids`` with original = target = (R, R) and crop (0, 0).
    """
    import torch

    family = pipeline_family(pipeline)
    with torch.no_grad():  # encode where the text encoders live, then move the result
        encoded = pipeline.encode_prompt(
            "", device=pipeline.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    if family != SDXL:
        cond = Conditioning(prompt_embeds=encoded[0])
    else:
        prompt_embeds, _, pooled, _ = encoded
        time_ids = pipeline._get_add_time_ids(
            (resolution, resolution),
            (0, 0),
            (resolution, resolution),
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=pipeline.text_encoder_2.config.projection_dim,
        )
        cond = Conditioning(prompt_embeds=prompt_embeds, pooled_embeds=pooled, time_ids=time_ids)
    return cond.to(device if device is not None else pipeline.device)


def fixed_noise(resolution: int, seed: int = defaults.NOISE_SEED, device=None) -> torch.Tensor:
    """The noise shared by every image: randn (1, 4, R/8, R/8) from a CPU generator seeded ``seed``.

    The official code draws it from a generator on the run's device (CUDA in the paper),
    whose stream differs from the CPU one; drawing on the CPU makes the features the
    same on every device, and lets the export bake the very same tensor.
    """
    import torch

    if resolution % 8:
        raise DiffCutError(f"resolution must be a multiple of 8 for the latent noise, got {resolution}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((1, 4, resolution // 8, resolution // 8), generator=generator, dtype=torch.float32)
    return noise if device is None else noise.to(device)


def ddim_scheduler(pipeline: Any):
    """DDIM from the pipeline's scheduler config with trailing spacing, as DiffCut uses."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipeline.scheduler.config, timestep_spacing="trailing")


def noise_coefficients(pipeline: Any, timestep: int = defaults.TIMESTEP) -> tuple[float, float]:
    """(sqrt(ᾱ_t), sqrt(1 − ᾱ_t)) of the DDIM forward process at ``timestep``.

    Computed in float32, as ``DDIMScheduler.add_noise`` does for float32 latents.
    """
    scheduler = ddim_scheduler(pipeline)
    n = len(scheduler.alphas_cumprod)
    if not 0 <= int(timestep) < n:
        raise DiffCutError(f"timestep must be in [0, {n - 1}], got {timestep}")
    alpha_bar = scheduler.alphas_cumprod[int(timestep)]
    return float(alpha_bar**0.5), float((1 - alpha_bar) ** 0.5)
