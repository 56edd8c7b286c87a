"""The UNet pass's constants: empty-prompt conditioning, fixed noise, DDIM coefficients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from diffcut_edge.errors import DiffCutError  # noqa: E402
from diffcut_edge.models import (  # noqa: E402
    ddim_scheduler,
    empty_prompt_conditioning,
    fixed_noise,
    load_pipeline,
    noise_coefficients,
)


@pytest.fixture(scope="module")
def pipelines(tiny_pipeline_dir):
    return {family: load_pipeline(tiny_pipeline_dir(family)) for family in ("sdxl", "sd1")}


def _tokens(tokenizer):
    return tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def test_sd1_conditioning_is_the_text_encoder_last_state(pipelines):
    pipe = pipelines["sd1"]
    cond = empty_prompt_conditioning(pipe, 256)
    with torch.no_grad():
        expected = pipe.text_encoder(_tokens(pipe.tokenizer)).last_hidden_state
    assert cond.prompt_embeds.shape == (1, 77, pipe.text_encoder.config.hidden_size)
    torch.testing.assert_close(cond.prompt_embeds, expected)
    assert cond.pooled_embeds is None and cond.time_ids is None
    assert cond.added_cond_kwargs(3) is None


@pytest.mark.parametrize("resolution", [256, 1024])
def test_sdxl_conditioning(pipelines, resolution):
    pipe = pipelines["sdxl"]
    cond = empty_prompt_conditioning(pipe, resolution)
    # SDXL: penultimate hidden states of both encoders, concatenated; pooled = projection of encoder 2.
    with torch.no_grad():
        h1 = pipe.text_encoder(_tokens(pipe.tokenizer), output_hidden_states=True).hidden_states[-2]
        out2 = pipe.text_encoder_2(_tokens(pipe.tokenizer_2), output_hidden_states=True)
    torch.testing.assert_close(cond.prompt_embeds, torch.cat([h1, out2.hidden_states[-2]], dim=-1))
    torch.testing.assert_close(cond.pooled_embeds, out2.text_embeds)
    r = float(resolution)
    assert cond.time_ids.tolist() == [[r, r, 0.0, 0.0, r, r]]
    kwargs = cond.added_cond_kwargs(2)
    assert kwargs["text_embeds"].shape == (2, cond.pooled_embeds.shape[1])
    assert kwargs["time_ids"].shape == (2, 6)


def test_fixed_noise_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(2)
    torch.manual_seed(0)
    a = fixed_noise(256)
    b = fixed_noise(256, seed=42, device="cpu")
    after = torch.rand(2)
    assert a.shape == (1, 4, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.equal(before, after)
    assert not torch.equal(a, fixed_noise(256, seed=43))
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05


def test_fixed_noise_rejects_odd_resolution():
    with pytest.raises(DiffCutError, match="multiple of 8"):
        fixed_noise(100)


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_noise_coefficients_match_the_published_schedule(pipelines, family):
    # model-costs.md: alphas_cumprod[50] = 0.95158, x_t = 0.97549 x0 + 0.22005 eps
    a, s = noise_coefficients(pipelines[family], 50)
    assert a == pytest.approx(0.97549, abs=1e-5) and s == pytest.approx(0.22005, abs=1e-5)
    assert a * a + s * s == pytest.approx(1.0, abs=1e-6)


def test_noise_coefficients_agree_with_ddim_add_noise(pipelines):
    pipe = pipelines["sdxl"]
    scheduler = ddim_scheduler(pipe)
    assert scheduler.config.timestep_spacing == "trailing"
    assert type(scheduler).__name__ == "DDIMScheduler"
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in (0, 50, 999):
        a, s = noise_coefficients(pipe, t)
        expected = scheduler.add_noise(x0, eps, torch.tensor([t]))
        torch.testing.assert_close(a * x0 + s * eps, expected, rtol=0, atol=1e-6)
    with pytest.raises(DiffCutError, match="timestep"):
        noise_coefficients(pipe, 1000)
