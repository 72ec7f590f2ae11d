"""Streaming statistics of feature activations: one pass over the text, bounded memory, any chunking.

:class:`FeatureStats` reads activations batch by batch (``[batch, pos, n_features]``, each row one
window of text that starts with BOS) and keeps, for every feature at once:

* how often it fires (activation > 0), its largest activation and the sum of its activations;
* its activation histogram in a fixed number of bins (:data:`HIST_BINS`) of width ``2**e``, where
  ``e`` is the smallest exponent (≥ :data:`MIN_EXP`) that puts the largest activation seen so far
  in the last bin: when a larger activation arrives the width doubles (pairs of bins merge, which is
  exact because the edges of the wider bins are edges of the narrower ones);
* its top examples: the ``n_examples`` windows in which it fires hardest (one per window: the
  window's largest activation, at its first position), ties going to the earlier window;
* a uniform random sample of the tokens where it fires within each of :data:`SAMPLE_BINS`
  equal-width activation intervals (the histogram's bins, eight at a time), ``bin_examples`` each:
  a token is kept if its hash key — a function of (window number, position, seed), not of the
  batching — is among the smallest of its interval (a bottom-k sketch; one key per token serves
  every feature). A union of intervals keeps the bottom-k of the union, so the intervals shown at
  the end (``n_bins`` groups of neighbouring sample bins spanning 0 to the max) are exact uniform
  samples too.

Each kept example stores a window of tokens around its token (``left`` before, ``right`` after)
and the feature's activation at each of them. Memory is ``O(n_features · (n_examples +
SAMPLE_BINS · bin_examples) · window)`` whatever the number of tokens, and every kept quantity
depends only on the windows and their order, never on how they were split into batches (the
histogram and the counts are sums of integers; the choices are total orders on keys).

The first position of each window (its BOS) is left out of every statistic and every choice: a
feature's activation on the artificial BOS that starts each window says nothing about the text.
Nothing here knows about models: :mod:`interp.report.feature_pages` feeds it.

>>> import torch
>>> s = FeatureStats(2, n_examples=1, left=1, right=1)
>>> acts = torch.tensor([[[9., 0.], [0., 0.], [2., 0.], [0., 0.]]])   # one window, BOS first
>>> s.update(torch.tensor([[0, 5, 6, 7]]), acts)
>>> s.n_tokens, s.nonzero.tolist(), s.max.tolist()        # BOS's 9 is not counted
(3, [1, 0], [2.0, 0.0])
>>> s.top(0)["tokens"], s.top(0)["values"]
([[5, 6, 7]], [[0.0, 2.0, 0.0]])
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import InterpError
from ..threads import one_thread

__all__ = ["FeatureStats", "hash_keys", "HIST_BINS", "SAMPLE_BINS", "MIN_EXP"]

#: Fine histogram bins per feature (the display merges them in pairs).
HIST_BINS = 128
#: Activation intervals sampled per feature (each covers ``HIST_BINS // SAMPLE_BINS`` histogram bins).
SAMPLE_BINS = 16
#: The narrowest histogram bin is ``2**MIN_EXP`` wide.
MIN_EXP = -30
_GROUP = HIST_BINS // SAMPLE_BINS
_EMPTY_KEY = 1 << 32  # larger than any 32-bit hash key: an empty sample slot
_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) in int64 arithmetic without overflow."""
    x = x & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def hash_keys(window: Tensor, pos: Tensor, seed: int) -> Tensor:
    """32-bit keys (int64) of tokens, by (window number, position): a pseudo-random order independent of batching."""
    return _mix32(_mix32(window * 0x9E3779B1 + seed) ^ pos)


def _ordered(x: Tensor) -> Tensor:
    """float32 values as int64 in [0, 2**32) in the same order (-inf first, +inf last)."""
    bits = x.float().contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)


def _ranks(segment: Tensor, key: Tensor, tiebreak: Tensor) -> tuple[Tensor, Tensor]:
    """Order entries by ``(segment, key, tiebreak)`` ascending (``key`` in [0, 2**33)); each entry's rank in its segment."""
    order = torch.sort(tiebreak, stable=True).indices
    order = order[torch.sort((segment[order] << 33) + key[order], stable=True).indices]
    seg = segment[order]
    n = seg.numel()
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = seg[1:] != seg[:-1]
    start = torch.cummax(torch.where(first, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0).values
    return order, torch.arange(n) - start


def _admit(groups: Tensor, cap: int, cand_group: Tensor, old_keys: tuple, new_keys: tuple) -> tuple[Tensor, Tensor]:
    """Which candidates enter bounded sets, and into which slots.

    ``groups`` are the flat indices of ``len(groups)`` sets of ``cap`` slots each, whose entries have
    sort keys ``old_keys`` (a key in [0, 2**33) and a tie-break, each ``[len(groups), cap]``; an
    empty slot must sort last); candidates
    belong to ``groups[cand_group]`` with keys ``new_keys``. Each set keeps its ``cap`` smallest
    entries by the keys in order: returns the candidates that enter and the flat slot
    (``group * cap + j``) each takes — a slot freed by an entry it pushed out, or an empty one.
    """
    n_old = len(groups) * cap
    seg = torch.cat([torch.arange(len(groups)).repeat_interleave(cap), cand_group])
    keys = [torch.cat([o.reshape(-1), n]) for o, n in zip(old_keys, new_keys)]
    order, rank = _ranks(seg, keys[0], keys[1])
    kept = rank < cap
    # Per set, the candidates kept and the old slots let go are equally many, and both lists are
    # ordered by set (``order`` is): pair them in order.
    entering = order[kept & (order >= n_old)] - n_old
    freed = order[~kept & (order < n_old)]
    slots = groups[freed // cap] * cap + freed % cap
    return entering, slots


class FeatureStats:
    """Activation statistics of ``n_features`` features, accumulated batch by batch (see the module docs).

    Args:
        n_features: how many features each activation row holds.
        n_examples: top examples kept per feature.
        n_bins: equal-width activation intervals (0 to the max) the bin examples are shown in (1–8).
        bin_examples: examples sampled per interval.
        left, right: tokens of context kept before and after an example's token.
        seed: the hash keys' seed (which tokens are sampled).
        dfa: keep a third window per top example, filled by the ``dfa`` function given to
            :meth:`update` (the direct feature attribution of each source token).
    """

    def __init__(self, n_features: int, *, n_examples: int = 20, n_bins: int = 5, bin_examples: int = 5,
                 left: int = 24, right: int = 8, seed: int = 0, dfa: bool = False):
        for name, v, lo in (("n_features", n_features, 1), ("n_examples", n_examples, 0), ("n_bins", n_bins, 1),
                            ("bin_examples", bin_examples, 0), ("left", left, 0), ("right", right, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InterpError(f"{name} must be an int ≥ {lo}, not {v!r}")
        if n_bins > SAMPLE_BINS // 2:
            raise InterpError(f"n_bins {n_bins} too large: at most {SAMPLE_BINS // 2} activation intervals")
        F, K, S, W = n_features, n_examples, bin_examples, left + 1 + right
        self.n_features, self.n_examples, self.n_bins, self.bin_examples = F, K, n_bins, S
        self.left, self.right, self.width, self.seed, self.with_dfa = left, right, W, seed, dfa
        self.n_windows = 0
        self.n_tokens = 0
        self.nonzero = torch.zeros(F, dtype=torch.long)
        self.total = torch.zeros(F, dtype=torch.float64)
        self.max = torch.zeros(F)
        self.exp = torch.full((F,), MIN_EXP, dtype=torch.long)
        self.hist = torch.zeros(F, HIST_BINS, dtype=torch.long)
        # Top examples, best first; value -inf marks an empty slot.
        self._top = self._slots((F, K))
        # Bin samples: slot [f, b, j] holds the j-th smallest key of sample bin b; key 2 = empty.
        self._smp = self._slots((F, SAMPLE_BINS, S))
        self._smp["key"] = torch.full((F, SAMPLE_BINS, S), _EMPTY_KEY, dtype=torch.long)

    def _slots(self, shape: tuple) -> dict:
        W = self.width
        out = {
            "value": torch.full(shape, float("-inf")),
            "window": torch.full(shape, -1, dtype=torch.long),
            "pos": torch.zeros(shape, dtype=torch.long),
            "tokens": torch.full((*shape, W), -1, dtype=torch.int32),
            "acts": torch.zeros((*shape, W)),
        }
        if self.with_dfa and len(shape) == 2:
            out["dfa"] = torch.zeros((*shape, W))
        return out

    # ------------------------------------------------------------------ reading a batch
    @torch.no_grad()
    def update(self, tokens: Int[Tensor, "batch pos"], acts: Float[Tensor, "batch pos n_features"],
               dfa: Optional[Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = None) -> None:
        """Add a batch of windows (each starting with BOS, which is not counted).

        ``dfa(batch_row, pos, feature, source_pos)`` (all ``[n]``, ``source_pos`` ``[n, window]``)
        returns each source token's direct attribution ``[n, window]``; it is called only for the
        examples that enter a top list, and only when the statistics were built with ``dfa=True``.
        """
        B, P = tokens.shape
        if acts.shape != (B, P, self.n_features):
            raise InterpError(f"activations of shape {tuple(acts.shape)} do not match tokens {tuple(tokens.shape)} "
                              f"and {self.n_features} features")
        if self.with_dfa and dfa is None:
            raise InterpError("these statistics keep direct feature attributions: pass dfa=")
        # Many small memory-bound operations: threads only wait for each other here (see interp.threads).
        with one_thread():
            self._update(tokens, acts, dfa)

    def _update(self, tokens: Tensor, acts: Tensor, dfa) -> None:
        B, P = tokens.shape
        acts = acts.detach().float().cpu().contiguous()
        tokens = tokens.cpu()
        F = self.n_features
        flat = acts.view(-1, F)
        # Where each feature fires, past the BOS that starts each window. numpy finds the nonzeros of a
        # boolean array several times faster than torch.nonzero (measured: 7 vs 22 ms for 2M entries).
        idx = torch.from_numpy(np.flatnonzero(acts[:, 1:].numpy() > 0))
        row = idx // F  # row of the [B, P - 1] tokens past BOS; integer division is the slow part: once each
        f = idx - row * F
        b = row // (P - 1)
        p = row - b * (P - 1) + 1
        # The same entries in the full [B, P, F] (one BOS row per window before); numpy's take is the faster gather.
        v = torch.from_numpy(np.take(acts.numpy().reshape(-1), (idx + (b + 1) * F).numpy()))
        w0 = self.n_windows
        self.n_windows += B
        self.n_tokens += B * (P - 1)
        if v.numel() == 0:
            return
        self.nonzero += torch.bincount(f, minlength=F)
        self.total.index_add_(0, f, v.double())
        bmax = torch.zeros(F).scatter_reduce_(0, f, v, "amax")
        old_exp = self.exp.clone()
        self.max = torch.maximum(self.max, bmax)
        self._grow(old_exp)
        bins = torch.floor(torch.ldexp(v.double(), -self.exp[f])).long().clamp_(0, HIST_BINS - 1)
        self.hist.view(-1).index_add_(0, f * HIST_BINS + bins, torch.ones_like(f))
        self._update_top(tokens, flat, b, p, f, v, w0, dfa)
        self._update_samples(tokens, flat, b, p, f, v, bins, w0, old_exp)

    def _grow(self, old_exp: Tensor) -> None:
        """Widen the histogram bins of features whose max outgrew them (merging bins, exactly)."""
        m = self.max.double()
        e = torch.ceil(torch.log2(torch.clamp(m, min=1e-300) / HIST_BINS)).long()
        e = torch.where(m >= HIST_BINS * torch.exp2(e.double()), e + 1, e)  # log2 rounding, both ways
        e = torch.where(m < HIST_BINS * torch.exp2((e - 1).double()), e - 1, e)
        self.exp = torch.maximum(old_exp, torch.clamp(e, min=MIN_EXP))
        changed = torch.nonzero(self.exp != old_exp).flatten()
        if changed.numel():
            shift = (self.exp[changed] - old_exp[changed]).clamp(max=62)
            idx = torch.arange(HIST_BINS)[None, :] >> shift[:, None]
            self.hist[changed] = torch.zeros_like(self.hist[changed]).scatter_add_(1, idx, self.hist[changed])

    def _windows(self, tokens: Tensor, flat: Tensor, b: Tensor, p: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids and the feature's activations in the window around each (row, pos, feature)."""
        P = tokens.shape[1]
        src = p[:, None] + torch.arange(-self.left, self.right + 1)[None, :]
        ok = (src >= 0) & (src < P)
        srcc = src.clamp(0, P - 1)
        toks = torch.where(ok, tokens[b[:, None], srcc], -1).to(torch.int32)
        acts = torch.where(ok, flat.view(-1)[(b[:, None] * P + srcc) * flat.shape[1] + f[:, None]], 0.0)
        return toks, acts

    def _fill(self, store: dict, slots: Tensor, tokens, flat, b, p, f, values: dict) -> None:
        """Write new entries (rows ``b``, positions ``p``, features ``f``) into flat ``slots`` of a store."""
        toks, acts = self._windows(tokens, flat, b, p, f)
        for k, v in values.items():
            store[k].view(-1)[slots] = v
        store["tokens"].view(-1, self.width)[slots] = toks
        store["acts"].view(-1, self.width)[slots] = acts

    def _update_top(self, tokens, flat, b, p, f, v, w0, dfa) -> None:
        K, F = self.n_examples, self.n_features
        if K == 0:
            return
        B, P = tokens.shape
        top = self._top
        key = b * F + f  # one candidate per (window, feature): the window's max, at its first position
        smax = torch.zeros(B * F).scatter_reduce_(0, key, v, "amax")
        # A window later than every kept one enters only by beating the worst kept value (ties keep the earlier).
        cand = torch.nonzero((smax.view(B, F) > top["value"].amin(1).clamp(min=0)[None, :]).view(-1)).flatten()
        if cand.numel() == 0:
            return
        entering = torch.zeros(B * F, dtype=torch.bool)
        entering[cand] = True
        at = entering[key]
        at[at.clone()] = v[at] == smax[key[at]]
        first = torch.full((B * F,), P, dtype=torch.long).scatter_reduce_(0, key[at], p[at], "amin")
        cb, cf, cv, cp = cand // F, cand % F, smax[cand], first[cand]
        cw = w0 + cb
        feats = torch.unique(cf)
        pick, slots = _admit(feats, K, torch.searchsorted(feats, cf),
                             (_ordered(-top["value"][feats]), top["window"][feats]), (_ordered(-cv), cw))
        nb, nf, np_ = cb[pick], cf[pick], cp[pick]
        self._fill(top, slots, tokens, flat, nb, np_, nf, {"value": cv[pick], "window": cw[pick], "pos": np_})
        if self.with_dfa:
            src = np_[:, None] + torch.arange(-self.left, self.right + 1)[None, :]
            top["dfa"].view(-1, self.width)[slots] = dfa(nb, np_, nf, src).float().cpu()

    def _update_samples(self, tokens, flat, b, p, f, v, bins, w0, old_exp) -> None:
        S, NS = self.bin_examples, SAMPLE_BINS
        if S == 0:
            return
        smp = self._smp
        B, P = tokens.shape
        grown = self.exp != old_exp
        if grown.any():
            self._rebin(torch.nonzero(grown).flatten())
        # Each token's key, once per token (a feature's sample is uniform over its firings all the same).
        rows = torch.arange(B * P)
        token_key = hash_keys(w0 + rows // P, rows % P, self.seed)
        seg = f * NS + bins // _GROUP
        key = token_key[b * P + p]
        # A token enters its sample bin only with a key below the bin's largest kept key (2**32 while not full).
        enter = torch.nonzero(key < smp["key"].amax(2).view(-1)[seg]).flatten()
        if enter.numel() == 0:
            return
        f, b, p, v, seg, key = f[enter], b[enter], p[enter], v[enter], seg[enter], key[enter]
        tid = (w0 + b) * (1 << 20) + p
        segs = torch.unique(seg)
        old_key = smp["key"].view(-1, S)[segs]
        old_tid = smp["window"].view(-1, S)[segs] * (1 << 20) + smp["pos"].view(-1, S)[segs]
        pick, slots = _admit(segs, S, torch.searchsorted(segs, seg), (old_key, old_tid), (key, tid))
        self._fill(smp, slots, tokens, flat, b[pick], p[pick], f[pick],
                   {"key": key[pick], "value": v[pick], "window": w0 + b[pick], "pos": p[pick]})

    def _rebin(self, feats: Tensor) -> None:
        """Move the kept samples of features whose bins widened into the wider bins (each keeps its smallest keys)."""
        S, NS = self.bin_examples, SAMPLE_BINS
        smp = self._smp
        old = {k: t[feats].reshape(len(feats) * NS * S, *t.shape[3:]) for k, t in smp.items()}
        full = old["key"] < _EMPTY_KEY
        local = torch.arange(len(feats)).repeat_interleave(NS * S)
        sb = torch.floor(torch.ldexp(old["value"].double(), -self.exp[feats][local])).long() // _GROUP
        sb = torch.where(full, sb.clamp(0, NS - 1), NS)  # empty slots go to an extra bin that is dropped
        seg = local * (NS + 1) + sb
        tid = old["window"] * (1 << 20) + old["pos"]
        order, rank = _ranks(seg, old["key"], tid)
        ok = (rank < S) & (seg[order] % (NS + 1) < NS)
        kept = order[ok]
        slot = (seg[kept] // (NS + 1)) * NS * S + (seg[kept] % (NS + 1)) * S + rank[ok]
        new = {k: torch.empty_like(t) for k, t in old.items()}
        for k, fill in (("key", _EMPTY_KEY), ("value", float("-inf")), ("window", -1), ("pos", 0), ("tokens", -1),
                        ("acts", 0.0)):
            new[k].fill_(fill)
            new[k][slot] = old[k][kept]
        for k, t in smp.items():
            t[feats] = new[k].view(len(feats), NS, S, *t.shape[3:])

    # ------------------------------------------------------------------ results
    def density(self) -> Float[Tensor, " n_features"]:
        """Fraction of counted tokens on which each feature fires (activation > 0)."""
        return self.nonzero.double() / max(self.n_tokens, 1)

    def mean_nonzero(self) -> Float[Tensor, " n_features"]:
        """Mean activation over the tokens where each feature fires (0 for a dead feature)."""
        return self.total / self.nonzero.clamp(min=1)

    def top(self, feature: int) -> dict:
        """A feature's top examples, best first: ``value, window, pos, tokens, values`` (and ``dfa``) as lists.

        ``tokens`` are the window's ids (-1 outside the text window); ``pos`` is the example's
        token position in its window of text (BOS = 0), at index ``left`` of its token window.
        """
        ex = self.examples(torch.tensor([feature]))
        sel = ex["group"] == -1
        out = {"value": ex["value"][sel].tolist(), "window": ex["window"][sel].tolist(), "pos": ex["pos"][sel].tolist(),
               "tokens": ex["tokens"][sel].tolist(), "values": ex["acts"][sel].tolist()}
        if self.with_dfa:
            out["dfa"] = ex["dfa"][sel].tolist()
        return out

    def examples(self, features: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Every kept example of ``features`` (default all), as flat tensors ordered by feature, then group.

        Keys: ``feature`` (position in ``features``), ``group`` (-1: a top example, best first;
        ``i ≥ 0``: a sample of activation interval ``i`` of :meth:`interval_edges`, highest value
        first), ``value``, ``window``, ``pos``, ``tokens`` and ``acts`` (``[n, window]``), ``dfa``
        (zeros for interval samples, or absent).
        """
        feats = torch.arange(self.n_features) if features is None else torch.as_tensor(features, dtype=torch.long)
        n_f = len(feats)
        parts = []
        if self.n_examples:
            t = {k: v[feats].reshape(n_f * self.n_examples, *v.shape[2:]) for k, v in self._top.items()}
            local = torch.arange(n_f).repeat_interleave(self.n_examples)
            full = t["value"] > float("-inf")
            order, _ = _ranks(local[full], _ordered(-t["value"][full]), t["window"][full])
            i = torch.nonzero(full).flatten()[order]
            part = {k: v[i] for k, v in t.items()}
            part["feature"], part["group"] = local[i], torch.full((len(i),), -1, dtype=torch.long)
            parts.append(part)
        if self.bin_examples:
            lo, hi, share, k = self.interval_edges(feats)
            S, NS = self.bin_examples, SAMPLE_BINS
            smp = {key: v[feats].reshape(n_f * NS * S, *v.shape[3:]) for key, v in self._smp.items()}
            local = torch.arange(n_f).repeat_interleave(NS * S)
            sb = torch.arange(NS).repeat_interleave(S).repeat(n_f)
            edges = self._edges(feats)  # [n_f, n_bins + 1], in sample bins
            group = (sb[:, None] >= edges[local][:, 1:]).sum(1)  # the interval a sample bin falls in
            full = (smp["key"] < _EMPTY_KEY) & (group < k[local])
            idx = torch.nonzero(full).flatten()
            seg = local[idx] * self.n_bins + group[idx]
            tid = smp["window"][idx] * (1 << 20) + smp["pos"][idx]
            order, rank = _ranks(seg, smp["key"][idx], tid)
            chosen = idx[order[rank < S]]
            # within an interval: highest value first
            seg = local[chosen] * self.n_bins + group[chosen]
            order, _ = _ranks(seg, _ordered(-smp["value"][chosen]), smp["window"][chosen] * (1 << 20) + smp["pos"][chosen])
            chosen = chosen[order]
            part = {key: smp[key][chosen] for key in ("value", "window", "pos", "tokens", "acts")}
            if self.with_dfa:
                part["dfa"] = torch.zeros_like(part["acts"])
            part["feature"], part["group"] = local[chosen], group[chosen]
            parts.append(part)
        if not parts:
            return {k: torch.zeros(0) for k in ("feature", "group", "value", "window", "pos", "tokens", "acts")}
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "key"}
        order, _ = _ranks(out["feature"], out["group"] + 1, torch.arange(len(out["feature"])))
        return {k: v[order] for k, v in out.items()}

    def _edges(self, feats: Tensor) -> Tensor:
        """Interval edges in sample bins ``[len(feats), n_bins + 1]`` (unused intervals repeat the last edge)."""
        used, k = self._used(feats)
        i = torch.arange(self.n_bins + 1)[None, :].clamp(max=k[:, None])
        return torch.round(i * used[:, None] / k[:, None]).long()

    def _used(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        ws = torch.exp2(self.exp[feats].double()) * _GROUP
        used = torch.clamp(torch.floor(self.max[feats].double() / ws).long() + 1, max=SAMPLE_BINS)
        return used, torch.clamp(used, max=self.n_bins)

    def interval_edges(self, features: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The activation intervals of ``features``: ``lo, hi, share`` ``[n, n_bins]`` and how many each has ``[n]``.

        Up to ``n_bins`` intervals of about equal width from 0 to the max activation (edges on the
        sample bins' grid); ``share`` is the fraction of the feature's firings in ``[lo, hi)`` (the
        last interval includes the max). A dead feature has none.
        """
        feats = torch.arange(self.n_features) if features is None else torch.as_tensor(features, dtype=torch.long)
        used, k = self._used(feats)
        k = torch.where(self.nonzero[feats] > 0, k, 0)
        edges = self._edges(feats)
        ws = torch.exp2(self.exp[feats].double()) * _GROUP
        lo, hi = edges[:, :-1] * ws[:, None], edges[:, 1:] * ws[:, None]
        last = (torch.arange(self.n_bins)[None, :] == (k - 1)[:, None])
        hi = torch.where(last, self.max[feats].double()[:, None], hi)
        per_bin = self.hist[feats].view(len(feats), SAMPLE_BINS, _GROUP).sum(-1)
        cum = torch.cat([torch.zeros(len(feats), 1, dtype=torch.long), per_bin.cumsum(1)], 1)
        share = (cum.gather(1, edges[:, 1:]) - cum.gather(1, edges[:, :-1])).double() / self.nonzero[feats].clamp(min=1)[:, None]
        return lo, hi, share, k

    def histogram(self, feature: int) -> tuple[list[float], list[int]]:
        """The activation histogram for display: bin centres and counts (pairs of fine bins merged).

        Covers 0 to the max activation; empty for a dead feature.
        """
        if int(self.nonzero[feature]) == 0:
            return [], []
        w = 2.0 ** int(self.exp[feature])
        used = int(torch.floor(self.max[feature].double() / w)) + 1
        used = min(used, HIST_BINS)
        counts = self.hist[feature, :used]
        step = 2 if used > 16 else 1
        if used % step:
            counts = torch.cat([counts, torch.zeros(1, dtype=counts.dtype)])
        merged = counts.view(-1, step).sum(1)
        centres = [(i + 0.5) * step * w for i in range(len(merged))]
        return centres, merged.tolist()

    def intervals(self, feature: int) -> list[dict]:
        """The bin examples of one feature: up to ``n_bins`` intervals from 0 to the max activation, lowest first.

        Each is ``{"lo", "hi", "share", "examples"}`` (see :meth:`interval_edges`); ``examples``
        (highest activation first) are dicts as :meth:`top` gives for one example. Empty for a dead feature.
        """
        f = torch.tensor([feature])
        lo, hi, share, k = self.interval_edges(f)
        ex = self.examples(f)
        out = []
        for i in range(int(k[0])):
            sel = torch.nonzero(ex["group"] == i).flatten().tolist()
            out.append({"lo": float(lo[0, i]), "hi": float(hi[0, i]), "share": float(share[0, i]), "examples": [
                {"value": float(ex["value"][j]), "window": int(ex["window"][j]), "pos": int(ex["pos"][j]),
                 "tokens": ex["tokens"][j].tolist(), "values": ex["acts"][j].tolist()} for j in sel]})
        return out
