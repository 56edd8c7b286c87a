"""``diffcut-edge eval``: mIoU with the paper's protocols (parsing only; eval.evaluate runs it)."""

from __future__ import annotations

import argparse
import sys

from diffcut_edge.cli.args import backends, option_type, positive_int
from diffcut_edge.defaults import ALPHA, OPEN_VOCAB_MASK_SIZE, TAU
from diffcut_edge.errors import DiffCutError


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="mIoU on a segmentation dataset with the paper's protocol",
        description="Unsupervised mIoU (per-image Hungarian matching) with the official "
        "DiffCut protocol; dataset layouts in docs/eval.md.",
    )
    from diffcut_edge.eval.datasets import DATASETS

    p.add_argument(
        "--dataset",
        choices=DATASETS,
        required=True,
        help="the benchmark, laid out under --root as docs/eval.md says (voc, context, coco-object: also --open-vocab)",
    )
    p.add_argument("--root", required=True, help="dataset root folder (layouts: docs/eval.md)")
    p.add_argument("--model-dir", default=None, help="exported model folder (required unless --reference)")
    p.add_argument(
        "--backend", choices=backends(), default="auto", help="encoder backend (default: auto = best available)"
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="run the PyTorch reference (needs the [export] extra) instead of the engine",
    )
    p.add_argument("--model", default=None, help="with --reference: pipeline hub id or folder")
    p.add_argument(
        "--resolution",
        type=positive_int,
        default=None,
        help="with --reference: R (default: the model folder's, else the recipe's, else 1024)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch", type=positive_int, default=1, help="images per encoder call (default 1)")
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="PAMR after the background merge (default: off, as the official script; with "
        "--open-vocab: on, as the official open-vocabulary script)",
    )
    p.add_argument("--tau", type=option_type("tau"), default=TAU, help=f"NCut threshold (default {TAU})")
    p.add_argument("--alpha", type=option_type("alpha"), default=ALPHA, help=f"affinity exponent (default {ALPHA:g})")
    g = p.add_argument_group("open vocabulary (docs/open-vocabulary.md)")
    g.add_argument(
        "--open-vocab",
        action="store_true",
        help="the official open-vocabulary protocol on voc, context or coco-object: CLIP names the "
        "segments (the folder's export-vocab), per-image Jaccard averaged over images",
    )
    g.add_argument(
        "--vocab",
        default=None,
        help="vocabulary to score (default: the dataset's built-in one); voc|context|coco-object|FILE.txt",
    )
    g.add_argument(
        "--mask-size",
        type=option_type("mask_size"),
        default=None,
        metavar="N|HxW",
        help=f"label-map size of the open-vocabulary protocol (default {OPEN_VOCAB_MASK_SIZE[0]}, the official)",
    )
    g.add_argument(
        "--clip-resolution",
        type=positive_int,
        default=None,
        help="CLIP's input size (default: R; coco-object 2048, as the official)",
    )
    g.add_argument(
        "--clip",
        default=None,
        help="with --reference: the open_clip CLIP, MODEL:TAG or local-dir:DIR (default: the model "
        "folder's, else convnext_large_d_320:laion2b_s29b_b131k_ft_soup)",
    )
    p.add_argument(
        "--file-list",
        default=None,
        help="text file of image names to evaluate, or 'curated': the paper's COCO subset "
        "(2175 val2017 images, shipped) (default: every pair; VOC: val.txt)",
    )
    p.add_argument(
        "--label-map", default=None, help="JSON label mapping overriding the built-in one (format: docs/eval.md)"
    )
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_request(args: argparse.Namespace):
    from diffcut_edge.eval.evaluate import EvalRequest
    from diffcut_edge.runtime.options import SegmenterOptions

    if args.reference and not args.model:
        raise DiffCutError("--reference needs --model HUB_ID|PIPELINE_DIR (the diffusers pipeline to run)")
    return EvalRequest(
        args.dataset,
        args.root,
        model_dir=args.model_dir,
        backend=args.backend,
        reference=args.model if args.reference else None,
        resolution=args.resolution,
        options=SegmenterOptions(tau=args.tau, alpha=args.alpha),
        mask_size=args.mask_size,
        refine=args.refine,
        open_vocab=args.open_vocab,
        vocab=args.vocab,
        clip=args.clip,
        clip_resolution=args.clip_resolution,
        limit=args.limit,
        batch=args.batch,
        file_list=args.file_list,
        label_map=args.label_map,
        progress=not args.quiet and sys.stderr.isatty(),
    )


def run_eval(args: argparse.Namespace) -> int:
    from diffcut_edge.eval.evaluate import evaluate

    request = build_request(args)
    result = evaluate(request)
    extra = f", dataset mIoU {100 * result.dataset_miou:.2f}" if result.dataset_miou is not None else ""
    print(
        f"{args.dataset}: mIoU {100 * result.miou:.2f}  pixel accuracy {100 * result.pixel_accuracy:.2f}{extra}  "
        f"({result.num_images} images, {result.settings.get('backend')}, refine={request.refine}, "
        f"{result.seconds:.1f} s)"
    )
    if args.out:
        print(f"wrote {result.write_json(args.out)}")
    return 0
