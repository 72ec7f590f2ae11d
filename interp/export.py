"""Writing results to disk: atomically, so an interrupted export never leaves half a file over a good one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd

from .errors import InterpError

TABLE_FORMATS = ("csv", "json")


def check_target(path: os.PathLike | str, name: Optional[str] = None) -> Path:
    """``path`` as a Path if a file can be written there, else an :class:`InterpError` naming it.

    ``name`` (e.g. ``"--out"``) leads the message: ``--out x.csv: directory x does not exist``.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    lead = f"{name} {path}" if name else f"cannot write {path}"
    if path.is_dir():
        raise InterpError(f"{lead}: it is a directory; give a file name")
    if not parent.is_dir():
        raise InterpError(f"{lead}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InterpError(f"{lead}: directory {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = check_target(path)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; give it the mode a plain open() would (or keep the old file's).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def new_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(path: os.PathLike | str, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def table_format(path: os.PathLike | str, fmt: Optional[str] = None) -> str:
    """The table format for ``path``: ``fmt`` if given, else from the suffix (.csv / .json)."""
    fmt = fmt or Path(path).suffix.lstrip(".").lower()
    if fmt not in TABLE_FORMATS:
        raise InterpError(f"unknown table format {fmt!r} for {path}: use one of {', '.join(TABLE_FORMATS)}")
    return fmt


def write_table(df: pd.DataFrame, path: os.PathLike | str, fmt: Optional[str] = None) -> Path:
    """Write a DataFrame as CSV or JSON (records), atomically."""
    fmt = table_format(path, fmt)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_json(tmp, orient="records", indent=1)
    return Path(path)


def save_figure(fig, path: os.PathLike | str, **kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix (png, svg, pdf)."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".").lower()
    try:
        if fmt not in ("png", "svg", "pdf"):
            raise InterpError(f"unknown image format {fmt!r} for {path}: use .png, .svg or .pdf")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight", **kwargs)
    finally:
        plt.close(fig)
    return Path(path)
