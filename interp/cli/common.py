"""What every subcommand shares: the model options, one option grammar, output targets checked first.

The contract (README, "The command line"): every argument, input file and output target is
checked before the model is loaded; bad input is one line on stderr naming the option and the
value, exit code 2, nothing on stdout; and a command writes all of its outputs or none.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import InterpError

DEFAULT_MODEL = "interp-tiny"
IMAGE_SUFFIXES = (".png", ".svg", ".pdf")


# ---------------------------------------------------------------------------- option types
def count(what: str = "a count") -> Callable[[str], int]:
    """An argparse type for counts: integers >= 1 (``--top 0`` is an error, not 'all')."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} is not {what} (give 1 or more)")
        return value

    return parse


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


# ---------------------------------------------------------------------------- the model
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
    from ..loading import HubUnavailable, load

    try:
        return load(args.model, device=args.device, fold_ln=args.fold_ln)
    except HubUnavailable as e:
        raise InterpError(f"--model {args.model}: {HubUnavailable(e.name, f'--model ./{e.name}-local')}") from None
    except InterpError as e:
        raise InterpError(f"--model {args.model}: {e}") from None


def add_progress(p: Any) -> None:
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bar (there is none in pipes anyway)")


def progress(args: argparse.Namespace) -> Optional[bool]:
    return False if getattr(args, "no_progress", False) else None


# ---------------------------------------------------------------------------- inputs
def read_text(path: Optional[str], option: str) -> Optional[str]:
    """A text file's contents ('-' = stdin); an empty one is an error naming the option."""
    if path is None:
        return None
    if path == "-":
        text = read_stdin(option)
    else:
        if not os.path.isfile(path):
            raise InterpError(f"{option} {path}: no such file")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise InterpError(f"{option} {path}: cannot read it: {e.strerror or e}") from None
    if not text.strip():
        raise InterpError(f"{option} {path}: the text is empty")
    return text


def read_stdin(option: str) -> str:
    """All of stdin, read once: two options may both name '-' (ablate's --text and --reference)."""
    stream = sys.stdin
    if stream is None or getattr(stream, "closed", False):
        raise InterpError(f"{option} -: stdin is closed; pipe the text in or give a file")
    if _STDIN.get("stream") is not stream:
        try:
            raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
        except (OSError, ValueError) as e:
            raise InterpError(f"{option} -: cannot read stdin: {getattr(e, 'strerror', None) or e}") from None
        _STDIN.update(stream=stream, text=raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw)
    return _STDIN["text"]


_STDIN: dict = {}


def read_lines(path: str, option: str) -> list[str]:
    """Non-blank lines of a file ('-' = stdin), one prompt each; none is an error."""
    lines = [line.rstrip("\r") for line in read_text(path, option).split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise InterpError(f"{option} {path}: no prompts (one per line expected)")
    return lines


def check_file(path: Optional[str], option: str) -> None:
    """An input file exists ('-': stdin is open), before the model loads."""
    if path == "-":
        if sys.stdin is None or getattr(sys.stdin, "closed", False):
            raise InterpError(f"{option} -: stdin is closed; pipe the text in or give a file")
    elif path is not None and not os.path.isfile(path):
        raise InterpError(f"{option} {path}: no such file")


# ---------------------------------------------------------------------------- outputs
class Outputs:
    """A command's output files: checked before any work, written together after it.

    Every target is checked at construction (its directory exists and is writable, its suffix
    names a format this command can write, no two outputs name one file). :meth:`commit` flushes
    standard output (a full disk there fails the command before any file is written), renders each
    file into a temporary file and moves them all into place only when every one succeeded
    (:class:`interp.export.Outputs`): a failure leaves no new file and every old one as it was.
    """

    def __init__(self, args: argparse.Namespace, *, table: bool = True, image: bool = True,
                 others: tuple[tuple[str, Optional[str]], ...] = ()):
        from ..export import Outputs as Files, check_distinct, check_target, table_format

        self.table = getattr(args, "out", None) if table else None
        self.fmt = getattr(args, "format", None)
        self.image = getattr(args, "png", None) if image else None
        self._files = Files()
        if self.table is not None:
            check_target(self.table, "--out")
            try:
                self.fmt = table_format(self.table, self.fmt)
            except InterpError:
                raise InterpError(f"--out {self.table}: unknown table format; use a .csv or .json name "
                                  "(or --format csv|json)") from None
        elif self.fmt is not None:
            raise InterpError("--format goes with --out FILE")
        if self.image is not None:
            check_target(self.image, "--png")
            if Path(self.image).suffix.lower() not in IMAGE_SUFFIXES:
                raise InterpError(f"--png {self.image}: unknown image format; use a .png, .svg or .pdf name")
        for option, path in others:
            if path is not None:
                check_target(path, option)
        check_distinct([("--out", self.table), ("--png", self.image), *others])

    def add(self, path: Any, write: Callable[[Path], Any], option: str = "") -> None:
        """Queue ``write(temporary_path)`` for ``path``."""
        self._files.add(path, write, option)

    def add_table(self, df) -> None:
        if self.table is not None:
            fmt = self.fmt
            self.add(self.table, lambda tmp: df.to_csv(tmp, index=False) if fmt == "csv"
                     else df.to_json(tmp, orient="records", indent=1), "--out")

    def add_figure(self, fig, path: Any = None) -> None:
        path = Path(path or self.image)
        fmt = path.suffix.lstrip(".").lower()

        def draw(tmp: Path) -> None:
            import matplotlib.pyplot as plt

            try:
                fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=150)
            finally:
                plt.close(fig)

        self.add(path, draw, "--png")

    def commit(self) -> None:
        """Write every queued file, all or none (after standard output has been written)."""
        sys.stdout.flush()
        for path in self._files.commit():
            print(f"wrote {path}", file=sys.stderr)


def add_output_args(p: argparse.ArgumentParser, png: Optional[str] = "write a heatmap to this file (.png, .svg or .pdf)") -> None:
    p.add_argument("--out", metavar="FILE", help="write the whole table to this file (.csv or .json)")
    p.add_argument("--format", choices=["csv", "json"], help="table format for --out (default: from its suffix)")
    if png:
        p.add_argument("--png", metavar="FILE", help=png)


# ---------------------------------------------------------------------------- printing
def print_table(df, max_rows: Optional[int] = None) -> None:
    """The table on stdout (at most ``max_rows`` rows, then a line saying how many were left out)."""
    import pandas as pd

    shown = df if max_rows is None else df.head(max_rows)
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if max_rows is not None and len(df) > max_rows:
        print(f"({len(df) - max_rows} more rows: --top N, or --out FILE for all)")
