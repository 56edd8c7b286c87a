"""Reference feature extraction: shapes, determinism, batching, parity with the official flow."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffcut_edge.diffcut_ref import extract_features  # noqa: E402
from diffcut_edge.errors import DiffCutError  # noqa: E402
from diffcut_edge.models import TINY_CHANNELS, load_pipeline  # noqa: E402

FAMILIES = ("sdxl", "sd1")
HOOK = {"sdxl": -1, "sd1": -2}


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline_dir):
    return {family: load_pipeline(tiny_pipeline_dir(family)) for family in FAMILIES}


@pytest.fixture(scope="module")
def images():
    from helpers.data import sample_photos

    return np.stack(sample_photos(96)[:3])  # (3, 96, 96, 3) real photos


def official_features(pipe, images_bchw, img_size, step=50):
    """The official tools/ldm.py LdmExtractor.forward, followed step by step (CPU, fp32).

    Written from the official code independently of diffcut_ref: [""] * B prompts,
    the device generator, DDIM trailing, scale_model_input, a hook on the full UNet.
    """
    from diffusers import DDIMScheduler

    device = pipe.device
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(50)
    b = images_bchw.shape[0]
    x = torch.nn.functional.interpolate(images_bchw, size=(img_size, img_size), mode="bilinear")
    rng = torch.Generator(device=device).manual_seed(42)
    with torch.no_grad():
        out = pipe.encode_prompt([""] * b, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        added = None
        if len(out) == 4:
            added = {
                "text_embeds": out[2],
                "time_ids": pipe._get_add_time_ids(
                    (img_size, img_size),
                    (0, 0),
                    (img_size, img_size),
                    dtype=out[0].dtype,
                    text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
                ).repeat(b, 1),
            }
        latent = pipe.vae.encode(2 * x - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(1, 4, img_size // 8, img_size // 8, generator=rng, device=device).expand_as(latent)
        t = torch.tensor([step]).expand(b)
        noisy = scheduler.scale_model_input(scheduler.add_noise(latent, noise, t), t)
        attn = (
            pipe.unet.down_blocks[HOOK["sd1" if added is None else "sdxl"]].attentions[-1].transformer_blocks[-1].attn1
        )
        kept = []
        handle = attn.register_forward_hook(lambda m, i, o: kept.append(o.detach()))
        try:
            pipe.unet(noisy, t, encoder_hidden_states=out[0], added_cond_kwargs=added)
        finally:
            handle.remove()
    return kept[0].numpy()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("resolution", [128, 256])
def test_feature_shape(pipelines, images, family, resolution):
    features = extract_features(pipelines[family], images[:2], resolution=resolution)
    grid = resolution // 32
    assert features.shape == (2, grid * grid, TINY_CHANNELS)
    assert features.dtype == np.float32 and np.isfinite(features).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_the_official_flow(pipelines, images, family):
    pipe = pipelines[family]
    ours = extract_features(pipe, images, resolution=128)
    theirs = official_features(pipe, torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), 128)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_bit_for_bit(pipelines, images, family):
    a = extract_features(pipelines[family], images, resolution=128)
    b = extract_features(pipelines[family], images, resolution=128)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_consistency(pipelines, images, family):
    batch = extract_features(pipelines[family], images, resolution=128)
    for i in range(len(images)):
        alone = extract_features(pipelines[family], images[i : i + 1], resolution=128)
        np.testing.assert_allclose(batch[i], alone[0], rtol=0, atol=1e-5)


def test_features_depend_on_the_image_and_the_settings(pipelines, images):
    pipe = pipelines["sdxl"]
    base = extract_features(pipe, images[:2], resolution=128)
    assert np.abs(base[0] - base[1]).max() > 1e-3  # different photos, different features
    for kwargs in ({"timestep": 500}, {"noise_seed": 7}):
        other = extract_features(pipe, images[:2], resolution=128, **kwargs)
        assert np.abs(other - base).max() > 1e-3


def test_torch_and_numpy_inputs_agree(pipelines, images):
    pipe = pipelines["sd1"]
    from_numpy = extract_features(pipe, images[:1], resolution=128)
    from_torch = extract_features(pipe, torch.from_numpy(images[:1].transpose(0, 3, 1, 2).copy()), resolution=128)
    assert np.array_equal(from_numpy, from_torch)


def test_resolution_multiple_of_32_is_accepted(pipelines, images):
    features = extract_features(pipelines["sd1"], images[:1], resolution=96)  # grid 3x3
    assert features.shape == (1, 9, TINY_CHANNELS)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((64, 64, 3), np.float32), r"\(B, H, W, 3\).*images\[None\]"),
        (np.zeros((1, 64, 64, 4), np.float32), r"\(B, H, W, 3\)"),
        (np.zeros((1, 64, 64, 3), np.uint8), "divide uint8 by 255"),
        (np.full((1, 64, 64, 3), 255.0, np.float32), r"\[0, 1\].*divide 0-255"),
        (np.full((1, 64, 64, 3), -0.5, np.float32), r"\[0, 1\]"),
        (np.full((1, 64, 64, 3), np.nan, np.float32), "NaN"),
        (np.zeros((0, 64, 64, 3), np.float32), "empty"),
        (torch.zeros(1, 64, 64, 3), r"\(B, 3, H, W\)"),
    ],
)
def test_bad_images_are_rejected(pipelines, bad, match):
    with pytest.raises(DiffCutError, match=match):
        extract_features(pipelines["sd1"], bad, resolution=128)


@pytest.mark.parametrize("resolution", [100, 16, 0])
def test_bad_resolution_is_rejected(pipelines, images, resolution):
    with pytest.raises(DiffCutError, match="multiple of 32"):
        extract_features(pipelines["sd1"], images[:1], resolution=resolution)


def test_half_precision_pipeline_keeps_the_vae_in_fp32(tiny_pipeline_dir, images):
    pipe = load_pipeline(tiny_pipeline_dir("sd1"), torch_dtype=torch.bfloat16)
    full = extract_features(load_pipeline(tiny_pipeline_dir("sd1")), images[:1], resolution=128)
    half = extract_features(pipe, images[:1], resolution=128)
    assert pipe.vae.dtype == torch.bfloat16  # restored after the fp32 VAE pass
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.05 * np.abs(full).max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (features on the pipeline's device)")
def test_cuda_matches_cpu(tiny_pipeline_dir, images):
    cpu = extract_features(load_pipeline(tiny_pipeline_dir("sdxl")), images[:2], resolution=128)
    gpu = extract_features(load_pipeline(tiny_pipeline_dir("sdxl"), device="cuda"), images[:2], resolution=128)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-3)
