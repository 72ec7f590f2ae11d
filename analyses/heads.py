"""Head classification: what kind of head is each attention head?

Six kinds, each a score in [0, 1] measured on the attention pattern ``A[query, key]``:

=================  ==============================================================
``previous_token`` attention to ``key = query - 1``
``self``           attention to ``key = query`` (current-token heads)
``duplicate_token`` attention to earlier copies of the query's token
``induction``      attention to the token right *after* an earlier copy of the query's token
``bos``            attention to position 0 (BOS, the usual attention sink)
``spread``         normalised entropy of the attention row: 1 = uniform over the prefix
=================  ==============================================================

A score is the fraction of the head's attention that lands where its kind looks,
averaged over the query positions where the kind is *defined* (``measure="defined"``,
the default): positions with at least two keys to choose from (position 0 has only
BOS, where every head scores 1 on ``self`` and ``bos``) and a non-empty target
(``previous_token`` from position 1 on, ``duplicate_token`` and ``induction`` only
where the token occurred earlier). ``n_<kind>`` says how many query positions stand
behind each score. ``measure="all"`` is TransformerLens ``detect_head``'s "mul" score
instead: every query position counts (positions without a target score 0, so on a
sequence repeated once the duplicate/induction ceiling is about 0.5), averaged per
prompt and then over prompts; it equals ``detect_head`` to float precision.

``spread`` at a position is ``H(row) / log(n_keys)`` over the keys the position may
attend to, defined from two keys on.

Excluding BOS or the current token (``exclude_bos``, ``exclude_current_token``)
removes those keys and renormalises by the attention left: a score is
``Σ_q attention-to-targets / Σ_q attention-left``, summed over the averaged
positions — each position weighted by the attention it has left, so a position
that put 99.9 % of its attention on BOS does not count as a full vote for whatever
its last 0.1 % hit (``spread`` is the same weighted mean of the renormalised rows'
normalised entropies). This is ``detect_head``'s own renormalisation. Kinds whose
target is excluded (``self`` with the current token, ``bos`` with BOS) are NaN.

Labels: a head gets the attention kind (``previous_token``, ``self``,
``duplicate_token``, ``induction``, ``bos``) with the highest score at or above its
threshold (:data:`THRESHOLDS`, 0.5: most of the head's attention goes there);
failing that ``spread`` if that is at or above 0.8 (roughly: attention over most of
the prefix); else ``none``. ``spread`` comes last because it is on another scale
(an entropy, not a fraction of attention) and because a head that puts most of its
attention somewhere specific is that kind whatever it does with the rest.

Everything comes from one batched forward pass: a hook on each needed layer's
``hook_pattern`` reduces the pattern to per-prompt sums straight away (nothing of
size ``pos²`` is kept), and the pass stops right after the last needed pattern.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp import probes, select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.threads import one_thread
from interp.tokens import Batch

KINDS = ("previous_token", "self", "duplicate_token", "induction", "bos", "spread")
#: Kinds that are a fraction of attention on chosen keys (``spread`` is an entropy).
ATTENTION_KINDS = KINDS[:5]
#: Default label thresholds (see the module docs for the rule).
THRESHOLDS: dict[str, float] = {**{k: 0.5 for k in ATTENTION_KINDS}, "spread": 0.8}
MEASURES = ("defined", "all")
#: Patterns of one batch stay under this many floats; ``batch_size`` is chosen from it.
PATTERN_BUDGET = 1 << 25


def classify(
    model: HookedGPT2,
    inputs: Any = None,
    *,
    kinds: Any = KINDS,
    layers: Any = None,
    heads: Any = None,
    measure: Any = "defined",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    positions: Any = None,
    threshold: Any = None,
    prepend_bos: bool = True,
    batch_size: Any = None,
    progress: Optional[bool] = None,
) -> pd.DataFrame:
    """Score every attention head on each kind and label it.

    Args:
        model: the model.
        inputs: a prompt, a list of prompts (and/or 1-D token tensors), token ids
            ``[batch, pos]``, or a :class:`~interp.tokens.Batch` (e.g.
            :func:`interp.probes.text_windows`). Default: 16 repeated random-token
            sequences (:func:`interp.probes.repeated_tokens`, seed 0).
        kinds: which of :data:`KINDS` to score (default: all six).
        layers: the layers to score, every head of each (default: all), in
            :mod:`interp.select`'s grammar (``1``, ``[0, 3]``, ``"0-5"``). The forward
            pass stops after the last of them.
        heads: instead of ``layers``, the heads to score (``"4.11"``, ``[(0, 1)]``, ``"4.*"``).
        measure: ``"defined"`` (average over the positions where each kind is
            defined) or ``"all"`` (TransformerLens ``detect_head``'s "mul" score).
        exclude_bos: drop attention to position 0 and renormalise.
        exclude_current_token: drop attention to the query's own position and renormalise.
        positions: which query positions to score, in every prompt (:mod:`interp.select`:
            a slice, a list of ints, ``"2:6"``; negative ones count from each prompt's end;
            positions a prompt does not have are skipped for it). Default: all.
        threshold: label threshold: a float for the five attention kinds, or a
            dict ``{kind: threshold}`` (others keep :data:`THRESHOLDS`).
        prepend_bos: prepend BOS to string prompts (token ids are used as given).
        batch_size: prompts per forward pass (default: as many as keep one layer's
            pattern under :data:`PATTERN_BUDGET` floats).
        progress: show a progress bar over batches (default: only on a terminal).

    Returns:
        One row per head: ``layer``, ``head``, a score column per kind, ``label``,
        ``n_<kind>`` (query positions behind each score, pooled over prompts) and
        ``<kind>_std`` (standard deviation of the per-prompt scores: a solid head
        varies little from prompt to prompt; NaN with fewer than two prompts).
        ``df.attrs`` records the measure, exclusions, thresholds and inputs.

    >>> from interp.testing import planted_model
    >>> df = classify(planted_model())       # default inputs: 16 × [BOS] + r + r, r random
    >>> print(df[["layer", "head", "label"]].to_string(index=False))
     layer  head           label
         0     0  previous_token
         0     1            self
         0     2 duplicate_token
         0     3            none
         1     0       induction
         1     1             bos
         1     2            none
         1     3            none
    >>> df.loc[4, ["induction", "n_induction", "previous_token"]].astype(float).round(3).to_dict()
    {'induction': 1.0, 'n_induction': 240.0, 'previous_token': 0.079}
    """
    kinds = check_kinds(kinds)
    if heads is not None and layers is not None:
        raise InterpError("give layers (every head of each) or heads (those heads), not both")
    chosen = None if heads is None else select.heads(model, heads)
    layers = sorted({l for l, _ in chosen}) if chosen is not None else select.layers(model, layers)
    head_idx = list(range(model.cfg.n_heads))
    if measure not in MEASURES:
        raise InterpError(f"unknown measure {measure!r}: use one of {', '.join(MEASURES)}")
    thresholds = _thresholds(threshold)
    seqs = probes.sequences(model, inputs, prepend_bos=prepend_bos)
    opts = _Options(kinds, head_idx, bool(exclude_bos), bool(exclude_current_token), measure, positions)
    num, den, count = _scan(model, seqs, layers, opts, batch_size, progress)
    df = _table(num, den, count, layers, head_idx, opts, thresholds)
    if chosen is not None:
        df = df[[(l, h) in chosen for l, h in zip(df["layer"], df["head"])]].reset_index(drop=True)
    df.attrs.update(
        measure=measure, exclude_bos=bool(exclude_bos), exclude_current_token=bool(exclude_current_token),
        thresholds={k: thresholds[k] for k in kinds}, n_prompts=len(seqs), n_tokens=int(sum(len(s) for s in seqs)),
        model=model.cfg.name, fold_ln=model.cfg.fold_ln,
    )
    return df


def label_heads(scores: pd.DataFrame, threshold: Any = None) -> pd.Series:
    """Labels for a table of scores (e.g. to try another threshold without re-running the model).

    The rule is in the module docs: the best attention kind at or above its
    threshold, else ``spread`` at or above its own, else ``none``.
    """
    thresholds = _thresholds(threshold)
    attn = [k for k in ATTENTION_KINDS if k in scores.columns]
    labels = np.full(len(scores), "none", dtype=object)
    if "spread" in scores.columns:
        labels[(scores["spread"] >= thresholds["spread"]).to_numpy()] = "spread"
    if attn:
        vals = scores[attn].to_numpy(float)
        passing = np.where(vals >= np.array([thresholds[k] for k in attn]), vals, -np.inf)  # NaN compares False
        best = passing.argmax(1)  # ties go to the kind listed first in KINDS
        hit = np.isfinite(passing.max(1))
        labels[hit] = np.array(attn, dtype=object)[best[hit]]
    return pd.Series(labels, index=scores.index, name="label")


def ranked(scores: pd.DataFrame) -> pd.DataFrame:
    """The table with labelled heads first, strongest on their own label first; unlabelled heads last.

    >>> from interp.testing import planted_model
    >>> ranked(classify(planted_model(), progress=False))["label"].tolist()[:2]
    ['previous_token', 'self']
    """
    strength = [row[row["label"]] if row["label"] not in ("none", None) else -1.0 for _, row in scores.iterrows()]
    order = scores.assign(_s=strength).sort_values(["_s", "layer", "head"], ascending=[False, True, True], kind="stable")
    return order.drop(columns="_s")


def label_rule(thresholds: Mapping[str, float]) -> str:
    """The labelling rule in words, for the thresholds a table was labelled with."""
    attn = {v for k, v in thresholds.items() if k != "spread"}
    rule = [f"the attention kind scoring highest, if >= {' / '.join(f'{v:g}' for v in sorted(attn))}"] if attn else []
    rule += [f"else spread if >= {thresholds['spread']:g}"] if "spread" in thresholds else []
    return "; ".join([*rule, "else none"])


# ---------------------------------------------------------------------------- checks
def check_kinds(kinds: Any) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = [kinds]
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InterpError(f"unknown head kind(s) {unknown or kinds}: choose from {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in kinds)  # canonical order, no duplicates


def _thresholds(threshold: Any) -> dict[str, float]:
    out = dict(THRESHOLDS)
    if threshold is None:
        return out
    if isinstance(threshold, Mapping):
        unknown = [k for k in threshold if k not in KINDS]
        if unknown:
            raise InterpError(f"threshold for unknown kind(s) {unknown}: choose from {', '.join(KINDS)}")
        out.update(threshold)
    elif isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        out.update({k: threshold for k in ATTENTION_KINDS})
    else:
        raise InterpError(f"threshold must be a number or a dict {{kind: number}}, not {threshold!r}")
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise InterpError(f"threshold {v!r} for {k} out of range: need 0 < threshold <= 1")
    return {k: float(v) for k, v in out.items()}


class _Options:
    """What to measure, fixed for a whole scan."""

    def __init__(self, kinds, heads, exclude_bos, exclude_current, measure, positions):
        self.kinds, self.heads, self.measure, self.positions = kinds, heads, measure, positions
        self.eb, self.ec = exclude_bos, exclude_current
        if isinstance(positions, str):
            self.positions = select.parse_positions(positions)


# ---------------------------------------------------------------------------- the scan
def _scan(model: HookedGPT2, seqs: list[Tensor], layers: list[int], opts: _Options, batch_size: Any, progress):
    """Per-prompt sums: ``num, den [prompt, layer, head, kind]`` and ``count [prompt, kind]`` (float64)."""
    from tqdm.auto import tqdm

    n_kinds = len(opts.kinds)
    lengths = torch.tensor([len(s) for s in seqs])
    longest = int(lengths.max())
    if batch_size is None:
        # The model computes every head's pattern, whichever heads are scored.
        batch_size = max(1, PATTERN_BUDGET // (model.cfg.n_heads * longest * longest))
    elif isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InterpError(f"batch_size must be a positive integer, not {batch_size!r}")
    # Longest first, so prompts of similar length share a batch and little is spent on padding.
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    shape = (len(seqs), len(layers), len(opts.heads), n_kinds)
    num, den = np.zeros(shape), np.zeros(shape)
    count = np.zeros((len(seqs), n_kinds))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bar = tqdm(chunks, desc="heads", unit="batch", disable=(None if progress is None else not progress), leave=False)
    for idx in bar:
        width = int(lengths[idx].max())
        tokens = torch.full((len(idx), width), int(seqs[idx[0]][0]), dtype=torch.long, device=model.cfg.device)
        for row, i in enumerate(idx):
            tokens[row, : len(seqs[i])] = seqs[i]
        with one_thread():
            masks = _masks(tokens, lengths[idx].to(tokens.device), opts)
        n, d = _run_batch(model, tokens, masks, layers, opts)
        num[idx], den[idx] = n, d
        count[idx] = masks.weights.sum(-1).T.double().cpu().numpy()
    if not count.any():
        raise InterpError(f"positions {opts.positions!r} select no scorable query position in any prompt")
    return num, den, count


class _Masks:
    """Everything about a batch that does not depend on the layer: computed once, used by every hook."""

    def __init__(self, weights, n_keys, dup_idx, ind_idx):
        self.weights: Bool[Tensor, "kind batch query_pos"] = weights
        self.n_keys: Int[Tensor, "batch query_pos"] = n_keys
        self.dup_idx, self.ind_idx = dup_idx, ind_idx


def _masks(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"], opts: _Options) -> _Masks:
    B, P = tokens.shape
    dev = tokens.device
    q = torch.arange(P, device=dev)
    real = q[None] < lengths[:, None]  # right padding: prompt i is tokens[i, :lengths[i]]
    chosen = real & _position_filter(opts.positions, lengths, P)
    eb, ec = opts.eb, opts.ec
    # Keys a query may attend to: 0..q, minus BOS and/or itself (one key when both are position 0).
    n_keys = (q + 1 - int(eb) - int(ec) + int(eb and ec) * (q == 0)).expand(B, P)
    need = set(opts.kinds)
    dup_idx = ind_idx = None
    has = {}
    if need & {"duplicate_token", "induction"}:
        earlier_copy = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(P, P, dtype=torch.bool, device=dev).tril(-1)
        earlier_copy &= chosen[:, :, None]
        # Induction looks one past each earlier copy (k - 1 < q, so k <= q: with "a a" it is the query itself).
        ind = torch.zeros_like(earlier_copy)
        ind[:, :, 1:] = earlier_copy[:, :, :-1]
        dup = earlier_copy
        if eb:
            dup = dup.clone()
            dup[:, :, 0] = False
        if ec:
            ind &= ~torch.eye(P, dtype=torch.bool, device=dev)
        has["duplicate_token"], has["induction"] = dup.any(-1), ind.any(-1)
        # The target sets are sparse (a few earlier copies per query), so hooks gather them by index.
        dup_idx, ind_idx = dup.nonzero(as_tuple=True), ind.nonzero(as_tuple=True)
    has["previous_token"] = (q >= 1 + int(eb)).expand(B, P)
    has["self"] = torch.full((B, P), not ec, device=dev)
    has["bos"] = ((q >= int(ec)) & (not eb)).expand(B, P)
    has["spread"] = n_keys >= 2
    if opts.measure == "defined":
        base = chosen & (n_keys >= 2)
        weights = torch.stack([base & has[k] for k in opts.kinds])
    else:  # detect_head: every position counts, whether its kind has a target there or not
        possible = {"self": not ec, "bos": not eb}
        weights = torch.stack([
            chosen & has["spread"] if k == "spread" else chosen & (n_keys >= 1) & possible.get(k, True)
            for k in opts.kinds
        ])
    return _Masks(weights, n_keys, dup_idx, ind_idx)


def _position_filter(positions: Any, lengths: Tensor, P: int) -> Bool[Tensor, "batch pos"]:
    B = len(lengths)
    if positions is None:
        return torch.ones(B, P, dtype=torch.bool, device=lengths.device)
    real = torch.arange(P, device=lengths.device)[None] < lengths[:, None]  # right padding
    batch = Batch(torch.zeros(B, P, dtype=torch.long, device=lengths.device), real)
    return select.positions(batch, positions, ragged="skip").mask(P)


def _run_batch(model: HookedGPT2, tokens: Tensor, masks: _Masks, layers: list[int], opts: _Options):
    B = tokens.shape[0]
    num = np.zeros((B, len(layers), len(opts.heads), len(opts.kinds)))
    den = np.zeros_like(num)
    heads = None if len(opts.heads) == model.cfg.n_heads else torch.tensor(opts.heads, device=tokens.device)
    w = masks.weights.to(torch.float64)
    last = layers[-1]

    def hook(pattern: Tensor, name: str) -> None:
        layer = int(name.split(".")[1])
        A = pattern if heads is None else pattern.index_select(1, heads)
        with one_thread():
            values, mass = _per_query(A.detach().to(torch.float64 if A.dtype == torch.float64 else torch.float32), masks, opts)
            # Sum over the scored query positions of each kind: [batch, head, kind].
            num[:, layers.index(layer)] = torch.einsum("kbhq,kbq->bhk", values.double(), w).cpu().numpy()
            den[:, layers.index(layer)] = torch.einsum("bhq,kbq->bhk", mass.double(), w).cpu().numpy()

    # Nothing after the last needed pattern is computed (later heads' outputs, MLPs, the unembedding).
    model.forward(tokens, stop_after=f"blocks.{last}.attn.hook_pattern",
                  hooks=[(f"blocks.{l}.attn.hook_pattern", hook) for l in layers])
    return num, den


def _per_query(A: Float[Tensor, "batch n_heads query_pos key_pos"], masks: _Masks, opts: _Options):
    """Each kind's attention-to-targets at every query position ``[kind, batch, head, query]``, and the mass left."""
    B, H, P, _ = A.shape
    if opts.eb or opts.ec:
        # Zero the excluded keys in a copy and sum what is left. (1 - A[q, 0] - A[q, q] would cancel
        # catastrophically for a head that sits almost wholly on BOS or itself, where the mass left is ~1e-4.)
        A = A.clone()
        if opts.eb:
            A[..., 0] = 0
        if opts.ec:
            A.diagonal(dim1=-2, dim2=-1).zero_()
        mass = A.sum(-1)
    else:
        mass = torch.ones(A.shape[:-1], dtype=A.dtype, device=A.device)
    out = []
    for kind in opts.kinds:
        if kind == "previous_token":
            v = torch.zeros_like(mass)
            v[..., 1:] = A.diagonal(offset=-1, dim1=-2, dim2=-1)
        elif kind == "self":
            v = A.diagonal(dim1=-2, dim2=-1)
        elif kind == "bos":
            v = A[..., 0]
        elif kind in ("duplicate_token", "induction"):
            b, q, k = masks.dup_idx if kind == "duplicate_token" else masks.ind_idx
            v = torch.zeros(B, P, H, dtype=A.dtype, device=A.device)
            v.index_put_((b, q), A[b, :, q, k], accumulate=True)
            v = v.permute(0, 2, 1)
        else:
            # spread: (attention left) × normalised entropy of the row renormalised over the keys left.
            # With p = A / m, m·H(p) = -Σ A log A + m log m: no renormalised copy of A is needed.
            m_h = _row_entropy(A) + torch.xlogy(mass, mass)
            v = (m_h / torch.log(masks.n_keys.clamp(min=2).to(A.dtype))[:, None, :]).clamp(min=0)
        out.append(v)
    return torch.stack(out), mass


def _row_entropy(A: Float[Tensor, "batch n_heads query_pos key_pos"]) -> Float[Tensor, "batch n_heads query_pos"]:
    """``-Σ_k A log A`` per row, over the causal triangle only.

    The logarithm is the most expensive step of the whole classification; keys
    after the query carry no attention, so blocks of queries skip them (about
    half the pattern).
    """
    P = A.shape[-1]
    out = torch.empty(A.shape[:-1], dtype=A.dtype, device=A.device)
    step = 32
    for q0 in range(0, P, step):
        q1 = min(P, q0 + step)
        out[..., q0:q1] = torch.special.entr(A[..., q0:q1, :q1]).sum(-1)
    return out


# ---------------------------------------------------------------------------- the table
def _table(num, den, count, layers, heads, opts: _Options, thresholds) -> pd.DataFrame:
    with np.errstate(invalid="ignore", divide="ignore"):
        per_prompt = np.where(count[:, None, None, :] > 0, num / den, np.nan)  # [prompt, layer, head, kind]
        if opts.measure == "defined":
            score = num.sum(0) / den.sum(0)  # pooled over every scored position of every prompt
            score[:, :, count.sum(0) == 0] = np.nan
        else:
            score = _nanmean(per_prompt)  # detect_head: mean over prompts of each prompt's score
        std = _nanstd(per_prompt)
    score = np.clip(score, 0.0, 1.0)
    L, H = np.meshgrid(layers, heads, indexing="ij")
    df = pd.DataFrame({"layer": L.ravel(), "head": H.ravel()})
    for i, kind in enumerate(opts.kinds):
        df[kind] = score[..., i].ravel()
    df["label"] = label_heads(df, thresholds)
    for i, kind in enumerate(opts.kinds):
        df[f"n_{kind}"] = int(count[:, i].sum())
    for i, kind in enumerate(opts.kinds):
        df[f"{kind}_std"] = std[..., i].ravel()
    return df


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(0)
    return np.where(n > 0, np.nansum(x, 0) / np.maximum(n, 1), np.nan)


def _nanstd(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(0)
    mean = _nanmean(x)
    var = np.nansum((x - mean) ** 2, 0) / np.maximum(n - 1, 1)
    return np.where(n > 1, np.sqrt(var), np.nan)


__all__ = ["KINDS", "ATTENTION_KINDS", "THRESHOLDS", "MEASURES", "classify", "label_heads", "ranked", "label_rule"]
