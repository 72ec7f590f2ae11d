"""The ``interp`` command: argument parsing and printing over the Python API, nothing more.

Each subcommand is a module with ``add(subparsers)`` (its options) and ``run(args)`` (checks every
option and output target, loads the model, calls the API, prints, writes). Bad input is an
:class:`~interp.errors.InterpError`: one line on stderr naming the option, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Callable, Optional

from ..errors import InterpError, InterpWarning
from . import ablate, check, circuits, compose, discovery, features, graph, heads, lens, misc, ov, report, sae

#: name -> (add the subparser, run it).
COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "info": (misc.add_info, misc.run_info),
    "bench": (misc.add_bench, misc.run_bench),
    "heads": (heads.add, heads.run),
    "lens": (lens.add, lens.run),
    "report": (report.add, report.run),
    "ov": (ov.add, ov.run),
    "ablate": (ablate.add, ablate.run),
    "patch": (circuits.add_patch, circuits.run_patch),
    "path-patch": (circuits.add_path_patch, circuits.run_path_patch),
    "attribute": (discovery.add_attribute, discovery.run_attribute),
    "circuit": (discovery.add_circuit, discovery.run_circuit),
    "compose": (compose.add, compose.run),
    "check-gpt2": (check.add, check.run),
    "sae": (sae.add, sae.run),
    "features": (features.add, features.run),
    "graph": (graph.add, graph.run),
}


class _BadUsage(Exception):
    """An option argparse could not read: reported as one line (exit 2) by :func:`main`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _BadUsage(f"{self.prog}: error: {message}")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = _Parser(
        prog="interp", description="Mechanistic interpretability for GPT-2: heads, lens, circuits, ablation, reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    before = dict(sub.choices)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser, {name: p for name, p in sub.choices.items() if name not in before}


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser, subparsers = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # the subcommand's own usage, not the top level's
            subparsers[args.command].print_usage(sys.stderr)
            subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        with warnings.catch_warnings():
            # Library warnings (with source paths) are not the user's business; ours (InterpWarning) are,
            # one line each on stderr, as they come.
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", InterpWarning)
            warnings.showwarning = lambda message, *a, **k: print(
                f"interp {args.command}: warning: {message}", file=sys.stderr)
            return COMMANDS[args.command][1](args) or 0
    except _BadUsage as e:
        print(e, file=sys.stderr)
        return 2
    except InterpError as e:
        print(f"interp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
