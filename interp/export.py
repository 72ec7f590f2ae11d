"""Writing results to disk: atomically, so an interrupted export never leaves half a file over a good one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pandas as pd

from .errors import InterpError

TABLE_FORMATS = ("csv", "json")


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InterpError(f"cannot write {path}: directory {parent} does not exist")
    if path.is_dir():
        raise InterpError(f"cannot write {path}: it is a directory")
    if not os.access(parent, os.W_OK):
        raise InterpError(f"cannot write {path}: directory {parent} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; give it the mode a plain open() would (or keep the old file's).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def heads_heatmap(
    df: pd.DataFrame,
    columns: Sequence[str],
    path: os.PathLike | str,
    *,
    title: str = "",
    cmap: str = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    n_layers: Optional[int] = None,
    n_heads: Optional[int] = None,
    annotate: Optional[Callable[[float], str]] = None,
) -> Path:
    """One layers × heads heatmap panel per column of a per-head DataFrame (``layer, head, …``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    for col in ("layer", "head", *columns):
        if col not in df.columns:
            raise InterpError(f"column {col!r} missing from the table (has {', '.join(df.columns)})")
    L = n_layers or int(df["layer"].max()) + 1
    H = n_heads or int(df["head"].max()) + 1
    fig, axes = plt.subplots(
        1, len(columns), figsize=((0.45 * H + 1.8) * len(columns), 0.4 * L + 1.5), squeeze=False,
        gridspec_kw={"wspace": 0.45},
    )
    for n, (ax, col) in enumerate(zip(axes[0], columns)):
        grid = np.full((L, H), np.nan)
        grid[df["layer"].to_numpy(int), df["head"].to_numpy(int)] = df[col].to_numpy(float)
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(col)
        ax.set_xlabel("head")
        if n == 0:
            ax.set_ylabel("layer")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        if annotate is not None and L * H <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    dark = im.norm(v) < 0.5  # viridis-like maps are dark at the low end
                    ax.text(j, i, annotate(v), ha="center", va="center", fontsize=6, color="w" if dark else "k")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        # Above the panels' own titles, however short the grid (bbox_inches="tight" keeps it in frame).
        fig.suptitle(title, y=1.0 + 0.3 / fig.get_figheight())
    return save_figure(fig, path, dpi=150)
