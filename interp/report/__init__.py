"""Attention-pattern reports: one self-contained HTML file, plus PNG/SVG figures and a CSV.

The page itself is :mod:`interp.report.html`; the figures are :mod:`interp.plotting`'s; which
heads to show is :mod:`analyses.choose`'s (reports are a layer above the analyses).

A report shows, for a prompt and a few chosen heads, each head's attention pattern
as a heatmap (query rows × key columns, the causally masked future greyed out) and
as two columns of tokens joined by lines (queries left, keys right, line opacity =
weight; hovering a token highlights its lines and shows the weights), with the head
classifier's scores and label that say why the head is there, and a summary of
every head: one layers × heads heatmap per head kind.

The HTML needs nothing at view time: CSS and JavaScript are inline, the figures are
drawn in the browser from a JSON block, and a Content-Security-Policy forbids any
network access. Token text is data, never markup: the JSON block escapes ``<``,
``>``, ``&`` and U+2028/2029, and the page only writes text with ``textContent``.

How it scales: the page stores each head's lower triangle as 2-byte integers
(weights rounded to 3 decimals), so its size is about ``1.33 · heads · pos²``
bytes (12 heads × 256 tokens ≈ 1.1 MB); the line view draws at most
``line_top_k`` lines per query (weights ≥ ``line_min_weight``), so the page holds
``pos · line_top_k`` lines per head rather than ``pos²``; reports over
:data:`MAX_REPORT_BYTES` are refused with advice (fewer heads, a shorter prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError
from interp.export import check_target
from interp.tokenizer import display_token

from .html import render

__all__ = ["Report", "build_report", "report_html", "write_report", "check_outputs", "MAX_REPORT_BYTES"]

#: Refuse to write an HTML report larger than this (about 150 heads × 512 tokens).
MAX_REPORT_BYTES = 50_000_000

Prompt = Any  # a string or 1-D token ids: checked by _tokens


# ---------------------------------------------------------------------------- the report's data
@dataclass(frozen=True)
class Report:
    """Everything a report shows; :meth:`html`, :meth:`table` and the figures are drawn from it.

    Attributes:
        model_name: the model's name (``model.cfg.name``).
        fold_ln: whether LayerNorm was folded (``model.cfg.fold_ln``).
        tokens: the prompt's tokens as text (BOS first), as the tokenizer decodes them; a token that is
            only part of a character's UTF-8 bytes (GPT-2 writes 日 as two tokens) as those bytes
            (``\\xe6\\x97``: :func:`interp.tokenizer.display_token`), never "�".
        heads: the chosen ``(layer, head)`` pairs, in display order.
        reasons: why each head was chosen, one line each.
        patterns: the chosen heads' attention patterns (masked future entries are 0).
        scores: the head classifier's table for every head (``layer, head, <kind>…,
            n_<kind>…, label``), or None when it was not run.
        scores_source: what the scores were measured on, in words.
        kinds: the head kinds of the classifier.
        n_layers, n_heads: the model's shape (for the summary heatmaps).
        line_top_k: lines drawn per query in the line view (the strongest keys).
        line_min_weight: weights below this get no line (they still show on hover).
        trajectory: the prompt's prediction trajectory
            (:func:`analyses.lens_compare.prediction_trajectory`), drawn in its own section; or None.
    """

    model_name: str
    fold_ln: bool
    tokens: list
    heads: list
    reasons: list
    patterns: Float[Tensor, "selected query_pos key_pos"]
    scores: Optional[pd.DataFrame]
    scores_source: str
    kinds: tuple
    n_layers: int
    n_heads: int
    line_top_k: int = 8
    line_min_weight: float = 0.01
    trajectory: Optional[pd.DataFrame] = None

    def head_scores(self, layer: int, head: int) -> Optional[dict]:
        """The classifier's row for one head as a dict, or None without scores."""
        if self.scores is None:
            return None
        rows = self.scores[(self.scores["layer"] == layer) & (self.scores["head"] == head)]
        return None if rows.empty else rows.iloc[0].to_dict()

    def summary_table(self) -> pd.DataFrame:
        """One row per chosen head: ``layer, head, label, <kind>…, reason``."""
        rows = []
        for (layer, head), reason in zip(self.heads, self.reasons):
            row = self.head_scores(layer, head) or {}
            rows.append({"layer": layer, "head": head, "label": row.get("label", ""),
                         **{k: row.get(k, np.nan) for k in self.kinds}, "reason": reason})
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """The raw patterns, tidy: ``layer, head, query_pos, key_pos, query_token, key_token, weight``.

        Masked (future, ``key_pos > query_pos``) entries are left out; weights are full precision.
        """
        p = len(self.tokens)
        q, k = torch.tril_indices(p, p)
        toks = np.asarray(self.tokens, dtype=object)
        frames = []
        for (layer, head), pattern in zip(self.heads, self.patterns):
            frames.append(pd.DataFrame({
                "layer": layer, "head": head, "query_pos": q.numpy(), "key_pos": k.numpy(),
                "query_token": toks[q.numpy()], "key_token": toks[k.numpy()],
                "weight": pattern[q, k].float().cpu().numpy(),
            }))
        return pd.concat(frames, ignore_index=True)

    def html(self) -> str:
        """The report as one self-contained HTML page (see the module docs)."""
        from .trajectory import trajectory_section

        return render(self, trajectory_section(self))

    def save(self, path: Any = None, *, png: Any = None, svg: Any = None, csv: Any = None,
             progress: Optional[bool] = None) -> None:
        """Write the HTML to ``path``, figures into ``png``/``svg`` directories, the CSV to ``csv``: all or nothing.

        Every file is rendered before any is moved into place (:class:`interp.export.Outputs`): on
        any error no partial file is left, every existing file is untouched and no new directory
        stays behind. A missing figure directory is created (its parent must exist).
        """
        from interp.export import Outputs
        from interp.plotting import figure_files

        check_outputs(path, png=png, svg=svg, csv=csv)
        out = Outputs()
        if path is not None:
            out.add(path, lambda tmp: tmp.write_text(self.html(), encoding="utf-8"), "the report")
        if csv is not None:
            out.add(csv, lambda tmp: self.table().to_csv(tmp, index=False), "the CSV")
        for directory, fmt in ((png, "png"), (svg, "svg")):
            if directory is not None:
                for name, write in figure_files(self, fmt):
                    out.add(Path(directory) / name, write, f"the {fmt.upper()} directory")
        out.commit(progress, desc="report")

    def _repr_html_(self) -> str:
        """Jupyter's inline display: the page in a sandboxed iframe (see :func:`interp.report.html.iframe`)."""
        from .html import iframe

        return iframe(self.html(), title=f"Attention report · {self.model_name}")


# ---------------------------------------------------------------------------- building
def _tokens(model, prompt: Prompt) -> Tensor:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InterpError("prompt is empty: give the text to report on")
        tokens = model.to_batch(prompt).tokens
        if tokens.shape[1] < 2:  # BOS alone: the tokenizer found nothing in the text
            raise InterpError(f"prompt {prompt!r} has no tokens")
        return tokens
    if isinstance(prompt, Tensor) and prompt.ndim == 1:
        return model.to_batch(prompt).tokens
    raise InterpError(f"prompt must be a string or 1-D token ids, not {type(prompt).__name__}")


def build_report(
    model,
    prompt: Prompt,
    *,
    heads: Any = None,
    top: Optional[int] = None,
    kind: Optional[str] = None,
    classify_on: Any = "probe",
    scores: Any = None,
    line_top_k: int = 8,
    line_min_weight: float = 0.01,
    trajectory: Any = None,
    progress: Optional[bool] = None,
) -> Report:
    """Compute a report's data: choose heads, classify every head, read the chosen patterns.

    Args:
        model: a :class:`~interp.HookedGPT2`.
        prompt: the text (BOS is prepended) or 1-D token ids.
        heads: heads to show, e.g. ``"4.11,0.5"`` or ``[(4, 11)]``.
        top: show the ``top`` heads with the highest ``kind`` score (or, without a
            kind, the highest score on their own label).
        kind: a head kind of :data:`analyses.heads.KINDS`; alone it means the top
            :data:`analyses.choose.DEFAULT_TOP` heads of that kind. With neither ``heads`` nor
            ``top``/``kind`` the report shows the top head of each kind.
        classify_on: what the head classifier scores the heads on: ``"probe"`` (its
            default, 16 sequences of repeated random tokens: a model-wide verdict
            that finds induction heads whatever the prompt), ``"prompt"`` (this
            prompt: duplicate/induction scores need repeated tokens in it) or any
            inputs :func:`analyses.heads.classify` accepts (e.g. a list of prompts).
        scores: a classifier table (``analyses.heads.classify(...)``) to use instead
            of running the classifier; ``False`` for no scores (then ``heads`` is
            required and the summary section is left out).
        line_top_k: lines per query in the line view (its strongest keys).
        line_min_weight: no line for weights below this (hovering still shows them).
        trajectory: add the prompt's prediction trajectory: ``True`` (the logit and pseudo-inverse
            lenses) or a :class:`~analyses.tuned_lens.TunedLens` (and the tuned lens).
        progress: passed to the classifier's progress bar (None: only on a terminal).

    >>> from interp.testing import planted_model
    >>> report = build_report(planted_model(), "a b c d a b c d", heads="0.0,1.0")
    >>> report.heads, len(report.tokens)
    ([(0, 0), (1, 0)], 9)
    >>> round(float(report.patterns[0, 5, 4]), 3)   # the previous-token head at position 5 looks at 4
    1.0
    """
    from analyses.choose import check_choice, scores_on
    from analyses.heads import KINDS

    if isinstance(line_top_k, bool) or not isinstance(line_top_k, (int, np.integer)) or line_top_k < 1:
        raise InterpError(f"line_top_k must be a positive integer, not {line_top_k!r}")
    w = line_min_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise InterpError(f"line_min_weight must be a number in [0, 1], not {line_min_weight!r}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    kinds = tuple(KINDS)
    tuned = _trajectory_lens(model, trajectory)
    check_choice(model, heads, top, kind, kinds)  # the cheap checks, before anything runs
    tokens = _tokens(model, prompt)
    if scores is None:
        scores, source = scores_on(model, tokens, classify_on, progress)
    elif scores is False:
        if heads is None:
            raise InterpError("without scores (scores=False) the heads must be given explicitly")
        scores, source = None, ""
    elif isinstance(scores, pd.DataFrame):
        missing = [c for c in ("layer", "head", *kinds, "label") if c not in scores.columns]
        if missing:
            raise InterpError(
                f"scores table lacks column(s) {', '.join(missing)}: pass analyses.heads.classify's table"
            )
        source = "a table given by the caller"
    else:
        raise InterpError(
            f"scores must be a DataFrame from analyses.heads.classify, None or False, not {type(scores).__name__}"
        )
    from analyses.choose import choose_heads

    chosen, reasons = choose_heads(model, scores, heads=heads, top=top, kind=kind, kinds=kinds)
    p = tokens.shape[1]
    est = _estimate_bytes(len(chosen), p)
    if est > MAX_REPORT_BYTES:
        raise InterpError(
            f"a report of {len(chosen)} heads × {p} tokens would be ~{est / 1e6:.0f} MB "
            f"(limit {MAX_REPORT_BYTES / 1e6:.0f} MB): choose fewer heads or a shorter prompt"
        )
    return Report(
        model_name=str(model.cfg.name), fold_ln=bool(model.cfg.fold_ln), tokens=[display_token(model.tokenizer, i) for i in tokens[0].tolist()],
        heads=chosen, reasons=reasons, patterns=_patterns(model, tokens, chosen), scores=scores,
        scores_source=source, kinds=kinds, n_layers=L, n_heads=H, line_top_k=int(line_top_k),
        line_min_weight=float(line_min_weight),
        trajectory=None if trajectory is None or trajectory is False else _trajectory(model, tokens, tuned),
    )


def _patterns(model, tokens: Tensor, chosen: list) -> Tensor:
    """The chosen heads' patterns ``[selected, pos, pos]``, keeping only those heads inside the hooks."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in chosen:
        by_layer.setdefault(layer, []).append(head)
    kept: dict[int, Tensor] = {}

    def keeper(layer: int):
        def keep(pattern: Tensor, name: str) -> None:
            kept[layer] = pattern[0, by_layer[layer]].detach().float().cpu()
        return keep

    with torch.no_grad():
        model.run(tokens, hooks=[(f"pattern.{layer}", keeper(layer)) for layer in by_layer],
                  stop_at_layer=max(by_layer) + 1, logits=False)
    return torch.stack([kept[layer][by_layer[layer].index(head)] for layer, head in chosen])


def _trajectory_lens(model, trajectory: Any):
    """The tuned lens of ``trajectory=`` (None for none or ``True``), checked before anything runs."""
    if trajectory is None or trajectory is False or trajectory is True:
        return None
    from analyses.tuned_lens import TunedLens

    if not isinstance(trajectory, TunedLens):
        raise InterpError(f"trajectory must be True, False/None or a TunedLens, not {type(trajectory).__name__}")
    trajectory.check(model)
    return trajectory


def _trajectory(model, tokens: Tensor, tuned) -> pd.DataFrame:
    from analyses.lens_compare import prediction_trajectory

    return prediction_trajectory(model, tokens, tuned=tuned)


def _estimate_bytes(n_heads: int, p: int) -> int:
    return int(n_heads * p * (p + 1) / 2 * 2 * 4 / 3) + 200_000  # base64 of uint16, plus the page itself




def report_html(model, prompt: Prompt, **kwargs) -> str:
    """The report for ``prompt`` as an HTML string; keyword arguments as :func:`build_report`."""
    return build_report(model, prompt, **kwargs).html()


# ---------------------------------------------------------------------------- writing
def check_outputs(path: Any = None, *, png: Any = None, svg: Any = None, csv: Any = None,
                  names: Optional[dict] = None) -> None:
    """Raise :class:`InterpError` if an output cannot be written (before any work is done).

    ``names`` maps ``path``/``png``/``svg``/``csv`` to what messages call them (the command line's
    options); two outputs naming one file are an error. A missing figure directory is fine (it is
    created when the figures are written) if its parent exists.
    """
    from interp.export import check_directory, check_distinct

    names = {"path": "the report", "csv": "the CSV", "png": "the PNG directory", "svg": "the SVG directory",
             **(names or {})}
    if path is None and png is None and svg is None and csv is None:
        raise InterpError("nothing to write: give an HTML path, or png/svg directories or a csv path")
    if path is not None:
        check_target(path, names["path"])
    if csv is not None:
        check_target(csv, names["csv"])
    for key, d in (("png", png), ("svg", svg)):
        if d is not None:
            check_directory(d, names[key])
    check_distinct([(names["path"], path), (names["csv"], csv)], [(names["png"], png), (names["svg"], svg)])


def write_report(
    model,
    prompt: Prompt,
    path: Any = None,
    *,
    png: Any = None,
    svg: Any = None,
    csv: Any = None,
    progress: Optional[bool] = None,
    **kwargs,
) -> Report:
    """Build a report and write it: the HTML to ``path``, figures into ``png``/``svg`` directories, the CSV to ``csv``.

    Every output is checked before the model runs, then written all or nothing (:meth:`Report.save`).
    Keyword arguments (``heads``, ``top``, ``kind``, ``scores``, ``line_top_k``, …) as
    :func:`build_report`. Returns the :class:`Report`.

    >>> import tempfile, os
    >>> from interp.testing import planted_model
    >>> out = os.path.join(tempfile.mkdtemp(), "report.html")
    >>> report = write_report(planted_model(), "a b c a b c", out, top=2, kind="previous_token")
    >>> report.heads[0], open(out).read(15)
    ((0, 0), '<!DOCTYPE html>')
    """
    check_outputs(path, png=png, svg=svg, csv=csv)
    report = build_report(model, prompt, progress=progress, **kwargs)
    report.save(path, png=png, svg=svg, csv=csv, progress=progress)
    return report
