"""Tiny pipelines: built, saved, loaded through load_pipeline; errors for bad folders / offline ids."""

from __future__ import annotations

import json
import shutil

import pytest

from diffcut_edge import cli
from diffcut_edge.errors import DiffCutError
from diffcut_edge.models import TINY_CHANNELS, family_of_unet, load_pipeline, make_tiny_pipeline

pytest.importorskip("diffusers")


@pytest.mark.parametrize(
    "family, cls, n_down", [("sdxl", "StableDiffusionXLPipeline", 3), ("sd1", "StableDiffusionPipeline", 4)]
)
def test_tiny_pipeline_round_trips_through_load_pipeline(tiny_pipeline_dir, family, cls, n_down):
    folder = tiny_pipeline_dir(family)
    assert (folder / "model_index.json").is_file()
    pipeline = load_pipeline(folder)
    assert type(pipeline).__name__ == cls
    unet = pipeline.unet
    assert family_of_unet(unet.config) == family
    assert len(unet.down_blocks) == n_down
    hook_block = -1 if family == "sdxl" else -2
    assert unet.config.block_out_channels[hook_block] == TINY_CHANNELS
    assert len(pipeline.vae.config.block_out_channels) == 4  # VAE downsamples by 8
    scheduler = pipeline.scheduler.config
    assert (scheduler.beta_schedule, scheduler.beta_start, scheduler.beta_end, scheduler.num_train_timesteps) == (
        "scaled_linear",
        0.00085,
        0.012,
        1000,
    )
    assert type(pipeline.scheduler).__name__ == ("EulerDiscreteScheduler" if family == "sdxl" else "PNDMScheduler")


def test_tiny_sdxl_is_shaped_like_ssd_1b(tiny_pipeline_dir):
    unet = load_pipeline(tiny_pipeline_dir("sdxl")).unet
    config = unet.config
    assert config.addition_embed_type == "text_time"
    assert type(unet.mid_block).__name__ == "UNetMidBlock2D"  # no mid attention, as SSD-1B
    hooked = unet.down_blocks[-1].attentions[-1]
    assert len(hooked.transformer_blocks) > 1
    up_depths = [len(a.transformer_blocks) for a in unet.up_blocks[0].attentions]
    assert len(set(up_depths)) > 1  # asymmetric reverse depths


def test_tiny_pipelines_are_deterministic_in_the_seed(tmp_path):
    import torch

    a = make_tiny_pipeline("sd1", tmp_path / "a", seed=3)
    b = make_tiny_pipeline("sd1", tmp_path / "b", seed=3)
    c = make_tiny_pipeline("sd1", tmp_path / "c", seed=4)
    ua, ub, uc = (load_pipeline(p).unet.state_dict() for p in (a, b, c))
    assert all(torch.equal(ua[k], ub[k]) for k in ua)
    assert not all(torch.equal(ua[k], uc[k]) for k in ua)


def test_make_tiny_leaves_the_global_rng_alone(tmp_path):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_pipeline("sd1", tmp_path / "t", seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", ["sdxl", "sd1"])
def test_tiny_tokenizer_works(tiny_pipeline_dir, family):
    pipeline = load_pipeline(tiny_pipeline_dir(family))
    tokenizers = [pipeline.tokenizer] + ([pipeline.tokenizer_2] if family == "sdxl" else [])
    for tok in tokenizers:
        bos, eos = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
        assert tok("").input_ids == [bos, eos]
        ids = tok("a photo of the cat").input_ids
        assert len(ids) == 7 and ids[0] == bos and ids[-1] == eos  # whole-word merges
        assert tok.decode(ids, skip_special_tokens=True) == "a photo of the cat"
        assert tok.decode(tok("Zebra, 42!").input_ids, skip_special_tokens=True) == "zebra , 4 2 !"
        padded = tok("", padding="max_length", max_length=tok.model_max_length).input_ids
        assert len(padded) == 77


def test_load_pipeline_moves_to_device_and_dtype(tiny_pipeline_dir):
    import torch

    pipeline = load_pipeline(tiny_pipeline_dir("sd1"), torch_dtype=torch.float16, device="cpu")
    assert pipeline.unet.dtype == torch.float16 and pipeline.device.type == "cpu"


def test_missing_folder(tmp_path):
    with pytest.raises(DiffCutError, match="does not exist"):
        load_pipeline(tmp_path / "nothing-here")
    with pytest.raises(DiffCutError, match="does not exist"):
        load_pipeline("./nothing/here/either")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(DiffCutError, match="no model_index.json"):
        load_pipeline(tmp_path)


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder", "text_encoder_2"])
def test_folder_missing_a_component(tiny_pipeline_dir, tmp_path, part):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir("sdxl"), broken)
    shutil.rmtree(broken / part)
    with pytest.raises(DiffCutError, match=f"lacks .*{part}"):
        load_pipeline(broken)


def test_folder_with_damaged_index(tiny_pipeline_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir("sd1"), broken)
    (broken / "model_index.json").write_text("{ not json")
    with pytest.raises(DiffCutError, match="model_index.json"):
        load_pipeline(broken)


@pytest.mark.parametrize("model", ["ssd-1b", "diffcut-edge-tests/not-a-cached-model"])
def test_offline_hub_id_is_a_clear_error(monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DiffCutError, match="not available offline.*`hf download "):
        load_pipeline(model)


def test_cached_hub_id_loads_offline(monkeypatch, tmp_path, tiny_pipeline_dir):
    # The Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}.
    repo = tmp_path / "hub" / "models--segmind--SSD-1B"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_pipeline_dir("sdxl"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = load_pipeline("ssd-1b")
    assert type(pipeline).__name__ == "StableDiffusionXLPipeline"
    assert family_of_unet(pipeline.unet) == "sdxl"


def test_existing_folder_shaped_like_a_hub_id_is_a_folder(monkeypatch, tmp_path, tiny_pipeline_dir):
    shutil.copytree(tiny_pipeline_dir("sd1"), tmp_path / "someone" / "model")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub lookup would fail: this must load the folder
    assert type(load_pipeline("someone/model")).__name__ == "StableDiffusionPipeline"


def test_network_failure_is_a_clear_error(monkeypatch):
    # Online mode, but the download fails the way requests/huggingface_hub fail.
    from diffcut_edge.models import loading

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loading, "_hub_offline", lambda: False)
    monkeypatch.setattr(loading, "_cached_snapshot", lambda hub_id: None)
    monkeypatch.setattr(loading, "_from_pretrained", unreachable)
    with pytest.raises(DiffCutError, match="weights for segmind/Segmind-Vega are not available offline"):
        load_pipeline("vega")


def test_cli_models_list(capsys):
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for hub_id in ("segmind/SSD-1B", "segmind/Segmind-Vega", "CompVis/stable-diffusion-v1-4"):
        assert hub_id in out


def test_cli_make_tiny(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert cli.main(["models", "make-tiny", "--family", "sd1", "--out", str(out), "--seed", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert type(load_pipeline(out)).__name__ == "StableDiffusionPipeline"


def test_cli_make_tiny_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["models", "make-tiny", "--family", "sdxl", "--out", str(tmp_path)]) == cli.EXIT_ERROR
    assert "not empty" in capsys.readouterr().err
