"""Numbers computed from a run's logits: loss on text, logit differences, probabilities, your own.

A :class:`Metric` reads only the positions it needs (:meth:`Metric.positions`), so
an ablation scan can unembed a few positions instead of every one; the loss on a
whole text computes its cross-entropy in chunks of positions so the full
``[batch, pos, d_vocab]`` logits never exist at once. Each metric reduces a batch
to one number (a mean over prompts or over tokens).

>>> import torch
>>> from interp.testing import planted_model
>>> from interp.prompts import repeated_tokens
>>> model = planted_model()
>>> tokens = repeated_tokens(model, n_prompts=2, half=8)
>>> batch = model.to_batch(tokens)
>>> round(float(Loss().from_logits(model, model(tokens), batch)), 2)   # high on r, low on its repeat
2.74
>>> round(float(Loss(positions=slice(10, None)).from_logits(model, model(tokens), batch)), 2)
0.0
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from . import select
from .errors import InterpError, InterpWarning
from .tokens import Batch

__all__ = ["Metric", "Loss", "LogitDiff", "Prob", "Custom", "token_loss", "resolve_metric", "contrast", "pair_metric"]

#: Rows of the logits a metric computes at once: 1024 × 50257 float32 logits are ~200 MB.
LOSS_CHUNK_ROWS = 1024


class Metric:
    """A function of a run's logits that reduces a batch to one number.

    Subclasses set :attr:`name` and implement :meth:`value`; :meth:`positions`
    says which positions they read (None: every position).
    """

    name: str = "metric"

    def bind(self, model) -> "Metric":
        """Resolve anything model-specific (token strings to ids); returns a metric ready to use."""
        return self

    def positions(self, batch: Batch) -> Optional[Int[Tensor, " batch"]]:
        """The one position per prompt the metric reads, or None for every position."""
        return None

    def value(self, logits: Tensor, batch: Batch) -> Float[Tensor, ""]:
        """The metric from logits at :meth:`positions` (``[batch, d_vocab]``) or at all (``[batch, pos, d_vocab]``)."""
        raise NotImplementedError

    def from_logits(self, model, logits: Float[Tensor, "batch pos d_vocab"], batch: Batch) -> Float[Tensor, ""]:
        """The metric from a run's full logits."""
        pos = self.positions(batch)
        return self.value(logits if pos is None else logits[torch.arange(len(batch)), pos], batch)

    def from_resid(self, model, resid: Float[Tensor, "batch pos d_model"], batch: Batch) -> Float[Tensor, ""]:
        """The metric from the residual stream after the last block, unembedding only what it reads."""
        pos = self.positions(batch)
        if pos is None:
            return self.value(model.unembed(resid), batch)
        return self.value(model.unembed(resid[torch.arange(len(batch)), pos]), batch)

    def from_stacked_resid(self, model, resid: Float[Tensor, "stacked pos d_model"], batch: Batch) -> list[float]:
        """The metric of each of several runs of ``batch`` stacked along the batch (run ``v`` in rows
        ``v·B … (v+1)·B``), as the scans and patching produce them.

        A metric that reads one position per prompt unembeds those rows of every run together
        (:meth:`from_stacked_rows`): one pass over ``W_U`` for many runs instead of one per run,
        which for a few prompts is most of the cost of a patched run. Others go run by run.
        """
        B = len(batch)
        pos = self.positions(batch)
        if pos is None:
            return [float(self.from_resid(model, resid[v * B : (v + 1) * B], batch)) for v in range(len(resid) // B)]
        return self.from_stacked_rows(model, resid[torch.arange(len(resid)), pos.repeat(len(resid) // B)], batch)

    def from_stacked_rows(self, model, rows: Float[Tensor, "stacked d_model"], batch: Batch) -> list[float]:
        """As :meth:`from_stacked_resid`, given only the residual stream at :meth:`positions` (``[V·B, d_model]``)."""
        B = len(batch)
        out: list[float] = []
        step = max(1, LOSS_CHUNK_ROWS // B) * B  # whole runs per unembedding, the logits' memory bounded
        for start in range(0, len(rows), step):
            logits = model.unembed(rows[start : start + step])
            out += [float(self.value(logits[k : k + B], batch)) for k in range(0, len(logits), B)]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------------------- loss
def _loss_targets(batch: Batch, positions) -> Tensor:
    """Bool ``[batch, pos-1]``: which next-token predictions count (both tokens real, and the target chosen)."""
    mask = batch.attention_mask
    valid = mask[:, 1:] & mask[:, :-1]
    if positions is None:
        return valid
    chosen = select.positions(batch, positions, what="loss positions", ragged="skip").mask(mask.shape[1])
    # Position t is the token predicted from position t-1: the first token is never a target.
    return valid & chosen[:, 1:]


def token_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], attention_mask: Any = None,
) -> Float[Tensor, "batch pos-1"]:
    """Next-token cross-entropy at each position: ``out[b, t] = -log p(tokens[b, t+1] | tokens[b, :t+1])``.

    NaN where the prediction or its target is padding (``attention_mask`` False), so
    ``nanmean`` is the loss over real tokens.

    >>> logits = torch.zeros(1, 3, 4)                 # uniform over 4 tokens
    >>> token_loss(logits, torch.tensor([[0, 1, 2]]))
    tensor([[1.3863, 1.3863]])
    """
    targets = tokens[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    if attention_mask is None:
        return loss
    mask = attention_mask.bool()
    return loss.masked_fill(~(mask[:, 1:] & mask[:, :-1]), float("nan"))


class Loss(Metric):
    """Mean next-token cross-entropy over the real tokens of the text (padding excluded).

    Args:
        positions: which target tokens count, by the target's position in its prompt
            (:mod:`interp.select`: real tokens counted, BOS = 0; token ``t`` is predicted at
            ``t - 1``): a slice (``slice(9, None)``: the repeated half of ``[BOS] + r + r``
            with ``len(r) = 8``) or a list of positions; a position a prompt does not have is
            skipped for it. Default: every real token after the first.

    The mean is over tokens, not over prompts: a long prompt weighs more. For the
    loss of each token use :func:`token_loss`.
    """

    def __init__(self, positions: Any = None):
        self.target_positions = positions
        self.name = "loss" if positions is None else f"loss[{_describe(positions)}]"

    def value(self, logits: Float[Tensor, "batch pos d_vocab"], batch: Batch) -> Float[Tensor, ""]:
        per_token = token_loss(logits, batch.tokens)
        return _masked_mean(per_token, _loss_targets(batch, self.target_positions), self.name)

    def from_resid(self, model, resid: Float[Tensor, "batch pos d_model"], batch: Batch) -> Float[Tensor, ""]:
        """Cross-entropy unembedding only the counted predictions, in chunks of rows to bound memory."""
        counted = _loss_targets(batch, self.target_positions)
        rows = resid[:, :-1][counted]  # [n, d_model]: the predictions that count
        targets = batch.tokens[:, 1:][counted]
        if len(rows) == 0:
            raise InterpError(f"{self.name}: no target token counts (every selected position is padding or the first)")
        total = resid.new_zeros(())
        for start in range(0, len(rows), LOSS_CHUNK_ROWS):
            chunk = slice(start, start + LOSS_CHUNK_ROWS)
            total = total + F.cross_entropy(model.unembed(rows[chunk]), targets[chunk], reduction="sum")
        return total / len(rows)


def _masked_mean(values: Tensor, mask: Tensor, name: str) -> Tensor:
    n = int(mask.sum())
    if n == 0:
        raise InterpError(f"{name}: no target token counts (every selected position is padding or the first)")
    return values[mask].sum() / n


# ---------------------------------------------------------------------------- one position per prompt
class _AtPosition(Metric):
    """A metric of the logits at one position per prompt (default: each prompt's last real token)."""

    def __init__(self, position: int = -1):
        if isinstance(position, bool) or not isinstance(position, int):
            raise InterpError(f"position must be an int (-1: each prompt's last real token), not {position!r}")
        self.position = position

    def positions(self, batch: Batch) -> Int[Tensor, " batch"]:
        """Counted over each prompt's real tokens (:mod:`interp.select`): right or left padding alike."""
        return select.positions(batch, self.position, what="position").cols[:, 0]


def _token_ids(model, spec, what: str) -> Tensor:
    """One token id per prompt, or one for all: from ids, single-token strings, or a list of either."""
    items = spec.reshape(-1).tolist() if isinstance(spec, Tensor) else list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise InterpError(f"{what} is empty: give a token")
    return torch.tensor([select.token_id(model, t, what) for t in items], dtype=torch.long, device=model.cfg.device)


def _per_prompt(ids: Tensor, n: int, what: str) -> Tensor:
    if len(ids) == 1:
        return ids.expand(n)
    if len(ids) != n:
        raise InterpError(f"{what} has {len(ids)} tokens but the batch has {n} prompts: give one token or one per prompt")
    return ids


class LogitDiff(_AtPosition):
    """Mean over prompts of ``logit[correct] - logit[wrong]`` at one position (default: the last real token).

    ``correct`` and ``wrong`` are token ids or one-token strings (``" Paris"``), one for
    every prompt or a list with one per prompt. Unchanged by ``fold_ln``'s constant
    shift of the logits.
    """

    def __init__(self, correct: Any, wrong: Any, position: int = -1):
        super().__init__(position)
        self.correct, self.wrong = correct, wrong
        self.name = f"logit_diff({_describe(correct)} - {_describe(wrong)})"
        self._ids: Optional[tuple[Tensor, Tensor]] = None

    def bind(self, model) -> "LogitDiff":
        bound = LogitDiff(self.correct, self.wrong, self.position)
        bound._ids = (_token_ids(model, self.correct, "correct token"), _token_ids(model, self.wrong, "wrong token"))
        bound.name = f"logit_diff({_shown(model, bound._ids[0])} - {_shown(model, bound._ids[1])})"
        return bound

    def value(self, logits: Float[Tensor, "batch d_vocab"], batch: Batch) -> Float[Tensor, ""]:
        if self._ids is None:
            raise InterpError("LogitDiff is not bound to a model: call metric.bind(model) first")
        n, rows = len(batch), torch.arange(len(batch))
        c, w = (_per_prompt(ids, n, what) for ids, what in zip(self._ids, ("correct", "wrong")))
        return (logits[rows, c] - logits[rows, w]).mean()


class Prob(_AtPosition):
    """Mean over prompts of the probability of ``target`` at one position (default: the last real token)."""

    def __init__(self, target: Any, position: int = -1):
        super().__init__(position)
        self.target = target
        self.name = f"prob({_describe(target)})"
        self._ids: Optional[Tensor] = None

    def bind(self, model) -> "Prob":
        bound = Prob(self.target, self.position)
        bound._ids = _token_ids(model, self.target, "target token")
        bound.name = f"prob({_shown(model, bound._ids)})"
        return bound

    def value(self, logits: Float[Tensor, "batch d_vocab"], batch: Batch) -> Float[Tensor, ""]:
        if self._ids is None:
            raise InterpError("Prob is not bound to a model: call metric.bind(model) first")
        t = _per_prompt(self._ids, len(batch), "target")
        return logits.softmax(-1)[torch.arange(len(batch)), t].mean()


class Custom(Metric):
    """Your own function of the logits: ``fn(logits)`` returns a scalar, or one value per prompt (then averaged).

    With ``position=None`` (default) ``fn`` gets every position, ``[batch, pos, d_vocab]``;
    with an int it gets ``[batch, d_vocab]`` at that position (-1: each prompt's last
    real token), and an ablation scan unembeds only that position.

    >>> m = Custom(lambda logits: logits[:, 3] - logits[:, 5], position=-1)
    """

    def __init__(self, fn: Callable, position: Optional[int] = None, name: Optional[str] = None):
        if not callable(fn):
            raise InterpError(f"a metric function must be callable, not {type(fn).__name__}")
        self.fn = fn
        self._at = None if position is None else _AtPosition(position)
        self.name = name or getattr(fn, "__name__", "custom")
        if self.name == "<lambda>":
            self.name = "custom"

    def positions(self, batch: Batch) -> Optional[Int[Tensor, " batch"]]:
        return None if self._at is None else self._at.positions(batch)

    def value(self, logits: Tensor, batch: Batch) -> Float[Tensor, ""]:
        out = self.fn(logits)
        if not isinstance(out, Tensor):
            try:
                out = torch.tensor(float(out), dtype=logits.dtype)
            except (TypeError, ValueError):
                raise InterpError(
                    f"metric function {self.name!r} returned a {type(out).__name__}; expected a number or a tensor"
                ) from None
        if not out.dtype.is_floating_point:
            out = out.to(logits.dtype)
        n = len(batch)
        if out.ndim == 0 or (out.ndim == 1 and len(out) == 1):
            return out.reshape(())
        if out.shape == (n,):
            return out.mean()
        raise InterpError(
            f"metric function {self.name!r} returned shape {tuple(out.shape)} from logits of shape {tuple(logits.shape)}; "
            f"expected a scalar (shape ()) or one value per prompt (shape ({n},))"
        )


def resolve_metric(model, metric: Any) -> Metric:
    """A ready metric from ``"loss"``, a :class:`Metric` or a function of the logits (see :class:`Custom`)."""
    if isinstance(metric, str):
        if metric == "loss":
            return Loss()
        hint = {"logit_diff": "LogitDiff(correct, wrong)", "prob": "Prob(target)"}.get(metric)
        if hint:
            raise InterpError(f"metric {metric!r} needs tokens: pass interp.metrics.{hint}")
        raise InterpError(f"unknown metric {metric!r}: use 'loss', a Metric (LogitDiff, Prob, Loss) or a function of the logits")
    if isinstance(metric, Metric):
        return metric.bind(model)
    if callable(metric):
        return Custom(metric)
    raise InterpError(f"metric must be 'loss', a Metric or a function of the logits, not {type(metric).__name__}")


def _shown(model, ids: Tensor) -> str:
    """Tokens as text for a metric's name: ``' Paris'``, or ``8 tokens`` for one per prompt."""
    if len(ids) > 3 and len(set(ids.tolist())) > 1:
        return f"{len(ids)} tokens"
    texts = [repr(model.tokenizer.decode([i])) for i in dict.fromkeys(ids.tolist())]
    return texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"


def _describe(x: Any) -> str:
    if isinstance(x, slice):
        return f"{'' if x.start is None else x.start}:{'' if x.stop is None else x.stop}"
    if isinstance(x, Tensor):
        return f"tensor{tuple(x.shape)}"
    if isinstance(x, (list, tuple)) and len(x) > 3:
        return f"{len(x)} items"
    return repr(x) if isinstance(x, str) else str(x)


def pair_metric(model, clean: Any, corrupted: Any, metric: Any = None) -> Metric:
    """The metric of a clean/corrupted comparison, ready to use: :func:`resolve_metric` of ``metric``, or
    :func:`contrast` of the two runs when it is None (the default of patching, path patching, attribution)."""
    return resolve_metric(model, contrast(model, clean, corrupted) if metric is None else metric)


def contrast(model, clean: Any, corrupted: Any, position: int = -1) -> Metric:
    """The default metric of patching: what the clean run says that the corrupted run does not.

    ``LogitDiff(target, contrast)`` at ``position`` (each prompt's last real token by default), with
    ``target`` the clean run's top token and ``contrast`` the corrupted run's, per prompt. Where the
    two runs' top tokens are the same for some prompt a difference would say nothing: the metric
    is then ``Prob(target)``, its name says so, and an :class:`~interp.errors.InterpWarning` says why.
    """
    c, k = model.to_batch(clean), model.to_batch(corrupted)
    tops = []
    for batch in (c, k):
        at = select.positions(batch, position, what="position").cols[:, 0]
        final = model.forward(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=model.cfg.n_layers)
        tops.append(model.unembed(final[torch.arange(len(batch)), at]).argmax(-1).tolist())
    target, other = tops
    one = (lambda ids: ids[0]) if len(set(target)) == 1 and len(set(other)) == 1 else (lambda ids: ids)
    if any(t == o for t, o in zip(target, other)):
        same = [i for i, (t, o) in enumerate(zip(target, other)) if t == o]
        warnings.warn(InterpWarning(
            f"the clean and corrupted runs predict the same top token for prompt(s) {same[:5]}"
            f"{'…' if len(same) > 5 else ''}, so the default metric is the probability of the clean run's top token, "
            "not a logit difference; pass a metric (--target/--contrast) to choose"), stacklevel=3)
        return Prob(one(target), position).bind(model)
    return LogitDiff(one(target), one(other), position).bind(model)
