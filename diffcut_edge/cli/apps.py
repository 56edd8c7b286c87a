"""The application verbs: segment (local or Ray), video, webcam, bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from diffcut_edge.cli import console
from diffcut_edge.cli.args import (
    OutputArgs,
    OverlayArgs,
    SegmenterArgs,
    VideoArgs,
    backends,
    batch_sizes,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from diffcut_edge.errors import DiffCutError

SEGMENT_MODEL, VIDEO_MODEL = SegmenterArgs(allow_model=True, tint_largest=False), SegmenterArgs()
SEGMENT_OUTPUT = OutputArgs()
VIDEO_OPTIONS, WEBCAM_OPTIONS = VideoArgs("every:1"), VideoArgs("auto")


def open_segmenter(args: argparse.Namespace, spec: Any, *, in_worker: bool = False) -> Any:
    """Open ``spec`` (in the realtime worker's process with ``in_worker``) and say when its folder was
    never verified against full precision."""
    from diffcut_edge.apps import pipeline

    return pipeline.open_segmenter(spec, in_worker=in_worker, warn=lambda note: console.warn(args.verb, note))


def runs_in_worker(args: argparse.Namespace, keyframes: VideoArgs) -> bool:
    """Whether video/webcam run DiffCut in the realtime keyframe worker: every policy but every:1;
    for video only with --realtime."""
    return not (args.verb == "video" and not args.realtime) and not keyframes.build(args).per_frame


# ------------------------------------------------------------------------ segment
def add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images and write label maps and overlays",
        description="Segment images, folders or glob patterns. Per image writes "
        "<stem>_labels.png (16-bit, values = segment ids) and "
        "<stem>_overlay.jpg|png; with --save-npz also <stem>.npz.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="images, folders or glob patterns")
    SEGMENT_OUTPUT.add(p)
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray Data job (actors each hold a Segmenter), resumable, with OUT/results.jsonl; "
        "inputs may also be URIs (s3://, gs://, file://); needs the [ray] extra",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --engine ray: the cluster (auto, ray://HOST:10001); default: a local Ray started for the job",
    )
    p.add_argument("--workers", type=positive_int, default=2, help="with --engine ray: actors (default 2)")
    p.add_argument(
        "--gpus-per-worker",
        type=non_negative_float,
        default=0.0,
        help="with --engine ray: GPUs per actor, fractions share one (default 0: CPU)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=4, help="with --engine ray: images per actor call (default 4)"
    )
    SEGMENT_MODEL.add(p)


def _output_folder(args: argparse.Namespace) -> Path:
    """--out, checked before anything slow: a folder (not an image name) this user may write."""
    from diffcut_edge.atomic import check_writable_dir
    from diffcut_edge.runtime import images as image_io

    SEGMENT_MODEL.check(args)  # says what to pass, before anything else is looked at
    if image_io.is_image_path(args.out) and not Path(args.out).is_dir():
        raise DiffCutError(
            f"--out is the folder the outputs go into (<name>_labels.png, ...); {args.out} looks like "
            f"an image file name: give a folder"
        )
    return check_writable_dir(Path(args.out))


def _images(args: argparse.Namespace, out: Path) -> list[Path]:
    from diffcut_edge.apps import batch
    from diffcut_edge.runtime import images as image_io

    images, skipped = batch.collect_inputs(args.inputs, out)
    if skipped:
        shown = ", ".join(p.name for p in skipped[:5]) + (", …" if len(skipped) > 5 else "")
        console.warn("segment", f"skipped {len(skipped)} file(s) that are not images or are outputs: {shown}")
    if not images:
        raise DiffCutError(
            f"no images found in {' '.join(args.inputs)} (extensions: {', '.join(image_io.IMAGE_EXTENSIONS)})"
        )
    return images


def run_segment(args: argparse.Namespace) -> int:
    from diffcut_edge.apps import batch
    from diffcut_edge.atomic import make_dirs

    out = _output_folder(args)
    if args.engine == "ray":
        return run_segment_ray(args, out)
    images = _images(args, out)
    with open_segmenter(args, SEGMENT_MODEL.build(args)) as seg:
        make_dirs(out)  # only once the model opened: a failed start leaves nothing behind
        with console.ImageLines(len(images), quiet=args.quiet) as lines:
            report = batch.segment_images(
                seg,
                images,
                out,
                SEGMENT_OUTPUT.build(args),
                on_result=lines.result,
                on_failure=lines.failure,
                raise_unexpected=args.debug,
            )
    if len(images) == 1 and report.failed:
        raise DiffCutError(report.failed[0][1])  # a single image: its own error is the one line
    means = {k: v / max(report.done, 1) for k, v in report.stats.stage_ms.items()}
    print(
        f"segmented {report.done} image(s) into {out} in {report.seconds:.1f} s"
        + (f"; mean {console.stage_line(means)}" if report.done else "")
    )
    if report.failed:
        raise DiffCutError(f"{len(report.failed)} of {len(images)} image(s) failed (see the warnings above)")
    return 0


def run_segment_ray(args: argparse.Namespace, out: Path) -> int:
    from diffcut_edge.atomic import make_dirs
    from diffcut_edge.runtime.manifest import read_manifest
    from diffcut_edge.serve import ray_batch

    items = ray_batch.collect_items(args.inputs, out)
    spec = SEGMENT_MODEL.build(args)
    console.note_verification("segment", read_manifest(spec.model_dir), spec.model_dir)  # before Ray starts
    make_dirs(out)
    with console.RayLines(quiet=args.quiet) as lines:
        report = ray_batch.run(
            items,
            spec,
            out,
            output=SEGMENT_OUTPUT.build(args),
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            batch_size=args.batch_size,
            address=args.address,
            on_row=lines.row,
            on_plan=lines.plan,
        )
    skipped = f", {report.skipped} complete from an earlier run" if report.skipped else ""
    print(
        f"segmented {report.done} image(s) into {out} with Ray ({args.workers} worker(s)) in {report.seconds:.1f} s, "
        f"{report.images_per_s:.2f} images/s{skipped}; one line per image in {out / ray_batch.RESULTS_NAME}"
    )
    if report.failed:
        raise DiffCutError(f"{len(report.failed)} of {report.images} image(s) failed (see results.jsonl)")
    return 0


# -------------------------------------------------------------------------- video
def add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "video",
        help="segment a video file and write the overlay video",
        description="Segment every frame of a video (any file OpenCV reads) and write "
        "the overlay video at the input's frame rate and size.",
    )
    p.add_argument("input", metavar="IN", help="input video file")
    p.add_argument("output", metavar="OUT", help="output video (.mp4 with mp4v, .avi with MJPG)")
    p.add_argument("--codec", default="mp4v", help="FourCC of the output codec (default mp4v)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="play the file as a camera would deliver it: frames at the file's rate, the encoder in its "
        "own worker, dropped frames left out of OUT (default: every frame waits for its result)",
    )
    VIDEO_OPTIONS.add(p)
    VIDEO_MODEL.add(p)


def run_video(args: argparse.Namespace) -> int:
    from diffcut_edge.apps.video import AtomicVideoWriter, FrameReader, parse_source
    from diffcut_edge.apps.webcam import LiveOutputs, run_live

    source = parse_source(args.input)
    if not source.live and Path(args.output).resolve() == Path(args.input).resolve():
        raise DiffCutError("OUT is the input file; choose another output path")
    AtomicVideoWriter.check_target(args.output, args.codec)  # before the model opens
    frames_out = VIDEO_OPTIONS.frame_saver(args)
    with (
        FrameReader(source, warn=lambda m: console.warn("video", m)) as reader,
        open_segmenter(args, VIDEO_MODEL.build(args), in_worker=runs_in_worker(args, VIDEO_OPTIONS)) as seg,
        AtomicVideoWriter(args.output, reader.info.fps, None, codec=args.codec) as writer,
    ):
        total = min(reader.info.frame_count or 0, args.max_frames or 1 << 62) or args.max_frames
        with console.progress(total=total, quiet=args.quiet, unit="frame") as bar:
            stats = run_live(
                reader,
                seg,
                LiveOutputs(writer=writer, frames=frames_out, hud=False),
                keyframes=VIDEO_OPTIONS.build(args),
                realtime=args.realtime,
                pipelined=args.pipeline,
                max_frames=args.max_frames,
                track=args.track,
                style=OverlayArgs().build(args),
                pace_fps=reader.info.fps if args.realtime else None,
                on_frame=lambda item: bar.update(1),
            ).stats
        if writer.frames == 0:
            raise DiffCutError(f"no frame could be read from {source}; nothing written")
    print(
        f"wrote {args.output} ({reader.info.fps:.2f} fps, {writer.written_size[0]}x{writer.written_size[1]}): "
        f"{stats.summary()}{console.video_notes(reader.stats, writer)}"
    )
    return 0


# ------------------------------------------------------------------------- webcam
def add_webcam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "webcam",
        help="live segmentation from a camera, file or stream",
        description="Live segmentation in a window (keys: q/Esc quit, r toggle refinement, "
        "f/space freeze). --headless runs without a display.",
    )
    p.add_argument("--source", default="0", help="camera index, video file or rtsp/http URL (default 0)")
    p.add_argument("--headless", action="store_true", help="no window (servers, tests); combine with --record")
    p.add_argument("--record", default=None, metavar="FILE", help="also write the overlay video to FILE")
    p.add_argument("--codec", default="mp4v", help="FourCC of the --record codec (default mp4v)")
    p.add_argument(
        "--retries",
        type=non_negative_int,
        default=5,
        help="connection attempts when a live source cannot be opened or drops, with exponential back-off (default 5)",
    )
    p.add_argument(
        "--serve",
        default=None,
        metavar="[HOST:]PORT",
        help="watch and tune in a browser at http://HOST:PORT/ (default host 127.0.0.1; implies "
        "--headless; needs the [live] extra)",
    )
    p.add_argument(
        "--token",
        default=None,
        help="with --serve beyond localhost: the token controls and snapshots need (default: generated and printed)",
    )
    p.add_argument(
        "--max-clients",
        type=positive_int,
        default=8,
        help="with --serve: browsers that may watch at once (default 8; more get 503)",
    )
    p.add_argument("--loop", action="store_true", help="replay a video file source when it ends (demos, --serve)")
    WEBCAM_OPTIONS.add(p)
    VIDEO_MODEL.add(p)


def _check_webcam(args: argparse.Namespace) -> tuple[Any, Any]:
    """Everything about the flags that can fail before the camera and model open: (source, serve address)."""
    from diffcut_edge.apps.live import parse_serve
    from diffcut_edge.apps.video import AtomicVideoWriter, parse_source
    from diffcut_edge.apps.webcam import Window

    if args.token and not args.serve:
        raise DiffCutError("--token needs --serve")
    serve = parse_serve(args.serve) if args.serve else None
    if not (args.headless or serve):
        Window.check()
    source = parse_source(args.source)
    if args.loop and source.live:
        raise DiffCutError("--loop replays video files; a camera or stream has no end to replay from")
    if args.record:
        if not source.live and Path(args.record).resolve() == Path(args.source).resolve():
            raise DiffCutError("--record is the --source file: recording would overwrite it; choose another path")
        AtomicVideoWriter.check_target(args.record, args.codec)  # before the camera and model open
    return source, serve


def _serve_live_view(args: argparse.Namespace, stack: Any, serve: tuple[str, int]) -> Any:
    """The live view's hub, its server bound now: a port in use fails before the camera and model open."""
    from diffcut_edge.apps.live import LiveHub, LiveServer

    hub = LiveHub()
    server = stack.enter_context(LiveServer(hub, *serve, token=args.token, max_clients=args.max_clients))
    print(f"serving the live view at {server.url}", flush=True)
    return hub


def run_webcam(args: argparse.Namespace) -> int:
    import contextlib

    from diffcut_edge.apps.video import AtomicVideoWriter, FrameReader
    from diffcut_edge.apps.webcam import LiveOutputs, Window, replayed, run_live

    source, serve = _check_webcam(args)
    warn = lambda message: console.warn("webcam", message)  # noqa: E731
    realtime = runs_in_worker(args, WEBCAM_OPTIONS)  # every:1 waits for each result; others run a worker
    with contextlib.ExitStack() as stack:
        outputs = LiveOutputs(
            window=None if args.headless or serve else Window(),
            frames=WEBCAM_OPTIONS.frame_saver(args),
            hub=_serve_live_view(args, stack, serve) if serve else None,
        )
        reader = stack.enter_context(FrameReader(source, retries=args.retries, warn=warn))
        seg = stack.enter_context(open_segmenter(args, VIDEO_MODEL.build(args), in_worker=realtime))
        if args.record:  # keep_on_error: a recording made before a stream finally dropped is kept
            outputs.writer = stack.enter_context(
                AtomicVideoWriter(args.record, reader.info.fps, None, codec=args.codec, keep_on_error=True)
            )
        frames = replayed(reader, lambda: FrameReader(source, retries=args.retries, warn=warn)) if args.loop else reader
        summary = run_live(
            frames,
            seg,
            outputs,
            keyframes=WEBCAM_OPTIONS.build(args),
            realtime=realtime,
            pipelined=args.pipeline,
            max_frames=args.max_frames,
            track=args.track,
            style=OverlayArgs().build(args),
            pace_fps=reader.info.fps if realtime and not source.live else None,
        )
        if outputs.writer is not None and outputs.writer.frames == 0 and not summary.quit:
            raise DiffCutError(f"no frame could be read from {source}; nothing recorded")
    print(console.live_summary(summary, args.max_frames, args.record, outputs.writer))
    return 0


# -------------------------------------------------------------------------- bench
def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="per-stage latency of a model folder",
        description="Warm up, then time every stage (median and p90) at each batch size.",
    )
    p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
    p.add_argument(
        "--backend", choices=backends(), default="auto", help="encoder backend (default: auto = best available)"
    )
    p.add_argument(
        "--batch", type=batch_sizes, default=(1,), metavar="B[,B...]", help="batch sizes to time, e.g. 1,4 (default 1)"
    )
    p.add_argument("--iters", type=positive_int, default=10, help="timed runs per batch size (default 10)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True, help="include PAMR (default: on)")
    p.add_argument("--image", default=None, help="frame to time (default: a synthetic 640x480 frame, deterministic)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the table")


def run_bench(args: argparse.Namespace) -> int:
    import json

    from diffcut_edge.eval import bench
    from diffcut_edge.runtime.spec import SegmenterSpec

    frame, image_name = bench.bench_frame(args.image)
    spec = SegmenterSpec(args.model_dir, backend=args.backend).replace(refine=args.refine)
    with open_segmenter(args, spec) as seg:
        report = bench.run_bench(
            seg,
            frame,
            batches=args.batch,
            iters=args.iters,
            warmup=args.warmup,
            image=image_name,
            refine=args.refine,
            progress=(lambda m: None) if args.json else (lambda m: print(m, file=sys.stderr)),
        )
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else bench.format_report(report))
    return 0
