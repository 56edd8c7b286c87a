"""Option groups: each adds its flags to a parser and builds the value they describe.

The Polygraphy shape: a verb lists its groups, the parser gets their flags, and ``build(args)``
turns the parsed flags into one library value (:class:`SegmenterSpec`, ``KeyframePolicy``,
``OutputOptions``, ``RepositorySpec``). Argparse types parse with the library's own validation, so a
value is checked in one place whether it comes from a flag, Python or a worker's JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from diffcut_edge.cli import console
from diffcut_edge.defaults import ALPHA, DEVICES, MASK_SIZE, PRECISIONS, TAU
from diffcut_edge.errors import DiffCutError


# ------------------------------------------------------------------ argparse types
def bounded(cast: Callable[[str], float], low: float, *, strict: bool, what: str) -> Callable[[str], float]:
    """An argparse type: ``cast(text)`` that must be > low (strict) or >= low; NaN is refused."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


positive_int = bounded(int, 0, strict=True, what="a positive integer")
non_negative_int = bounded(int, 0, strict=False, what="an integer >= 0")
non_negative_float = bounded(float, 0, strict=False, what="a number >= 0")


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def batch_sizes(text: str) -> tuple[int, ...]:
    """``1,4`` -> (1, 4)."""
    return tuple(positive_int(part.strip()) for part in text.split(",") if part.strip()) or (1,)


def library_type(parse_value: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    """An argparse type that parses with the library's parser: its DiffCutError becomes argparse's message."""

    def parse(text: str) -> Any:
        try:
            return parse_value(text)
        except DiffCutError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"--{name}: ")) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def option_type(name: str) -> Callable[[str], Any]:
    """An argparse type that parses and validates like ``SegmenterOptions`` (one source of truth)."""

    def parse_value(text: str) -> Any:
        from diffcut_edge.runtime.options import parse_option

        return parse_option(name, text)

    return library_type(parse_value, name)


def backends() -> tuple[str, ...]:
    from diffcut_edge.runtime.backends import BACKENDS

    return BACKENDS


# ------------------------------------------------------------------ option groups
class PostprocessArgs:
    """The DiffCut knobs after the encoder: builds ``SegmenterOptions``."""

    def add(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--refine",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="sharpen the masks with PAMR (default: on)",
        )
        p.add_argument(
            "--tau",
            type=option_type("tau"),
            default=TAU,
            help=f"NCut threshold >= 0: lower splits less, 0 not at all (default {TAU})",
        )
        p.add_argument(
            "--alpha",
            type=option_type("alpha"),
            default=ALPHA,
            help=f"affinity exponent > 0: higher splits more (default {ALPHA:g})",
        )
        p.add_argument(
            "--mask-size",
            type=option_type("mask_size"),
            default=MASK_SIZE,
            metavar="N|HxW",
            help=f"resolution of the assigned/refined masks (default {MASK_SIZE[0]})",
        )
        p.add_argument(
            "--max-segments",
            type=option_type("max_segments"),
            default=None,
            help="stop splitting at this many segments",
        )
        p.add_argument(
            "--min-segment-size",
            type=option_type("min_segment_size"),
            default=None,
            help="do not split segments smaller than this many feature cells",
        )

    def build(self, args: argparse.Namespace) -> Any:
        from diffcut_edge.runtime.options import SegmenterOptions

        return SegmenterOptions(
            tau=args.tau,
            alpha=args.alpha,
            mask_size=tuple(args.mask_size),
            refine=args.refine,
            max_segments=args.max_segments,
            min_segment_size=args.min_segment_size,
        )


@dataclass
class SegmenterArgs:
    """Which segmenter with which options (segment, video, webcam): builds one ``SegmenterSpec``.

    allow_model: also --model HUB_ID|DIR (exported on first use into the cache) beside --model-dir.
    tint_largest: the verb's default for --tint-largest (:class:`OverlayArgs`).
    """

    allow_model: bool = False
    tint_largest: bool = True

    def add(self, p: argparse.ArgumentParser) -> None:
        if self.allow_model:
            p.add_argument("--model-dir", default=None, help="exported model folder (diffcut-edge export)")
            p.add_argument(
                "--model",
                default=None,
                metavar="HUB_ID|DIR",
                help="a diffusers pipeline (hub id or folder): exported on first use into the cache "
                "(~/.cache/diffcut-edge, or $DIFFCUT_EDGE_CACHE) and reused; needs the [export] "
                "extra",
            )
            p.add_argument(
                "--resolution",
                type=positive_int,
                default=None,
                help="with --model: export resolution (default: the recipe's, else 1024)",
            )
            p.add_argument(
                "--precision", choices=PRECISIONS, default="fp32", help="with --model: export precision (default fp32)"
            )
        else:
            p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
        p.add_argument(
            "--backend", choices=backends(), default="auto", help="encoder backend (default: auto = best available)"
        )
        p.add_argument(
            "--device",
            choices=("auto", *DEVICES),
            default="auto",
            help="where NCut/PAMR run: cpu (numpy) or cuda (cupy) (default auto: where the encoder runs)",
        )
        PostprocessArgs().add(p)
        p.add_argument(
            "--classes",
            default=None,
            metavar='"CAT, SOFA|COUCH, ..."',
            help="name the segments with these classes (comma-separated; synonyms of one class "
            "joined by |), embedded now with the folder's CLIP text tower (needs export-vocab) "
            "(default: the folder's vocabulary, if it has one)",
        )
        OverlayArgs(self.tint_largest).add(p)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-item lines")

    def check(self, args: argparse.Namespace) -> None:
        """Exactly one of --model-dir and --model, and no --resolution a model folder would ignore."""
        model = args.model if self.allow_model else None
        if model and args.model_dir:
            raise DiffCutError("give either --model-dir (an exported folder) or --model (a pipeline), not both")
        if not model and not args.model_dir:
            raise DiffCutError(
                "segment needs --model-dir MODEL_DIR (an exported folder) or --model HUB_ID|DIR "
                "(a diffusers pipeline, exported on first use)"
            )
        if self.allow_model and args.model_dir and args.resolution is not None:
            raise DiffCutError(
                "--resolution is the export resolution of --model; a --model-dir folder has its "
                "own (in its manifest): drop --resolution, or export another folder"
            )

    def model_dir(self, args: argparse.Namespace) -> str:
        """The model folder to open: --model-dir, or the cached export of --model."""
        self.check(args)
        if not (self.allow_model and args.model):
            return args.model_dir
        from diffcut_edge.export.cache import cached_export

        return str(
            cached_export(
                args.model,
                resolution=args.resolution,
                precision=args.precision,
                progress=not args.quiet,
                say=lambda message: console.info(args.verb, message),
            )
        )

    def build(self, args: argparse.Namespace) -> Any:
        from diffcut_edge.runtime.spec import SegmenterSpec

        if isinstance(args.classes, str) and "," not in args.classes and len(args.classes.split()) >= 3:
            console.warn(
                args.verb,
                f"--classes {args.classes!r} is ONE class with that name; separate classes "
                f'with commas ("{", ".join(args.classes.split())}")',
            )
        return SegmenterSpec(
            self.model_dir(args),
            backend=args.backend,
            device=None if args.device == "auto" else args.device,
            options=PostprocessArgs().build(args),
            classes=args.classes,
        )


@dataclass
class OverlayArgs:
    """How overlays look: builds an ``apps.overlay.OverlayStyle``. tint_largest: this verb's default
    (segment leaves the largest segment untinted; video and webcam tint it, as it can change from
    frame to frame)."""

    tint_largest: bool = True

    def add(self, p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("overlay")
        g.add_argument("--overlay-alpha", type=fraction, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
        g.add_argument(
            "--boundaries",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="draw the boundaries between segments (default: on)",
        )
        g.add_argument(
            "--names",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="write each named segment's class inside it, after a swatch of its colour "
            "(with a vocabulary; default: on)",
        )
        g.add_argument(
            "--tint-largest",
            action=argparse.BooleanOptionalAction,
            default=self.tint_largest,
            help="tint the largest segment too (default: "
            f"{'on' if self.tint_largest else 'off, the background keeps its colours'})",
        )

    def build(self, args: argparse.Namespace) -> Any:
        from diffcut_edge.apps.overlay import OverlayStyle

        return OverlayStyle(
            alpha=args.overlay_alpha, tint_largest=args.tint_largest, boundaries=args.boundaries, names=args.names
        )


@dataclass
class VideoArgs:
    """The options of a frame loop (video, webcam): which frames run DiffCut (``build``: a
    ``KeyframePolicy``), tracking, pipelining, and per-frame outputs (``frame_saver``)."""

    default: str

    def add(self, p: argparse.ArgumentParser) -> None:
        from diffcut_edge.apps.propagation import KeyframePolicy

        p.add_argument(
            "--keyframes",
            type=library_type(KeyframePolicy.parse, "keyframes"),
            default=None,
            metavar="every:N|auto",
            help="which frames run DiffCut: every:N (frames 0, N, 2N, ...), or auto (on scene cuts, "
            "low flow confidence, old labels, or whenever the encoder is free); the frames "
            f"between are carried there by optical flow (default {self.default})",
        )
        p.add_argument("--every", type=positive_int, default=None, metavar="N", help="the same as --keyframes every:N")
        p.add_argument("--max-frames", type=positive_int, default=None, help="stop after N frames")
        p.add_argument(
            "--no-track",
            dest="track",
            action="store_false",
            help="do not keep segment ids/colours stable across frames",
        )
        p.add_argument(
            "--no-pipeline",
            dest="pipeline",
            action="store_false",
            help="run encoder and post-processing in one thread (default: overlapped)",
        )
        p.add_argument(
            "--save-frames",
            default=None,
            metavar="DIR",
            help="also write each frame's label map (frame_NNNNNN_labels.png, 16-bit, track ids) and "
            "segments (frame_NNNNNN_segments.json: id, area, bbox, RLE, class) into DIR",
        )

    @staticmethod
    def frame_saver(args: argparse.Namespace) -> Any:
        """The --save-frames writer (its folder checked now, before anything slow), or None."""
        if args.save_frames is None:
            return None
        from diffcut_edge.apps.batch import FrameSaver

        return FrameSaver(args.save_frames)

    def build(self, args: argparse.Namespace) -> Any:
        """--keyframes, or its alias --every, or the verb's default (one policy, however it was said)."""
        from diffcut_edge.apps.propagation import KeyframePolicy

        if args.every is not None and args.keyframes is not None:
            raise DiffCutError("--every N is --keyframes every:N: give one of them")
        if args.every is not None:
            return KeyframePolicy("every", args.every)
        return args.keyframes or KeyframePolicy.parse(self.default)


class OutputArgs:
    """What segment writes per image: builds ``apps.batch.OutputOptions``."""

    def add(self, p: argparse.ArgumentParser) -> None:
        from diffcut_edge.apps.batch import OVERLAY_FORMATS

        p.add_argument("--out", required=True, help="output folder (created if missing)")
        p.add_argument(
            "--overlay-format",
            choices=OVERLAY_FORMATS,
            default="jpg",
            help="overlay image format, or none to skip overlays (default jpg)",
        )
        p.add_argument(
            "--save-npz",
            action="store_true",
            help="also save labels, mask_labels, coarse_labels and embeddings to <stem>.npz",
        )
        p.add_argument(
            "--save-color",
            action="store_true",
            help="also save <stem>_labels_color.png: the label map in the overlay's colours (the "
            "16-bit <stem>_labels.png looks black in an image viewer)",
        )

    def build(self, args: argparse.Namespace) -> Any:
        from diffcut_edge.apps.batch import OutputOptions

        return OutputOptions(
            args.overlay_format,
            OverlayArgs().build(args),
            args.save_npz,
            segments_json=True,
            save_color=args.save_color,
        )


@dataclass
class RepositoryArgs:
    """What triton-repo and serve share: the encoder model, batching, instances, the post-processing
    segmenter. ``build`` returns the ``SegmenterSpec`` and the ``RepositorySpec``."""

    encoders: Sequence[str]

    def add(self, p: argparse.ArgumentParser) -> None:
        encoders = self.encoders
        p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
        p.add_argument(
            "--encoder",
            choices=encoders,
            default=encoders[0],
            help="the encoder model: Triton's onnxruntime backend, a TensorRT plan of the folder, or "
            "this project's ONNX Runtime backend in a python model (for a server without "
            f"onnxruntime) (default {encoders[0]})",
        )
        p.add_argument(
            "--engine", default=None, help="with --encoder tensorrt: the plan file, when the folder has several"
        )
        p.add_argument(
            "--max-batch",
            type=positive_int,
            default=4,
            help="the encoder's dynamic-batching limit (default 4; a plan's profile caps it)",
        )
        p.add_argument("--instances", type=positive_int, default=1, help="encoder instances (default 1)")
        p.add_argument(
            "--post-instances",
            type=positive_int,
            default=2,
            help="post-processing (NCut, PAMR) instances, one process each (default 2)",
        )
        p.add_argument(
            "--queue-delay-us",
            type=non_negative_int,
            default=0,
            help="how long the dynamic batcher may wait to fill a batch (default 0)",
        )
        p.add_argument(
            "--device",
            choices=DEVICES,
            default="cpu",
            help="where the post-processing runs: cpu (numpy) or cuda (cupy) (default cpu)",
        )
        p.add_argument(
            "--name-segments",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="serve each segment's class (the segments output, <stem>_segments.json as UTF-8) "
            "(default: when the folder has a vocabulary, from export-vocab)",
        )
        PostprocessArgs().add(p)

    def build(self, args: argparse.Namespace, encoder: str | None = None) -> tuple[Any, Any]:
        from diffcut_edge.runtime.spec import SegmenterSpec
        from diffcut_edge.serve.triton_repo import RepositorySpec

        segmenter = SegmenterSpec(
            args.model_dir, device=args.device, options=PostprocessArgs().build(args), name_segments=args.name_segments
        )
        return segmenter, RepositorySpec(
            encoder=encoder or args.encoder,
            max_batch=args.max_batch,
            instances=args.instances,
            post_instances=args.post_instances,
            queue_delay_us=args.queue_delay_us,
            engine=args.engine,
        )
