"""``diffcut-edge``: one entry point, verbs in the order a user meets them.

Each verb has an ``_add_<verb>(subparsers)`` that declares its options and a
``_run_<verb>(args) -> int`` that does the work, importing what it needs lazily so
``diffcut-edge segment`` never loads torch. Errors the user can act on are
:class:`DiffCutError`; :func:`main` prints them on one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from diffcut_edge import __version__
from diffcut_edge.errors import DiffCutError

EXIT_ERROR = 2        # a DiffCutError: bad input, wrong folder, missing extra
EXIT_INTERNAL = 1     # an unexpected exception (a bug): one line, --debug for the traceback
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------- helpers
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


# ------------------------------------------------------------------------ models
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model recipes and tiny random-weight models")
    msub = p.add_subparsers(dest="models_cmd", metavar="{list,make-tiny}", required=True)
    msub.add_parser("list", help="list the known model recipes")
    t = msub.add_parser("make-tiny", help="write a tiny random-weight pipeline (no download)")
    t.add_argument("--family", choices=("sdxl", "sd1"), required=True)
    t.add_argument("--out", required=True, help="folder to write the pipeline to")
    t.add_argument("--seed", type=int, default=0)


def _run_models(args: argparse.Namespace) -> int:
    from diffcut_edge import models

    if args.models_cmd == "list":
        for recipe in models.list_recipes():
            print(f"{recipe.name:<14} {recipe.hub_id:<42} family={recipe.family} "
                  f"R={recipe.resolution} hook={recipe.hook_path}")
        return 0
    path = models.make_tiny_pipeline(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random-weight {args.family} pipeline to {path}")
    return 0


# ------------------------------------------------------------------ export stage
def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the truncated encoder to an ONNX model folder")
    p.set_defaults(_not_ready=True)


def _run_export(args: argparse.Namespace) -> int:
    raise DiffCutError("'export' is not implemented yet")


def _add_build_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine", help="build a TensorRT engine in a model folder (on the target GPU)")
    p.set_defaults(_not_ready=True)


def _run_build_engine(args: argparse.Namespace) -> int:
    raise DiffCutError("'build-engine' is not implemented yet")


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare an exported model folder with the PyTorch reference")
    p.set_defaults(_not_ready=True)


def _run_verify(args: argparse.Namespace) -> int:
    raise DiffCutError("'verify' is not implemented yet")


# ------------------------------------------------------------------- applications
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images and write label maps and overlays")
    p.set_defaults(_not_ready=True)


def _run_segment(args: argparse.Namespace) -> int:
    raise DiffCutError("'segment' is not implemented yet")


def _add_video(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("video", help="segment a video file and write the overlay video")
    p.set_defaults(_not_ready=True)


def _run_video(args: argparse.Namespace) -> int:
    raise DiffCutError("'video' is not implemented yet")


def _add_webcam(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("webcam", help="live segmentation from a camera, file or stream")
    p.set_defaults(_not_ready=True)


def _run_webcam(args: argparse.Namespace) -> int:
    raise DiffCutError("'webcam' is not implemented yet")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="per-stage latency of a model folder")
    p.set_defaults(_not_ready=True)


def _run_bench(args: argparse.Namespace) -> int:
    raise DiffCutError("'bench' is not implemented yet")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="mIoU on a segmentation dataset with the paper's protocol")
    p.set_defaults(_not_ready=True)


def _run_eval(args: argparse.Namespace) -> int:
    raise DiffCutError("'eval' is not implemented yet")


# --------------------------------------------------------------------------- main
_VERBS: dict[str, tuple[Callable, Callable]] = {
    "models": (_add_models, _run_models),
    "export": (_add_export, _run_export),
    "build-engine": (_add_build_engine, _run_build_engine),
    "verify": (_add_verify, _run_verify),
    "segment": (_add_segment, _run_segment),
    "video": (_add_video, _run_video),
    "webcam": (_add_webcam, _run_webcam),
    "bench": (_add_bench, _run_bench),
    "eval": (_add_eval, _run_eval),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = _VERBS[args.verb][1]
    try:
        return int(run(args) or 0)
    except DiffCutError as e:
        print(f"diffcut-edge {args.verb}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"diffcut-edge {args.verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug or an unforeseen failure: still one line unless --debug
        if args.debug:
            raise
        print(f"diffcut-edge {args.verb}: unexpected error: {type(e).__name__}: {e} "
              f"(re-run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
