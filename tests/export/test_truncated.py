"""The truncated encoder equals the reference (full UNet + hook) and holds only what runs."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge.errors import DiffCutError
from diffcut_edge.export.truncated import check_precision, check_resolution, hook_path
from helpers.export_helpers import load_tiny_pipeline, photo_batch

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_truncated_encoder_equals_reference_features(family, tiny_pipeline_dir):
    from diffcut_edge.diffcut_ref import extract_features
    from diffcut_edge.export import build_truncated_encoder

    pipe = load_tiny_pipeline(str(tiny_pipeline_dir(family)))
    images = photo_batch(256, 2)
    ref = extract_features(pipe, images, resolution=256)
    encoder = build_truncated_encoder(pipe, resolution=256)
    with torch.no_grad():
        ours = encoder(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert ours.shape == ref.shape == (2, 64, encoder.spec.channels)
    assert np.abs(ref).max() > 1e-2  # a non-trivial signal, so the bound below means something
    assert np.abs(ours - ref).max() <= 1e-5
    # Each image of a batch sees exactly what it sees alone (shared noise, expanded context).
    with torch.no_grad():
        alone = encoder(torch.from_numpy(images[1:2].transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(alone[0] - ours[1]).max() <= 1e-5


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_truncated_encoder_drops_everything_after_the_hook(family, tiny_pipeline_dir):
    from diffcut_edge.export import build_truncated_encoder
    from diffcut_edge.models import hooked_module

    pipe = load_tiny_pipeline(str(tiny_pipeline_dir(family)))
    unet = pipe.unet
    encoder = build_truncated_encoder(pipe, resolution=256)
    kept = {id(p) for p in encoder.parameters()}
    hooked = hooked_module(unet, family)
    assert unet.get_submodule(encoder.spec.hook) is hooked
    assert all(id(p) in kept for p in hooked.parameters())
    last_block = unet.down_blocks[-1 if family == "sdxl" else -2].attentions[-1].transformer_blocks[-1]
    dropped = [
        unet.mid_block,
        unet.up_blocks,
        unet.conv_out,
        last_block.attn2,
        last_block.ff,
        unet.time_embedding,
    ]  # the timestep embedding is baked in as a constant
    if family == "sd1":
        dropped.append(unet.down_blocks[-1])
    for module in dropped:
        assert not any(id(p) in kept for p in module.parameters()), type(module).__name__
    assert not any(id(p) in kept for p in pipe.vae.decoder.parameters())


def test_hook_path_names_the_reference_module(tiny_pipeline_dir):
    pipe = load_tiny_pipeline(str(tiny_pipeline_dir("sd1")))
    assert hook_path(pipe.unet, "sd1").startswith("down_blocks.2.attentions.")


@pytest.mark.parametrize("resolution", [0, 100, 255, 352, -64, 64.0, True])
def test_resolution_must_be_a_multiple_of_64(resolution):
    with pytest.raises(DiffCutError, match="multiple of 64"):
        check_resolution(resolution)


def test_precision_is_validated():
    assert check_precision("fp16") == "fp16"
    with pytest.raises(DiffCutError, match="precision"):
        check_precision("int8")
