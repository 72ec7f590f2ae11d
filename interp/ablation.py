"""Ablating attention heads: scoped and exact.

"What does this head do?" is answered by removing it. :func:`ablate` removes heads
for the duration of a ``with`` block; :func:`ablation_hooks` gives the same edit as
a hook list for ``model.run(..., hooks=...)``; :func:`interp.scan.scan` ablates each
head (or each layer, or your own sets of heads) in turn and tabulates how a metric
changes.

Methods (the ``method=`` argument)
----------------------------------
A head is ablated at ``blocks.{L}.attn.hook_z`` (its value-weighted sum before
``W_O``, value bias included), so its output ``z_h @ W_O[h]`` changes exactly and no
other head's does. That output means the same with ``fold_ln=True`` and ``False``
(:class:`~interp.model.HookedGPT2` says how), so every method below gives the same
losses, log-probs and logit differences in both weight modes; tests check each
against Hugging Face's GPT-2 edited with torch hooks on ``c_proj``'s input.

* ``zero`` — ``z_h = 0``: the head writes nothing, its value bias included. The
  layer's bias ``b_O`` is not a head's and stays, so zero-ablating every head of a
  layer leaves ``hook_attn_out`` equal to ``b_O[L]`` at every position.
* ``mean`` — per position: position ``p`` of the run gets the head's mean ``z`` over
  the reference tokens at position ``p`` (positions counted from each prompt's
  first real token; padding excluded). Runs index position by column, so padded
  runs should pad on the right (the default). The reference must reach every
  position of the run.
* ``mean_pos`` — one vector per head: the mean over every real token of the reference.
* ``resample`` — the head's value on another input. With ``reference``, row ``i`` of
  the run takes reference row ``perm[i mod n_ref]`` (same positions), ``perm`` a
  random permutation of the reference rows drawn with ``torch.Generator`` seeded
  by ``seed`` (where a reference prompt is shorter than the run, its padding
  positions' values are used: give reference prompts at least as long). Without one, row ``i`` takes row ``d[i]`` of the run itself, ``d`` a
  random derangement of the batch (no row keeps its own value; needs ≥ 2 prompts).
* ``pattern`` — the head's attention to the key positions ``keys`` is removed, at
  ``hook_pattern``: ``"previous"`` (key = query − 1), ``"self"`` (key = query),
  ``"bos"`` (key 0), a list of key positions, or a bool ``[query_pos, key_pos]`` mask
  (True = remove). With ``renormalize=False`` (default) the removed weight simply
  vanishes: ``z'[q] = z[q] − Σ_removed A[q,k]·v[k]`` (``v`` with its bias), the head's
  output as if those keys' values were zero. With ``renormalize=True`` each query's remaining weights are rescaled to
  sum to 1, which equals masking those keys out before the softmax; a query left
  with nothing to attend to writes zero.

Reference statistics (``mean``, ``mean_pos``, ``resample`` with a reference) describe the
clean model: they come from one pass over the reference when the ablation is set up,
with any hooks already attached set aside. So nested ablations equal ablating all
their heads at once, whatever order they are nested in.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from jaxtyping import Bool
from torch import Tensor

from . import hooks as hk
from . import select
from .errors import InterpError
from .model import HookedGPT2
from .tokens import Batch

__all__ = ["ablate", "ablation_hooks", "check_method", "METHODS"]

#: Ablation methods and what each puts in place of a head (see the module docs).
METHODS: dict[str, str] = {
    "zero": "the head's output set to zero (b_O stays)",
    "mean": "its mean over the reference, per position",
    "mean_pos": "its mean over the reference's tokens, all positions pooled",
    "resample": "its value on another input (reference row, or another row of the batch)",
    "pattern": "its attention to the given key positions removed",
}
KEY_NAMES = ("previous", "self", "bos")
Head = tuple[int, int]


# ---------------------------------------------------------------------------- methods
class Ablator:
    """One ablation method made ready for a model: reference statistics computed, rules fixed.

    :meth:`replace` is the whole method: given a layer's ``z`` (or pattern) and which
    heads to ablate in each row, it returns the edited activation. Hooks of the
    context manager and of the scan both call it, so they cannot disagree.
    """

    def __init__(self, model: HookedGPT2, method: Any, layers: list[int], *, reference: Any, keys: Any,
                 renormalize: bool, seed: int):
        self.keys = check_method(method, reference=reference is not None, keys=keys, renormalize=renormalize, seed=seed,
                                 n_ctx=model.cfg.n_ctx)
        self.model, self.method, self.renormalize, self.seed = model, method, bool(renormalize), seed
        self.point = "pattern" if method == "pattern" else "z"
        self.stats: dict[int, Tensor] = {}
        self.n_ref_pos = 0
        if not layers:  # nothing to ablate: no statistics to gather
            pass
        elif method in ("mean", "mean_pos"):
            self.stats, self.n_ref_pos = _reference_means(model, reference, layers, per_position=method == "mean")
        elif method == "resample" and reference is not None:
            self.stats, self.ref_lengths = _reference_z(model, reference, layers)
            n_ref, self.n_ref_pos = next(iter(self.stats.values())).shape[:2]
            self.perm = torch.randperm(n_ref, generator=torch.Generator().manual_seed(seed)).to(model.cfg.device)
        self.in_batch = method == "resample" and reference is None

    # -- checks that a run can be ablated, with messages naming the culprit
    def check_run(self, n_rows: int) -> None:
        """Checks that need only the run's size (before it starts); positions are checked as it runs."""
        if self.in_batch and n_rows < 2:
            raise InterpError("resample ablation without reference= takes values from other prompts of the batch: "
                              "the batch needs at least 2 prompts (or pass reference=)")

    def replace(self, layer: int, act: Tensor, heads: Bool[Tensor, "rows n_heads"], group: int) -> Tensor:
        """The activation with ``heads`` (per row, or one row for all) ablated, in the run in progress.

        ``group`` is the number of prompts in the user's batch: a scan stacks several variants of it,
        and row ``r`` is then prompt ``r % group`` (resampling pairs prompts). Positions are each prompt's
        token positions (:meth:`~interp.HookedGPT2.run_positions`), so left and right padding give the
        same numbers.
        """
        if self.point == "pattern":
            return self._pattern(act, heads)
        self.check_run(group)
        m = heads[:, None, :, None]  # [rows, 1, n_heads, 1] against z [rows, pos, n_heads, d_head]
        if self.method == "zero":
            return act.masked_fill(m, 0.0)
        if self.method == "mean_pos":
            return torch.where(m, self.stats[layer].to(act.dtype), act)
        pos, real, first = self.model.run_positions()
        if self.method == "mean":
            _check_covered(pos, real, torch.full_like(pos, self.n_ref_pos), "the reference covers positions "
                           f"0–{self.n_ref_pos - 1}", "give longer reference prompts or use method='mean_pos'")
            value = self.stats[layer][pos.clamp(max=self.n_ref_pos - 1)]
        else:
            rows = torch.arange(act.shape[0], device=act.device)
            prompt = rows % group
            if self.in_batch:  # another prompt of the same run, at the same token positions
                source = rows - prompt + _derangement(group, self.seed).to(act.device)[prompt]
                lengths = real.sum(-1)
                _check_covered(pos, real, lengths[source][:, None].expand_as(pos), "its source prompt",
                               "resampling within the batch needs prompts of equal length (or pass reference=)")
                value = act[source[:, None], (first[source][:, None] + pos).clamp(max=act.shape[1] - 1)]
            else:
                source = self.perm[prompt % len(self.perm)]
                _check_covered(pos, real, self.ref_lengths[source][:, None].expand_as(pos), "its reference prompt",
                               "give reference prompts at least as long as the run's")
                value = self.stats[layer][source[:, None], pos.clamp(max=self.stats[layer].shape[1] - 1)]
        return torch.where(m, value.to(act.dtype), act)

    def _pattern(self, pattern: Tensor, heads: Tensor) -> Tensor:
        pos, real, _ = self.model.run_positions()
        if pos.shape[1] != pattern.shape[-1]:
            raise InterpError("pattern ablation needs every key of the run (it cannot run on a run that reuses "
                              "earlier positions' keys and values)")
        remove = heads[:, :, None, None] & _key_mask(self.keys, pos, real)[:, None]  # [rows, n_heads, q, k]
        out = pattern.masked_fill(remove, 0.0)
        if self.renormalize:
            total = out.sum(-1, keepdim=True)
            rescaled = out / torch.where(total > 0, total, torch.ones_like(total))
            out = torch.where(heads[:, :, None, None], rescaled, out)  # leave other heads' bits alone
        return out

    def hooks(self, heads: list[Head]) -> list[tuple[str, Any]]:
        """One hook per ablated layer, for ``model.hooks`` / ``model.run(hooks=...)``."""
        cfg, out = self.model.cfg, []
        for layer in sorted({l for l, _ in heads}):
            mask = torch.zeros(1, cfg.n_heads, dtype=torch.bool, device=cfg.device)
            mask[0, [h for l, h in heads if l == layer]] = True

            def fn(act: Tensor, name: str, layer: int = layer, mask: Tensor = mask) -> Tensor:
                return self.replace(layer, act, mask, group=act.shape[0])

            out.append((hk.name(self.point, layer), fn))
        return out


def _check_covered(pos: Tensor, real: Tensor, limit: Tensor, what: str, hint: str) -> None:
    """A one-line error when a real token's position is not covered by its source (``pos < limit``)."""
    bad = real & (pos >= limit)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise InterpError(f"position {int(pos[r, c])} of prompt {r} is beyond {what} ({int(limit[r, c])} tokens): {hint}")


#: What the messages of :func:`check_method` call each argument (the command line passes its options' names).
ARGUMENT_NAMES = {"method": "method", "reference": "reference=", "keys": "keys=", "renormalize": "renormalize=",
                  "seed": "seed", "reference_is": "prompts or tokens whose mean activations replace the head's",
                  "keys_are": "'previous', 'self', 'bos', a list of key positions or a bool [query_pos, key_pos] mask"}


def check_method(method: Any, *, reference: bool, keys: Any = None, renormalize: bool = False, seed: Any = 0,
                 n_ctx: Optional[int] = None, names: Optional[dict] = None) -> Any:
    """Check an ablation method's arguments before anything runs; return ``keys`` checked (None unless ``pattern``).

    ``reference``: whether reference data was given. ``n_ctx``: the context window key positions
    must fit (unchecked without it). ``names`` maps the arguments to what messages call them
    (:data:`ARGUMENT_NAMES`; the command line passes ``--method``, ``--reference`` …), so the rules
    live here once and every caller words its refusals in its own terms.

    >>> check_method("pattern", reference=False, keys="previous")
    'previous'
    >>> check_method("mean", reference=False)
    Traceback (most recent call last):
    interp.errors.InterpError: method mean needs reference=: prompts or tokens whose mean activations replace the head's
    """
    n = {**ARGUMENT_NAMES, **(names or {})}
    if not isinstance(method, str) or method not in METHODS:
        raise InterpError(f"unknown ablation {n['method']} {method!r}: use one of {', '.join(METHODS)}")
    if method in ("zero", "pattern") and reference:
        raise InterpError(f"{n['method']} {method} uses no reference data; {n['reference']} goes with "
                          f"{n['method']} mean, mean_pos or resample")
    if method in ("mean", "mean_pos") and not reference:
        raise InterpError(f"{n['method']} {method} needs {n['reference']}: {n['reference_is']}")
    if method == "pattern":
        if keys is None:
            raise InterpError(f"{n['method']} pattern needs {n['keys']}: {n['keys_are']}")
        keys = _check_keys(keys, n_ctx, n)
    elif keys is not None or renormalize:
        given = [n[k] for k, v in (("keys", keys is not None), ("renormalize", renormalize)) if v]
        raise InterpError(f"{' and '.join(given)} belong{'s' if len(given) == 1 else ''} to {n['method']} pattern, "
                          f"not {method}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InterpError(f"{n['seed']} must be an int, not {seed!r}")
    return keys


def _check_keys(keys: Any, n_ctx: Optional[int], n: dict) -> Any:
    if isinstance(keys, str):
        if keys not in KEY_NAMES:
            raise InterpError(f"unknown {n['keys']} {keys!r}: use {n['keys_are']}")
        return keys
    if isinstance(keys, Tensor) and keys.dtype == torch.bool:
        if keys.ndim != 2:
            raise InterpError(f"a keys mask is [query_pos, key_pos], got shape {tuple(keys.shape)}")
        return keys
    try:
        positions = [int(k) for k in (keys.tolist() if isinstance(keys, Tensor) else keys)]
    except (TypeError, ValueError):
        raise InterpError(f"{n['keys']} must be a name, a list of key positions or a bool mask, not {keys!r}") from None
    bad = [k for k in positions if k < 0 or (n_ctx is not None and k >= n_ctx)]
    if bad:
        window = f": the context window is {n_ctx} (0–{n_ctx - 1})" if n_ctx is not None else ""
        raise InterpError(f"key positions {bad} out of range{window}")
    return tuple(positions)


def _key_mask(keys: Any, pos: Tensor, real: Tensor) -> Bool[Tensor, "batch query_pos key_pos"]:
    """True where a query's attention to a key is removed; ``pos`` are token positions within each prompt,
    so ``"bos"`` is each prompt's first real token and position lists count from it, whatever the padding."""
    q, k = pos[:, :, None], pos[:, None, :]
    key_real = real[:, None, :]
    if keys == "previous":
        return (k == q - 1) & key_real
    if keys == "self":
        return (k == q) & key_real
    if keys == "bos":
        return (k == 0) & key_real
    if isinstance(keys, Tensor):
        n = int(pos[real].max()) + 1
        if keys.shape[0] < n or keys.shape[1] < n:
            raise InterpError(f"keys mask has shape {tuple(keys.shape)} but the run's prompts have up to {n} tokens")
        keys = keys.to(pos.device)
        return keys[q.clamp(max=keys.shape[0] - 1), k.clamp(max=keys.shape[1] - 1)] & key_real
    return torch.isin(k, torch.tensor(keys, dtype=torch.long, device=pos.device)) & key_real


def _derangement(n: int, seed: int) -> Tensor:
    """A seeded random permutation with no fixed point: one n-cycle through a random order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    d = torch.empty(n, dtype=torch.long)
    d[order] = order.roll(-1)
    return d


def _reference_batches(model: HookedGPT2, reference: Any, tokens_per_pass: int = 16384) -> Iterator[Batch]:
    from .engine import Engine

    batch = model.to_batch(reference)
    for rows in Engine(model, tokens_per_pass).chunks(range(len(batch)), batch.tokens.shape[1]):
        yield Batch(batch.tokens[rows], batch.attention_mask[rows])


def _reference_means(model: HookedGPT2, reference: Any, layers: list[int], per_position: bool):
    """Mean ``z`` of the layers' heads over the reference's real tokens, by token position (or pooled),
    summed inside the hooks."""
    cfg = model.cfg
    P = model.to_batch(reference).tokens.shape[1]
    shape = (P if per_position else 1, cfg.n_heads, cfg.d_head)
    sums = {layer: torch.zeros(shape, dtype=torch.float64, device=cfg.device) for layer in layers}
    counts = torch.zeros(shape[0], dtype=torch.float64, device=cfg.device)
    with torch.no_grad(), model.hooks_suspended():
        for batch in _reference_batches(model, reference):
            real = batch.attention_mask
            where = batch.position_ids[real] if per_position else torch.zeros(int(real.sum()), dtype=torch.long, device=cfg.device)

            def add(z: Tensor, name: str) -> None:
                sums[hk.layer_of(name)].index_add_(0, where, z[real].double())

            model.forward(batch.tokens, attention_mask=real, stop_at_layer=max(layers) + 1,
                          hooks=[(hk.name("z", layer), add) for layer in layers])
            counts.index_add_(0, where, torch.ones_like(where, dtype=torch.float64))
    covered = int((counts > 0).sum())  # every prompt starts at position 0, so positions are covered contiguously
    means = {layer: (s[:covered] / counts[:covered, None, None]).to(cfg.dtype) for layer, s in sums.items()}
    return ({l: m[0] for l, m in means.items()} if not per_position else means), covered


def _reference_z(model: HookedGPT2, reference: Any, layers: list[int]) -> tuple[dict[int, Tensor], Tensor]:
    """The reference's ``z`` at each layer by token position, ``[n_ref, longest, n_heads, d_head]``
    (zeros past a prompt's end), and each reference prompt's length."""
    cfg = model.cfg
    batch = model.to_batch(reference)
    lengths = batch.lengths
    longest = int(lengths.max())
    out = {l: torch.zeros(len(batch), longest, cfg.n_heads, cfg.d_head, dtype=cfg.dtype, device=cfg.device)
           for l in layers}
    row = 0
    with torch.no_grad(), model.hooks_suspended():
        for part in _reference_batches(model, batch):
            real = part.attention_mask
            rows = torch.arange(row, row + len(part), device=cfg.device)[:, None].expand_as(real)[real]
            where = part.position_ids[real]

            def keep(z: Tensor, name: str) -> None:
                out[hk.layer_of(name)][rows, where] = z[real]

            model.forward(part.tokens, attention_mask=real, stop_at_layer=max(layers) + 1,
                          hooks=[(hk.name("z", l), keep) for l in layers])
            row += len(part)
    return out, lengths


# ---------------------------------------------------------------------------- scoped ablation
def ablation_hooks(model: Any, heads: Any, method: Any = "zero", *, reference: Any = None, keys: Any = None,
                   renormalize: bool = False, seed: int = 0) -> list[tuple[str, Any]]:
    """The hooks that ablate ``heads``, for ``model.run(..., hooks=...)`` or ``model.hooks(...)``.

    Arguments as :func:`ablate`. Reference statistics are computed now, once.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> [name for name, _ in ablation_hooks(model, ["0.0", "1.*"])]
    ['blocks.0.attn.hook_z', 'blocks.1.attn.hook_z']
    """
    from .engine import check_model

    chosen = select.heads(check_model(model), heads)
    ablator = Ablator(model, method, sorted({l for l, _ in chosen}), reference=reference, keys=keys,
                       renormalize=renormalize, seed=seed)
    return ablator.hooks(chosen)


@contextlib.contextmanager
def ablate(model: Any, heads: Any, method: Any = "zero", *, reference: Any = None, keys: Any = None,
           renormalize: bool = False, seed: int = 0) -> Iterator[HookedGPT2]:
    """Ablate attention heads inside a ``with`` block; the model is clean again on exit, error or not.

    Args:
        model: the model to edit (its weights are never touched: the edit is a hook).
        heads: the heads to ablate: ``(layer, head)`` pairs, ``"4.11"``, ``"4.*"`` for a whole layer
            (:mod:`interp.select`); an empty selection is an error.
        method: ``"zero"``, ``"mean"``, ``"mean_pos"``, ``"resample"`` or ``"pattern"`` (see the module docs).
        reference: prompts, token ids or a Batch: the data ``mean``/``mean_pos`` average over
            (required) and ``resample`` draws from (optional: default, other prompts of the run).
        keys: for ``pattern``: ``"previous"``, ``"self"``, ``"bos"``, key positions, or a bool
            ``[query_pos, key_pos]`` mask of the attention to remove.
        renormalize: for ``pattern``: rescale each query's remaining attention to sum to 1.
        seed: for ``resample``: the seed of the pairing.

    Blocks nest and compose: the inner ablation applies on top of the outer one.

    >>> from interp.testing import planted_model
    >>> from interp.prompts import repeated_tokens
    >>> from interp.metrics import Loss
    >>> model = planted_model()
    >>> tokens = repeated_tokens(model, n_prompts=4, half=10)   # [BOS] + r + r
    >>> repeated_half = Loss(positions=slice(12, None))
    >>> batch = model.to_batch(tokens)
    >>> round(float(repeated_half.from_logits(model, model(tokens), batch)), 1)
    0.0
    >>> with ablate(model, heads=[(0, 0)]):      # the previous-token head feeding the induction head
    ...     round(float(repeated_half.from_logits(model, model(tokens), batch)), 1)
    3.3
    >>> model.has_hooks
    False
    """
    with model.hooks(ablation_hooks(model, heads, method, reference=reference, keys=keys,
                                    renormalize=renormalize, seed=seed)):
        yield model
