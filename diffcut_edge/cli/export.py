"""The export-stage verbs and the machine check: doctor, models, export, export-vocab, build-engine,
quantize, verify."""

from __future__ import annotations

import argparse

from diffcut_edge.cli import console
from diffcut_edge.cli.args import non_negative_float, non_negative_int, positive_int
from diffcut_edge.cli.console import EXIT_ERROR
from diffcut_edge.defaults import OPSET, PRECISIONS, VAES
from diffcut_edge.errors import DiffCutError


def add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="what this machine can run, and why",
        description="Python, onnxruntime and its providers, cupy, TensorRT, the GPU and "
        "JetPack; with --model-dir also the backend auto picks and the engines "
        "that match this GPU. Exit 0 when the chosen backend can run.",
    )
    p.add_argument("--model-dir", default=None, help="an exported model folder to check against this machine")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the lines")


def run_doctor(args: argparse.Namespace) -> int:
    import json

    from diffcut_edge.apps.doctor import diagnose

    report = diagnose(args.model_dir)
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 0 if report.can_run else EXIT_ERROR


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model recipes and tiny random-weight models")
    msub = p.add_subparsers(dest="models_cmd", metavar="{list,make-tiny,make-tiny-clip}", required=True)
    msub.add_parser(
        "list",
        help="list the known model recipes",
        description="The model recipes: name, hub id, family, resolution R, timestep and the hooked "
        "attention layer (the paper's settings per model); the default is marked.",
    )
    t = msub.add_parser(
        "make-tiny",
        help="write a tiny random-weight pipeline (no download)",
        description="A tiny random-weight diffusers pipeline of the family's architecture, for "
        "trying the commands without a download (its segments mean nothing).",
    )
    t.add_argument("--family", choices=("sdxl", "sd1"), required=True, help="the architecture to copy")
    t.add_argument("--out", required=True, help="folder to write the pipeline to")
    t.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    c = msub.add_parser(
        "make-tiny-clip",
        help="write a tiny random-weight ConvNeXt CLIP (open_clip local-dir layout)",
        description="A tiny random-weight ConvNeXt CLIP in open_clip's local-dir layout, for trying "
        "export-vocab without a download (its class names mean nothing).",
    )
    c.add_argument("--out", required=True, help="folder to write it to (load it with --clip local-dir:DIR)")
    c.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")


def run_models(args: argparse.Namespace) -> int:
    from diffcut_edge import models

    if args.models_cmd == "list":
        for recipe in models.list_recipes():
            default = "  (default)" if recipe.hub_id == models.DEFAULT_MODEL else ""
            print(
                f"{recipe.name:<10} {recipe.hub_id:<42} family={recipe.family:<5} "
                f"R={recipe.resolution} t={recipe.timestep} hook=unet.{recipe.hook_path}{default}"
            )
        return 0
    if args.models_cmd == "make-tiny-clip":
        from diffcut_edge.models.clip import make_tiny_clip

        path = make_tiny_clip(args.out, seed=args.seed)
        print(f"wrote a tiny random-weight ConvNeXt CLIP to {path}; use it with --clip local-dir:{path}")
        return 0
    path = models.make_tiny_pipeline(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random-weight {args.family} pipeline to {path}")
    return 0


def add_export_vocab(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.models.clip import DEFAULT_CLIP
    from diffcut_edge.runtime.vocabulary import BUILTIN_VOCABULARIES

    p = sub.add_parser(
        "export-vocab",
        help="add CLIP segment naming (dense, head and text graphs + a text bank) to a model folder",
        description="Exports the CLIP of the paper's open-vocabulary extension into the model "
        "folder: dense graph (dynamic H, W), head graph (dynamic segments), text "
        "tower (for --classes at run time) and the vocabulary's text bank, recorded "
        "in the manifest with SHA-256. docs/open-vocabulary.md",
    )
    p.add_argument("--model-dir", required=True, help="exported model folder (diffcut-edge export)")
    p.add_argument(
        "--clip",
        default=DEFAULT_CLIP,
        metavar="MODEL:TAG|local-dir:DIR",
        help=f"open_clip model and pretrained tag, or an open_clip folder (default {DEFAULT_CLIP})",
    )
    p.add_argument(
        "--vocab",
        default="voc",
        metavar="|".join(BUILTIN_VOCABULARIES) + "|FILE.txt",
        help="classes: a built-in vocabulary or a UTF-8 file, one class a line, synonyms comma-separated (default voc)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def run_export_vocab(args: argparse.Namespace) -> int:
    from diffcut_edge.export.clip_export import export_vocabulary
    from diffcut_edge.runtime.vocabulary import load_vocabulary

    vocabulary = load_vocabulary(args.vocab)  # before the (slow) CLIP loads
    record = export_vocabulary(
        args.model_dir, args.clip, vocabulary, progress=console.say_progress("export-vocab", args.quiet)
    )
    print(
        f"added the vocabulary {record['vocabulary']} ({record['num_classes']} classes, CLIP {record['clip']}) "
        f"to {args.model_dir}; segment now writes <stem>_segments.json"
    )
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the truncated encoder to an ONNX model folder",
        description="Loads a diffusers pipeline (hub id or folder), keeps the UNet up to the layer "
        "DiffCut reads (with the VAE encoder, the empty-prompt conditioning and the "
        "fixed noise as constants) and writes encoder.onnx and manifest.json: the model "
        "folder every other command opens. Needs the [export] extra (torch).",
    )
    p.add_argument("--model", required=True, help="hub id (e.g. segmind/SSD-1B) or a saved pipeline folder")
    p.add_argument("--out", required=True, help="model folder to write (encoder.onnx + manifest.json)")
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=1024,
        help="input side R, a multiple of 64 (default 1024, the paper's; 512 for a 4x cheaper encoder)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="UNet part precision, the VAE encoder stays fp32 (default fp32)",
    )
    p.add_argument(
        "--opset",
        type=positive_int,
        default=OPSET,
        help=f"ONNX opset (default {OPSET}: the newest every supported TensorRT parses, 8.6 included)",
    )
    p.add_argument(
        "--vae",
        choices=VAES,
        default="full",
        help="tiny: replace the VAE encoder by AutoencoderTiny (TAESD, ~10x fewer VAE FLOPs); "
        "verify the result with 'verify --against' a full-VAE export (default full)",
    )
    p.add_argument(
        "--tiny-vae",
        default=None,
        metavar="HUB_ID|DIR",
        help="AutoencoderTiny weights for --vae tiny (default: madebyollin/taesdxl for SDXL models, "
        "madebyollin/taesd for SD1)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing model folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_export(args: argparse.Namespace) -> int:
    from diffcut_edge.export.onnx_export import export_model_report
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    if args.tiny_vae and args.vae != "tiny":
        raise DiffCutError("--tiny-vae needs --vae tiny")
    report = export_model_report(
        args.model,
        args.out,
        resolution=args.resolution,
        precision=args.precision,
        opset=args.opset,
        progress=not args.no_progress,
        force=args.force,
        vae=args.vae,
        tiny_vae=args.tiny_vae,
    )
    size = (report.onnx_bytes + report.data_bytes) / 1e6
    from diffcut_edge.lazy import tensorrt

    nxt = (
        f"diffcut-edge build-engine --model-dir {report.model_dir}"
        if tensorrt.available()
        else f"diffcut-edge segment IMAGES --model-dir {report.model_dir} (a TensorRT engine is built where "
        f"TensorRT is installed: build-engine on the device)"
    )
    print(
        f"wrote {report.model_dir} ({size:.1f} MB, {report.nodes} nodes, "
        f"{sum(report.seconds.values()):.1f} s); next: {nxt}"
    )
    return 0


def add_build_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine",
        help="build a TensorRT engine in a model folder (on the target GPU)",
        description="Parses the folder's encoder.onnx with TensorRT on this GPU and writes an engine "
        "beside it, recorded in the manifest with the GPU and TensorRT version it "
        "runs on (the runtime refuses it elsewhere). Needs the [trt] extra and an "
        "NVIDIA GPU; a timing cache makes rebuilds fast. docs/jetson.md",
    )
    p.add_argument("--model-dir", required=True, help="model folder written by 'diffcut-edge export'")
    p.add_argument(
        "--workspace",
        type=float,
        default=None,
        metavar="GB",
        help="cap on TensorRT's scratch memory (GiB); lower it if the build runs out of memory "
        "(default: no cap, TensorRT's own)",
    )
    p.add_argument(
        "--batch",
        default="1:1:4",
        metavar="MIN:OPT:MAX",
        help="batch sizes of the optimization profile (default 1:1:4)",
    )
    p.add_argument(
        "--no-timing-cache",
        action="store_true",
        help="do not read or write the timing cache (timing.<gpu>.trt<ver>.cache)",
    )
    p.add_argument("--verbose", action="store_true", help="TensorRT's verbose build log")


def run_build_engine(args: argparse.Namespace) -> int:
    from diffcut_edge.export.tensorrt_build import build_engine, parse_batch_spec

    batch = parse_batch_spec(args.batch)  # fail on a typo before loading TensorRT
    path = build_engine(
        args.model_dir,
        workspace_gb=args.workspace,
        batch=batch,
        timing_cache=not args.no_timing_cache,
        verbose=args.verbose,
    )
    print(f"wrote {path} (batch {batch[0]}:{batch[1]}:{batch[2]}) and recorded it in the manifest")
    return 0


def add_quantize(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.export.quantize import (
        ACTIVATIONS,
        DEFAULT_MAX_IMAGES,
        DEFAULT_METHOD,
        DEFAULT_REPORT_IMAGES,
        METHODS,
    )

    p = sub.add_parser(
        "quantize",
        help="INT8 model folder from an fp32 one, calibrated on your images",
        description="Writes a new model folder whose UNet part is INT8 (onnxruntime's static QDQ "
        "quantization, activation ranges calibrated on --calibration images); the "
        "layers that INT8 hurts stay in float. Check it with "
        "'verify --model-dir INT8 --against FP32' on other images. docs/faster.md",
    )
    p.add_argument("--model-dir", required=True, help="fp32 model folder written by 'diffcut-edge export'")
    p.add_argument(
        "--calibration",
        required=True,
        nargs="+",
        metavar="IMAGES",
        help="image files, folders or globs like the ones the model will see (16-64 is plenty)",
    )
    p.add_argument("--out", required=True, help="new model folder to write")
    p.add_argument(
        "--method",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help=f"activation range calibration (default {DEFAULT_METHOD}; smoothed: a quantile of each image's "
        "extremes, docs/faster.md)",
    )
    p.add_argument(
        "--activations",
        choices=ACTIVATIONS,
        default="uint8",
        help="uint8 for onnxruntime on the CPU (default); int8 (symmetric) for TensorRT engines",
    )
    p.add_argument(
        "--keep-fp32",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="also keep these node names (fnmatch patterns) in float (default: none beyond the built-in list)",
    )
    p.add_argument(
        "--max-images",
        type=positive_int,
        default=DEFAULT_MAX_IMAGES,
        help=f"calibrate on at most this many images (default {DEFAULT_MAX_IMAGES})",
    )
    p.add_argument(
        "--holdout",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="images kept out of the calibration to verify the new folder on, before it appears "
        "(default: every fourth image, with 4 or more; 0: none)",
    )
    p.add_argument(
        "--report",
        metavar="JSON",
        default=None,
        help="also measure every Conv/MatMul/Gemm alone in int8 (min token cosine against fp32) and "
        "write the table here; prints the worst 10 (one encoder run per layer and image)",
    )
    p.add_argument(
        "--report-images",
        type=positive_int,
        default=DEFAULT_REPORT_IMAGES,
        help=f"calibration images the --report runs on (default {DEFAULT_REPORT_IMAGES})",
    )
    p.add_argument(
        "--keep-worst",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="keep in float the N layers the sensitivity measurement finds worst (runs it; default 0)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing model folder at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_quantize(args: argparse.Namespace) -> int:
    from diffcut_edge.export.quantize import quantize_model

    report = quantize_model(
        args.model_dir,
        args.calibration,
        args.out,
        method=args.method,
        activations=args.activations,
        keep_fp32=args.keep_fp32,
        max_images=args.max_images,
        force=args.force,
        progress=not args.no_progress,
        holdout=args.holdout,
        report=args.report,
        report_images=args.report_images,
        keep_worst=args.keep_worst,
    )
    print("\n".join(report.lines()))
    return EXIT_ERROR if report.passed is False else 0


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="compare a model folder with the PyTorch reference, or with another folder",
        description="Runs the folder and the PyTorch reference (--model, needs [export]) or another "
        "folder (--against, e.g. the fp32 source of an INT8 one) on the same images: "
        "feature cosine, relative error and NCut label agreement. Exit 0 when every "
        "figure is within its threshold, 2 when not (with the next step).",
    )
    p.add_argument("--model-dir", required=True, help="model folder to check")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or pipeline folder the folder was exported from (needs [export])")
    source.add_argument(
        "--against",
        metavar="DIR",
        help="full-precision model folder to compare with (e.g. the fp32 source of an INT8 "
        "folder); no torch needed; the verdict is written into --model-dir's manifest",
    )
    p.add_argument("images", nargs="*", help="images to compare on (default: scikit-image sample photos)")
    p.add_argument("--no-labels", action="store_true", help="skip the NCut label agreement")


def run_verify(args: argparse.Namespace) -> int:
    if args.against:
        from diffcut_edge.export.verify import verify_against

        report = verify_against(args.model_dir, args.against, args.images or None, labels=not args.no_labels)
        print("\n".join(report.lines()))
        print(f"recorded in {args.model_dir}/manifest.json")
        if not report.passed:
            print(
                "next: calibrate on more (and more typical) images, try --method percentile, or keep the layers "
                "that hurt in float with --keep-fp32 (diffcut-edge quantize; docs/faster.md)"
            )
        return 0 if report.passed else EXIT_ERROR
    from diffcut_edge.export.verify import verify_model
    from diffcut_edge.models.loading import quiet_third_party_logs

    quiet_third_party_logs()
    report = verify_model(args.model, args.model_dir, args.images or None, labels=not args.no_labels)
    print("\n".join(report.lines()))
    if not report.passed:
        print(
            f"next: re-export the folder from the same pipeline (diffcut-edge export --model {args.model} --out "
            f"{args.model_dir} --force), and check that --model is the pipeline it was exported from"
        )
    return 0 if report.passed else EXIT_ERROR


def add_cache(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.paths import CACHE_ENV

    p = sub.add_parser(
        "cache",
        help="list or clear what diffcut-edge keeps in its cache",
        description="The cache holds the exports made by --model HUB_ID|DIR and the TensorRT "
        "engines of onnxruntime's TensorRT provider, in $DIFFCUT_EDGE_CACHE, else "
        "~/.cache/diffcut-edge. Nothing there is removed unless you clear it.",
    )
    csub = p.add_subparsers(dest="cache_cmd", metavar="{list,clear}", required=True)
    ls = csub.add_parser(
        "list",
        help="each entry: size, days since last use, what it is, where",
        description="One line per cache entry, the least recently used first.",
    )
    ls.add_argument("--json", action="store_true", help="print one JSON document instead of the lines")
    clear = csub.add_parser(
        "clear",
        help="remove entries (all, or those unused for --older-than days)",
        description=f"Removes cache entries; the cache folder is ${CACHE_ENV}, else "
        f"~/.cache/diffcut-edge. A removed export is made again on next use.",
    )
    clear.add_argument(
        "--older-than",
        type=non_negative_float,
        default=None,
        metavar="DAYS",
        help="only entries not used for this many days (default: every entry)",
    )
    clear.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")


def run_cache(args: argparse.Namespace) -> int:
    import json

    from diffcut_edge.export.cache import clear_cache, list_cache
    from diffcut_edge.paths import cache_root

    if args.cache_cmd == "list":
        entries = list_cache()
        if args.json:
            print(json.dumps([{**vars(e), "path": str(e.path)} for e in entries], indent=2))
            return 0
        print("\n".join([e.line() for e in entries] or [f"the cache {cache_root()} is empty"]))
        return 0
    removed = clear_cache(older_than_days=args.older_than, dry_run=args.dry_run)
    if args.dry_run:
        print("\n".join([f"would remove {e.line()}" for e in removed] or ["nothing to remove"]))
        return 0
    print(
        f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} "
        f"({sum(e.size_bytes for e in removed) / 1e6:.1f} MB) from {cache_root()}"
    )
    return 0
