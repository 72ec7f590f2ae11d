"""Every figure interp draws, from the tables the analyses return: one place for matplotlib.

Analyses stay pure functions to DataFrames; the command line and the reports call these to
draw them. Each function returns a matplotlib figure (``*_figure``) or writes one atomically
(``save_*`` / ``write_*``, format from the suffix: .png, .svg, .pdf). Conventions: a score that
is a fraction is drawn on 0–1 (never rescaled per panel), a signed effect on a symmetric
diverging scale, and cell labels take black or white by the cell's luminance.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import InterpError
from .export import save_figure
from .report.html import show_token

__all__ = ["heads_heatmap", "heads_figure", "plot_logit_lens", "logit_lens_figure", "spectra_figure", "save_spectra_figure", "pattern_figure",
           "lines_figure", "write_figures", "figure_files", "summary_figure", "label_color"]


def _plt():
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:  # in a notebook, keep its inline backend: figures show in the page
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def label_color(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of this colour (WCAG relative luminance)."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast with black (L + 0.05) / 0.05 against white 1.05 / (L + 0.05): equal at L ≈ 0.179.
    return "black" if luminance > 0.179 else "white"


# ---------------------------------------------------------------------------- layers × heads
def heads_figure(
    df: pd.DataFrame,
    columns: Sequence[str],
    *,
    title: str = "",
    cmap: str = "viridis",
    vmin: Optional[float] = None,
    vmax: Optional[float] = None,
    signed: bool = False,
    limit: Optional[float] = None,
    n_layers: Optional[int] = None,
    n_heads: Optional[int] = None,
    annotate: Optional[Callable[[float], str]] = None,
    notes: Optional[dict] = None,
    max_columns: int = 3,
    xlabel: str = "head",
    colorbar_label: Optional[str] = None,
    highlight: Optional[Sequence[tuple[int, int]]] = None,
):
    """One layers × heads heatmap panel per column of a per-head table (``layer, head, …``), in a grid.

    ``signed=True`` draws every panel on one symmetric diverging scale (``RdBu_r``, ±max|value|), or
    ±max(``limit``, max|value|) with ``limit``: effects normalised to the clean–corrupted gap take
    ``limit=1``, so a 0.03 effect looks like 0.03, not like the largest there is.
    A panel whose values are all NaN says why in its middle (``notes[column]``, else "not defined").
    ``xlabel`` names the columns (``"position"`` for a layers × positions grid drawn with ``head`` =
    the position), ``colorbar_label`` what the colours measure, ``highlight`` outlines
    those ``(layer, head)`` cells. With one panel and a ``title``, the title is the panel's (said once).
    """
    plt = _plt()
    from matplotlib.patches import Rectangle

    for col in ("layer", "head", *columns):
        if col not in df.columns:
            raise InterpError(f"column {col!r} missing from the table (has {', '.join(df.columns)})")
    if signed:
        lim = float(np.nanmax(np.abs(df[list(columns)].to_numpy(float)))) if len(df) else 0.0
        lim = lim if np.isfinite(lim) and lim > 0 else 1.0
        lim = max(lim, limit) if limit is not None else lim
        cmap, vmin, vmax = "RdBu_r", -lim, lim
    L = n_layers or int(df["layer"].max()) + 1
    H = n_heads or int(df["head"].max()) + 1
    n_cols = min(len(columns), max_columns)
    n_rows = -(-len(columns) // n_cols)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=((0.45 * H + 1.8) * n_cols, (0.4 * L + 1.5) * n_rows), squeeze=False,
        gridspec_kw={"wspace": 0.45, "hspace": 0.6},
    )
    for ax in axes.flat[len(columns):]:
        ax.remove()
    one = len(columns) == 1 and bool(title)
    for n, (ax, col) in enumerate(zip(axes.flat, columns)):
        grid = np.full((L, H), np.nan)
        grid[df["layer"].to_numpy(int), df["head"].to_numpy(int)] = df[col].to_numpy(float)
        im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(title if one else col, parse_math=False)
        ax.set_xlabel(xlabel)
        if n % n_cols == 0:
            ax.set_ylabel("layer")
        ax.set_xticks(range(H))
        ax.set_yticks(range(L))
        if np.isnan(grid).all():
            ax.text((H - 1) / 2, (L - 1) / 2, (notes or {}).get(col, "not defined"), ha="center", va="center",
                    fontsize=8, color="#555555", wrap=True)
        elif annotate is not None and L * H <= 400:
            for (i, j), v in np.ndenumerate(grid):
                if not np.isnan(v):
                    ax.text(j, i, annotate(v), ha="center", va="center", fontsize=6,
                            color=label_color(im.cmap(im.norm(v))))
        for layer, head in highlight or ():
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="#e8590c", linewidth=2.2,
                                   label="in the report"))
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if colorbar_label:
            bar.set_label(colorbar_label)
    if title and not one:
        # Above the panels' own titles, however short the grid (bbox_inches="tight" keeps it in frame).
        fig.suptitle(title, y=1.0 + 0.3 / fig.get_figheight())
    return fig


def heads_heatmap(df: pd.DataFrame, columns: Sequence[str], path: os.PathLike | str, **kwargs) -> Path:
    """:func:`heads_figure`, written atomically to ``path``."""
    return save_figure(heads_figure(df, columns, **kwargs), path, dpi=150)


# ---------------------------------------------------------------------------- logit lens
def plot_logit_lens(df: pd.DataFrame, path: Any, *, prompt: int = 0, title: str = "") -> Path:
    """:func:`logit_lens_figure`, written atomically to ``path``."""
    return save_figure(logit_lens_figure(df, prompt=prompt, title=title), path, dpi=150)


def logit_lens_figure(df: pd.DataFrame, *, prompt: int = 0, title: str = ""):
    """The familiar grid for one prompt, and the target's probability across boundaries.

    Left panel: boundaries (embeddings at the bottom) × positions; each cell shows the lens's top
    token, coloured by its probability. Right panel (when the table has a target): the target's
    probability at each boundary, one line per position, on a log scale.
    """
    plt = _plt()
    sub = df[(df["prompt"] == prompt) & (df["rank"] == 1)]
    if sub.empty:
        raise InterpError(f"prompt {prompt} not in the table (it has prompts {sorted(df['prompt'].unique())})")
    positions = sorted(sub["position"].unique())
    n_b = int(sub["boundary"].max()) + 1
    labels = sub.drop_duplicates("boundary").sort_values("boundary")["label"].tolist()
    inputs = sub.drop_duplicates("position").set_index("position")["input_token"]
    grid = np.full((n_b, len(positions)), np.nan)
    text = np.full((n_b, len(positions)), "", dtype=object)
    col = {p: j for j, p in enumerate(positions)}
    for r in sub.itertuples():
        grid[r.boundary, col[r.position]] = r.prob
        text[r.boundary, col[r.position]] = r.token
    has_target = "target_prob" in sub
    width = min(2 + 0.9 * len(positions), 40)
    fig, axes = plt.subplots(
        1, 2 if has_target else 1, figsize=(width + (5 if has_target else 0), 1.5 + 0.38 * n_b), squeeze=False,
        gridspec_kw={"width_ratios": [width, 5] if has_target else [1], "wspace": 0.45},
    )
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    if grid.size <= 1500:
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, _short(text[i, j]), ha="center", va="center", fontsize=7,
                    color=label_color(im.cmap(im.norm(v))))
    ax.set_yticks(range(n_b), labels)
    ax.set_xticks(range(len(positions)), [f"{_short(inputs[p])}\n{p}" for p in positions], fontsize=7)
    ax.set_xlabel("input token / position (the lens predicts the next token)")
    ax.set_ylabel("residual stream after")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="top-1 probability")
    if has_target:
        tax = axes[0, 1]
        for p in positions:
            curve = sub[sub["position"] == p].sort_values("boundary")
            tax.plot(curve["boundary"], curve["target_prob"], marker="o", label=f"pos {p}")
        tax.set_yscale("log")
        tax.set_xticks(range(n_b), labels, rotation=90, fontsize=7)
        tax.set_ylabel("probability (log scale)")
        tax.set_title(f"P({sub['target'].iloc[0]!r})")
        # Every line is named: a legend beside the panel, in as many columns as it takes.
        tax.legend(title="position", fontsize=6, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1),
                   ncol=max(1, -(-len(positions) // 20)), frameon=False)
    lens = "W_U" if df.attrs.get("unembed", sub["unembed"].iloc[0]) == "wu" else "pinv(W_E)"
    ln = "final LN" if bool(sub["final_ln"].iloc[0]) else "no final LN"
    fig.suptitle(title or f"logit lens ({lens}, {ln})")
    return fig


def _short(token: str, n: int = 8) -> str:
    token = figure_text(token)
    return token if len(token) <= n else token[: n - 1] + "…"


def figure_text(token: str) -> str:
    """A token as a figure can draw it: control characters escaped (:func:`show_token`), and each character
    the figure's monospace font has no glyph for (CJK, emoji) as its escape, not an empty box."""
    glyphs = _monospace_glyphs()
    return "".join(c if ord(c) in glyphs else _escape_char(c) for c in show_token(token))


def _escape_char(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


@functools.lru_cache(maxsize=1)
def _monospace_glyphs() -> frozenset:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family="monospace"))
    return frozenset(FT2Font(path).get_charmap())


# ---------------------------------------------------------------------------- OV spectra
def save_spectra_figure(spectrum: pd.DataFrame, path: Any, title: str = "") -> Any:
    """:func:`spectra_figure`, written atomically to ``path``."""
    return save_figure(spectra_figure(spectrum, title=title), path, dpi=150)


def spectra_figure(spectrum: pd.DataFrame, *, title: str = ""):
    """Every head's spectrum (σ_k, log scale) and cumulative energy, coloured by layer.

    ``spectrum`` is an :func:`analyses.ov.ov_spectrum` table.
    """
    from matplotlib.ticker import MaxNLocator

    from analyses.ov import ENERGY_LEVELS

    plt = _plt()
    for col in ("layer", "head", "k", "sigma", "cum_energy"):
        if col not in spectrum.columns:
            raise InterpError(f"column {col!r} missing from the spectrum table (has {', '.join(spectrum.columns)})")
    n_layers = int(spectrum["layer"].max()) + 1
    cmap = plt.get_cmap("viridis", max(n_layers, 2))
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    for (layer, _), g in spectrum.groupby(["layer", "head"], sort=True):
        color = cmap(layer)
        pos = g[g["sigma"] > 0]
        if len(pos):
            ax_s.plot(pos["k"], pos["sigma"], color=color, lw=0.8, alpha=0.7)
            ax_e.plot(g["k"], g["cum_energy"], color=color, lw=0.8, alpha=0.7)
    ax_s.set(yscale="log", xlabel="k", ylabel="σ_k", title="singular values of W_OV")
    ax_e.set(xlabel="k", ylabel="share of Σσ² in the top k", title="cumulative energy", ylim=(0, 1.02))
    for ax in (ax_s, ax_e):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # k is a count
    for q in ENERGY_LEVELS:  # the levels of rank90 / rank99: where each head's curve crosses them is that rank
        ax_e.axhline(q, color="grey", lw=0.5, ls="--")
        # Labelled at the left, where every curve is still low (they all rise to 1 at the right).
        ax_e.annotate(f"{q:g} of Σσ² (rank{round(q * 100)})", xy=(0.0, q), xycoords=("axes fraction", "data"),
                      xytext=(3, -2), textcoords="offset points", ha="left", va="top", fontsize=7, color="#555555")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(-0.5, n_layers - 0.5))
    fig.colorbar(sm, ax=[ax_s, ax_e], label="layer", fraction=0.03, ticks=range(n_layers))
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------- attention reports
def _title(r, i: int) -> str:
    layer, head = r.heads[i]
    row = r.head_scores(layer, head)
    label = row.get("label") if row else None
    return f"L{layer}H{head}" + (f" · {label}" if isinstance(label, str) and label else "")


def pattern_figure(r, i: int):
    """Head ``i`` of the report as a heatmap (query rows × key columns, the masked future hatched grey)."""
    plt = _plt()
    from matplotlib.patches import Polygon

    pattern = r.patterns[i].float().numpy()
    p = pattern.shape[0]
    masked = np.ma.masked_array(pattern, mask=np.triu(np.ones((p, p), bool), 1))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e4e6ea")
    side = min(12.0, 2.5 + 0.22 * p)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(masked, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    if p <= 64:
        # The staircase above the diagonal: the future keys a causal head cannot see.
        corners = [(0.5, -0.5)]
        for q in range(p - 1):
            corners += [(q + 0.5, q + 0.5), (q + 1.5, q + 0.5)]
        corners.append((p - 0.5, -0.5))
        ax.add_patch(Polygon(corners, closed=True, fill=False, hatch="///", edgecolor="#9aa0a8", linewidth=0))
        labels = [figure_text(t) for t in r.tokens]
        ax.set_xticks(range(p))
        ax.set_yticks(range(p))
        # parse_math=False: a token such as "$x$" is text, not mathtext.
        ax.set_xticklabels(labels, rotation=90, fontsize=7, parse_math=False, fontfamily="monospace")
        ax.set_yticklabels(labels, fontsize=7, parse_math=False, fontfamily="monospace")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(_title(r, i), parse_math=False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return fig


def lines_figure(r, i: int):
    """Head ``i`` as two columns of tokens joined by lines (queries left, keys right, opacity = weight)."""
    plt = _plt()
    from matplotlib.collections import LineCollection

    pattern = r.patterns[i].float().numpy()
    p = pattern.shape[0]
    fig, ax = plt.subplots(figsize=(5.5, max(2.5, 0.2 * p + 0.8)))
    segments, colors = [], []
    for q in range(p):
        row = pattern[q, : q + 1]
        keys = [k for k in np.argsort(-row, kind="stable")[: r.line_top_k] if row[k] >= r.line_min_weight]
        for k in keys:
            segments.append([(0.0, -q), (1.0, -k)])
            colors.append((0.184, 0.373, 0.702, float(min(1.0, max(0.02, row[k])))))
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=1.5))
    for pos, tok in enumerate(r.tokens):
        text = figure_text(tok)
        ax.text(-0.04, -pos, text, ha="right", va="center", fontsize=8, fontfamily="monospace", parse_math=False)
        ax.text(1.04, -pos, text, ha="left", va="center", fontsize=8, fontfamily="monospace", parse_math=False)
    ax.set_xlim(-0.9, 1.9)
    ax.set_ylim(-p + 0.5, 0.5)
    ax.axis("off")
    ax.set_title(f"{_title(r, i)}   query → key", parse_math=False)
    return fig


def write_figures(r, directory, fmt: str = "png", progress: Optional[bool] = None) -> list:
    """Write each head's heatmap and line view (and the summary heatmaps) of a report into ``directory``.

    Files: ``L{layer}H{head}.pattern.{fmt}``, ``L{layer}H{head}.lines.{fmt}``, ``summary.{fmt}`` (and
    ``trajectory.{fmt}`` when the report has the prediction trajectory). A missing ``directory`` is created
    (its parent must exist). Every figure is drawn before any is moved in (:class:`interp.export.Outputs`),
    so a failed export leaves ``directory`` as it was (never a mix of old and new figures). Returns the
    paths written.
    """
    from .export import Outputs, check_directory

    directory = check_directory(directory)
    out = Outputs()
    for name, write in figure_files(r, fmt):
        out.add(directory / name, write, f"{fmt} figures")
    return out.commit(progress, desc=f"report {fmt}")


def figure_files(r, fmt: str = "png") -> list[tuple[str, Callable[[Path], None]]]:
    """A report's figures as ``(file name, write(path))``: each head's heatmap and line view, the summary."""
    if fmt not in ("png", "svg", "pdf"):
        raise InterpError(f"unknown image format {fmt!r}: use png, svg or pdf")

    def saver(draw: Callable[[], Any], dpi: int) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            fig = draw()
            try:
                fig.savefig(path, format=fmt, bbox_inches="tight", dpi=dpi)
            finally:
                _plt().close(fig)

        return write

    files = []
    for i, (layer, head) in enumerate(r.heads):
        files.append((f"L{layer}H{head}.pattern.{fmt}", saver(lambda i=i: pattern_figure(r, i), 150)))
        files.append((f"L{layer}H{head}.lines.{fmt}", saver(lambda i=i: lines_figure(r, i), 120)))
    if r.scores is not None:
        files.append((f"summary.{fmt}", saver(lambda: summary_figure(r), 150)))
    if getattr(r, "trajectory", None) is not None:
        files.append((f"trajectory.{fmt}", saver(lambda: trajectory_figure(r.trajectory), 150)))
    return files


def _two_places(v: float) -> str:
    """0.95 as ".95" (a 0–1 score in a small cell), 1 as "1.0"."""
    text = f"{v:.2f}"
    return text[1:] if text.startswith("0.") else f"{v:.1f}"


def summary_figure(r):
    """A report's head scores, layers × heads, one panel per kind, each cell's value written in it and the
    report's heads outlined."""
    # Scores are fractions of attention (spread: a normalised entropy): one 0–1 scale for all.
    return heads_figure(r.scores, list(r.kinds), title="head scores (outlined: the heads in the report)",
                        n_layers=r.n_layers, n_heads=r.n_heads, vmin=0.0, vmax=1.0,
                        annotate=_two_places, highlight=r.heads,
                        colorbar_label="score (fraction of attention)")


# ---------------------------------------------------------------------------- lenses side by side
__all__ += ["trajectory_figure", "lens_quality_figure", "TRAJECTORY_COLORS"]

#: What a trajectory cell's colour shows -> (colour bar label, colormap, fixed vmax or None for the data's max).
TRAJECTORY_COLORS = {
    "entropy": ("entropy of the lens's distribution (nats)", "viridis", None),
    "target_prob": ("probability of the next token", "Blues", 1.0),
    "kl": ("KL(final ‖ lens) (nats)", "viridis", None),
}
_LENS_TITLES = {"logit": "logit lens", "pinv": "pseudo-inverse lens (pinv W_E)", "tuned": "tuned lens"}


def trajectory_figure(df: pd.DataFrame, *, color: str = "entropy", prompt: int = 0, title: str = ""):
    """The prediction trajectory: one panel per lens, side by side, boundaries × positions.

    ``df`` is :func:`analyses.lens_compare.prediction_trajectory`'s table. Each cell shows the lens's
    top token at that boundary (embeddings at the bottom, the model's output at the top) and position,
    coloured by ``color``: ``entropy`` (how sure the lens is), ``target_prob`` (the probability it
    gives the token that actually comes next) or ``kl`` (its distance from the model's final
    distribution). All panels share one colour scale, so the lenses compare cell by cell.
    """
    from .report.trajectory import trajectory_layout

    plt = _plt()
    lay = trajectory_layout(df, color, prompt)  # the same checks and layout as the HTML report's picture
    sub, lenses, positions, labels, inputs, vmax = lay.rows, lay.lenses, lay.positions, lay.labels, lay.inputs, lay.vmax
    n_b = lay.n_boundaries
    label, cmap, _ = TRAJECTORY_COLORS[color]
    col = {p: j for j, p in enumerate(positions)}
    width = min(1.2 + 0.62 * len(positions), 30)
    fig, axes = plt.subplots(1, len(lenses), figsize=(width * len(lenses) + 1.5, 1.6 + 0.42 * n_b), squeeze=False,
                             sharey=True, gridspec_kw={"wspace": 0.08})
    im = None
    for ax, lens in zip(axes[0], lenses):
        cells = sub[sub["lens"] == lens]
        grid = np.full((n_b, len(positions)), np.nan)
        text = np.full((n_b, len(positions)), "", dtype=object)
        for r in cells.itertuples():
            grid[r.boundary, col[r.position]] = getattr(r, color)
            text[r.boundary, col[r.position]] = r.token
        im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=vmax, aspect="auto", origin="lower", interpolation="nearest")
        if grid.size <= 1500:
            for (i, j), v in np.ndenumerate(grid):
                if text[i, j]:
                    shade = im.cmap(im.norm(v)) if np.isfinite(v) else (1.0, 1.0, 1.0, 1.0)
                    ax.text(j, i, _short(show_token(text[i, j]), 7), ha="center", va="center", fontsize=6.5,
                            color=label_color(shade), parse_math=False, fontfamily="monospace")
        ax.set_xticks(range(len(positions)),
                      [f"{_short(show_token(inputs[p]), 7)}\n{p}" for p in positions], fontsize=6.5)
        ax.set_title(_LENS_TITLES.get(lens, lens), fontsize=10)
        ax.set_xlabel("input token / position")
    axes[0, 0].set_yticks(range(n_b), labels)
    axes[0, 0].set_ylabel("residual stream after")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.01, label=label)
    fig.suptitle(title or f"prediction trajectory of {df.attrs.get('model', 'the model')}: each cell the lens's top "
                 f"next token, coloured by {color.replace('_', ' ')}", y=1.0 + 0.25 / fig.get_figheight())
    return fig


def lens_quality_figure(df: pd.DataFrame, *, title: str = ""):
    """Per-boundary KL to the final distribution (log scale) and next-token cross-entropy, one line per lens.

    ``df`` is :func:`analyses.lens_compare.evaluate_lenses`'s table. The logit and tuned lenses' KL is
    exactly 0 at the last boundary (the model itself), which a log scale cannot draw: those points are left out.
    """
    plt = _plt()
    for c in ("lens", "boundary", "label", "kl", "ce"):
        if c not in df.columns:
            raise InterpError(f"column {c!r} missing: pass analyses.lens_compare.evaluate_lenses's table")
    labels = df.drop_duplicates("boundary").sort_values("boundary")["label"].tolist()
    fig, (kax, cax) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"wspace": 0.3})
    for lens, cells in df.groupby("lens", sort=False):
        cells = cells.sort_values("boundary")
        kl = cells["kl"].to_numpy(float)
        kax.plot(cells["boundary"][kl > 0], kl[kl > 0], marker="o", label=_LENS_TITLES.get(lens, lens))
        cax.plot(cells["boundary"], cells["ce"], marker="o", label=_LENS_TITLES.get(lens, lens))
    kax.set_yscale("log")
    kax.set_ylabel("KL(final ‖ lens), nats/token")
    cax.set_ylabel("cross-entropy on the next token, nats")
    for ax in (kax, cax):
        ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
        ax.set_xlabel("residual stream after")
        ax.grid(alpha=0.3)
    cax.legend(fontsize=8, frameon=False)
    zero = sorted(set(df.loc[df["kl"] <= 0, "lens"]))
    if zero:
        kax.text(0.99, 0.01, f"KL = 0 (not drawn): {', '.join(zero)} at {labels[-1]}", transform=kax.transAxes,
                 ha="right", va="bottom", fontsize=7, color="#555555")
    n = df["tokens"].iloc[0] if "tokens" in df.columns else None
    held = "held-out " if "held-out" in str(df.attrs.get("text", "")) else ""
    fig.suptitle(title or f"lens quality on {df.attrs.get('model', 'the model')}" + (f" ({n:,} {held}tokens)" if n else ""))
    return fig
