"""The ``interp`` command: argument parsing and printing over the Python API, nothing more.

Each subcommand is a module with ``add(subparsers)`` (its options) and ``run(args)`` (checks every
option and output target, loads the model, calls the API, prints, writes). Bad input is an
:class:`~interp.errors.InterpError`: one line on stderr naming the option, exit code 2.

Standard output is guarded (:class:`_Stdout`): a reader that goes away (``interp heads | head -1``)
is not an error — the rest of the printout is dropped and the command still writes its files;
any other failure to write it (a full disk) is one line and exit code 2, before any file is written.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
import warnings
from typing import Callable, Optional

from ..errors import InterpError, InterpWarning
from . import ablate, check, compose, discovery, features, graph, heads, lens, misc, ov, patching, report, sae

#: name -> (add the subparser, run it).
COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "info": (misc.add_info, misc.run_info),
    "bench": (misc.add_bench, misc.run_bench),
    "heads": (heads.add, heads.run),
    "lens": (lens.add, lens.run),
    "report": (report.add, report.run),
    "ov": (ov.add, ov.run),
    "ablate": (ablate.add, ablate.run),
    "patch": (patching.add_patch, patching.run_patch),
    "path-patch": (patching.add_path_patch, patching.run_path_patch),
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


class _Stdout(io.TextIOBase):
    """``sys.stdout`` while a command runs: a closed pipe ends the printout, not the command."""

    def __init__(self, stream):
        self.stream = stream
        self.dropped = False  # the reader went away (or the write failed): the rest is discarded

    def write(self, text: str) -> int:
        if not self.dropped:
            self._guard(lambda: self.stream.write(text))
        return len(text)

    def flush(self) -> None:
        if not self.dropped:
            self._guard(self.stream.flush)

    def _guard(self, op) -> None:
        try:
            op()
        except OSError as e:
            self.dropped = True
            # Python flushes what is left at exit and would fail again: point the descriptor at /dev/null.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)
            except (OSError, ValueError, io.UnsupportedOperation):
                pass
            if e.errno != errno.EPIPE:  # BrokenPipeError: the reader has what it wanted (| head)
                raise InterpError(f"cannot write to standard output: {e.strerror or e}") from None

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")

    def writable(self) -> bool:
        return True


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    guarded = _Stdout(sys.stdout)
    stdout, sys.stdout = sys.stdout, guarded
    try:
        return _main(argv)
    finally:  # --help exits from inside argparse: its text goes out (or is dropped) here too
        try:
            guarded.flush()
        except InterpError:
            pass
        sys.stdout = stdout


def _main(argv: Optional[list[str]]) -> int:
    args = argparse.Namespace(command="")
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
            code = COMMANDS[args.command][1](args) or 0
        sys.stdout.flush()  # a full disk is an error here, not a traceback at exit
        return code
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
