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
    names = model.hook_names
    per_layer = [n.split(".", 2)[2] for n in names if n.startswith("blocks.0.")]
    print(f"{len(names)} hook points: every layer L of 0–{model.cfg.n_layers - 1} has "
          f"{len(per_layer)} ('blocks.L.' + each of these)")
    for name in per_layer:
        print(f"  {name}")
    print("and outside the layers:")
    for name in names:
        if not name.startswith("blocks."):
            print(f"  {name}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory ratios, measured side by side on a random GPT-2 small")
    p.add_argument("--only", help="comma-separated sections (default: all)")
    p.add_argument("--prompts", type=count("a number of prompts"), default=16, help="prompts per batch (default 16)")
    p.add_argument("--pos", type=count("a number of tokens"), default=256,
                   help="tokens per prompt, 3 to 1024 (GPT-2 small's context window; default 256)")
    p.add_argument("--threads", type=count("a number of threads"), help="torch threads (default: torch's choice)")
    p.add_argument("--against", metavar="VENV", help="a venv with the peer to measure against: sae-lens 6.54 (features section), "
                   "circuit-tracer 0.5 (graph section)")
    add_progress(p)


def run_bench(args: argparse.Namespace) -> int:
    from .. import bench
    from ..errors import InterpError

    if not 3 <= args.pos <= bench.N_CTX:
        raise InterpError(f"--pos {args.pos}: give 3 to {bench.N_CTX} tokens (the benchmark model is GPT-2 small's "
                          f"shape, context window {bench.N_CTX})")

    import os

    from ..errors import InterpError

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    if args.against is not None and not os.path.isfile(os.path.join(args.against, "bin", "python")):
        raise InterpError(f"--against {args.against}: not a venv (no bin/python)")
    bench.run(only, n_prompts=args.prompts, n_pos=args.pos, threads=args.threads, progress=progress(args),
              against=args.against)
    return 0
