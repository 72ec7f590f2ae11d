"""Training rows: the synthetic copying sequences, text windows, and the batch of a step.

Text batches are mixed with synthetic sequences that reward copying, because
docstrings alone give a tiny model too little reason to form copying circuits:

* *repeat*: ``[BOS] r r r ...`` with ``r`` random tokens -- rewards
  previous-token heads composed with induction heads;
* *skip*: random tokens where, at random positions, ``x[t] = x[t-2]`` -- a
  direct one-layer reward for previous-token heads;
* *reverse*: ``[BOS] r reversed(r) ...`` -- predicting ``r[i-1]`` after ``r[i]``;
  the model learns it with a layer-0 head attending two tokens back, read by the
  induction heads;
* *mark*: ``[BOS] x1 m1 x2 m2 ...``, ``m`` = "was ``x`` seen before?";
* *where*: ``[BOS] x1 w1 x2 w2 f ...``, ``w`` = "new", or which eighth of the row the
  earlier copy of ``x`` is in (``f``: a filler, half the time).

The markers ``m`` and ``w`` are byte tokens that no document contains
(:func:`tools.train_tiny.corpus.marker_ids`): ``markers[0]`` "new", ``markers[1]``
"seen", ``markers[2:10]`` the *where* positions, ``markers[10]`` the filler.

Every batch is a pure function of ``(seed, step)`` (:func:`make_batch`), so a run
is deterministic for a given seed and thread count, and resuming from a
checkpoint needs no data-loader state.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .recipe import Recipe


def repeat_row(
    g: torch.Generator, n_ctx: int, vocab: int, lo: int, hi: int
) -> Int[Tensor, " pos"]:
    """``[BOS] r r r ...`` truncated to ``n_ctx``; ``r`` has uniform random length in [lo, hi]."""
    span = int(torch.randint(lo, hi + 1, (1,), generator=g))
    r = torch.randint(1, vocab, (span,), generator=g)
    reps = (n_ctx - 1) // span + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), r.repeat(reps)[: n_ctx - 1]])


def reverse_row(
    g: torch.Generator, n_ctx: int, vocab: int, lo: int, hi: int
) -> Int[Tensor, " pos"]:
    """``[BOS] r reversed(r) r' reversed(r') ...`` truncated to ``n_ctx``."""
    parts = [torch.zeros(1, dtype=torch.long)]
    total = 1
    while total < n_ctx:
        span = int(torch.randint(lo, min(hi, 32) + 1, (1,), generator=g))
        r = torch.randint(1, vocab, (span,), generator=g)
        parts += [r, r.flip(0)]
        total += 2 * span
    return torch.cat(parts)[:n_ctx]


def skip_row(g: torch.Generator, n_ctx: int, vocab: int, p: float = 0.35) -> Int[Tensor, " pos"]:
    """``[BOS]`` then random tokens where, at random positions, ``x[t] = x[t-2]`` (``a b a``).

    Copying "any token from the context" cannot predict such a token, but one
    head attending to ``q-1`` and copying it can: a direct, single-layer reward
    for the previous-token heads that induction and duplicate-token circuits
    later build on. The positions are random (not every third) so that the head
    must attend to ``q-1`` everywhere rather than at a fixed phase.
    """
    x = torch.randint(1, vocab, (n_ctx - 1,), generator=g)
    hit = torch.rand((n_ctx - 1,), generator=g) < p
    for t in range(2, n_ctx - 1):
        if hit[t]:
            x[t] = x[t - 2]
    return torch.cat([torch.zeros(1, dtype=torch.long), x])


def mark_row(
    g: torch.Generator, n_ctx: int, vocab: int, markers: tuple[int, int]
) -> Int[Tensor, " pos"]:
    """``[BOS] x1 m1 x2 m2 ...`` where ``m_t`` says whether ``x_t`` occurred earlier in the row.

    ``m_t`` is ``markers[1]`` ("seen") if ``x_t`` is a copy of an earlier item, else
    ``markers[0]`` ("new"). Predicting it after ``x_t`` is a one-layer task for a head
    that attends from a token to its earlier copies (and to ``[BOS]`` when there
    are none): a direct reward for duplicate-token heads, as *skip* rows are for
    previous-token heads. The items are drawn from a random pool of 0.5 to 1.5
    times the number of items, so about half of them are repeats.
    """
    n_items = n_ctx // 2
    pool_size = int(torch.randint(n_items // 2, 3 * n_items // 2 + 1, (1,), generator=g))
    pool = torch.randint(1, vocab, (pool_size,), generator=g)
    # The markers are never items (shifted past them; both are byte tokens < 256).
    pool = torch.where((pool == markers[0]) | (pool == markers[1]), pool + 2, pool)
    x = pool[torch.randint(0, pool_size, (n_items,), generator=g)]
    seen: set[int] = set()
    m = torch.empty_like(x)
    for t, v in enumerate(x.tolist()):
        m[t] = markers[1] if v in seen else markers[0]
        seen.add(v)
    body = torch.stack([x, m], dim=1).flatten()
    return torch.cat([torch.zeros(1, dtype=torch.long), body])[:n_ctx]


def where_row(
    g: torch.Generator, n_ctx: int, vocab: int, markers: tuple[int, ...], n_buckets: int = 8
) -> Int[Tensor, " pos"]:
    """``[BOS] x1 w1 x2 w2 f x3 w3 ...``: ``w_t`` says where the earlier copy of ``x_t`` is, if any.

    ``w_t`` is ``markers[0]`` ("new") if ``x_t`` has no earlier copy, else
    ``markers[2 + b]`` where ``b = n_buckets * p // n_ctx`` for the copy's position ``p``.
    After a marker a filler ``markers[2 + n_buckets]`` follows half the time, so a copy
    is as often an odd as an even number of positions back. Items are distinct tokens,
    except that each is repeated at most once (with probability between a quarter and
    a half per item), so a repeat has exactly one earlier copy. At layer 0 the answer
    is in one place only: the position of that copy. A head attending to ``x_t``
    itself (the same token) reads the wrong position, so unlike *mark* rows these
    reward attending to the earlier copy and not to self.
    """
    if len(markers) < 3 + n_buckets:
        raise ValueError(f"where rows need {3 + n_buckets} markers (new, seen, {n_buckets} positions, filler), got {len(markers)}")
    new, buckets, filler = markers[0], markers[2 : 2 + n_buckets], markers[2 + n_buckets]
    # Items never collide with the byte tokens the markers are taken from (ids < 256).
    lo, hi = min(markers), max(markers) + 1
    allowed = torch.cat([torch.arange(1, min(vocab, lo)), torch.arange(hi, max(vocab, hi))])
    fresh = allowed[torch.randperm(len(allowed), generator=g)[:n_ctx]].tolist()
    p_repeat = 0.25 + 0.25 * float(torch.rand((), generator=g))
    tokens = [0]
    copyable: list[tuple[int, int]] = []  # (token, position) of items not repeated yet
    while len(tokens) < n_ctx:
        if copyable and float(torch.rand((), generator=g)) < p_repeat:
            item, pos = copyable.pop(int(torch.randint(0, len(copyable), (1,), generator=g)))
            tokens += [item, buckets[n_buckets * pos // n_ctx]]
        else:
            item = fresh.pop()
            copyable.append((item, len(tokens)))
            tokens += [item, new]
        if float(torch.rand((), generator=g)) < 0.5:
            tokens.append(filler)
    return torch.tensor(tokens[:n_ctx])


def text_row(g: torch.Generator, stream: Int[Tensor, " n_tokens"], n_ctx: int) -> Int[Tensor, " pos"]:
    """``[BOS]`` followed by a random window of the token stream."""
    start = int(torch.randint(0, len(stream) - n_ctx, (1,), generator=g))
    return torch.cat([torch.zeros(1, dtype=torch.long), stream[start : start + n_ctx - 1]])


def synthetic_frac(r: Recipe, step: int) -> float:
    """Share of synthetic rows in the batch at ``step`` (the curriculum)."""
    if step < r.synthetic_only_steps:
        return 1.0
    t = min(1.0, (step - r.synthetic_only_steps) / max(1, r.ramp_steps))
    return 1.0 - t * (1.0 - r.final_synthetic_frac)


def syn_vocab(r: Recipe, step: int) -> int:
    """Random span tokens at ``step`` are drawn from ids ``[1, syn_vocab(r, step))``."""
    t = min(1.0, step / max(1, r.syn_vocab_ramp))
    return int(r.syn_vocab_start + t * (r.vocab_size - r.syn_vocab_start))


def row_kinds(r: Recipe, step: int) -> list[str]:
    """The kind of each row of the batch of ``step``: mark, where, reverse, skip, repeat rows, then text."""
    n_syn = round(r.batch_size * synthetic_frac(r, step))
    ends, end = [], 0
    for kind, frac in (("mark", r.mark_frac), ("where", r.where_frac), ("reverse", r.reverse_frac), ("skip", r.skip_frac)):
        end += round(n_syn * frac)
        ends.append((kind, end))
    ends.append(("repeat", n_syn))
    # The first kind whose end lies past the row: the fractions' rounded counts come first,
    # so they win if rounding makes them exceed the synthetic share.
    return [next((k for k, e in ends if i < e), "text") for i in range(r.batch_size)]


def marker_targets(
    r: Recipe, step: int, tokens: Int[Tensor, "batch pos"], markers: tuple[int, ...]
) -> Bool[Tensor, "batch pos-1"]:
    """Which next-token predictions of the batch of ``step`` are markers (of mark and where rows).

    Index ``[i, t]`` is the prediction of token ``t + 1`` from position ``t``, the item's.
    """
    out = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    for i, kind in enumerate(row_kinds(r, step)):
        if kind in ("mark", "where"):
            out[i] = marker_positions(tokens[i], markers, kind)
    return out


def marker_positions(row: Int[Tensor, " pos"], markers: tuple[int, ...], kind: str) -> Bool[Tensor, " pos-1"]:
    """Predictions of a mark or where row that are markers: ``[t]`` is True if token ``t + 1`` is one."""
    if kind == "mark":  # x1 m1 x2 m2 ...: markers at even positions
        out = torch.zeros(len(row) - 1, dtype=torch.bool)
        out[1::2] = True
        return out
    return torch.isin(row[1:], torch.tensor(markers[: len(markers) - 1]))  # every marker but the filler


def make_batch(
    r: Recipe, step: int, stream: Int[Tensor, " n_tokens"], markers: tuple[int, ...]
) -> Int[Tensor, "batch pos"]:
    """The training batch for ``step``: a pure function of ``(r.seed, step)``.

    Deriving each batch from its own generator (instead of one long-lived RNG)
    is what makes resuming exact without having to restore data-loader state.
    """
    g = torch.Generator().manual_seed(r.seed * 1_000_003 + step)
    vocab = syn_vocab(r, step)
    make = {
        "mark": lambda: mark_row(g, r.n_ctx, vocab, markers),
        "where": lambda: where_row(g, r.n_ctx, vocab, markers),
        "reverse": lambda: reverse_row(g, r.n_ctx, vocab, r.min_span, r.max_span),
        "skip": lambda: skip_row(g, r.n_ctx, vocab),
        "repeat": lambda: repeat_row(g, r.n_ctx, vocab, r.min_span, r.max_span),
        "text": lambda: text_row(g, stream, r.n_ctx),
    }
    rows = [make[kind]() for kind in row_kinds(r, step)]
    return torch.stack(rows)
