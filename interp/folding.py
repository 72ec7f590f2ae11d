"""LayerNorm folding and centring: TransformerLens's weight processing, written out for GPT-2.

GPT-2 applies LayerNorm before every attention layer, every MLP and the unembedding:
``LN(x) = w ⊙ x̂ + b`` with ``x̂`` the centred, normalised residual stream. What reads it is
linear, ``LN(x) W + c``, so the gain and bias move into the weights that read them::

    LN(x) W + c  =  x̂ (diag(w) W) + (b W + c)

after which LayerNorm only centres and normalises. Since ``x̂`` has zero mean over
``d_model``, adding a constant to every row of ``diag(w) W`` changes nothing: the reading
weights are centred over ``d_model`` too. Weights that *write* to the residual stream
(``W_E``, ``W_pos``, ``W_O``, ``W_out`` and their biases) are centred over ``d_model``:
the next LayerNorm removes the mean anyway. Finally the unembedding is centred over the
vocabulary, which shifts every logit of a position by one constant (log-probs unchanged).

This equals ``TransformerBridge.enable_compatibility_mode(fold_value_biases=False)``
(``tests/test_folding.py`` checks every weight to 1e-6): value biases stay in each head's
``b_V`` (see :class:`~interp.model.HookedGPT2`). The arithmetic is done in float64 and
rounded once to the model's dtype; TransformerLens computes in float32 (for float64 models
too), so ours is the closer to exact of the two.

Work is done a layer (or a block of embedding rows) at a time, in place, so folding needs
no second copy of the model: only the unembedding, which is tied to the embedding in
GPT-2, becomes a tensor of its own.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows (of W_E) or columns (of W_U) processed at once: bounds the float64 scratch memory.
CHUNK = 8192


def fold_layer_norm(w: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold LayerNorm into ``w`` (the stacked layout of :mod:`interp.checkpoint`) and centre, in place.

    Returns ``w``, with ``W_U``/``b_U`` replaced by new tensors (the raw ``W_U`` may be a view of ``W_E``).

    >>> from interp.checkpoint import GPT2Shape, weight_shapes
    >>> s = GPT2Shape(n_layers=1, n_heads=2, d_model=4, d_mlp=8, d_vocab=5, n_ctx=3, eps=1e-5, act_fn="gelu_new", tied=True)
    >>> w = {k: torch.randn(shape, dtype=torch.float64) for k, shape in weight_shapes(s).items()}
    >>> w = fold_layer_norm(w)
    >>> bool((w["ln1_w"] == 1).all() and (w["ln1_b"] == 0).all()), round(float(w["W_E"].mean(-1).abs().max()), 12)
    (True, 0.0)
    """
    n_layers = w["W_Q"].shape[0]
    # The unembedding first: in a tied model the raw W_U is W_E.T, which centring W_E would change.
    w["W_U"], w["b_U"] = _fold_unembed(w["W_U"], w["b_U"], w["lnf_w"], w["lnf_b"])
    w["lnf_w"].fill_(1.0)
    w["lnf_b"].zero_()
    for layer in range(n_layers):
        ln_w, ln_b = w["ln1_w"][layer].double(), w["ln1_b"][layer].double()
        for key in "QKV":
            W = w[f"W_{key}"][layer].double()                      # [n_heads, d_model, d_head]
            w[f"b_{key}"][layer] = w[f"b_{key}"][layer].double() + (W * ln_b[None, :, None]).sum(-2)
            W = W * ln_w[None, :, None]
            w[f"W_{key}"][layer] = W - W.mean(-2, keepdim=True)
        w["ln1_w"][layer] = 1.0
        w["ln1_b"][layer] = 0.0
        ln_w, ln_b = w["ln2_w"][layer].double(), w["ln2_b"][layer].double()
        W = w["W_in"][layer].double()                              # [d_model, d_mlp]
        w["b_in"][layer] = w["b_in"][layer].double() + (W * ln_b[:, None]).sum(0)
        W = W * ln_w[:, None]
        w["W_in"][layer] = W - W.mean(0, keepdim=True)
        w["ln2_w"][layer] = 1.0
        w["ln2_b"][layer] = 0.0
        # Writing weights, centred over d_model.
        for key in ("W_O", "W_out", "b_O", "b_out"):
            x = w[key][layer].double()
            w[key][layer] = x - x.mean(-1, keepdim=True)
    for key in ("W_E", "W_pos"):
        for rows in torch.split(w[key], CHUNK):                       # views: centred in place
            x = rows.double()
            rows.copy_(x - x.mean(-1, keepdim=True))
    return w


def _fold_unembed(W_U: Tensor, b_U: Tensor, ln_w: Tensor, ln_b: Tensor) -> tuple[Tensor, Tensor]:
    """``ln_final`` folded into a new ``W_U`` ``[d_model, d_vocab]``, centred over d_model, then over the vocabulary."""
    out = torch.empty(W_U.shape, dtype=W_U.dtype, device=W_U.device)
    bias = b_U.double().clone()
    ln_w, ln_b = ln_w.double(), ln_b.double()
    row_sums = torch.zeros(W_U.shape[0], dtype=torch.float64, device=W_U.device)
    for cols in range(0, W_U.shape[1], CHUNK):                        # vocabulary columns are independent here
        sl = slice(cols, cols + CHUNK)
        W = W_U[:, sl].double()
        bias[sl] += (W * ln_b[:, None]).sum(0)
        W = W * ln_w[:, None]
        W -= W.mean(0, keepdim=True)
        row_sums += W.sum(1)
        out[:, sl] = W
    # Centre over the vocabulary: subtract each d_model row's mean (accumulated in float64 above).
    # Subtracting it from the rounded values adds one more rounding; the error stays at the dtype's.
    out -= (row_sums / W_U.shape[1]).to(out.dtype)[:, None]
    return out, (bias - bias.mean()).to(b_U.dtype)


__all__ = ["fold_layer_norm"]
