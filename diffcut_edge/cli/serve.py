"""The serving verbs: triton-repo (write a Triton model repository) and serve (run tritonserver on one)."""

from __future__ import annotations

import argparse
import sys

from diffcut_edge.cli.args import RepositoryArgs, positive_int
from diffcut_edge.serve.triton_repo import ENCODERS

REPOSITORY, SERVED_REPOSITORY = RepositoryArgs(ENCODERS), RepositoryArgs(("auto", *ENCODERS))


def add_triton_repo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository for a model folder",
        description="Writes an ensemble 'diffcut' (image UINT8 [H,W,3] RGB -> labels INT32 [H,W], "
        "num_segments INT32 [1]) over a python pre-processing model, the encoder "
        "(dynamic batching) and a python post-processing model running this "
        "project's runtime. Every config.pbtxt is parsed back with tritonclient's "
        "model-config protobuf. docs/serving.md",
    )
    REPOSITORY.add(p)
    p.add_argument("--out", required=True, help="the repository folder (replaced if it is an earlier one)")


def add_serve(sub: argparse._SubParsersAction) -> None:
    from diffcut_edge.serve.triton_server import DEFAULT_PORTS

    p = sub.add_parser(
        "serve",
        help="serve a model folder with a real Triton Inference Server",
        description="Generates a model repository (as triton-repo) and runs tritonserver on it: "
        "--tritonserver, else the one on PATH, else nvidia-pytriton's binary "
        "(pip install --no-deps nvidia-pytriton). SIGTERM or Ctrl-C stops it cleanly. "
        "Query it with diffcut_edge.serve.TritonSegmenter. docs/serving.md",
    )
    SERVED_REPOSITORY.add(p)
    p.add_argument("--tritonserver", default=None, metavar="PATH", help="the tritonserver binary or install folder")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine; 0.0.0.0 for the network, behind an "
        "authenticating gateway: docs/security.md)",
    )
    for what, port in DEFAULT_PORTS.items():
        p.add_argument(f"--{what}-port", type=positive_int, default=port, help=f"{what} port (default {port})")
    p.add_argument("--repo", default=None, help="write the repository here and keep it (default: a temporary folder)")
    p.add_argument(
        "--ready-timeout", type=positive_int, default=300, help="seconds to wait for every model to load (default 300)"
    )


def run_triton_repo(args: argparse.Namespace) -> int:
    from diffcut_edge.serve.triton_repo import write_repository

    segmenter, spec = REPOSITORY.build(args)
    out = write_repository(segmenter, args.out, spec)
    print(
        f"wrote the Triton model repository {out} (encoder: {args.encoder}); run it with "
        f"tritonserver --model-repository {out} (diffcut-edge serve --model-dir {args.model_dir} builds and runs "
        f"its own repository instead)"
    )
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from diffcut_edge.serve.triton_server import choose_encoder, find_tritonserver, serve_model

    binary = find_tritonserver(args.tritonserver)
    encoder = choose_encoder(binary, args.encoder)
    segmenter, spec = SERVED_REPOSITORY.build(args, encoder)

    def starting(repo) -> None:
        print(
            f"starting tritonserver ({binary.source}: {binary.executable}) on {repo}, encoder {encoder}",
            file=sys.stderr,
            flush=True,
        )

    def ready(server) -> None:
        print(
            f"serving {args.model_dir} as model 'diffcut': http {args.host}:{args.http_port}, "
            f"grpc {args.host}:{args.grpc_port}, metrics {args.host}:{args.metrics_port} "
            f"(log {server.log}); Ctrl-C or SIGTERM stops it",
            flush=True,
        )

    status = serve_model(
        segmenter,
        spec,
        binary,
        host=args.host,
        repo=args.repo,
        ready_timeout_s=args.ready_timeout,
        ports={"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port},
        on_starting=starting,
        on_ready=ready,
    )
    print(f"stopped tritonserver (exit status {status})", flush=True)
    return 0
