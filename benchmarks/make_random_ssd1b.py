"""Export a full-size SSD-1B encoder with *random* weights, for latency benchmarks without a download.

The UNet and VAE are built from ``benchmarks/model_configs/SSD-1B`` (the real architecture, so
the truncated encoder has the real cost); weights are random (seeded). The text encoders only
provide the empty-prompt constants baked into the graph, so they are shallow stand-ins with the
real output widths (CLIP-L 768 + bigG 1280 = 2048, pooled 1280): they cost nothing at run time.
Features are meaningless; timings and memory are those of the real model at this resolution.

    python benchmarks/make_random_ssd1b.py --resolution 512 --out /tmp/ssd1b-random-512
    diffcut-edge bench --model-dir /tmp/ssd1b-random-512/model --iters 3 --warmup 1
    python benchmarks/make_random_ssd1b.py --resolution 512 --out /tmp/ssd1b-random-512 --vae tiny

``--vae tiny`` exports the same pipeline with a random-weight AutoencoderTiny of TAESDXL's
architecture (diffusers' default AutoencoderTiny config) in place of the VAE encoder, into
``OUT/model-tiny-vae``: the cost of ``export --vae tiny`` with real TAESDXL weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "model_configs" / "SSD-1B"


def _text_encoder(vocab: dict[str, int], hidden: int, with_projection: bool, max_tokens: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffcut_edge.models.tiny import BOS, EOS

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=256,
        num_hidden_layers=2,  # SDXL reads the penultimate hidden state
        num_attention_heads=8,
        max_position_embeddings=max_tokens,
        projection_dim=hidden,
        hidden_act="quick_gelu",
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_pipeline_folder(out: Path, seed: int = 0) -> Path:
    """Write a random-weight SSD-1B diffusers pipeline folder; returns it."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from diffcut_edge.models.tiny import MAX_TOKENS, write_tiny_tokenizer

    def config(name: str) -> dict:
        return {k: v for k, v in json.loads((CONFIGS / name).read_text()).items() if not k.startswith("_")}

    torch.manual_seed(seed)
    tokenizer = write_tiny_tokenizer(out / "_tokenizer")
    vocab = tokenizer.get_vocab()
    pipeline = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_config(config("vae.json")),
        text_encoder=_text_encoder(vocab, 768, False, MAX_TOKENS),
        text_encoder_2=_text_encoder(vocab, 1280, True, MAX_TOKENS),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=UNet2DConditionModel.from_config(config("unet.json")),
        scheduler=EulerDiscreteScheduler.from_config(config("scheduler.json")),
        force_zeros_for_empty_prompt=True,
    )
    folder = out / "pipeline"
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vae", choices=("full", "tiny"), default="full")
    args = parser.parse_args()
    import torch

    from diffcut_edge.export import export_model

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folder = args.out / "pipeline"
    if not (folder / "model_index.json").is_file():
        folder = build_pipeline_folder(args.out, seed=args.seed)
    print(f"pipeline folder {folder} ({time.perf_counter() - start:.0f} s)", flush=True)
    start = time.perf_counter()
    tiny_vae = None
    if args.vae == "tiny":
        from diffusers import AutoencoderTiny

        tiny_vae = args.out / "taesdxl-random"
        if not (tiny_vae / "config.json").is_file():
            torch.manual_seed(args.seed)
            AutoencoderTiny().save_pretrained(str(tiny_vae), safe_serialization=True)  # TAESDXL's layout
    name = "model" if args.vae == "full" else "model-tiny-vae"
    model_dir = export_model(
        folder,
        args.out / name,
        resolution=args.resolution,
        precision=args.precision,
        progress=True,
        vae=args.vae,
        tiny_vae=tiny_vae,
    )
    print(f"exported {model_dir} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
