"""Open-vocabulary labelling cost with the real ``convnext_large_d_320`` CLIP architecture (random
weights: no download), runtime (ONNX Runtime + numpy) vs the PyTorch reference in the same run.

Stages: the dense CLIP trunk at 1024^2 (and 512^2), pooling + head + scoring for 10 and 100 segments
(reference: the official per-segment loop), the text bank for VOC-21 and for N typed classes (ONNX
text tower + numpy tokenizer), and PAMR at the open-vocabulary settings (15 iterations, dilations
1..64) at 1024^2.

    python benchmarks/bench_clip.py --model-dir TINY_SDXL_EXPORT_256 [--typed 1000] [--work /tmp/clipbench]

The model folder only hosts the exported CLIP files (a copy is made under --work).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path


def _median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/diffcut-clip-bench"))
    p.add_argument(
        "--typed",
        type=int,
        default=200,
        help="typed classes for the text-bank row (the 1000-class figure is this, scaled by prompts)",
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: theirs)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--text-only", action="store_true", help="only the text-bank rows")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers.clip import ensure_open_clip

    ensure_open_clip()
    import numpy as np
    import torch

    from diffcut_edge.diffcut_ref import clip_labels as ref
    from diffcut_edge.export.clip_export import export_vocabulary
    from diffcut_edge.models.clip import WEIGHTS_NAME, import_open_clip, save_local_dir
    from diffcut_edge.runtime import labeling, pamr
    from diffcut_edge.runtime.vocabulary import load_vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    open_clip = import_open_clip()
    clip_dir, host = args.work / "convnext_large_d_320-random", args.work / "model"
    if not (clip_dir / WEIGHTS_NAME).is_file():
        torch.manual_seed(0)
        model = open_clip.create_model("convnext_large_d_320")
        save_local_dir(model, open_clip.get_model_config("convnext_large_d_320"), clip_dir)
    rows: dict[str, float] = {}
    if not (host / labeling.DENSE_NAME).is_file():
        shutil.rmtree(host, ignore_errors=True)
        shutil.copytree(args.model_dir, host)
        start = time.perf_counter()
        export_vocabulary(host, f"local-dir:{clip_dir}", load_vocabulary("voc"), progress=print)
        rows["export-vocab (3 graphs + VOC-21 bank, reference)"] = time.perf_counter() - start
    clip = open_clip.create_model(f"local-dir:{clip_dir}").eval()
    params = sum(t.numel() for t in clip.state_dict().values())
    labeler = labeling.SegmentLabeler.from_model_dir(host, threads=args.threads)

    rng = np.random.default_rng(0)
    results = {}
    for side in () if args.text_only else (1024, 512):
        pixels = rng.uniform(0, 1, (1, 3, side, side)).astype(np.float32)
        labeler.dense(pixels)  # warm-up (session creation, first-run allocations)
        ours = _median_s(lambda: labeler.dense(pixels), args.repeat)
        with torch.no_grad():
            theirs = _median_s(lambda: ref.dense_features(clip, torch.from_numpy(pixels)), max(1, args.repeat - 1))
        results[f"dense trunk {side}^2"] = (ours, theirs)
        print(f"dense trunk {side}^2: runtime {ours:.2f} s, reference {theirs:.2f} s", flush=True)

    pixels = rng.uniform(0, 1, (1, 3, 1024, 1024)).astype(np.float32)
    dense = None if args.text_only else labeler.dense(pixels)
    dense_t = None if dense is None else torch.from_numpy(dense)[None]
    classifier = torch.from_numpy(labeler.bank.embeddings)
    counts = labeler.bank.vocabulary.synonym_counts
    for segments in () if args.text_only else (10, 100):
        side = int(np.ceil(np.sqrt(segments)))
        labels = np.arange(1024)[:, None] * side // 1024 * side + np.arange(1024)[None, :] * side // 1024
        labels = (labels % segments).astype(np.int32)

        def ours_fn():
            ids, _, _ = labeling.segment_stats(labels)
            pooled, _ = labeling.pool_segments(dense, labels, ids)
            labeler.classify(labeler.embed(pooled))

        def theirs_fn():  # the official loop: one mask, one head call, one scoring per segment
            with torch.no_grad():
                t_labels = torch.from_numpy(labels)
                for i in torch.unique(t_labels):
                    mask = (t_labels == i).to(torch.float32)[None, None]
                    pooled = ref.mask_pool(dense_t, mask)[0].reshape(1, 1, -1)
                    logits = ref.classification_logits(
                        ref.visual_head(clip, pooled), classifier, clip.logit_scale, counts
                    )[..., :-1]
                    torch.argmax(logits.softmax(-1))

        results[f"pool + head + score, {segments} segments"] = (
            _median_s(ours_fn, args.repeat),
            _median_s(theirs_fn, args.repeat),
        )
        print(f"{segments} segments: {results[f'pool + head + score, {segments} segments']}", flush=True)

    voc = load_vocabulary("voc")
    start = time.perf_counter()
    labeler.text_bank(voc)
    rows[f"text bank VOC-21 ({sum(voc.synonym_counts)} synonyms x 14 prompts), ONNX + numpy tokenizer"] = (
        time.perf_counter() - start
    )
    print(f"VOC-21 bank: {list(rows.values())[-1]:.1f} s", flush=True)
    typed = [f"object class {i}" for i in range(args.typed)]
    start = time.perf_counter()
    labeler.text_bank(typed)
    seconds = time.perf_counter() - start
    rows[f"text bank {args.typed} typed classes ({args.typed * 14} prompts), ONNX + numpy tokenizer"] = seconds
    if args.typed != 1000:
        rows["text bank 1000 typed classes (14000 prompts): the row above x 1000 / typed"] = seconds * 1000 / args.typed
    print(f"typed bank: {seconds:.1f} s", flush=True)

    image = rng.uniform(0, 1, (1024, 1024, 3)).astype(np.float32)
    if args.text_only:
        image = image[:64, :64]
    blocks = (np.arange(1024)[:, None] // 256 * 4 + np.arange(1024)[None, :] // 256).astype(np.int32) % 8
    pamr.pamr_refine(image[:64, :64], blocks[:64, :64], num_iter=2, dilations=(1, 2))
    if not args.text_only:
        rows["PAMR 1024^2, 15 iterations, dilations 1..64, 8 segments"] = _median_s(
            lambda: pamr.pamr_refine(image, blocks, num_iter=15, dilations=(1, 2, 4, 8, 12, 24, 32, 64)), 1
        )

    trunk = results["dense trunk 1024^2"][0] if results else float("nan")
    print(
        f"\nconvnext_large_d_320 architecture, random weights, {params / 1e6:.0f} M parameters; "
        f"dense channels {labeler.record['dense_channels']}, embedding {labeler.record['embed_dim']}"
    )
    print(f"  {'stage':<52}{'runtime s':>11}{'reference s':>13}{'ref/runtime':>13}{'% of trunk':>12}")
    for name, (ours, theirs) in results.items():
        print(f"  {name:<52}{ours:>11.3f}{theirs:>13.3f}{theirs / ours:>12.2f}x{100 * ours / trunk:>11.1f}%")
    for name, seconds in rows.items():
        print(f"  {name:<52}{seconds:>11.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "rows": rows, "params": params}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
