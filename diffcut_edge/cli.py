"""``diffcut-edge``: one entry point, verbs in the order a user meets them.

Each verb has an ``_add_<verb>(subparsers)`` that declares its options and a
``_run_<verb>(args) -> int`` that does the work, importing what it needs lazily so
``diffcut-edge segment`` never loads torch. Errors the user can act on are
:class:`DiffCutError`; :func:`main` prints them on one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence

from diffcut_edge import __version__
from diffcut_edge.defaults import ALPHA, DEVICES, OPEN_VOCAB_MASK_SIZE, OPSET, PRECISIONS, STAGES, TAU, VAES
from diffcut_edge.errors import DiffCutError

EXIT_ERROR = 2        # a DiffCutError: bad input, wrong folder, missing extra
EXIT_INTERNAL = 1     # an unexpected exception (a bug): one line, --debug for the traceback
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report it
EXIT_TERMINATED = 143   # SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so it unwinds like Ctrl-C: recordings are finished,
    temporary files removed (a service manager's stop is not a crash)."""


# --------------------------------------------------------------------------- helpers
def _bounded(cast: Callable[[str], float], low: float, *, strict: bool, what: str) -> Callable[[str], float]:
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


_positive_int = _bounded(int, 0, strict=True, what="a positive integer")
_non_negative_int = _bounded(int, 0, strict=False, what="an integer >= 0")
_non_negative_float = _bounded(float, 0, strict=False, what="a number >= 0")


# ------------------------------------------------------------------------ doctor
def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this machine can run, and why",
                       description="Python, onnxruntime and its providers, cupy, TensorRT, the GPU and "
                                   "JetPack; with --model-dir also the backend auto picks and the engines "
                                   "that match this GPU. Exit 0 when the chosen backend can run.")
    p.add_argument("--model-dir", default=None, help="an exported model folder to check against this machine")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the lines")


def _run_doctor(args: argparse.Namespace) -> int:
    import json

    from diffcut_edge.apps.doctor import diagnose

    report = diagnose(args.model_dir)
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.can_run else EXIT_ERROR


# ------------------------------------------------------------------------ models
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model recipes and tiny random-weight models")
    msub = p.add_subparsers(dest="models_cmd", metavar="{list,make-tiny,make-tiny-clip}", required=True)
    msub.add_parser("list", help="list the known model recipes")
    t = msub.add_parser("make-tiny", help="write a tiny random-weight pipeline (no download)")
    t.add_argument("--family", choices=("sdxl", "sd1"), required=True)
    t.add_argument("--out", required=True, help="folder to write the pipeline to")
    t.add_argument("--seed", type=int, default=0)
    c = msub.add_parser("make-tiny-clip", help="write a tiny random-weight ConvNeXt CLIP (open_clip local-dir layout)")
    c.add_argument("--out", required=True, help="folder to write it to (load it with --clip local-dir:DIR)")
    c.add_argument("--seed", type=int, default=0)


def _run_models(args: argparse.Namespace) -> int:
    from diffcut_edge import models

    if args.models_cmd == "list":
        for recipe in models.list_recipes():
            default = "  (default)" if recipe.hub_id == models.DEFAULT_MODEL else ""
            print(f"{recipe.name:<10} {recipe.hub_id:<42} family={recipe.family:<5} "
                  f"R={recipe.resolution} t={recipe.timestep} hook=unet.{recipe.hook_path}{default}")
        return 0
    if args.models_cmd == "make-tiny-clip":
        from diffcut_edge.models.clip import make_tiny_clip

        path = make_tiny_clip(args.out, seed=args.seed)
        print(f"wrote a tiny random-weight ConvNeXt CLIP to {path}; use it with --clip local-dir:{path}")
        return 0
    path = models.make_tiny_pipeline(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random-weight {args.family} pipeline to {path}")
    return 0


# ------------------------------------------------------------------ open vocabulary
def _add_export_vocab(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.models.clip import DEFAULT_CLIP
    from diffcut_edge.runtime.vocabulary import BUILTIN_VOCABULARIES

    p = sub.add_parser("export-vocab", help="add CLIP segment naming (dense, head and text graphs + a text bank) "
                                            "to a model folder",
                       description="Exports the CLIP of the paper's open-vocabulary extension into the model "
                                   "folder: dense graph (dynamic H, W), head graph (dynamic segments), text "
                                   "tower (for --classes at run time) and the vocabulary's text bank, recorded "
                                   "in the manifest with SHA-256. docs/open-vocabulary.md")
    p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
    p.add_argument("--clip", default=DEFAULT_CLIP, metavar="MODEL:TAG|local-dir:DIR",
                   help=f"open_clip model and pretrained tag, or an open_clip folder (default {DEFAULT_CLIP})")
    p.add_argument("--vocab", default="voc", metavar="|".join(BUILTIN_VOCABULARIES) + "|FILE.txt",
                   help="classes: a built-in vocabulary or a UTF-8 file, one class a line, synonyms "
                        "comma-separated (default voc)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _run_export_vocab(args: argparse.Namespace) -> int:
    from diffcut_edge.export.clip_export import export_vocabulary
    from diffcut_edge.runtime.vocabulary import load_vocabulary

    vocabulary = load_vocabulary(args.vocab)   # before the (slow) CLIP loads
    say = (lambda m: None) if args.quiet else (lambda m: print(f"export-vocab: {m}", file=sys.stderr, flush=True))
    record = export_vocabulary(args.model_dir, args.clip, vocabulary, progress=say)
    print(f"added the vocabulary {record['vocabulary']} ({record['num_classes']} classes, CLIP {record['clip']}) "
          f"to {args.model_dir}; segment now writes <stem>_segments.json")
    return 0


# ------------------------------------------------------------------ export stage
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the truncated encoder to an ONNX model folder")
    p.add_argument("--model", required=True, help="hub id (e.g. segmind/SSD-1B) or a saved pipeline folder")
    p.add_argument("--out", required=True, help="model folder to write (encoder.onnx + manifest.json)")
    p.add_argument("--resolution", type=_positive_int, default=1024, help="input side R, multiple of 64")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="UNet part precision (the VAE encoder stays fp32)")
    p.add_argument("--opset", type=_positive_int, default=OPSET,
                   help=f"ONNX opset (default {OPSET}: the newest every supported TensorRT parses, 8.6 included)")
    p.add_argument("--vae", choices=VAES, default="full",
                   help="tiny: replace the VAE encoder by AutoencoderTiny (TAESD, ~10x fewer VAE FLOPs); "
                        "verify the result with 'verify --against' a full-VAE export")
    p.add_argument("--tiny-vae", default=None, metavar="HUB_ID|DIR",
                   help="AutoencoderTiny weights for --vae tiny (default: madebyollin/taesdxl for SDXL models, "
                        "madebyollin/taesd for SD1)")
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_export(args: argparse.Namespace) -> int:
    from diffcut_edge.export.onnx_export import export_model_report
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    if args.tiny_vae and args.vae != "tiny":
        raise DiffCutError("--tiny-vae needs --vae tiny")
    report = export_model_report(args.model, args.out, resolution=args.resolution, precision=args.precision,
                                 opset=args.opset, progress=not args.no_progress, force=args.force,
                                 vae=args.vae, tiny_vae=args.tiny_vae)
    size = (report.onnx_bytes + report.data_bytes) / 1e6
    from diffcut_edge.lazy import tensorrt

    nxt = (f"diffcut-edge build-engine --model-dir {report.model_dir}" if tensorrt.available() else
           f"diffcut-edge segment IMAGES --model-dir {report.model_dir} (a TensorRT engine is built where "
           f"TensorRT is installed: build-engine on the device)")
    print(f"wrote {report.model_dir} ({size:.1f} MB, {report.nodes} nodes, "
          f"{sum(report.seconds.values()):.1f} s); next: {nxt}")
    return 0


def _add_build_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine", help="build a TensorRT engine in a model folder (on the target GPU)")
    p.add_argument("--model-dir", required=True, help="model folder written by 'diffcut-edge export'")
    p.add_argument("--workspace", type=float, default=None, metavar="GB",
                   help="cap on TensorRT's scratch memory (GiB); lower it if the build runs out of memory")
    p.add_argument("--batch", default="1:1:4", metavar="MIN:OPT:MAX",
                   help="batch sizes of the optimization profile (default 1:1:4)")
    p.add_argument("--no-timing-cache", action="store_true", help="do not read or write the timing cache (timing.<gpu>.trt<ver>.cache)")
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose build log")


def _run_build_engine(args: argparse.Namespace) -> int:
    from diffcut_edge.export.tensorrt_build import build_engine, parse_batch_spec

    batch = parse_batch_spec(args.batch)  # fail on a typo before loading TensorRT
    path = build_engine(args.model_dir, workspace_gb=args.workspace, batch=batch,
                        timing_cache=not args.no_timing_cache, verbose=args.verbose)
    print(f"wrote {path} (batch {batch[0]}:{batch[1]}:{batch[2]}) and recorded it in the manifest")
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.export.quantize import ACTIVATIONS, DEFAULT_MAX_IMAGES, METHODS

    p = sub.add_parser("quantize", help="INT8 model folder from an fp32 one, calibrated on your images")
    p.add_argument("--model-dir", required=True, help="fp32 model folder written by 'diffcut-edge export'")
    p.add_argument("--calibration", required=True, nargs="+", metavar="IMAGES",
                   help="image files, folders or globs like the ones the model will see (16-64 is plenty)")
    p.add_argument("--out", required=True, help="new model folder to write")
    p.add_argument("--method", choices=METHODS, default="minmax", help="activation range calibration")
    p.add_argument("--activations", choices=ACTIVATIONS, default="uint8",
                   help="uint8 for onnxruntime on the CPU (default); int8 (symmetric) for TensorRT engines")
    p.add_argument("--keep-fp32", nargs="+", default=[], metavar="PATTERN",
                   help="also keep these node names (fnmatch patterns) in float")
    p.add_argument("--max-images", type=_positive_int, default=DEFAULT_MAX_IMAGES,
                   help=f"calibrate on at most this many images (default {DEFAULT_MAX_IMAGES})")
    p.add_argument("--force", action="store_true", help="replace an existing model folder at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_quantize(args: argparse.Namespace) -> int:
    from diffcut_edge.export.quantize import quantize_model

    report = quantize_model(args.model_dir, args.calibration, args.out, method=args.method,
                            activations=args.activations, keep_fp32=args.keep_fp32, max_images=args.max_images,
                            force=args.force, progress=not args.no_progress)
    print("\n".join(report.lines()))
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare a model folder with the PyTorch reference, or with another folder")
    p.add_argument("--model-dir", required=True, help="model folder to check")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or pipeline folder the folder was exported from (needs [export])")
    source.add_argument("--against", metavar="DIR",
                        help="full-precision model folder to compare with (e.g. the fp32 source of an INT8 "
                             "folder); no torch needed; the verdict is written into --model-dir's manifest")
    p.add_argument("images", nargs="*", help="images to compare on (default: scikit-image sample photos)")
    p.add_argument("--no-labels", action="store_true", help="skip the NCut label agreement")


def _run_verify(args: argparse.Namespace) -> int:
    if args.against:
        from diffcut_edge.export.verify import verify_against

        report = verify_against(args.model_dir, args.against, args.images or None, labels=not args.no_labels)
        print("\n".join(report.lines()))
        print(f"recorded in {args.model_dir}/manifest.json")
        if not report.passed:
            print("next: calibrate on more (and more typical) images, try --method percentile, or keep the layers "
                  "that hurt in float with --keep-fp32 (diffcut-edge quantize; docs/faster.md)")
        return 0 if report.passed else EXIT_ERROR
    from diffcut_edge.export.verify import verify_model
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    report = verify_model(args.model, args.model_dir, args.images or None, labels=not args.no_labels)
    print("\n".join(report.lines()))
    if not report.passed:
        print(f"next: re-export the folder from the same pipeline (diffcut-edge export --model {args.model} --out "
              f"{args.model_dir} --force), and check that --model is the pipeline it was exported from")
    return 0 if report.passed else EXIT_ERROR


# ------------------------------------------------------------------- applications
def _option_type(name: str) -> Callable[[str], object]:
    """An argparse type that parses and validates like ``SegmenterOptions`` (one source of truth)."""
    def parse(text: str) -> object:
        from diffcut_edge.runtime.options import parse_option

        try:
            return parse_option(name, text)
        except DiffCutError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _add_postprocess_options(p: argparse.ArgumentParser) -> None:
    """The DiffCut knobs after the encoder (``SegmenterOptions``): segment, video, webcam, triton-repo."""
    from diffcut_edge.defaults import MASK_SIZE

    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="sharpen the masks with PAMR (default: on)")
    p.add_argument("--tau", type=_option_type("tau"), default=TAU,
                   help=f"NCut threshold >= 0: lower splits less, 0 not at all (default {TAU})")
    p.add_argument("--alpha", type=_option_type("alpha"), default=ALPHA,
                   help=f"affinity exponent > 0: higher splits more (default {ALPHA:g})")
    p.add_argument("--mask-size", type=_option_type("mask_size"), default=MASK_SIZE, metavar="N|HxW",
                   help=f"resolution of the assigned/refined masks (default {MASK_SIZE[0]})")
    p.add_argument("--max-segments", type=_option_type("max_segments"), default=None,
                   help="stop splitting at this many segments")
    p.add_argument("--min-segment-size", type=_option_type("min_segment_size"), default=None,
                   help="do not split segments smaller than this many feature cells")


def _postprocess_options(args: argparse.Namespace):
    from diffcut_edge.runtime.options import SegmenterOptions

    return SegmenterOptions(tau=args.tau, alpha=args.alpha, mask_size=tuple(args.mask_size), refine=args.refine,
                            max_segments=args.max_segments, min_segment_size=args.min_segment_size)


def _add_segmenter_options(p: argparse.ArgumentParser, *, allow_model: bool = False) -> None:
    """Options shared by segment, video and webcam: the model folder and the DiffCut knobs."""
    if allow_model:
        p.add_argument("--model-dir", default=None, help="exported model folder (diffcut-edge export)")
        p.add_argument("--model", default=None, metavar="HUB_ID|DIR",
                       help="a diffusers pipeline (hub id or folder): exported on first use into the cache "
                            "(~/.cache/diffcut-edge, or $DIFFCUT_EDGE_CACHE) and reused; needs the [export] extra")
        p.add_argument("--resolution", type=_positive_int, default=None,
                       help="with --model: export resolution (default: the recipe's, else 1024)")
        p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="with --model: export precision")
    else:
        p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
    p.add_argument("--backend", choices=_backends(), default="auto",
                   help="encoder backend (default: auto = best available)")
    p.add_argument("--device", choices=("auto", *DEVICES), default="auto",
                   help="where NCut/PAMR run: cpu (numpy) or cuda (cupy); auto follows the encoder")
    _add_postprocess_options(p)
    p.add_argument("--classes", default=None, metavar='"CAT, SOFA, ..."',
                   help="name the segments with these classes (comma-separated), embedded now with the folder's "
                        "CLIP text tower (needs export-vocab); default: the folder's vocabulary, if it has one")
    p.add_argument("--overlay-alpha", type=_fraction, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-item lines")


def _check_model_choice(args: argparse.Namespace) -> None:
    """Exactly one of --model-dir and --model (where the verb has --model), and no --resolution that a
    model folder would silently ignore."""
    model = getattr(args, "model", None)
    if model and args.model_dir:
        raise DiffCutError("give either --model-dir (an exported folder) or --model (a pipeline), not both")
    if not model and not args.model_dir:
        raise DiffCutError("segment needs --model-dir MODEL_DIR (an exported folder) or --model HUB_ID|DIR "
                           "(a diffusers pipeline, exported on first use)")
    if args.model_dir and getattr(args, "resolution", None) is not None:
        raise DiffCutError("--resolution is the export resolution of --model; a --model-dir folder has its own "
                           "(in its manifest): drop --resolution, or export another folder")



def _model_dir(args: argparse.Namespace) -> str:
    """The model folder to open: --model-dir, or the cached export of --model."""
    _check_model_choice(args)
    if not getattr(args, "model", None):
        return args.model_dir
    from diffcut_edge.export.cache import cached_export

    return str(cached_export(args.model, resolution=args.resolution, precision=args.precision,
                             progress=not args.quiet))


def _open_segmenter(args: argparse.Namespace):
    """The Segmenter the options describe (tests monkeypatch this to inject a fake)."""

    model_dir = _model_dir(args)
    spec = _segmenter_spec(args, model_dir)
    if _runs_in_worker(args):
        # The realtime loop opens the model in its keyframe worker process: not here a second time.
        from diffcut_edge.apps.pipeline import RemoteSegmenter

        seg = RemoteSegmenter(spec)
    else:
        seg = spec.open()
    _note_verification(args.verb, seg.manifest, model_dir)
    return seg


def _segmenter_spec(args: argparse.Namespace, model_dir: str):
    """The one SegmenterSpec the segmenter options describe (local engine, realtime worker, Ray)."""
    from diffcut_edge.runtime.segmenter import Segmenter

    if isinstance(args.classes, str) and "," not in args.classes and len(args.classes.split()) >= 3:
        _warn(args.verb, f"--classes {args.classes!r} is ONE class with that name; separate classes with commas "
                         f"(\"{', '.join(args.classes.split())}\")")
    return Segmenter.spec_from(model_dir, backend=args.backend, refine=args.refine,
                               device=None if args.device == "auto" else args.device,
                               mask_size=tuple(args.mask_size), tau=args.tau, alpha=args.alpha,
                               max_segments=args.max_segments, min_segment_size=args.min_segment_size,
                               classes=args.classes)


def _runs_in_worker(args: argparse.Namespace) -> bool:
    """Whether video/webcam run DiffCut in the realtime keyframe worker (every policy but every:1;
    for video only with --realtime)."""
    if args.verb not in ("video", "webcam") or (args.verb == "video" and not args.realtime):
        return False
    return not _keyframe_policy(args, "auto").per_frame


def _note_verification(verb: str, manifest, model_dir: str) -> None:
    """Say (once, on stderr) when a faster folder was never verified against full precision."""
    note = manifest.verification_note(model_dir)
    if note:
        _warn(verb, note)


def _warn(verb: str, message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"diffcut-edge {verb}: warning: {message}", file=sys.stderr)


def _stage_line(timings: dict) -> str:
    parts = [f"{k} {timings[k]:.0f}" for k in (*STAGES, "label") if k in timings]
    total = f" = {timings['total']:.0f} ms" if "total" in timings else " ms"
    return " + ".join(parts) + total


def _progress(iterable=None, *, total=None, quiet: bool, unit: str):
    from tqdm import tqdm

    # On stderr, so stdout keeps only results; off with --quiet or when stderr is not a terminal.
    return tqdm(iterable, total=total, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty(), leave=False)


def _add_segment(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.apps.batch import OVERLAY_FORMATS

    p = sub.add_parser("segment", help="segment images and write label maps and overlays",
                       description="Segment images, folders or glob patterns. Per image writes "
                                   "<stem>_labels.png (16-bit, values = segment ids) and "
                                   "<stem>_overlay.jpg|png; with --save-npz also <stem>.npz.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR|GLOB", help="images, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--overlay-format", choices=OVERLAY_FORMATS, default="jpg",
                   help="overlay image format, or none to skip overlays (default jpg)")
    p.add_argument("--save-npz", action="store_true",
                   help="also save labels, mask_labels, coarse_labels and embeddings to <stem>.npz")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: a Ray Data job (actors each hold a Segmenter), resumable, with OUT/results.jsonl; "
                        "inputs may also be URIs (s3://, gs://, file://); needs the [ray] extra")
    p.add_argument("--address", default=None, help="with --engine ray: the cluster (auto, ray://HOST:10001); "
                                                   "default: a local Ray started for the job")
    p.add_argument("--workers", type=_positive_int, default=2, help="with --engine ray: actors (default 2)")
    p.add_argument("--gpus-per-worker", type=_non_negative_float, default=0.0,
                   help="with --engine ray: GPUs per actor, fractions share one (default 0: CPU)")
    p.add_argument("--batch-size", type=_positive_int, default=4,
                   help="with --engine ray: images per actor call (default 4)")
    _add_segmenter_options(p, allow_model=True)


def _run_segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffcut_edge.apps import batch, io
    from diffcut_edge.atomic import check_writable_dir, make_dirs

    _check_model_choice(args)  # says what to pass, before anything else is looked at
    if io.is_image_path(args.out) and not Path(args.out).is_dir():
        raise DiffCutError(f"--out is the folder the outputs go into (<name>_labels.png, ...); {args.out} looks like "
                           f"an image file name: give a folder")
    out = check_writable_dir(Path(args.out))  # before the (slow) model opens
    if args.engine == "ray":
        return _run_segment_ray(args, out)
    images, skipped = io.collect_image_paths(args.inputs)
    images, ours = batch.drop_own_outputs(images, out)
    skipped += ours
    if skipped:
        shown = ", ".join(p.name for p in skipped[:5]) + (", …" if len(skipped) > 5 else "")
        _warn("segment", f"skipped {len(skipped)} file(s) that are not images or are outputs: {shown}")
    if not images:
        raise DiffCutError(f"no images found in {' '.join(args.inputs)} "
                           f"(extensions: {', '.join(io.IMAGE_EXTENSIONS)})")
    with _open_segmenter(args) as seg:
        options = batch.OutputOptions(args.overlay_format, args.overlay_alpha, args.save_npz,
                                      segments_json=True)
        make_dirs(out)  # only once the model opened: a failed start leaves nothing behind
        bar = _progress(quiet=args.quiet, unit="img", total=len(images))

        def line(path, result) -> None:
            bar.update(1)
            if not args.quiet:
                k = result.num_segments
                names = getattr(result, "segments", None)
                named = f" ({', '.join(sorted({s.class_name for s in names}))})" if names else ""
                bar.write(f"{path}: {k} segment{'s' if k != 1 else ''}{named}, {result.labels.shape[1]}x"
                          f"{result.labels.shape[0]}, {_stage_line(result.timings)}")

        def failure(path, message) -> None:
            bar.update(1)
            if len(images) > 1:
                _warn("segment", message)

        with bar:
            report = batch.segment_images(seg, images, out, options, on_result=line, on_failure=failure,
                                          raise_unexpected=args.debug)
    if len(images) == 1 and report.failed:
        raise DiffCutError(report.failed[0][1])  # a single image: its own error is the one line
    means = {k: v / max(report.done, 1) for k, v in report.stats.stage_ms.items()}
    print(f"segmented {report.done} image(s) into {out} in {report.seconds:.1f} s"
          + (f"; mean {_stage_line(means)}" if report.done else ""))
    if report.failed:
        raise DiffCutError(f"{len(report.failed)} of {len(images)} image(s) failed (see the warnings above)")
    return 0


def _run_segment_ray(args: argparse.Namespace, out) -> int:
    from pathlib import Path

    from diffcut_edge.apps import batch
    from diffcut_edge.atomic import make_dirs
    from diffcut_edge.serve import ray_batch

    items = ray_batch.collect_items(args.inputs)
    local = [Path(i.source) for i in items if not ray_batch.is_uri(i.source)]
    ours = {str(p) for p in batch.drop_own_outputs(local, out)[1]}  # a re-run does not segment its outputs
    items = [i for i in items if i.source not in ours]
    model_dir = _model_dir(args)
    segmenter = _segmenter_spec(args, model_dir)
    from diffcut_edge.runtime.manifest import read_manifest

    manifest = read_manifest(model_dir)
    output = batch.OutputOptions(args.overlay_format, args.overlay_alpha, args.save_npz,
                                 segments_json=True)
    _note_verification("segment", manifest, model_dir)  # before Ray starts
    make_dirs(out)
    bar = _progress(quiet=args.quiet, unit="img")

    def plan(report) -> None:
        bar.total = report.images - report.skipped
        bar.refresh()

    def row(record) -> None:
        bar.update(1)
        if record["error"]:
            _warn("segment", record["error"])

    with bar:
        report = ray_batch.run(items, model_dir, out, segmenter=segmenter, output=output, workers=args.workers,
                               gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size,
                               address=args.address, on_row=row, on_plan=plan)
    skipped = f", {report.skipped} complete from an earlier run" if report.skipped else ""
    print(f"segmented {report.done} image(s) into {out} with Ray ({args.workers} worker(s)) in {report.seconds:.1f} s, "
          f"{report.images_per_s:.2f} images/s{skipped}; one line per image in {out / ray_batch.RESULTS_NAME}")
    if report.failed:
        raise DiffCutError(f"{len(report.failed)} of {report.images} image(s) failed (see results.jsonl)")
    return 0


def _keyframes(text: str):
    from diffcut_edge.apps.propagation import KeyframePolicy

    try:
        return KeyframePolicy.parse(text)
    except DiffCutError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--keyframes: ")) from None


def _add_video_options(p: argparse.ArgumentParser, default_keyframes: str) -> None:
    p.add_argument("--keyframes", type=_keyframes, default=None, metavar="every:N|auto",
                   help="which frames run DiffCut: every:N (frames 0, N, 2N, ...), or auto (on scene cuts, low "
                        "flow confidence, old labels, or whenever the encoder is free); the frames between are "
                        f"carried there by optical flow (default {default_keyframes})")
    p.add_argument("--every", type=_positive_int, default=None, metavar="N",
                   help="the same as --keyframes every:N")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="stop after N frames")
    p.add_argument("--no-track", dest="track", action="store_false",
                   help="do not keep segment ids/colours stable across frames")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                   help="run encoder and post-processing in one thread (default: overlapped)")


def _add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="segment a video file and write the overlay video",
                       description="Segment every frame of a video (any file OpenCV reads) and write "
                                   "the overlay video at the input's frame rate and size.")
    p.add_argument("input", metavar="IN", help="input video file")
    p.add_argument("output", metavar="OUT", help="output video (.mp4 with mp4v, .avi with MJPG)")
    p.add_argument("--codec", default="mp4v", help="FourCC of the output codec (default mp4v)")
    p.add_argument("--realtime", action="store_true",
                   help="play the file as a camera would deliver it: frames at the file's rate, the encoder in its "
                        "own worker, dropped frames left out of OUT (default: every frame waits for its result)")
    _add_video_options(p, "every:1")
    _add_segmenter_options(p)


def _keyframe_policy(args: argparse.Namespace, default: str):
    """--keyframes, or its alias --every, or the command's default (one policy, however it was said)."""
    from diffcut_edge.apps.propagation import KeyframePolicy

    if args.every is not None and args.keyframes is not None:
        raise DiffCutError("--every N is --keyframes every:N: give one of them")
    if args.every is not None:
        return KeyframePolicy("every", args.every)
    return args.keyframes or KeyframePolicy.parse(default)


def _run_video(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffcut_edge.apps.pipeline import Throughput, iter_segmented
    from diffcut_edge.apps.tracking import TrackedOverlay
    from diffcut_edge.apps.video import AtomicVideoWriter, FrameReader, parse_source

    spec = parse_source(args.input)
    if not spec.live and Path(args.output).resolve() == Path(args.input).resolve():
        raise DiffCutError("OUT is the input file; choose another output path")
    AtomicVideoWriter.check_target(args.output, args.codec)  # before the model opens
    warn = lambda message: _warn("video", message)  # noqa: E731
    with FrameReader(spec, warn=warn) as reader, _open_segmenter(args) as seg:
        info = reader.info
        writer = AtomicVideoWriter(args.output, info.fps, None, codec=args.codec)
        total = min(info.frame_count or 0, args.max_frames or 1 << 62) or args.max_frames
        draw, stats = TrackedOverlay(args.track, args.overlay_alpha), Throughput()
        with writer, _progress(total=total, quiet=args.quiet, unit="frame") as bar:
            for item in iter_segmented(reader, seg, keyframes=_keyframe_policy(args, "every:1"),
                                       realtime=args.realtime, pipelined=args.pipeline, max_frames=args.max_frames,
                                       pace_fps=info.fps if args.realtime else None):
                writer.write(draw(item.frame, item.result))
                stats.add(item.result.timings, item.key_index)
                bar.update(1)
        if writer.frames == 0:
            raise DiffCutError(f"no frame could be read from {spec}; nothing written")
    notes = [f"{reader.stats.broken} broken frame(s) skipped"] if reader.stats.broken else []
    notes += ["the input ended early"] if reader.stats.ended_early else []
    notes += [note] if (note := writer.size_note()) else []
    width, height = writer.written_size
    print(f"wrote {args.output} ({info.fps:.2f} fps, {width}x{height}): {stats.summary()}"
          + (f" [{'; '.join(notes)}]" if notes else ""))
    return 0


def _add_webcam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webcam", help="live segmentation from a camera, file or stream",
                       description="Live segmentation in a window (keys: q/Esc quit, r toggle refinement, "
                                   "f/space freeze). --headless runs without a display.")
    p.add_argument("--source", default="0", help="camera index, video file or rtsp/http URL (default 0)")
    p.add_argument("--headless", action="store_true", help="no window (servers, tests); combine with --record")
    p.add_argument("--record", default=None, metavar="FILE", help="also write the overlay video to FILE")
    p.add_argument("--codec", default="mp4v", help="FourCC of the --record codec (default mp4v)")
    p.add_argument("--retries", type=_non_negative_int, default=5,
                   help="connection attempts when a live source cannot be opened or drops, with exponential "
                        "back-off (default 5)")
    p.add_argument("--serve", default=None, metavar="[HOST:]PORT",
                   help="watch and tune in a browser at http://HOST:PORT/ (default host 127.0.0.1; implies "
                        "--headless; needs the [live] extra)")
    p.add_argument("--token", default=None,
                   help="with --serve beyond localhost: the token controls and snapshots need (default: "
                        "generated and printed)")
    p.add_argument("--max-clients", type=_positive_int, default=8,
                   help="with --serve: browsers that may watch at once (default 8; more get 503)")
    p.add_argument("--loop", action="store_true", help="replay a video file source when it ends (demos, --serve)")
    _add_video_options(p, "auto")
    _add_segmenter_options(p)


def _window_key(frozen: bool) -> int:
    """The key pressed in the OpenCV window (-1 = none); waits longer while frozen."""
    import cv2

    return cv2.waitKey(30 if frozen else 1) & 0xFF


def _run_webcam(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    import cv2

    from diffcut_edge.apps import hud
    from diffcut_edge.apps.pipeline import Throughput, iter_segmented
    from diffcut_edge.apps.tracking import TrackedOverlay
    from diffcut_edge.apps.video import AtomicVideoWriter, FrameReader, parse_source

    KEY_ESC, WINDOW = 27, "diffcut-edge (q quit, r refine, f freeze)"
    if args.token and not args.serve:
        raise DiffCutError("--token needs --serve")
    serve = _parse_serve(args.serve) if args.serve else None
    headless = args.headless or serve is not None
    if not headless and (problem := _gui_problem()):
        raise DiffCutError(problem)
    spec = parse_source(args.source)
    if args.loop and spec.live:
        raise DiffCutError("--loop replays video files; a camera or stream has no end to replay from")
    if args.record:
        if not spec.live and Path(args.record).resolve() == Path(args.source).resolve():
            raise DiffCutError("--record is the --source file: recording would overwrite it; choose another path")
        AtomicVideoWriter.check_target(args.record, args.codec)  # before the camera and model open
    warn = lambda message: _warn("webcam", message)  # noqa: E731
    with contextlib.ExitStack() as stack:
        hub = server = None
        if serve is not None:  # bound before the camera and model open: a port in use fails fast
            from diffcut_edge.apps.live import LiveHub, LiveServer, apply_changes

            hub = LiveHub()
            server = stack.enter_context(LiveServer(hub, *serve, token=args.token, max_clients=args.max_clients))
            print(f"serving the live view at {server.url}", flush=True)
        reader = stack.enter_context(FrameReader(spec, retries=args.retries, warn=warn))
        seg = stack.enter_context(_open_segmenter(args))
        # keep_on_error: a recording made before a stream finally dropped is kept.
        writer = (stack.enter_context(AtomicVideoWriter(args.record, reader.info.fps, None, codec=args.codec,
                                                        keep_on_error=True))
                  if args.record else None)
        draw, stats, meter, frozen = TrackedOverlay(args.track, args.overlay_alpha), Throughput(), hud.FpsMeter(), False
        source = _replayed(reader, spec, args.retries, warn) if args.loop else reader
        policy = _keyframe_policy(args, "auto")
        # every:1 waits for each frame's result (the loop runs at the encoder's rate); any other
        # policy keeps the encoder in its own worker and a file plays at its own frame rate.
        realtime = _runs_in_worker(args)
        for item in iter_segmented(source, seg, keyframes=policy, realtime=realtime, pipelined=args.pipeline,
                                   max_frames=args.max_frames,
                                   pace_fps=reader.info.fps if realtime and not spec.live else None):
            if hub is not None:
                apply_changes(hub.take_changes(), seg, draw)
            vis = draw(item.frame, item.result)
            stats.add(item.result.timings, item.key_index)
            fps = meter.tick()
            hud.draw_hud(vis, hud.hud_text(fps, item.result.timings, item.result.num_segments, seg.options.refine,
                                           frame=item))
            if hub is not None:
                hub.publish(vis, draw.last_labels, item.result.timings, fps=fps,
                            options={"tau": seg.options.tau, "alpha": seg.options.alpha,
                                     "refine": seg.options.refine, "opacity": draw.alpha},
                            frame=hud.frame_status(item))
            if writer is not None:
                writer.write(vis)
            if headless:
                continue
            cv2.imshow(WINDOW, vis)
            key = _window_key(False)
            while True:
                if key in (ord("q"), KEY_ESC):
                    cv2.destroyAllWindows()
                    print(f"stopped: {stats.summary()}")
                    return 0
                if key == ord("r"):
                    seg.update_options(refine=not seg.options.refine)
                elif key in (ord("f"), ord(" ")):
                    frozen = not frozen
                if not frozen:
                    break
                key = _window_key(True)  # frozen: keep the window responsive, pull no frames
        if not headless:
            cv2.destroyAllWindows()
        if writer is not None and writer.frames == 0:
            raise DiffCutError(f"no frame could be read from {spec}; nothing recorded")
    ended = "stopped at --max-frames" if args.max_frames and stats.frames >= args.max_frames else "source ended"
    recorded = ""
    if writer is not None:
        note = writer.size_note()
        recorded = f"; recorded {args.record}" + (f" ({note})" if note else "")
    print(f"{ended}: {stats.summary()}{recorded}")
    return 0


def _parse_serve(text: str) -> tuple[str, int]:
    from diffcut_edge.apps.live import parse_serve

    return parse_serve(text)


def _replayed(reader, spec, retries: int, warn):
    """The frames of ``reader``, then of the same file again and again (``--loop``)."""
    from diffcut_edge.apps.video import FrameReader

    yield from reader
    while True:
        with FrameReader(spec, retries=retries, warn=warn) as again:
            count = 0
            for frame in again:
                count += 1
                yield frame
        if count == 0:
            return


def _gui_problem() -> str | None:
    from diffcut_edge.apps.hud import gui_problem

    return gui_problem()


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="per-stage latency of a model folder",
                       description="Warm up, then time every stage (median and p90) at each batch size.")
    p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
    p.add_argument("--backend", choices=_backends(), default="auto",
                   help="encoder backend (default: auto = best available)")
    p.add_argument("--batch", type=_batch_sizes, default=(1,), metavar="B[,B...]",
                   help="batch sizes to time, e.g. 1,4 (default 1)")
    p.add_argument("--iters", type=_positive_int, default=10, help="timed runs per batch size (default 10)")
    p.add_argument("--warmup", type=_non_negative_int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="include PAMR (default: on)")
    p.add_argument("--image", default=None,
                   help="frame to time (default: a synthetic 640x480 frame, deterministic)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the table")


def _batch_sizes(text: str) -> tuple[int, ...]:
    """``1,4`` -> (1, 4)."""
    return tuple(_positive_int(part.strip()) for part in text.split(",") if part.strip()) or (1,)


def _bench_segmenter(args: argparse.Namespace):
    """The Segmenter bench times (tests monkeypatch this to inject a fake)."""
    from diffcut_edge.runtime.segmenter import Segmenter

    seg = Segmenter.from_model_dir(args.model_dir, backend=args.backend, refine=args.refine)
    _note_verification("bench", seg.manifest, args.model_dir)
    return seg


def _run_bench(args: argparse.Namespace) -> int:
    import json

    from diffcut_edge.eval import bench

    if args.image:
        from diffcut_edge.apps.io import read_image

        frame, image_name = read_image(args.image), str(args.image)
    else:
        frame = bench.synthetic_image()
        image_name = f"synthetic {frame.shape[1]}x{frame.shape[0]}"
    with _bench_segmenter(args) as seg:
        def progress(message: str) -> None:
            if not args.json:
                print(message, file=sys.stderr)

        report = bench.run_bench(seg, frame, batches=args.batch, iters=args.iters, warmup=args.warmup,
                                 image=image_name, refine=args.refine, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(bench.format_report(report))
    return 0


def _backends() -> tuple[str, ...]:
    from diffcut_edge.runtime.backends import BACKENDS

    return BACKENDS


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="mIoU on a segmentation dataset with the paper's protocol",
                       description="Unsupervised mIoU (per-image Hungarian matching) with the official "
                                   "DiffCut protocol; dataset layouts in docs/eval.md.")
    from diffcut_edge.eval.datasets import DATASETS

    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", required=True, help="dataset root folder (layouts: docs/eval.md)")
    p.add_argument("--model-dir", default=None, help="exported model folder (required unless --reference)")
    p.add_argument("--backend", choices=_backends(), default="auto",
                   help="encoder backend (default: auto = best available)")
    p.add_argument("--reference", action="store_true",
                   help="run the PyTorch reference (needs the [export] extra) instead of the engine")
    p.add_argument("--model", default=None, help="with --reference: pipeline hub id or folder")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="with --reference: R (default: the model folder's, else the recipe's, else 1024)")
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch", type=_positive_int, default=1, help="images per encoder call (default 1)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="PAMR after the background merge (default: off, as the official script; with "
                        "--open-vocab: on, as the official open-vocabulary script)")
    p.add_argument("--tau", type=_option_type("tau"), default=TAU, help=f"NCut threshold (default {TAU})")
    p.add_argument("--alpha", type=_option_type("alpha"), default=ALPHA, help=f"affinity exponent (default {ALPHA:g})")
    g = p.add_argument_group("open vocabulary (docs/open-vocabulary.md)")
    g.add_argument("--open-vocab", action="store_true",
                   help="the official open-vocabulary protocol on voc, context or coco-object: CLIP names the "
                        "segments (the folder's export-vocab), per-image Jaccard averaged over images")
    g.add_argument("--vocab", default=None,
                   help="vocabulary to score (default: the dataset's built-in one); voc|context|coco-object|FILE.txt")
    g.add_argument("--mask-size", type=_option_type("mask_size"), default=None, metavar="N|HxW",
                   help=f"label-map size of the open-vocabulary protocol (default {OPEN_VOCAB_MASK_SIZE[0]}, "
                        "the official)")
    g.add_argument("--clip-resolution", type=_positive_int, default=None,
                   help="CLIP's input size (default: R; coco-object 2048, as the official)")
    g.add_argument("--clip", default=None,
                   help="with --reference: the open_clip CLIP, MODEL:TAG or local-dir:DIR (default: the model "
                        "folder's, else convnext_large_d_320:laion2b_s29b_b131k_ft_soup)")
    p.add_argument("--file-list", default=None,
                   help="text file of image names to evaluate, or 'curated': the paper's COCO subset "
                        "(2175 val2017 images, shipped) (default: every pair; VOC: val.txt)")
    p.add_argument("--label-map", default=None,
                   help="JSON label mapping overriding the built-in one (format: docs/eval.md)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _reference_resolution(args: argparse.Namespace) -> int | None:
    if args.resolution is None and args.model_dir:
        from diffcut_edge.runtime.manifest import read_manifest

        return read_manifest(args.model_dir).resolution
    return args.resolution


def _open_vocab_predictor(args: argparse.Namespace, vocabulary, mask_size: tuple[int, int]):
    from diffcut_edge.eval import open_vocab

    if args.reference:
        if not args.model:
            raise DiffCutError("--reference needs --model HUB_ID|PIPELINE_DIR (the diffusers pipeline to run)")
        clip = args.clip
        if clip is None and args.model_dir:
            from diffcut_edge.runtime.manifest import read_manifest

            clip = (read_manifest(args.model_dir).vocabulary or {}).get("clip")
        from diffcut_edge.models.clip import DEFAULT_CLIP
        from diffcut_edge.models.loading import quiet_third_party_logs

        quiet_third_party_logs()
        return open_vocab.reference_open_vocab(args.model, clip or DEFAULT_CLIP, vocabulary,
                                               resolution=_reference_resolution(args), tau=args.tau,
                                               alpha=args.alpha, mask_size=mask_size)
    if not args.model_dir:
        raise DiffCutError("eval --open-vocab needs --model-dir MODEL_DIR (with export-vocab), or --reference --model")
    return open_vocab.engine_open_vocab(args.model_dir, vocabulary, backend=args.backend, tau=args.tau,
                                        alpha=args.alpha, mask_size=mask_size)


def _run_open_vocab_eval(args: argparse.Namespace):
    from pathlib import Path

    from diffcut_edge.eval import datasets, open_vocab

    open_vocab.check_dataset(args.dataset)  # before the (slow) predictor opens
    if args.label_map:
        raise DiffCutError("--label-map is not used with --open-vocab: the vocabulary's class order is the mapping")
    spec = datasets.get_spec(args.dataset, layout=datasets.detect_layout(args.dataset, Path(args.root)))
    vocabulary = open_vocab.dataset_vocabulary(args.dataset, spec, args.vocab)
    mask_size = args.mask_size or OPEN_VOCAB_MASK_SIZE
    predictor = _open_vocab_predictor(args, vocabulary, mask_size)
    try:
        return open_vocab.run_open_vocab_eval(
            args.dataset, args.root, predictor, mask_size=mask_size, refine=args.refine,
            clip_resolution=args.clip_resolution, limit=args.limit, batch=args.batch, tau=args.tau,
            alpha=args.alpha, file_list=args.file_list, progress=not args.quiet and sys.stderr.isatty())
    finally:
        _close_predictor(predictor)


def _close_predictor(predictor) -> None:
    """Close the engine predictor's Segmenter (the reference has none)."""
    close = getattr(getattr(predictor, "segmenter", None), "close", None)
    if close is not None:
        close()


def _eval_predictor(args: argparse.Namespace):
    from diffcut_edge.eval import protocol

    if args.reference:
        if not args.model:
            raise DiffCutError("--reference needs --model HUB_ID|PIPELINE_DIR (the diffusers pipeline to run)")
        from diffcut_edge.models.loading import quiet_third_party_logs

        quiet_third_party_logs()
        return protocol.reference_predictor(args.model, resolution=_reference_resolution(args), tau=args.tau,
                                            alpha=args.alpha)
    if not args.model_dir:
        raise DiffCutError("eval needs --model-dir MODEL_DIR (or --reference --model PIPELINE)")
    return protocol.engine_predictor(args.model_dir, backend=args.backend, tau=args.tau, alpha=args.alpha)


def _run_standard_eval(args: argparse.Namespace):
    from diffcut_edge.eval import protocol

    for flag in ("vocab", "mask_size", "clip_resolution", "clip"):
        if getattr(args, flag) is not None:
            raise DiffCutError(f"--{flag.replace('_', '-')} goes with --open-vocab")
    predictor = _eval_predictor(args)
    try:
        return protocol.run_eval(args.dataset, args.root, predictor, limit=args.limit, refine=args.refine,
                                 batch=args.batch, tau=args.tau, alpha=args.alpha, file_list=args.file_list,
                                 label_map=args.label_map, progress=not args.quiet and sys.stderr.isatty())
    finally:
        _close_predictor(predictor)


def _run_eval(args: argparse.Namespace) -> int:
    if args.refine is None:
        args.refine = bool(args.open_vocab)  # each official script's default
    result = _run_open_vocab_eval(args) if args.open_vocab else _run_standard_eval(args)
    extra = f", dataset mIoU {100 * result.dataset_miou:.2f}" if result.dataset_miou is not None else ""
    print(f"{args.dataset}: mIoU {100 * result.miou:.2f}  pixel accuracy {100 * result.pixel_accuracy:.2f}{extra}  "
          f"({result.num_images} images, {result.settings.get('backend')}, refine={args.refine}, "
          f"{result.seconds:.1f} s)")
    if args.out:
        print(f"wrote {result.write_json(args.out)}")
    return 0


# --------------------------------------------------------------------------- main
# ------------------------------------------------------------------------ triton
def _add_triton_repository_options(p: argparse.ArgumentParser, *, encoders: Sequence[str]) -> None:
    """What triton-repo and serve share: the encoder model, batching, instances, the DiffCut knobs."""
    p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
    p.add_argument("--encoder", choices=encoders, default=encoders[0],
                   help="the encoder model: Triton's onnxruntime backend, a TensorRT plan of the folder, or "
                        "this project's ONNX Runtime backend in a python model (for a server without "
                        f"onnxruntime) (default {encoders[0]})")
    p.add_argument("--engine", default=None, help="with --encoder tensorrt: the plan file, when the folder has several")
    p.add_argument("--max-batch", type=_positive_int, default=4,
                   help="the encoder's dynamic-batching limit (default 4; a plan's profile caps it)")
    p.add_argument("--instances", type=_positive_int, default=1, help="encoder instances (default 1)")
    p.add_argument("--post-instances", type=_positive_int, default=2,
                   help="post-processing (NCut, PAMR) instances, one process each (default 2)")
    p.add_argument("--queue-delay-us", type=_non_negative_int, default=0,
                   help="how long the dynamic batcher may wait to fill a batch (default 0)")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where the post-processing runs: cpu (numpy) or cuda (cupy) (default cpu)")
    p.add_argument("--name-segments", action=argparse.BooleanOptionalAction, default=None,
                   help="serve each segment's class (the segments output, <stem>_segments.json as UTF-8) "
                        "(default: when the folder has a vocabulary, from export-vocab)")
    _add_postprocess_options(p)


def _repository_spec(args: argparse.Namespace, encoder: str):
    from diffcut_edge.serve.triton_repo import RepositorySpec

    return RepositorySpec(encoder=encoder, max_batch=args.max_batch, instances=args.instances,
                          post_instances=args.post_instances, device=args.device, queue_delay_us=args.queue_delay_us,
                          engine=args.engine, options=_postprocess_options(args), name_segments=args.name_segments)


def _add_triton_repo(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.serve.triton_repo import ENCODERS

    p = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository for a model folder",
                       description="Writes an ensemble 'diffcut' (image UINT8 [H,W,3] RGB -> labels INT32 [H,W], "
                                   "num_segments INT32 [1]) over a python pre-processing model, the encoder "
                                   "(dynamic batching) and a python post-processing model running this "
                                   "project's runtime. Every config.pbtxt is parsed back with tritonclient's "
                                   "model-config protobuf. docs/serving.md")
    _add_triton_repository_options(p, encoders=ENCODERS)
    p.add_argument("--out", required=True, help="the repository folder (replaced if it is an earlier one)")


def _run_triton_repo(args: argparse.Namespace) -> int:
    from diffcut_edge.serve.triton_repo import write_repository

    out = write_repository(args.model_dir, args.out, _repository_spec(args, args.encoder))
    print(f"wrote the Triton model repository {out} (encoder: {args.encoder}); run it with "
          f"tritonserver --model-repository {out} (diffcut-edge serve --model-dir {args.model_dir} builds and runs "
          f"its own repository instead)")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.serve.triton_repo import ENCODERS
    from diffcut_edge.serve.triton_server import DEFAULT_PORTS

    p = sub.add_parser("serve", help="serve a model folder with a real Triton Inference Server",
                       description="Generates a model repository (as triton-repo) and runs tritonserver on it: "
                                   "--tritonserver, else the one on PATH, else nvidia-pytriton's binary "
                                   "(pip install --no-deps nvidia-pytriton). SIGTERM or Ctrl-C stops it cleanly. "
                                   "Query it with diffcut_edge.serve.TritonSegmenter. docs/serving.md")
    _add_triton_repository_options(p, encoders=("auto", *ENCODERS))
    p.add_argument("--tritonserver", default=None, metavar="PATH", help="the tritonserver binary or install folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine; 0.0.0.0 for the network, behind an "
                        "authenticating gateway: docs/security.md)")
    for what, port in DEFAULT_PORTS.items():
        p.add_argument(f"--{what}-port", type=_positive_int, default=port, help=f"{what} port (default {port})")
    p.add_argument("--repo", default=None, help="write the repository here and keep it (default: a temporary folder)")
    p.add_argument("--ready-timeout", type=_positive_int, default=300,
                   help="seconds to wait for every model to load (default 300)")


def _run_serve(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import time
    from pathlib import Path

    from diffcut_edge.serve.triton_repo import write_repository
    from diffcut_edge.serve.triton_server import TritonServer, find_tritonserver

    binary = find_tritonserver(args.tritonserver)
    encoder = args.encoder
    if encoder == "auto":
        encoder = "onnxruntime" if binary.has_backend("onnxruntime") else "python"
    elif encoder in ("onnxruntime", "tensorrt") and not binary.has_backend(encoder):
        raise DiffCutError(f"{binary.executable} has no {encoder} backend (nvidia-pytriton's has only python): "
                           f"use --encoder python, or NVIDIA's Triton container")
    workdir = Path(tempfile.mkdtemp(prefix="diffcut-serve-"))
    try:
        repo = write_repository(args.model_dir, args.repo or workdir / "repository", _repository_spec(args, encoder))
        server = TritonServer(binary, repo, workdir, http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, host=args.host)
        print(f"starting tritonserver ({binary.source}: {binary.executable}) on {repo}, encoder {encoder}",
              file=sys.stderr, flush=True)
        try:
            server.start(timeout_s=args.ready_timeout)
            print(f"serving {args.model_dir} as model 'diffcut': http {args.host}:{args.http_port}, "
                  f"grpc {args.host}:{args.grpc_port}, metrics {args.host}:{args.metrics_port} "
                  f"(log {server.log}); Ctrl-C or SIGTERM stops it", flush=True)
            while server.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:  # Ctrl-C and SIGTERM (Terminated): a clean stop is a success
            status = server.stop()
            print(f"stopped tritonserver (exit status {status})", flush=True)
            return 0
        finally:
            server.stop()
        raise DiffCutError(f"tritonserver stopped by itself with status {server.process.returncode} (log {server.log})")
    finally:
        if args.repo is None:
            shutil.rmtree(workdir, ignore_errors=True)


_VERBS: dict[str, tuple[Callable, Callable]] = {
    "doctor": (_add_doctor, _run_doctor),
    "models": (_add_models, _run_models),
    "export": (_add_export, _run_export),
    "export-vocab": (_add_export_vocab, _run_export_vocab),
    "build-engine": (_add_build_engine, _run_build_engine),
    "quantize": (_add_quantize, _run_quantize),
    "verify": (_add_verify, _run_verify),
    "segment": (_add_segment, _run_segment),
    "video": (_add_video, _run_video),
    "webcam": (_add_webcam, _run_webcam),
    "bench": (_add_bench, _run_bench),
    "eval": (_add_eval, _run_eval),
    "triton-repo": (_add_triton_repo, _run_triton_repo),
    "serve": (_add_serve, _run_serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffcut-edge",
        description="DiffCut zero-shot segmentation: export, build, run and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"diffcut-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add, _ in _VERBS.values():
        add(sub)
    return parser


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown option is refused with the *verb's* usage and the closest real option."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        verb = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.verb]
        options = [s for action in verb._actions for s in action.option_strings]
        guess = difflib.get_close_matches(extra[0].split("=", 1)[0], options, n=1)
        verb.error(f"unrecognized arguments: {' '.join(extra)}" + (f" (did you mean {guess[0]}?)" if guess else ""))
    return args


def _quiet_libraries() -> None:
    """transformers and diffusers read their log level from the environment when first imported: set to
    errors before any verb imports them, their warnings that are not the user's ("requires torchvision")
    stay off the terminal. A level the user set is kept."""
    import os

    for name in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(name, "error")


def _unwind_on_sigterm() -> object:
    """SIGTERM unwinds like Ctrl-C (first thing: a SIGTERM during start-up is a message too).
    Returns the previous handler (None off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main(argv: Sequence[str] | None = None) -> int:
    previous, verb, args = None, "", None
    try:
        previous = _unwind_on_sigterm()
        args = _parse(build_parser(), argv)
        verb = args.verb
        _quiet_libraries()
        from diffcut_edge.apps.video import quiet_opencv_logs

        quiet_opencv_logs()   # OpenCV's own [ERROR ...] lines stay off stderr: our messages say it in one line
        return int(_VERBS[verb][1](args) or 0)
    except DiffCutError as e:
        return _say(verb, f"error: {e}", EXIT_ERROR)
    except Terminated:
        return _say(verb, "terminated", EXIT_TERMINATED)
    except KeyboardInterrupt:
        return _say(verb, "interrupted", EXIT_INTERRUPTED)
    except ModuleNotFoundError as e:   # a verb of the export stage in a runtime-only install
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None:
            return _say(verb, f"unexpected error: {type(e).__name__}: {e} (re-run with --debug for the traceback)",
                        EXIT_INTERNAL)
        return _say(verb, f"error: this needs '{e.name}', which is not installed: pip install "
                          f"'diffcut-edge[{extra}]' (in a clone: pip install '.[{extra}]'); docs/open-vocabulary.md "
                          f"for open_clip", EXIT_ERROR)
    except PermissionError as e:   # an input folder, the model folder or --out that this user may not read or write
        where = e.filename or "a file"
        return _say(verb, f"error: permission denied: {where} (check its permissions and its folder's)", EXIT_ERROR)
    except MemoryError:
        return _say(verb, "error: out of memory (lower --mask-size, --batch or the resolution; docs/security.md "
                          "lists the limits)", EXIT_ERROR)
    except Exception as e:  # a bug or an unforeseen failure: still one line unless --debug
        if args is not None and args.debug:
            raise
        return _say(verb, f"unexpected error: {type(e).__name__}: {e} (re-run with --debug for the traceback)",
                    EXIT_INTERNAL)
    finally:
        if previous is not None:  # in-process callers (tests, embedding apps) get theirs back
            import signal

            signal.signal(signal.SIGTERM, previous)


# The extra that brings a package a verb may import (export stage, CLIP, serving).
_EXTRA_OF = {"torch": "export", "diffusers": "export", "transformers": "export", "onnx": "export",
             "onnxscript": "export", "safetensors": "export", "accelerate": "export", "open_clip": "clip",
             "timm": "clip", "ftfy": "clip", "tritonclient": "triton", "ray": "ray", "aiohttp": "live"}


def _say(verb: str, message: str, code: int) -> int:
    """The one stderr line a command ends with; a second Ctrl-C while it is printed changes nothing."""
    with contextlib.suppress(KeyboardInterrupt):
        print(f"diffcut-edge{' ' + verb if verb else ''}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
