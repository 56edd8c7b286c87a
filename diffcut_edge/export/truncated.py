"""The truncated encoder: image -> VAE latent -> noised latent -> UNet up to the hooked ``attn1``.

DiffCut reads the output of ``attn1`` (self-attention, before its residual add) in the last
transformer block of the last attention module of ``down_blocks[-1]`` (SDXL family) or
``down_blocks[-2]`` (SD1.x). Nothing after that module influences it, so the forward below
runs the UNet by hand and stops there: no mid block, no up blocks, no downsampler of the
hooked block. Everything that does not depend on the image (empty-prompt conditioning, the
timestep embedding including SDXL's text-time embedding, the seeded noise and the scheduler
coefficients) is computed once and stored as buffers, so the graph takes only the image.

The module keeps references to the submodules it runs and nothing else: building it from a
pipeline and dropping the pipeline frees the text encoders, the VAE decoder, the mid and up
blocks and the unused parts of the last transformer block (export pitfall 7 of
``shared/notes/model-costs.md``).

torch and diffusers are imported lazily (inside :func:`build_truncated_encoder`); the class
itself is created on first use so ``import diffcut_edge.export`` stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffcut_edge import defaults
from diffcut_edge.defaults import FAMILIES, PRECISIONS
from diffcut_edge.errors import DiffCutError
from diffcut_edge.models.recipes import family_of_unet, family_spec


@dataclass(frozen=True)
class EncoderSpec:
    """What the truncated encoder computes, for the manifest and for checks."""

    family: str  # "sdxl" | "sd1"
    resolution: int  # R: input (B, 3, R, R)
    timestep: int
    noise_seed: int
    precision: str  # "fp32" | "fp16" (UNet part; the VAE encoder stays fp32)
    channels: int  # C of the features
    hook: str  # diffusers path of the hooked module

    @property
    def grid(self) -> tuple[int, int]:
        return (self.resolution // 32, self.resolution // 32)


def check_resolution(resolution: int) -> int:
    """The VAE divides by 8 and the UNet by 4 more before the hook; we ask for 64 (docs/design.md)."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0 or resolution % 64:
        raise DiffCutError(
            f"resolution must be a positive multiple of 64 (the feature grid is R/32 and the VAE and "
            f"UNet downsample by 8 and 4), got {resolution!r}; try 512, 768 or 1024"
        )
    return resolution


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise DiffCutError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def hook_path(unet: Any, family: str) -> str:
    """The diffusers name of the hooked ``attn1``, e.g. ``down_blocks.2.attentions.1.transformer_blocks.3.attn1``."""
    idx = family_spec(family).hook_block % len(unet.down_blocks)
    block = unet.down_blocks[idx]
    a = len(block.attentions) - 1
    t = len(block.attentions[a].transformer_blocks) - 1
    return f"down_blocks.{idx}.attentions.{a}.transformer_blocks.{t}.attn1"


_CLASS = None


def _truncated_encoder_class():
    """Define the nn.Module subclass on first use (torch imported lazily)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import torch
    from torch import nn

    class TruncatedEncoder(nn.Module):
        """image (B,3,R,R) RGB float32 in [0,1] -> features (B, (R/32)^2, C) float32.

        Build it with :func:`build_truncated_encoder` (or ``TruncatedEncoder.from_pipeline``).
        In fp16 mode the VAE encoder and the noising run in fp32 and the UNet part in fp16,
        with explicit casts between, so an exported graph carries its precision in its types
        (what strongly typed TensorRT needs); the output is cast back to float32.
        """

        def __init__(
            self,
            vae: Any,
            unet: Any,
            family: str,
            *,
            emb: torch.Tensor,
            encoder_hidden_states: torch.Tensor,
            noise: torch.Tensor,
            sqrt_alpha_bar: float,
            sqrt_one_minus_alpha_bar: float,
            spec: EncoderSpec,
        ):
            super().__init__()
            self.spec = spec
            # VAE encoder part (posterior mean only: the first latent_channels of the moments).
            self.vae_encoder = vae.encoder
            self.quant_conv = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else None
            self.latent_channels = int(vae.config.latent_channels)
            self.scaling_factor = float(vae.config.scaling_factor)
            self.sqrt_alpha_bar = float(sqrt_alpha_bar)
            self.sqrt_one_minus_alpha_bar = float(sqrt_one_minus_alpha_bar)
            # UNet part: conv_in, the earlier down blocks, and the hooked block cut at attn1.
            idx = family_spec(family).hook_block % len(unet.down_blocks)
            self.conv_in = unet.conv_in
            self.early_blocks = nn.ModuleList(unet.down_blocks[:idx])
            hooked = unet.down_blocks[idx]
            self.hooked_resnets = nn.ModuleList(hooked.resnets)
            self.full_attentions = nn.ModuleList(hooked.attentions[:-1])
            last = hooked.attentions[-1]
            self.last_norm = last.norm
            self.last_proj_in = last.proj_in
            self.last_linear_projection = bool(last.use_linear_projection)
            self.last_full_blocks = nn.ModuleList(last.transformer_blocks[:-1])
            self.hook_norm1 = last.transformer_blocks[-1].norm1
            self.hook_attn1 = last.transformer_blocks[-1].attn1
            unet_dtype = torch.float16 if spec.precision == "fp16" else torch.float32
            self.unet_dtype = unet_dtype
            # Constants: (1, ...) tensors broadcast or expanded over the batch.
            self.register_buffer("noise", noise.detach().to(torch.float32).clone())
            self.register_buffer("emb", emb.detach().to(unet_dtype).clone())
            self.register_buffer("encoder_hidden_states", encoder_hidden_states.detach().to(unet_dtype).clone())
            for part in (
                self.conv_in,
                self.early_blocks,
                self.hooked_resnets,
                self.full_attentions,
                self.last_norm,
                self.last_proj_in,
                self.last_full_blocks,
                self.hook_norm1,
                self.hook_attn1,
            ):
                part.to(unet_dtype)
            self.vae_encoder.to(torch.float32)
            if self.quant_conv is not None:
                self.quant_conv.to(torch.float32)

        # -- stages, one per idea
        def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
            """Posterior mean x scaling factor, fp32 (the SDXL VAE overflows in fp16)."""
            moments = self.vae_encoder(image.to(torch.float32) * 2.0 - 1.0)
            if self.quant_conv is not None:
                moments = self.quant_conv(moments)
            return moments[:, : self.latent_channels] * self.scaling_factor

        def add_noise(self, latent: torch.Tensor) -> torch.Tensor:
            """DDIM add_noise at t with the seeded noise shared by the whole batch."""
            return self.sqrt_alpha_bar * latent + self.sqrt_one_minus_alpha_bar * self.noise

        def unet_to_hook(self, sample: torch.Tensor) -> torch.Tensor:
            batch = sample.shape[0]
            emb = self.emb
            # Cross-attention reads the batch size from its context: give it one row per image.
            ehs = self.encoder_hidden_states.expand(batch, -1, -1)
            h = self.conv_in(sample)
            for block in self.early_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, _ = block(h, emb, encoder_hidden_states=ehs)
                else:
                    h, _ = block(h, emb)
            n_full = len(self.full_attentions)
            for i, resnet in enumerate(self.hooked_resnets):
                h = resnet(h, emb)
                if i < n_full:
                    h = self.full_attentions[i](h, encoder_hidden_states=ehs, return_dict=False)[0]
            b, _, height, width = h.shape
            h = self.last_norm(h)
            if not self.last_linear_projection:
                h = self.last_proj_in(h)
            h = h.permute(0, 2, 3, 1).reshape(b, height * width, h.shape[1])
            if self.last_linear_projection:
                h = self.last_proj_in(h)
            for tb in self.last_full_blocks:
                h = tb(h, encoder_hidden_states=ehs)
            return self.hook_attn1(self.hook_norm1(h), encoder_hidden_states=None)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            noisy = self.add_noise(self.encode_latent(image))
            return self.unet_to_hook(noisy.to(self.unet_dtype)).to(torch.float32)

        @classmethod
        def from_pipeline(cls, pipeline: Any, **kwargs: Any) -> TruncatedEncoder:
            return build_truncated_encoder(pipeline, **kwargs)

    _CLASS = TruncatedEncoder
    return _CLASS


def __getattr__(name: str):
    if name == "TruncatedEncoder":
        return _truncated_encoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def constant_embedding(unet: Any, timestep: int, conditioning: Any, dtype: Any) -> Any:
    """The UNet's ``emb`` for (t, conditioning), computed once with the UNet's own methods.

    Equal to what ``UNet2DConditionModel.forward`` computes for each image of a batch:
    time projection + time embedding, plus SDXL's text-time added embedding, then the
    optional activation.
    """
    import torch

    sample = torch.zeros(1, 1, 1, 1, dtype=dtype)  # only dtype/device/batch are read
    t = torch.tensor([timestep], dtype=torch.int64)
    with torch.no_grad():
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t), None)
        added = None
        if family_of_unet(unet) == "sdxl":
            added = {"text_embeds": conditioning.pooled_embeds.to(dtype), "time_ids": conditioning.time_ids.to(dtype)}
        aug = unet.get_aug_embed(
            emb=emb, encoder_hidden_states=conditioning.prompt_embeds.to(dtype), added_cond_kwargs=added
        )
        if aug is not None:
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
    return emb


def build_truncated_encoder(
    pipeline: Any,
    *,
    resolution: int = defaults.RESOLUTION,
    timestep: int = defaults.TIMESTEP,
    noise_seed: int = defaults.NOISE_SEED,
    precision: str = "fp32",
    family: str | None = None,
):
    """A :class:`TruncatedEncoder` from a loaded diffusers pipeline (fp32 weights on the CPU).

    Constants come from ``diffcut_edge.models`` (the same helpers the reference uses), so the
    encoder reproduces ``diffcut_ref.extract_features`` exactly in fp32. The returned module is
    in eval mode with ``requires_grad`` off. It shares the pipeline's submodules (no copy of
    the weights): with ``precision="fp16"`` the UNet parts it keeps are converted in place, so
    do not run the pipeline afterwards; the export stage discards it.
    """
    import torch

    from diffcut_edge import models

    check_resolution(resolution)
    check_precision(precision)
    unet, vae = pipeline.unet, pipeline.vae
    family = family or family_of_unet(unet)
    if family not in FAMILIES:
        raise DiffCutError(f"family must be one of {FAMILIES}, got {family!r}")
    path = hook_path(unet, family)
    # The reference hooks models.hooked_module: make sure we cut at the very same module.
    ours = unet.get_submodule(path)
    if models.hooked_module(unet, family) is not ours:
        raise DiffCutError(
            f"internal mismatch: the truncated encoder stops at {path}, which is not "
            f"the module the reference hooks for family {family!r}"
        )
    with torch.no_grad():
        cond = models.empty_prompt_conditioning(pipeline, resolution, device="cpu")
        cond_f32 = cond.to(device="cpu", dtype=torch.float32)
        if unet.dtype != torch.float32:  # constants are computed in fp32 whatever the load dtype
            unet.to(torch.float32)
        emb = constant_embedding(unet, timestep, cond_f32, torch.float32)
        noise = models.fixed_noise(resolution, seed=noise_seed, device="cpu")
        sqrt_ab, sqrt_1mab = models.noise_coefficients(pipeline, timestep=timestep)
    hidden = int(ours.to_out[0].out_features)
    spec = EncoderSpec(
        family=family,
        resolution=resolution,
        timestep=timestep,
        noise_seed=noise_seed,
        precision=precision,
        channels=hidden,
        hook=path,
    )
    cls = _truncated_encoder_class()
    encoder = cls(
        vae,
        unet,
        family,
        emb=emb,
        encoder_hidden_states=cond_f32.prompt_embeds,
        noise=noise,
        sqrt_alpha_bar=sqrt_ab,
        sqrt_one_minus_alpha_bar=sqrt_1mab,
        spec=spec,
    )
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder
