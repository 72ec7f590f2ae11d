"""The ``interp`` command: argument parsing and printing over the Python API, nothing more.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and
``_cmd_<name>(args)`` calls one Python function and prints or writes its result.
Bad input is an :class:`~interp.errors.InterpError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from .errors import InterpError

DEFAULT_MODEL = "interp-tiny"


# ---------------------------------------------------------------------------- shared pieces
def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"hub name (gpt2, gpt2-medium, …), local Hugging Face directory, or bundled model (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--no-fold-ln", dest="fold_ln", action="store_false",
        help="keep Hugging Face's raw weights (default: fold LayerNorm, as TransformerLens does)",
    )


def load_model(args: argparse.Namespace):
    from .loading import load

    return load(args.model, device=args.device, fold_ln=args.fold_ln)


def add_output_args(p: argparse.ArgumentParser, png: bool = True) -> None:
    p.add_argument("--out", help="write the table to this file (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], help="table format for --out (default: from its suffix)")
    if png:
        p.add_argument("--png", help="write a heatmap to this file (.png, .svg or .pdf)")


def write_outputs(df, args: argparse.Namespace) -> None:
    from .export import write_table

    if getattr(args, "out", None):
        write_table(df, args.out, args.format)
        print(f"wrote {args.out}", file=sys.stderr)


def print_table(df, max_rows: int = 40) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", max_rows, "display.width", 160, "display.max_columns", 30):
        print(df.to_string(index=False, max_rows=max_rows, float_format=lambda v: f"{v:.3f}"))


def read_text_arg(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    if path == "-":
        return sys.stdin.read()
    if not os.path.isfile(path):
        raise InterpError(f"text file {path} does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# ---------------------------------------------------------------------------- interp info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="load a model and print its shape and hook points")
    add_model_args(p)


def _cmd_info(args) -> int:
    model = load_model(args)
    print(model)
    print(f"{len(model.hook_names)} hook points, e.g. {', '.join(model.hook_names[:4])}, …")
    return 0


# ---------------------------------------------------------------------------- interp bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed and memory ratios, measured side by side on a random GPT-2 small")
    p.add_argument("--only", help="comma-separated sections (default: all)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per batch (default 16)")
    p.add_argument("--pos", type=int, default=256, help="tokens per prompt (default 256)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")


def _cmd_bench(args) -> int:
    from . import bench

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    bench.run(only, n_prompts=args.prompts, n_pos=args.pos, threads=args.threads)
    return 0


# ---------------------------------------------------------------------------- subcommand table
# name -> (add_parser, run). Subcommands of the analyses register here.
COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "info": (_add_info, _cmd_info),
    "bench": (_add_bench, _cmd_bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp", description="Mechanistic interpretability for GPT-2: heads, lens, circuits, ablation, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][1](args) or 0
    except InterpError as e:
        print(f"interp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
