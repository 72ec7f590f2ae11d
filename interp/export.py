"""Writing results to disk: atomically, so an interrupted export never leaves half a file over a good one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pandas as pd

from .errors import InterpError

TABLE_FORMATS = ("csv", "json")


def check_target(path: os.PathLike | str, name: Optional[str] = None) -> Path:
    """``path`` as a Path if a file can be written there, else an :class:`InterpError` naming it.

    ``name`` (e.g. ``"--out"``) leads the message: ``--out x.csv: directory x does not exist``.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InterpError(f"{name or 'an output'}: no file name given")
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


def check_directory(path: os.PathLike | str, name: Optional[str] = None) -> Path:
    """``path`` as a Path if files can be written into it (it exists and is writable, or its parent does and is).

    A missing directory is created when its files are written (:class:`Outputs`), not before.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InterpError(f"{name or 'an output directory'}: no directory given")
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    lead = f"{name} {path}" if name else f"cannot write into {path}"
    if path.exists() and not path.is_dir():
        raise InterpError(f"{lead}: it is a file, not a directory")
    where = path if path.is_dir() else parent
    if not where.is_dir():
        raise InterpError(f"{lead}: directory {parent} does not exist")
    if not os.access(where, os.W_OK | os.X_OK):
        raise InterpError(f"{lead}: directory {where} is not writable")
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


class Outputs:
    """Several output files written together: every one of them, or none.

    Each file is rendered into a temporary file (beside its target, or in a staging directory on
    the same file system) before anything is moved; :meth:`commit` then creates the missing
    directories and renames each file into place, moving any old file aside first. If a rename
    fails (a directory that refuses writes, a full disk), the files already moved are put back,
    the old ones restored and the new directories removed: a failed command leaves every file as
    it was. Two outputs naming one file are refused when added.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> out = Outputs()
    >>> out.add(d / "a.txt", lambda tmp: tmp.write_text("a"), option="--out")
    >>> out.add(d / "figs" / "b.txt", lambda tmp: tmp.write_text("b"), option="--png-dir")
    >>> out.add(d / "a.txt", lambda tmp: tmp.write_text("c"), option="--csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    interp.errors.InterpError: --csv and --out name the same file ...a.txt: give each output its own file
    >>> [str(p.relative_to(d)) for p in out.commit()]
    ['a.txt', 'figs/b.txt']
    """

    def __init__(self) -> None:
        self._jobs: list[tuple[Path, Callable[[Path], Any], str]] = []

    def add(self, path: Any, write: Callable[[Path], Any], option: str = "") -> None:
        """Queue ``write(temporary_path)`` for ``path`` (its directory is created at commit if missing)."""
        path = Path(path)
        for other, _, other_option in self._jobs:
            if other_option != option or _same_file(other, path):  # a directory option's own files may share it
                check_distinct([(other_option, other), (option, path)])
        self._jobs.append((path, write, option))

    def __len__(self) -> int:
        return len(self._jobs)

    def commit(self, progress: Optional[bool] = False, desc: str = "writing") -> list[Path]:
        """Render every queued file, then move them all into place (see the class docs); their paths."""
        from tqdm.auto import tqdm

        staging: dict[Path, Path] = {}  # a missing directory -> the staging directory beside it
        rendered: list[tuple[Path, Path]] = []
        moved: list[tuple[Path, Optional[Path]]] = []
        made: list[Path] = []
        target = None
        try:
            for target, write, _ in tqdm(self._jobs, desc=desc, unit="file", leave=False,
                                         disable=None if progress is None else not progress):
                parent = target.parent if str(target.parent) else Path(".")
                if not parent.is_dir():  # rendered beside the directory that will hold it
                    if parent not in staging:
                        staging[parent] = Path(tempfile.mkdtemp(prefix=f".{parent.name}.", dir=parent.parent))
                    where = staging[parent]
                else:
                    where = parent
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=where)
                os.close(fd)
                rendered.append((Path(tmp), target))
                write(Path(tmp))
            mode = new_file_mode()
            for tmp, target in rendered:
                os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else mode)
            for tmp, target in rendered:
                parent = target.parent if str(target.parent) else Path(".")
                if not parent.is_dir():
                    parent.mkdir()
                    made.append(parent)
                backup = None
                if target.exists():
                    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".old", dir=parent)
                    os.close(fd)
                    backup = Path(name)
                    os.replace(target, backup)
                moved.append((target, backup))
                os.replace(tmp, target)
        except OSError as e:
            for done, backup in reversed(moved):  # put everything back as it was
                with contextlib.suppress(OSError):
                    if backup is not None:
                        os.replace(backup, done)
                    elif done.exists():
                        done.unlink()
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise InterpError(f"cannot write {target}: {e.strerror or e}") from None
        finally:
            for tmp, _ in rendered:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            for d in staging.values():
                shutil.rmtree(d, ignore_errors=True)
        for _, backup in moved:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
        return [target for _, target in rendered]


def check_distinct(files: list[tuple[str, Any]], directories: list[tuple[str, Any]] = ()) -> None:
    """Refuse two outputs that name one file, or a file that another output uses as its directory.

    ``files`` and ``directories`` are ``(option, path)`` pairs (a path may be None: not given); two
    directory options may name one directory (``--png-dir figs --svg-dir figs``).
    """
    seen: list[tuple[str, Path, bool]] = []
    for option, path, is_dir in [*((o, p, False) for o, p in files), *((o, p, True) for o, p in directories)]:
        if path is None:
            continue
        path = Path(path)
        for other_option, other, other_is_dir in seen:
            names = " and ".join(sorted({option or "an output", other_option or "another output"}))
            if _same_file(other, path) and not (is_dir and other_is_dir):
                raise InterpError(f"{names} name the same file {path}: give each output its own file")
            if (_same_file(other, path.parent) and not other_is_dir) or (_same_file(other.parent, path) and not is_dir):
                raise InterpError(f"{names}: {path} and {other} cannot both be written (one would be the other's "
                                  "directory)")
        seen.append((option, path, is_dir))


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


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
