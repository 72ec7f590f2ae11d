"""Gradients through the hooked forward pass: ∂metric/∂activation at any hook point, scoped.

:func:`read_gradients` runs the model once with autograd on, keeps the activations named and
reads the metric's gradient with respect to each of them with one :func:`torch.autograd.grad`
call. Nothing is attached to the model (the read hooks live for this one call, passed to
``forward(hooks=)``), no parameter's ``.grad`` is touched (the weights never require grad) and
no graph outlives the call, error or not: TransformerLens issue #1323 leaked backward hooks
after an exception; here there are none to leak.

Hooks already attached with ``model.hooks(...)`` stay in force and run first, so a gradient can
be read on an edited model (an ablation, an interpolated input).

>>> from interp.testing import planted_model
>>> from interp.metrics import LogitDiff
>>> model = planted_model()
>>> g = read_gradients(model, "a b c d a b c", ["z.1", "resid_pre.0"], LogitDiff("d", "a"))
>>> tuple(g.gradients["blocks.1.attn.hook_z"].shape)   # batch, pos, head, d_head
(1, 8, 4, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from . import hooks as hk
from .errors import InterpError
from .metrics import resolve_metric

__all__ = ["read_gradients", "Gradients"]


@dataclass
class Gradients:
    """A run's metric and, per hook name, the activation and ∂metric/∂activation (both detached)."""

    value: float
    activations: dict[str, Tensor]
    gradients: dict[str, Tensor]


def read_gradients(model, inputs: Any, names: hk.NameSpec, metric: Any = None, *, hooks: Optional[list] = None,
                   metric_of: Any = None) -> Gradients:
    """Run ``inputs`` and read the metric's gradient at the named hook points.

    Args:
        model: the model.
        inputs: a prompt, prompts, token ids or a Batch.
        names: hook points (:func:`interp.hooks.resolve`'s grammar).
        metric: a :class:`~interp.metrics.Metric`, ``"loss"`` or a function of the logits (default
            ``"loss"``); its value on the batch is what is differentiated.
        hooks: extra ``(name, fn)`` hooks for this run, applied before the reads.
        metric_of: instead of ``metric``, a function ``final_resid -> scalar tensor`` (used by
            :mod:`interp.attribution` to average a metric over stacked interpolation steps).

    Returns:
        :class:`Gradients`. A hook point the metric does not depend on (e.g. after the last
        position it reads… or after nothing) gets a zero gradient.
    """
    batch = model.to_batch(inputs)
    wanted = hk.resolve(names, model.cfg.n_layers)
    if not wanted:
        raise InterpError("no hook points named: give e.g. names=['z.1', 'resid_pre.0']")
    if metric_of is None:
        bound = resolve_metric(model, "loss" if metric is None else metric)

        def metric_of(final: Tensor) -> Tensor:
            return bound.from_resid(model, final, batch)

    live: dict[str, Tensor] = {}

    def grab(x: Tensor, name: str) -> Tensor:
        # Weights never require grad, so the first read point starts the graph: nothing before it
        # can carry a gradient to any read point, and cutting it there loses nothing.
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        live[name] = x
        return x

    try:
        with torch.enable_grad():
            final = model.forward(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=model.cfg.n_layers,
                                  hooks=[*(hooks or ()), *((n, grab) for n in wanted)])
            value = metric_of(final)
            if not isinstance(value, Tensor) or value.ndim != 0:
                raise InterpError("the metric must reduce the batch to one number (a scalar tensor)")
            missing = [n for n in wanted if n not in live]
            if missing:
                raise InterpError(f"the run never reached {missing[0]}: nothing to differentiate there")
            xs = [live[n] for n in wanted]
            if value.requires_grad:
                grads = torch.autograd.grad(value, xs, allow_unused=True)
            else:
                grads = [None] * len(xs)
        return Gradients(
            value=float(value.detach()),
            activations={n: x.detach() for n, x in zip(wanted, xs)},
            gradients={n: torch.zeros_like(x) if g is None else g for n, x, g in zip(wanted, xs, grads)},
        )
    finally:
        live.clear()  # no graph survives an exception through the traceback's frames
