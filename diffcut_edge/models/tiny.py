"""Tiny random-weight pipelines of each family, for tests: no download, seconds to build.

They keep the block *types* and the topology the real models have (so the hook, the
export wrapper and the graph are exercised for real) and shrink only widths and depths:

- SDXL family, shaped like SSD-1B: three down blocks (DownBlock2D + 2 CrossAttnDownBlock2D),
  ``addition_embed_type="text_time"``, two CLIP text encoders (the second with projection),
  depth 2 at the hooked block, ``UNetMidBlock2D`` (no mid attention) and asymmetric
  ``reverse_transformer_layers_per_block``; Euler scheduler.
- SD1: four down blocks, hook at ``down_blocks[-2]``, one CLIP text encoder; PNDM scheduler.

The VAE keeps four blocks (downsampling by 8), so the hook grid stays R/32. Features at
the hook have :data:`TINY_CHANNELS` channels. The tokenizer is a real byte-level BPE
``CLIPTokenizer`` built from a vocab and merges written here.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from diffcut_edge.errors import DiffCutError, missing_extra
from diffcut_edge.models.recipes import SD1, SDXL, family_spec

TINY_CHANNELS = 64  # feature channels C at the hook (1280 in the real models)
TEXT_HIDDEN = 32  # each tiny text encoder's width
MAX_TOKENS = 77  # CLIP context length, as the real models (prompt_embeds (1, 77, D))
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# A few words fully merged so ordinary prompts tokenize to whole words; anything else
# falls back to byte-level pieces, which are all in the vocab.
_WORDS = ("a", "photo", "of", "the", "cat", "dog", "person", "sky", "tree", "road", "car")

_SCHEDULER = {  # the real schedulers' betas: scaled_linear 0.00085-0.012, 1000 steps
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}


# ---------------------------------------------------------------------- tokenizer
def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that build ``word + '</w>'`` from its characters."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    merges = []
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return merges


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A small but complete CLIP BPE vocabulary: every byte, every byte ending a word,
    the merges of :data:`_WORDS`, and the two special tokens last (as in CLIP)."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in _WORDS:
        for left, right in _word_merges(word):
            rule = f"{left} {right}"
            if rule not in merges:
                merges.append(rule)
                tokens.append(left + right)
    vocab: dict[str, int] = {}
    for tok in tokens + [BOS, EOS]:
        vocab.setdefault(tok, len(vocab))
    return vocab, merges


def write_tiny_tokenizer(folder: Path) -> Any:
    """Write vocab.json + merges.txt to ``folder``, load them as a CLIPTokenizer and save it."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=MAX_TOKENS
    )
    tokenizer.save_pretrained(str(folder))
    return tokenizer


# ------------------------------------------------------------------------ configs
def _unet_config(family: str, text_dim: int, pooled_dim: int) -> dict:
    c = TINY_CHANNELS
    if family == SDXL:
        time_dim = 8  # addition_time_embed_dim: 6 ids x 8 + pooled -> add_embedding input
        return dict(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(32, c, c),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2D",  # SSD-1B: one ResNet, no attention
            transformer_layers_per_block=(1, 1, 2),  # depth > 1 at the hooked block
            reverse_transformer_layers_per_block=((2, 2, 1), (1, 1, 1), 1),  # asymmetric, as SSD-1B
            attention_head_dim=(2, 4, 4),  # diffusers' name for the head count
            cross_attention_dim=text_dim,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=pooled_dim + 6 * time_dim,
            norm_num_groups=32,
        )
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 32, c, c),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=4,
        cross_attention_dim=text_dim,
        use_linear_projection=False,
        norm_num_groups=32,
    )


def _vae_config(family: str) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        # Four blocks (downsample by 8, as the real VAE); the full-resolution block is the
        # cost at 256 px, so it is the narrowest (16 channels, hence 16 norm groups).
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=16,
        sample_size=256,
        scaling_factor=family_spec(family).vae_scaling_factor,
        force_upcast=(family == SDXL),
    )


def _text_config(vocab: dict[str, int], projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,  # SDXL reads the penultimate hidden state
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim or TEXT_HIDDEN,
        hidden_act="quick_gelu",
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )


# ---------------------------------------------------------------------- pipelines
def _build_components(family: str, tokenizer: Any) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizer.get_vocab()
    vae = AutoencoderKL(**_vae_config(family))
    if family == SDXL:
        projection = TEXT_HIDDEN
        text_encoder = CLIPTextModel(_text_config(vocab))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab, projection))
        unet = UNet2DConditionModel(**_unet_config(SDXL, text_dim=2 * TEXT_HIDDEN, pooled_dim=projection))
        # from_config, like a real scheduler_config.json: keys a class does not use are ignored
        scheduler = EulerDiscreteScheduler.from_config(
            {**_SCHEDULER, "timestep_spacing": "leading", "interpolation_type": "linear"}
        )
        return dict(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    text_encoder = CLIPTextModel(_text_config(vocab))
    unet = UNet2DConditionModel(**_unet_config(SD1, text_dim=TEXT_HIDDEN, pooled_dim=0))
    scheduler = PNDMScheduler.from_config({**_SCHEDULER, "skip_prk_steps": True})
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def _assemble_pipeline(family: str, components: dict) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == SDXL:
        return StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True)
    return StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def build_tiny_pipeline(family: str, seed: int = 0) -> Any:
    """A tiny random-weight pipeline in memory (fp32, CPU), deterministic in ``seed``."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise missing_extra("torch", "export", "building a tiny pipeline") from e
    import tempfile

    family_spec(family)  # validates the name
    # fork_rng: seed the weight init without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(int(seed))
        tokenizer = write_tiny_tokenizer(Path(tmp) / "tokenizer")
        return _assemble_pipeline(family, _build_components(family, tokenizer))


def make_tiny_pipeline(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight ``family`` pipeline ("sdxl" or "sd1") to ``out_dir``.

    The folder is a regular diffusers pipeline (``model_index.json``, safetensors) that
    :func:`diffcut_edge.models.load_pipeline` loads like a downloaded one. Returns the folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DiffCutError(f"{out} exists and is a file; pick a new folder name")
    # Replacing an earlier pipeline is fine (save_pretrained overwrites); other content is not ours.
    if out.is_dir() and any(out.iterdir()) and not (out / "model_index.json").exists():
        raise DiffCutError(f"{out} is not empty and holds no pipeline; pick an empty or new folder")
    pipeline = build_tiny_pipeline(family, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    with _no_save_progress_bars():
        pipeline.save_pretrained(str(out), safe_serialization=True)
    return out


def make_tiny_vae(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight ``AutoencoderTiny`` (TAESD's layout, 16 channels, one block per
    stage) to ``out_dir``, for ``export --vae tiny`` tests; 4 latent channels, downsampling by 8."""
    import torch
    from diffusers import AutoencoderTiny

    out = Path(out_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        vae = AutoencoderTiny(
            encoder_block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(out), safe_serialization=True)
    return out


@contextlib.contextmanager
def _no_save_progress_bars():
    """Hide transformers' per-shard bars for these tiny files; restore the user's setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
