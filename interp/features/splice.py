"""Splicing SAEs into the forward pass: reconstructions in place of activations, features to edit.

``with splice(model, saes):`` attaches one scoped hook per SAE (two per transcoder) with
:meth:`~interp.model.HookedGPT2.hooks`, so it composes with anything else that hooks the model
(patching, ablation, attribution, caching) and is gone after the block, error or not.

* An SAE replaces the activation at its ``hook_name`` by its reconstruction ``x̂``.
* A transcoder reads ``hook_name`` (e.g. the MLP's input) and replaces ``hook_name_out`` (the MLP's
  output) by its prediction: the MLP is replaced. (The MLP itself still runs; its output is what
  the error term adds back.)
* ``error_term=True`` adds back the exact error ``x − x̂`` of the unedited features, so the model's
  outputs are unchanged, while edits of the features (``ablate``, ``steer``) still move them: the
  edited run differs from the clean one by exactly ``decode(f_edited) − decode(f)``.
* ``ablate=[(sae, feature), ...]`` sets features to 0, ``steer={(sae, feature): value}`` clamps them to
  a value, at every position; ``sae`` is the SAE's index in ``saes`` or its hook name, and with one
  SAE a bare feature index will do.

Gradients flow through the SAEs, so a loss of the spliced model can be differentiated with
respect to the features (``spliced.features[i]``, the last run's activations of SAE ``i``), the SAEs'
weights or anything upstream. With ``error_term=True`` the error is a constant for gradients (as in
SAELens and circuit-tracer's replacement models): they reach the input only through the features.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from ..errors import InterpError
from .sae import SAE

__all__ = ["splice", "Spliced"]


class Spliced:
    """What ``with splice(...) as spliced`` gives: the SAEs and their last run's feature activations."""

    def __init__(self, saes: list[SAE]):
        self.saes = saes
        #: SAE index -> feature activations ``[..., d_sae]`` of the last forward pass (before edits).
        self.features: dict[int, Tensor] = {}


@contextlib.contextmanager
def splice(model, saes: Union[SAE, Sequence[SAE]], error_term: bool = False, ablate: Optional[Sequence] = None,
           steer: Optional[dict] = None) -> Iterator[Spliced]:
    """Run ``model`` with each SAE's reconstruction in place of its activation (transcoders replace their MLP).

    Args:
        model: a :class:`~interp.model.HookedGPT2`.
        saes: an :class:`~interp.features.sae.SAE` or a list of them (several hook points at once).
        error_term: add back each SAE's exact reconstruction error (outputs unchanged; edits propagate).
        ablate: features set to 0: ``[(sae, feature), ...]`` (``sae``: index or hook name), or feature
            indices when there is one SAE.
        steer: features clamped to a value: ``{(sae, feature): value}`` (or ``{feature: value}``).

    >>> import interp
    >>> from interp.features import SAE, SAEConfig
    >>> model = interp.load("interp-tiny")
    >>> sae = SAE(SAEConfig("topk", d_in=128, d_sae=512, k=16, hook_name="blocks.1.hook_resid_pre", fold_ln=True))
    >>> clean = model("def f(x): return x")
    >>> with splice(model, sae, error_term=True):
    ...     same = model("def f(x): return x")
    >>> bool((same - clean).abs().max() < 1e-4)
    True
    """
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise InterpError("splice needs at least one SAE")
    for s in saes:
        if not isinstance(s, SAE):
            raise InterpError(f"splice takes SAE objects, not {type(s).__name__}")
    if not isinstance(error_term, bool):
        raise InterpError(f"error_term must be True or False, not {error_term!r}")
    bindings = [s.bind(model) for s in saes]  # every mode check happens before any hook is attached
    edits = _edits(saes, ablate, steer)
    spliced = Spliced(saes)
    hooks: list[tuple[str, Any]] = []
    for i, (sae, b) in enumerate(zip(saes, bindings)):
        hooks += _hooks(i, sae, b, error_term, edits.get(i, {}), spliced)
    with model.hooks(hooks):
        yield spliced


def _edits(saes: list[SAE], ablate, steer) -> dict[int, dict[int, float]]:
    """SAE index -> {feature: clamped value}, every reference checked."""
    out: dict[int, dict[int, float]] = {}
    items = [(ref, 0.0) for ref in (ablate or [])]
    if steer is not None:
        if not isinstance(steer, dict):
            raise InterpError(f"steer must be a dict {{(sae, feature): value}}, not {type(steer).__name__}")
        items += list(steer.items())
    for ref, value in items:
        if isinstance(ref, tuple):
            if len(ref) != 2:
                raise InterpError(f"a feature is (sae, feature), not {ref!r}")
            which, feature = ref
        else:
            if len(saes) != 1:
                raise InterpError(f"feature {ref!r}: with several SAEs name the SAE too, as (sae index or hook name, feature)")
            which, feature = 0, ref
        i = _sae_index(saes, which)
        if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < saes[i].d_sae:
            raise InterpError(f"feature {feature!r} out of range: SAE {i} ({saes[i].hook_name}) has {saes[i].d_sae} features "
                              f"(0–{saes[i].d_sae - 1})")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InterpError(f"steering value for feature {feature} must be a number, not {value!r}") from None
        out.setdefault(i, {})[feature] = value
    return out


def _sae_index(saes: list[SAE], which) -> int:
    if isinstance(which, bool):
        raise InterpError(f"SAE reference {which!r}: give an index or a hook name")
    if isinstance(which, int):
        if not 0 <= which < len(saes):
            raise InterpError(f"SAE index {which} out of range: {len(saes)} SAEs spliced (0–{len(saes) - 1})")
        return which
    if isinstance(which, str):
        found = [i for i, s in enumerate(saes) if s.hook_name == which]
        if len(found) != 1:
            names = ", ".join(s.hook_name for s in saes)
            raise InterpError(f"SAE {which!r}: {'no' if not found else 'more than one'} spliced SAE reads it (spliced: {names})")
        return found[0]
    raise InterpError(f"SAE reference {which!r}: give an index or a hook name")


def _apply_edits(f: Tensor, edits: dict[int, float]) -> Tensor:
    if not edits:
        return f
    idx = torch.tensor(list(edits), device=f.device)
    vals = torch.tensor(list(edits.values()), dtype=f.dtype, device=f.device)
    return f.index_copy(-1, idx, vals.expand(*f.shape[:-1], len(idx)))


def _hooks(i: int, sae: SAE, b, error_term: bool, edits: dict[int, float], spliced: Spliced) -> list:
    def features(x: Tensor) -> Tensor:
        f = sae.encode(x)
        spliced.features[i] = f
        return f

    def written(x: Tensor, act: Tensor) -> Tensor:
        """What the output hook gets: the reconstruction, or (error_term) the activation moved by the edits."""
        f = features(x)
        skip = sae.skip_term(x)
        x_hat = sae.decode(_apply_edits(f, edits), x_in=x)
        x_hat = x_hat if skip is None else x_hat + skip
        if not error_term:
            return b.output(x_hat, act)
        # x̂_edited + (x − x̂) with the error a constant, as SAELens and circuit-tracer treat it: gradients
        # reach the features and the input through x̂_edited only. Written as act + (x̂_edited − x̂): with
        # no edit the two x̂ are one tensor, so the value is exactly the activation.
        if edits:
            clean = sae.decode(f, x_in=x)
            clean = clean if skip is None else clean + skip
        else:
            clean = x_hat
        return act.detach() + b.delta(x_hat - clean.detach(), act)

    if not sae.is_transcoder:
        return [(sae.hook_name, lambda act, name: written(b.input(act), act))]

    stash: dict[str, Tensor] = {}

    def read(act: Tensor, name: str) -> None:
        stash["x"] = b.input(act)

    def write(act: Tensor, name: str) -> Tensor:
        if "x" not in stash:
            raise InterpError(f"transcoder {sae.hook_name} -> {sae.hook_name_out}: its input hook did not run in this pass")
        return written(stash.pop("x"), act)

    return [(sae.hook_name, read), (sae.hook_name_out, write)]
