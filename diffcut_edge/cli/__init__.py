"""``diffcut-edge``: one entry point, verbs in the order a user meets them.

The CLI only parses. Each verb has an ``add_<verb>(subparsers)`` that declares its options
(option groups in :mod:`diffcut_edge.cli.args` add flags and build the library's values) and a
``run_<verb>(args) -> int`` that builds those values, makes one library call and prints one line.
Errors the user can act on are :class:`DiffCutError`; :func:`main` prints every failure on one
stderr line and exits non-zero. Modules by stage: ``export`` (doctor, models, export, export-vocab,
build-engine, quantize, verify), ``apps`` (segment, video, webcam, bench), ``eval``, ``serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence

from diffcut_edge import __version__
from diffcut_edge.cli import apps, export, serve
from diffcut_edge.cli import eval as evaluation
from diffcut_edge.cli.console import EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED
from diffcut_edge.errors import DiffCutError

__all__ = ["EXIT_ERROR", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "build_parser", "main"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so it unwinds like Ctrl-C: recordings are finished,
    temporary files removed (a service manager's stop is not a crash)."""


VERBS: dict[str, tuple[Callable, Callable]] = {
    "doctor": (export.add_doctor, export.run_doctor),
    "models": (export.add_models, export.run_models),
    "export": (export.add_export, export.run_export),
    "export-vocab": (export.add_export_vocab, export.run_export_vocab),
    "build-engine": (export.add_build_engine, export.run_build_engine),
    "quantize": (export.add_quantize, export.run_quantize),
    "verify": (export.add_verify, export.run_verify),
    "cache": (export.add_cache, export.run_cache),
    "segment": (apps.add_segment, apps.run_segment),
    "video": (apps.add_video, apps.run_video),
    "webcam": (apps.add_webcam, apps.run_webcam),
    "bench": (apps.add_bench, apps.run_bench),
    "eval": (evaluation.add_eval, evaluation.run_eval),
    "triton-repo": (serve.add_triton_repo, serve.run_triton_repo),
    "serve": (serve.add_serve, serve.run_serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffcut-edge",
        description="DiffCut zero-shot segmentation: export, build, run and evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"diffcut-edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add, _ in VERBS.values():
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

        quiet_opencv_logs()  # OpenCV's own [ERROR ...] lines stay off stderr: our messages say it in one line
        return int(VERBS[verb][1](args) or 0)
    except DiffCutError as e:
        return _say(verb, f"error: {e}", EXIT_ERROR)
    except Terminated:
        return _say(verb, "terminated", EXIT_TERMINATED)
    except KeyboardInterrupt:
        return _say(verb, "interrupted", EXIT_INTERRUPTED)
    except ModuleNotFoundError as e:  # a verb of the export stage in a runtime-only install
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None:
            return _say(
                verb,
                f"unexpected error: {type(e).__name__}: {e} (re-run with --debug for the traceback)",
                EXIT_INTERNAL,
            )
        return _say(
            verb,
            f"error: this needs '{e.name}', which is not installed: pip install "
            f"'diffcut-edge[{extra}]' (in a clone: pip install '.[{extra}]'); docs/open-vocabulary.md "
            f"for open_clip",
            EXIT_ERROR,
        )
    except PermissionError as e:  # an input folder, the model folder or --out that this user may not read or write
        where = e.filename or "a file"
        return _say(verb, f"error: permission denied: {where} (check its permissions and its folder's)", EXIT_ERROR)
    except MemoryError:
        return _say(
            verb,
            "error: out of memory (lower --mask-size, --batch or the resolution; docs/security.md lists the limits)",
            EXIT_ERROR,
        )
    except Exception as e:  # a bug or an unforeseen failure: still one line unless --debug
        if args is not None and args.debug:
            raise
        return _say(
            verb, f"unexpected error: {type(e).__name__}: {e} (re-run with --debug for the traceback)", EXIT_INTERNAL
        )
    finally:
        if previous is not None:  # in-process callers (tests, embedding apps) get theirs back
            import signal

            signal.signal(signal.SIGTERM, previous)


# The extra that brings a package a verb may import (export stage, CLIP, serving).
_EXTRA_OF = {
    "torch": "export",
    "diffusers": "export",
    "transformers": "export",
    "onnx": "export",
    "onnxscript": "export",
    "safetensors": "export",
    "accelerate": "export",
    "open_clip": "clip",
    "timm": "clip",
    "ftfy": "clip",
    "tritonclient": "triton",
    "ray": "ray",
    "aiohttp": "live",
}


def _say(verb: str, message: str, code: int) -> int:
    """The one stderr line a command ends with; a second Ctrl-C while it is printed changes nothing."""
    with contextlib.suppress(KeyboardInterrupt):
        print(f"diffcut-edge{' ' + verb if verb else ''}: {message}", file=sys.stderr)
    return code
