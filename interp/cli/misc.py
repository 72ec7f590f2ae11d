"""``interp info`` and ``interp bench``."""

from __future__ import annotations

import argparse

from .common import add_model_args, add_progress, count, load_model, progress


def add_info(sub) -> None:
    p = sub.add_parser("info", help="load a model and print its shape and hook points")
    add_model_args(p)


def run_info(args: argparse.Namespace) -> int:
    model = load_model(args)
    print(model)
    print(f"{len(model.hook_names)} hook points, e.g. {', '.join(model.hook_names[:4])}, …")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory ratios, measured side by side on a random GPT-2 small")
    p.add_argument("--only", help="comma-separated sections (default: all)")
    p.add_argument("--prompts", type=count("a number of prompts"), default=16, help="prompts per batch (default 16)")
    p.add_argument("--pos", type=count("a number of tokens"), default=256, help="tokens per prompt (default 256)")
    p.add_argument("--threads", type=count("a number of threads"), help="torch threads (default: torch's choice)")
    p.add_argument("--against", metavar="VENV", help="a venv with the peer to measure against: sae-lens 6.54 (features section), "
                   "circuit-tracer 0.5 (graph section)")
    add_progress(p)


def run_bench(args: argparse.Namespace) -> int:
    from .. import bench

    import os

    from ..errors import InterpError

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if args.against is not None and not os.path.isfile(os.path.join(args.against, "bin", "python")):
        raise InterpError(f"--against {args.against}: not a venv (no bin/python)")
    bench.run(only, n_prompts=args.prompts, n_pos=args.pos, threads=args.threads, progress=progress(args),
              against=args.against)
    return 0
