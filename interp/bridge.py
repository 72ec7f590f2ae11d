"""The link to TransformerLens's ``TransformerBridge``, the reference implementation.

interp reads and folds GPT-2 itself (:mod:`interp.checkpoint`, :mod:`interp.folding`); the bridge
over the same checkpoint stays available as ``model.bridge`` for TransformerLens's own tools and
the parity tests. This module maps interp's stacked weight names to the bridge's parameters and
checks that a bridge holds the model's weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .errors import InterpError

__all__ = ["TL_NAMES", "bridge_weights", "check_same_weights"]


#: Our stacked weight names -> TransformerLens's per-layer (``blocks.{L}.``) or global parameter names.
TL_NAMES = {
    "W_E": "embed.W_E", "W_pos": "pos_embed.W_pos",
    **{f"{w}_{x}": f"attn.{w}_{x}" for w in "Wb" for x in "QKVO"},
    "W_in": "mlp.W_in", "b_in": "mlp.b_in", "W_out": "mlp.W_out", "b_out": "mlp.b_out",
    "ln1_w": "ln1.w", "ln1_b": "ln1.b", "ln2_w": "ln2.w", "ln2_b": "ln2.b",
    "lnf_w": "ln_final.w", "lnf_b": "ln_final.b", "W_U": "unembed.W_U", "b_U": "unembed.b_U",
}


def _stack(p: dict, name: str, n_layers: int) -> Tensor:
    """A global parameter as it is, a per-layer one stacked over layers."""
    if name in p:
        return p[name]
    return torch.stack([p[f"blocks.{i}.{name}"] for i in range(n_layers)]).contiguous()


def check_same_weights(model, bridge, atol: Optional[float] = None) -> float:
    """Largest difference between the model's weights and a bridge's; an error above ``atol``.

    ``atol`` defaults to 1e-5 (relative to each weight's scale) in float32 and float64 — the
    bridge folds in float32, interp in float64 — and to two units of the last place below float32.
    """
    theirs = {k: v.detach() for k, v in bridge.tl_parameters().items()}
    eps = torch.finfo(model.cfg.dtype).eps
    if atol is None:
        atol = 1e-5 if eps <= torch.finfo(torch.float32).eps else 2 * eps
    worst = 0.0
    for ours, name in TL_NAMES.items():
        a, b = getattr(model, ours), _stack(theirs, name, model.cfg.n_layers).to(model.cfg.dtype)
        if a.shape != b.shape:
            raise InterpError(f"model.bridge's {name} has shape {tuple(b.shape)}, the model's {ours} {tuple(a.shape)}")
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        scale = max(1.0, float(b.abs().max()) if b.numel() else 0.0)
        if not diff <= atol * scale:
            raise InterpError(
                f"model.bridge does not hold the model's weights: {ours} differs by {diff:.3g} "
                "(was the model object changed after interp.load?)"
            )
        worst = max(worst, diff / scale)
    return worst


def bridge_weights(bridge, n_layers: int) -> dict[str, Tensor]:
    """A bridge's parameters in interp's stacked layout (``W_Q`` is ``[n_layers, n_heads, d_model, d_head]``, …)."""
    p = {k: v.detach() for k, v in bridge.tl_parameters().items()}
    return {ours: _stack(p, theirs, n_layers) for ours, theirs in TL_NAMES.items()}
