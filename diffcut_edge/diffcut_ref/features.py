"""DiffCut's features, as the official ``tools/ldm.py`` computes them: a hook on the full UNet.

For images x in [0, 1] (RGB), docs/design.md, "Features", steps 1-5:

1. resize bilinearly (align_corners=False, no antialias) to R x R;
2. z = VAE.encode(2x - 1).latent_dist.mean * scaling_factor, VAE in float32;
3. the pipeline's own encoding of the empty prompt "" (no CFG), repeated for the batch;
   SDXL family: pooled embeddings and add_time_ids (R, R, 0, 0, R, R);
4. one noise tensor (1, 4, R/8, R/8) seeded ``noise_seed`` shared by the batch;
   z_t = DDIMScheduler(trailing).add_noise(z, noise, t);
5. the full UNet at t, with a forward hook on the hooked ``attn1`` keeping its output.

Departures from the official code, all deliberate:
- the noise is drawn from a CPU generator (the official draws on the run's device, and
  CUDA's stream differs), so features do not depend on the device;
- "" is encoded once and expanded to the batch (the official encodes [""] * B, the same
  values), so image i of a batch sees exactly the conditioning it sees alone;
- the UNet runs in the pipeline's dtype (the paper autocasts it to fp16 on CUDA): load
  the pipeline with ``torch_dtype=torch.float16`` to reproduce that.

Resolution: any multiple of 32 works here, as in the official code (the hook grid is
R/32 x R/32); the export stage asks for a multiple of 64.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from diffcut_edge import defaults
from diffcut_edge.errors import DiffCutError

RANGE_TOLERANCE = 1e-4  # images may overshoot [0, 1] by rounding (e.g. after a resize)
HOOK_STRIDE = 32  # VAE /8 x two UNet downsamples /4


def _check_resolution(resolution: int) -> int:
    if int(resolution) != resolution or resolution < HOOK_STRIDE or resolution % HOOK_STRIDE:
        raise DiffCutError(
            f"resolution must be a positive multiple of {HOOK_STRIDE} (the hook grid is "
            f"R/{HOOK_STRIDE}), got {resolution}; DiffCut uses 1024"
        )
    return int(resolution)


def _as_image_batch(images: Any):
    """Images as a float32 torch tensor (B, 3, H, W) in [0, 1], on the CPU; validated."""
    import torch

    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise DiffCutError(f"torch images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise DiffCutError(f"images must be float in [0, 1], got {images.dtype}; divide uint8 by 255")
        batch = images.detach().to("cpu", torch.float32)
    else:
        array = np.asarray(images)
        if array.ndim != 4 or array.shape[-1] != 3:
            hint = " (add a batch axis: images[None])" if array.ndim == 3 and array.shape[-1] == 3 else ""
            raise DiffCutError(f"numpy images must be (B, H, W, 3) RGB, got shape {array.shape}{hint}")
        if not np.issubdtype(array.dtype, np.floating):
            raise DiffCutError(f"images must be float in [0, 1], got {array.dtype}; divide uint8 by 255")
        batch = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2), dtype=np.float32))
    if batch.shape[0] == 0 or batch.shape[2] == 0 or batch.shape[3] == 0:
        raise DiffCutError(f"images must not be empty, got shape {tuple(batch.shape)}")
    if not bool(torch.isfinite(batch).all()):
        raise DiffCutError("images contain NaN or infinite values")
    lo, hi = float(batch.min()), float(batch.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise DiffCutError(
            f"images must be RGB in [0, 1], got values in [{lo:.3g}, {hi:.3g}]"
            + ("; divide 0-255 images by 255" if hi > 1.5 else "")
        )
    return batch


@contextlib.contextmanager
def _float32_module(module):
    """Run ``module`` in float32 and put its dtype back afterwards (DiffCut's VAE is fp32)."""
    import torch

    original = next(module.parameters()).dtype
    if original != torch.float32:
        module.to(torch.float32)
    try:
        yield module
    finally:
        if original != torch.float32:
            module.to(original)


def encode_latents(pipeline: Any, images, resolution: int):
    """Steps 1-2: resize and encode with the VAE posterior mean, float32 (B, 4, R/8, R/8)."""
    import torch.nn.functional as F

    device = pipeline.device
    x = F.interpolate(
        images.to(device), size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False
    )
    with _float32_module(pipeline.vae) as vae:
        posterior = vae.encode(2.0 * x - 1.0).latent_dist
        return posterior.mean.float() * vae.config.scaling_factor


@contextlib.contextmanager
def _capture_output(module):
    """Record the output of ``module``'s forward in ``captured[0]`` while the block runs."""
    captured: list = []
    handle = module.register_forward_hook(lambda mod, args, output: captured.append(output.detach()))
    try:
        yield captured
    finally:
        handle.remove()


def extract_features(
    pipeline: Any,
    images,
    resolution: int = defaults.RESOLUTION,
    timestep: int = defaults.TIMESTEP,
    noise_seed: int = defaults.NOISE_SEED,
) -> np.ndarray:
    """DiffCut features of ``images`` from a loaded diffusers pipeline.

    Parameters
    ----------
    pipeline : StableDiffusionXLPipeline or StableDiffusionPipeline (any device, any dtype)
    images : float numpy (B, H, W, 3) RGB in [0, 1], or torch (B, 3, H, W)
    resolution : side R the images are resized to (multiple of 32)
    timestep : diffusion step t of the noised latent (50 in the paper)
    noise_seed : seed of the one noise tensor shared by the batch

    Returns
    -------
    float32 numpy (B, (R/32)^2, C): the output of the hooked ``attn1``, tokens row-major.
    """
    import torch

    from diffcut_edge.models import (
        ddim_scheduler,
        empty_prompt_conditioning,
        fixed_noise,
        hooked_module,
        pipeline_family,
    )

    resolution = _check_resolution(resolution)
    batch = _as_image_batch(images)
    b = batch.shape[0]
    device, unet = pipeline.device, pipeline.unet
    family = pipeline_family(pipeline)
    with torch.no_grad():
        latents = encode_latents(pipeline, batch, resolution)
        cond = empty_prompt_conditioning(pipeline, resolution, device=device).to(device, unet.dtype)
        noise = fixed_noise(resolution, seed=noise_seed, device=device).expand_as(latents)
        t = torch.full((b,), int(timestep), device=device, dtype=torch.long)
        scheduler = ddim_scheduler(pipeline)
        noisy = scheduler.scale_model_input(scheduler.add_noise(latents, noise, t), t)  # identity for DDIM
        with _capture_output(hooked_module(unet, family)) as captured:
            unet(
                noisy.to(unet.dtype),
                t,
                encoder_hidden_states=cond.prompt_embeds.expand(b, -1, -1),
                added_cond_kwargs=cond.added_cond_kwargs(b),
            )
    if len(captured) != 1:
        raise DiffCutError(
            f"the hooked module ran {len(captured)} times in one UNet pass (expected once); "
            f"is this a standard diffusers UNet2DConditionModel?"
        )
    features = captured[0].float().cpu().numpy()
    grid = resolution // HOOK_STRIDE
    if features.shape[:2] != (b, grid * grid):
        raise DiffCutError(f"hooked features have shape {features.shape}, expected ({b}, {grid * grid}, C)")
    return np.ascontiguousarray(features, dtype=np.float32)
