"""`export --vae tiny`: the VAE encoder replaced by diffusers' AutoencoderTiny (TAESD layout, random
weights), on the same scale as the full VAE, exported, and flagged until verified."""

from __future__ import annotations

import numpy as np
import pytest

from diffcut_edge import cli
from diffcut_edge.errors import DiffCutError
from diffcut_edge.runtime.manifest import read_manifest

R = 256


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    from diffcut_edge.models import make_tiny_vae

    return make_tiny_vae(tmp_path_factory.mktemp("taesd") / "taesd", seed=0)


@pytest.fixture(scope="module")
def tiny_export(tiny_pipeline_dir, tiny_vae_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-vae") / "model"
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(tiny_pipeline_dir("sdxl")),
                "--out",
                str(out),
                "--resolution",
                str(R),
                "--vae",
                "tiny",
                "--tiny-vae",
                str(tiny_vae_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_latents_reach_the_unet_on_the_full_vaes_scale(tiny_pipeline_dir, tiny_vae_dir):
    import torch

    from diffcut_edge.export.onnx_export import use_tiny_vae
    from diffcut_edge.export.truncated import build_truncated_encoder
    from diffcut_edge.models import load_pipeline, load_tiny_vae

    image = torch.rand(1, 3, R, R, generator=torch.Generator().manual_seed(0))
    full = load_pipeline(str(tiny_pipeline_dir("sdxl")))
    with torch.no_grad():
        expected_full = full.vae.encode(image * 2 - 1).latent_dist.mean * full.vae.config.scaling_factor
        got_full = build_truncated_encoder(full, resolution=R).encode_latent(image)
    torch.testing.assert_close(got_full, expected_full)
    pipe = load_pipeline(str(tiny_pipeline_dir("sdxl")))
    tiny = load_tiny_vae(tiny_vae_dir)
    use_tiny_vae(pipe, tiny)
    with torch.no_grad():
        expected_tiny = tiny.encode(image * 2 - 1).latents  # TAESD: already in the scaled latent space
        got_tiny = build_truncated_encoder(pipe, resolution=R).encode_latent(image)
    torch.testing.assert_close(got_tiny, expected_tiny)
    assert got_tiny.shape == got_full.shape == (1, 4, R // 8, R // 8)


def test_tiny_vae_export_matches_its_torch_module_and_is_recorded(tiny_export, tiny_pipeline_dir, tiny_vae_dir):
    import onnxruntime as ort
    import torch

    from diffcut_edge.export.onnx_export import use_tiny_vae
    from diffcut_edge.export.truncated import build_truncated_encoder
    from diffcut_edge.models import load_pipeline, load_tiny_vae

    m = read_manifest(tiny_export)
    assert m.vae == "tiny" and m.vae_source == str(tiny_vae_dir) and m.needs_verification
    pipe = load_pipeline(str(tiny_pipeline_dir("sdxl")))
    use_tiny_vae(pipe, load_tiny_vae(tiny_vae_dir))
    x = np.random.default_rng(1).random((2, 3, R, R), dtype=np.float32)
    with torch.no_grad():
        ref = build_truncated_encoder(pipe, resolution=R)(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(tiny_export / "encoder.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"image": x})[0], ref, atol=1e-4, rtol=1e-4)


def test_segment_warns_until_verify_against_the_full_vae_records_a_verdict(
    tiny_export, tiny_model_dir, tmp_path, capsys
):
    import shutil

    import cv2

    from helpers.data import sample_photos

    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), np.ascontiguousarray(sample_photos(R)[0][..., ::-1]))
    assert (
        cli.main(
            [
                "segment",
                str(photo),
                "--model-dir",
                str(tiny_export),
                "--out",
                str(tmp_path / "o"),
                "--backend",
                "ort-cpu",
            ]
        )
        == 0
    )
    assert "fp32, tiny VAE) was never verified" in capsys.readouterr().err
    folder = tmp_path / "copy"
    shutil.copytree(tiny_export, folder)
    code = cli.main(
        ["verify", "--model-dir", str(folder), "--against", str(tiny_model_dir("sdxl", R, "fp32")), str(photo)]
    )
    out = capsys.readouterr().out
    # The tiny-VAE gate, not fp32's: TAESD approximates the VAE.
    assert "pass if mean label agreement >= 90% on the images whose labels hold still" in out
    assert "else if min token cosine >= 0.98" in out
    record = read_manifest(folder).verification
    assert record["thresholds"] == {"min_cosine": 0.98, "min_mean_label_agreement": 0.9}
    assert record["passed"] == (record["min_cosine"] >= 0.98 and record["mean_label_agreement"] >= 0.9)
    assert code == (0 if record["passed"] else 2)
    # Random weights are a weak proxy: here the tiny random TAESD and the tiny random full VAE give
    # features with cosine ~0.999, because random UNet features are mostly input-independent.
    note = read_manifest(folder).verification_note(str(folder))
    assert (note is None) == record["passed"]


def test_tiny_vae_refusals(tiny_pipeline_dir, tmp_path, capsys):
    import torch
    from diffusers import AutoencoderTiny

    from diffcut_edge.export.onnx_export import use_tiny_vae
    from diffcut_edge.models import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir("sd1")))
    with torch.random.fork_rng(devices=[]):
        wrong = AutoencoderTiny(
            encoder_block_out_channels=(8,) * 4,
            decoder_block_out_channels=(8,) * 4,
            num_encoder_blocks=(1,) * 4,
            num_decoder_blocks=(1,) * 4,
            latent_channels=16,
        )
    with pytest.raises(DiffCutError, match="16 latent channels but the UNet takes 4"):
        use_tiny_vae(pipe, wrong)
    with pytest.raises(DiffCutError, match="AutoencoderTiny"):
        use_tiny_vae(pipe, pipe.vae)
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(tiny_pipeline_dir("sd1")),
                "--out",
                str(tmp_path / "x"),
                "--tiny-vae",
                "some/taesd",
            ]
        )
        == 2
    )
    assert "--tiny-vae needs --vae tiny" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "export",
                "--model",
                str(tiny_pipeline_dir("sd1")),
                "--out",
                str(tmp_path / "x"),
                "--vae",
                "tiny",
                "--tiny-vae",
                str(tmp_path / "no-such-taesd"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "not an AutoencoderTiny folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
