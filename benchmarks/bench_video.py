"""Keyframes + optical-flow propagation vs DiffCut on every frame, on clips whose motion is known.

For each synthetic clip (tests/helpers/clips.py: pan, zoom, crossing objects, scene cut; flat
coloured shapes with a faint texture and a ground-truth class map per frame) and each keyframe
policy, in the same run:

- mIoU against the ground truth (each segment painted with its majority class), mean and worst frame;
- temporal consistency: the previous frame's output carried to this frame by a fine DIS flow
  (320 px wide, not the propagation's own), Hungarian-matched agreement with this frame's output;
- agreement with per-frame DiffCut on the same frame (for reference: per-frame DiffCut flickers);
- output fps (counted from the first frame out: start-up excluded) and encoder fps (``async`` = the
  realtime loop, the clip paced at --fps, DiffCut in a worker process).

The default model folder is the planted colour encoder (tokens a fixed function of each patch's
mean colour, tests/helpers/toy_encoder.py), whose per-frame segmentation follows the shapes;
``--model-dir`` runs any folder (then only fps means much for random weights). ``--cost`` times
the propagation of one 640x480 frame (flow both ways + warp + PAMR fill).

    python benchmarks/bench_video.py                       # planted folder, every clip, every policy
    python benchmarks/bench_video.py --model-dir M --clips pan --policies every:1 async --frames 60
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

POLICIES = ("every:1", "every:4", "every:8", "auto", "async")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None, help="model folder (default: the planted colour encoder)")
    p.add_argument(
        "--clips",
        nargs="+",
        default=["pan", "zoom", "cross", "cut"],
        help="pan zoom cross cut (coloured shapes, ground truth) photo-pan photo-zoom (real photos)",
    )
    p.add_argument("--policies", nargs="+", default=list(POLICIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[11, 12], help="clip seeds (the tests use 7)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--size", default="320x240", help="clip size WxH")
    p.add_argument("--fps", type=float, default=30.0, help="the clip's frame rate for async")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    p.add_argument("--cost", action="store_true", help="also time the propagation of one 640x480 frame")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def _run(policy: str, frames, seg, fps: float):
    from diffcut_edge.apps.pipeline import iter_segmented

    realtime = policy == "async"
    kwargs = dict(keyframes="auto", realtime=True, pace_fps=fps) if realtime else dict(keyframes=policy)
    items, stamps = [], []
    for item in iter_segmented(frames, seg, **kwargs):
        stamps.append(time.perf_counter())
        items.append(item)
    # From the first frame out (a worker process loading its model, the first keyframe: start-up).
    seconds = (stamps[-1] - stamps[0]) * len(items) / max(len(items) - 1, 1)
    encoder = [i.encoder_fps for i in items if i.encoder_fps]
    keys = sum(i.keyframe for i in items) if not realtime else None
    return items, seconds, (encoder[-1] if encoder else None), keys


def _consistency(items) -> float:
    from diffcut_edge.apps.propagation import MotionEstimator, warp_labels
    from diffcut_edge.metrics import carried_agreement

    fine, previous, scores = MotionEstimator(width=320), None, []
    for item in items:
        motion = fine(item.frame)
        if motion is not None and previous is not None and previous[0] == item.index - 1:
            scores.append(carried_agreement(warp_labels(previous[1], motion), item.result.mask_labels))
        previous = (item.index, item.result.mask_labels)
    return float(np.nanmean(scores)) if scores else float("nan")


def _row(policy, clip, items, seconds, encoder_fps, keys, reference):
    from diffcut_edge.metrics import majority_class_iou, matched_agreement

    mious = (
        [majority_class_iou(i.result.labels, clip.classes[i.index], clip.n_classes) for i in items]
        if clip.classes is not None
        else [float("nan")]
    )
    by_index = {i.index: i.result.labels for i in reference} if reference else {}
    agree = [matched_agreement(i.result.labels, by_index[i.index]) for i in items if i.index in by_index]
    return {
        "policy": policy,
        "clip": clip.kind,
        "frames_out": len(items),
        "keyframes": keys,
        "miou_mean": float(np.mean(mious)),
        "miou_worst": float(np.min(mious)),  # nan: no ground truth
        "consistency": _consistency(items),
        "agreement_per_frame": float(np.mean(agree)) if agree else None,
        "output_fps": len(items) / seconds,
        "encoder_fps": encoder_fps,
    }


def _cost(repeats: int = 30) -> dict:
    """ms per 640x480 frame: flow (both ways, consistency) and carry (warp + PAMR fill + resize)."""
    from diffcut_edge.apps.pipeline import LabelCarrier
    from diffcut_edge.apps.propagation import MotionEstimator
    from helpers.clips import make_clip
    from helpers.fake_segmenter import FakeSegmenter

    clip = make_clip("pan", repeats + 1, (640, 480), seed=3)
    seg = FakeSegmenter(mask_size=(128, 128))
    key = seg(clip.frames[0])
    key.num_segments = int(key.mask_labels.max()) + 1
    # A realistic key: the ground truth at mask size, 5 segments.
    import cv2

    key.mask_labels = cv2.resize(clip.classes[0], (128, 128), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    key.num_segments = 5
    est, carrier = MotionEstimator(), LabelCarrier()
    carrier.start(key, 0, 0.0)
    est(clip.frames[0])
    flow_ms, carry_ms = [], []
    for frame in clip.frames[1:]:
        t = time.perf_counter()
        motion = est(frame)
        flow_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        carrier.carry(frame, [motion])
        carry_ms.append((time.perf_counter() - t) * 1e3)
    return {
        "flow_ms": float(np.median(flow_ms)),
        "carry_ms": float(np.median(carry_ms)),
        "total_ms": float(np.median(np.add(flow_ms, carry_ms))),
    }


def main() -> int:
    args = _parse()
    from diffcut_edge.runtime import Segmenter
    from helpers.clips import make_clip
    from helpers.toy_encoder import make_colour_model_dir

    width, height = (int(v) for v in args.size.lower().split("x"))
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model_dir or make_colour_model_dir(Path(tmp) / "colour", resolution=256)
        with Segmenter.from_model_dir(folder, backend="ort-cpu", threads=args.threads) as seg:
            seg(make_clip("pan", 1, (width, height)).frames[0])  # warm-up: sessions, lazy imports
            for kind in args.clips:
                for seed in args.seeds:
                    clip = make_clip(kind, args.frames, (width, height), seed=seed)
                    reference = None
                    for policy in args.policies:
                        items, seconds, encoder_fps, keys = _run(policy, clip.frames, seg, args.fps)
                        if policy == "every:1":
                            reference = items
                        rows.append({**_row(policy, clip, items, seconds, encoder_fps, keys, reference), "seed": seed})
                        r = rows[-1]
                        print(
                            f"{kind:<5} seed {seed} {policy:<8} mIoU {r['miou_mean']:.3f} (worst {r['miou_worst']:.3f})"
                            f"  consistency {r['consistency']:.3f}  vs per-frame "
                            f"{(r['agreement_per_frame'] or float('nan')):.3f}  {r['output_fps']:.1f} fps out"
                            + (f"  encoder {r['encoder_fps']:.2f} fps" if r["encoder_fps"] else "")
                            + (f"  {r['keyframes']} keyframes" if r["keyframes"] is not None else ""),
                            flush=True,
                        )
    summary = {}
    for policy in args.policies:
        mine = [r for r in rows if r["policy"] == policy]
        summary[policy] = {
            k: float(np.nanmean([r[k] for r in mine if r[k] is not None] or [np.nan]))
            for k in ("miou_mean", "miou_worst", "consistency", "agreement_per_frame", "output_fps")
        }
    base = summary.get("every:1")
    print(
        f"\nmean over {len(args.clips)} clip kind(s) x {len(args.seeds)} seed(s), {args.frames} frames "
        f"{width}x{height}:"
    )
    print(f"  {'policy':<9}{'mIoU':>7}{'worst':>7}{'consist.':>10}{'vs per-frame':>14}{'fps out':>9}{'x every:1':>11}")
    for policy, s in summary.items():
        ratio = s["output_fps"] / base["output_fps"] if base else float("nan")
        print(
            f"  {policy:<9}{s['miou_mean']:>7.3f}{s['miou_worst']:>7.3f}{s['consistency']:>10.3f}"
            f"{s['agreement_per_frame']:>14.3f}{s['output_fps']:>9.1f}{ratio:>10.1f}x"
        )
    report = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "rows": rows,
        "summary": summary,
        "model_dir": str(args.model_dir) if args.model_dir else "planted colour encoder",
        "seconds": time.perf_counter() - started,
    }
    if args.cost:
        report["cost_640x480"] = cost = _cost()
        print(
            f"\npropagation of one 640x480 frame (median of 30): flow {cost['flow_ms']:.1f} ms + carry "
            f"{cost['carry_ms']:.1f} ms = {cost['total_ms']:.1f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
