"""The head classifier's inner loop: attention patterns reduced to per-kind sums inside the hooks.

One batched forward pass per group of prompts; a hook on each needed layer's ``hook_pattern``
reduces the pattern to ``num``/``den`` sums per prompt, layer, head and kind straight away, so
nothing of size ``pos²`` outlives the hook, and the pass stops right after the last needed
pattern (``forward(stop_at_layer=...)``). :mod:`analyses.heads` turns the sums into scores and labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp import select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.threads import one_thread
from interp.tokens import Batch

__all__ = ["Options", "scan_patterns", "PATTERN_BUDGET"]

#: Patterns of one batch stay under this many floats; ``batch_size`` is chosen from it.
PATTERN_BUDGET = 1 << 25


class Options:
    """What to measure, fixed for a whole scan."""

    def __init__(self, kinds, heads, exclude_bos, exclude_current, measure, positions):
        self.kinds, self.heads, self.measure, self.positions = kinds, heads, measure, positions
        self.eb, self.ec = exclude_bos, exclude_current
        if isinstance(positions, str):
            self.positions = select.parse_positions(positions)


# ---------------------------------------------------------------------------- the scan
def scan_patterns(model: HookedGPT2, seqs: list[Tensor], layers: list[int], opts: Options, batch_size: Any, progress):
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


def _masks(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"], opts: Options) -> _Masks:
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


def _run_batch(model: HookedGPT2, tokens: Tensor, masks: _Masks, layers: list[int], opts: Options):
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

    # Nothing after the last needed pattern's block is computed (later blocks, the unembedding).
    model.forward(tokens, stop_at_layer=last + 1,
                  hooks=[(f"blocks.{l}.attn.hook_pattern", hook) for l in layers])
    return num, den


def _per_query(A: Float[Tensor, "batch n_heads query_pos key_pos"], masks: _Masks, opts: Options):
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
