"""Export-stage benchmark on the full SSD-1B architecture with random weights (no download).

What it measures (CI never runs it; results go to benchmarks/RESULTS.md by hand):

1. GFLOPs per image (torch FlopCounterMode on the meta device, so no weights): VAE encoder,
   truncated UNet (conv_in .. hooked attn1), full UNet one step (the official code runs it).
2. Export of the truncated encoder (VAE encoder + truncated UNet, fp32) at 512 and 1024 px:
   export time, ONNX + data size, node count before/after constant folding.
3. CPU latency at 512 px, batch 1, same process, same threads:
   torch: truncated encoder (VAE + truncated UNet) vs VAE + full UNet, and truncated UNet
   alone vs full UNet alone; onnxruntime: the exported truncated encoder.

Random weights and random conditioning: the text encoders are not built; the empty-prompt
conditioning is replaced by random tensors of the real shapes (prompt embeddings (1,77,2048),
pooled (1,1280), size ids), which changes no cost. Models are built on the meta device,
truncated, and only then given memory, so the full 5.3 GB UNet is allocated only for its
own timing.

Usage::

    python benchmarks/bench_export.py --out /tmp/bench-export [--resolutions 512 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "model_configs" / "SSD-1B"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build_meta_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg = json.loads((CONFIGS / "unet.json").read_text())
    vae_cfg = json.loads((CONFIGS / "vae.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg).eval()
        vae = AutoencoderKL.from_config(vae_cfg).eval()
    return unet, vae


def random_fill_(module: torch.nn.Module, seed: int = 0) -> None:
    """Materialise a meta module on the CPU with small random weights (values do not matter for cost)."""
    module.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:  # norms and biases: identity-ish, keeps activations tame
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in**-0.5, generator=g)


def truncated_encoder(unet, vae, resolution: int):
    """A TruncatedEncoder with random constants of the real shapes (meta until filled)."""
    from diffcut_edge.export.truncated import EncoderSpec, TruncatedEncoder, hook_path

    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, unet.config.block_out_channels[0] * 4, generator=g)
    ehs = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    noise = torch.randn(1, 4, resolution // 8, resolution // 8, generator=g)
    spec = EncoderSpec(
        family="sdxl",
        resolution=resolution,
        timestep=50,
        noise_seed=42,
        precision="fp32",
        channels=unet.config.block_out_channels[-1],
        hook=hook_path(unet, "sdxl"),
    )
    enc = TruncatedEncoder(
        vae,
        unet,
        "sdxl",
        emb=emb.to("meta"),
        encoder_hidden_states=ehs.to("meta"),
        noise=noise.to("meta"),
        sqrt_alpha_bar=0.97549,
        sqrt_one_minus_alpha_bar=0.22005,
        spec=spec,
    )
    return enc, (emb, ehs, noise)


def fill_encoder_(enc, constants) -> None:
    random_fill_(enc)
    emb, ehs, noise = constants
    with torch.no_grad():
        enc.emb.copy_(emb)
        enc.encoder_hidden_states.copy_(ehs)
        enc.noise.copy_(noise)
    enc.eval().requires_grad_(False)


def unet_inputs(unet, resolution: int, device="cpu"):
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(1, 4, resolution // 8, resolution // 8, generator=g).to(device)
    ehs = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g).to(device)
    added = {
        "text_embeds": torch.randn(1, 1280, generator=g).to(device),
        "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32).to(
            device
        ),
    }
    return sample, torch.tensor([50], device=device), ehs, added


def gflops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def count_flops(resolution: int) -> dict:
    unet, vae = build_meta_models()
    enc, _ = truncated_encoder(unet, vae, resolution)
    image = torch.zeros(1, 3, resolution, resolution, device="meta")
    latent = torch.zeros(1, 4, resolution // 8, resolution // 8, device="meta")
    sample, t, ehs, added = unet_inputs(unet, resolution, device="meta")
    out = {
        "vae_encoder": gflops(lambda: enc.encode_latent(image)),
        "truncated_unet": gflops(lambda: enc.unet_to_hook(latent)),
        "truncated_encoder": gflops(lambda: enc(image)),
        "full_unet": gflops(lambda: unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added)),
    }
    out["vae_plus_full_unet"] = out["vae_encoder"] + out["full_unet"]
    return out


def timed(fn, repeats: int) -> float:
    """Median wall time in ms over ``repeats`` runs after one warm-up."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def bench_export(resolution: int, out_root: Path) -> dict:
    from diffcut_edge.export.onnx_export import export_encoder

    unet, vae = build_meta_models()
    enc, constants = truncated_encoder(unet, vae, resolution)
    del unet, vae  # the encoder holds only what runs before the hook
    fill_encoder_(enc, constants)
    params = sum(p.numel() for p in enc.parameters())
    log(f"export {resolution}: encoder params {params / 1e6:.2f} M, peak RSS {rss_gb():.1f} GB")
    folder = out_root / f"ssd1b-{resolution}"
    start = time.perf_counter()
    report = export_encoder(enc, folder, model_id="SSD-1B (random weights)", force=True, progress=False)
    total = time.perf_counter() - start
    import onnx

    return {
        "resolution": resolution,
        "params_M": params / 1e6,
        "export_s": total,
        "stage_s": report.seconds,
        "onnx_MB": report.onnx_bytes / 1e6,
        "data_MB": report.data_bytes / 1e6,
        "nodes": report.nodes,
        "folder": str(folder),
        "peak_rss_GB": rss_gb(),
        "opset": onnx.load(str(folder / "encoder.onnx"), load_external_data=False).opset_import[0].version,
    }


def bench_latency(resolution: int, folder: Path | None, repeats: int, threads: int) -> dict:
    unet, vae = build_meta_models()
    enc, constants = truncated_encoder(unet, vae, resolution)
    fill_encoder_(enc, constants)
    image = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latent = enc.add_noise(enc.encode_latent(image))
    out = {"resolution": resolution, "threads": threads, "repeats": repeats}
    log("latency: torch truncated encoder")
    out["torch_truncated_encoder_ms"] = timed(lambda: enc(image), repeats)
    out["torch_vae_encoder_ms"] = timed(lambda: enc.encode_latent(image), repeats)
    out["torch_truncated_unet_ms"] = timed(lambda: enc.unet_to_hook(latent), repeats)
    if folder is not None:
        import onnxruntime as ort

        log("latency: onnxruntime truncated encoder")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(folder / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1e3)
        out["ort_truncated_encoder_ms"] = float(np.median(times))
        del session
    enc = None  # free the encoder before the full UNet gets memory
    gc.collect()
    log("latency: torch full UNet (materialising 5.3 GB)")
    random_fill_(unet)
    unet.eval().requires_grad_(False)
    sample, t, ehs, added = unet_inputs(unet, resolution)
    out["torch_full_unet_ms"] = timed(
        lambda: unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added), repeats
    )
    out["torch_vae_plus_full_unet_ms"] = out["torch_vae_encoder_ms"] + out["torch_full_unet_ms"]
    out["peak_rss_GB"] = rss_gb()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-export"))
    ap.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--latency-resolution", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write results here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import diffusers
    import onnx
    import onnxruntime

    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "flops": {},
        "export": [],
        "latency": None,
    }
    for r in sorted(set(args.resolutions) | {args.latency_resolution}):
        log(f"GFLOPs at {r}")
        results["flops"][r] = count_flops(r)
        log(json.dumps(results["flops"][r]))
    folders = {}
    for r in args.resolutions:
        log(f"export at {r}")
        rep = bench_export(r, args.out)
        results["export"].append(rep)
        folders[r] = Path(rep["folder"])
        log(json.dumps(rep))
        gc.collect()
    log(f"latency at {args.latency_resolution}")
    results["latency"] = bench_latency(
        args.latency_resolution, folders.get(args.latency_resolution), args.repeats, args.threads
    )
    log(json.dumps(results["latency"]))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
