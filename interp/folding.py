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
``b_V`` (see :class:`~interp.model.HookedGPT2`). The arithmetic is done in the model's dtype
(float16 and bfloat16 in float32), as TransformerLens does for float32 — except that
TransformerLens computes float64 models in float32 too, so for those interp's weights are
the closer to exact (~1e-16 against ~1e-7; the test measures both).

Everything is done in place, one layer at a time (:func:`fold_layer`, which the loader runs
as each layer is read), on the fused layout the model runs (``W_qkv`` is ``c_attn``'s
``[d_model, 3·d_model]``: centring ``W_Q``'s rows over d_model is centring ``c_attn``'s
columns). Means come from matrix-vector products and each weight is rewritten in one fused
pass, so folding GPT-2 small costs less than reading it, and no second copy of the model:
only the unembedding, tied to the embedding in GPT-2, becomes a tensor of its own.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor


def fold_layer_norm(w: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fold LayerNorm into ``w`` (:func:`interp.checkpoint.read_weights`'s layout) and centre, in place.

    Returns ``w``, with ``W_U`` a new tensor (the raw one may be a view of ``W_E``).

    >>> from interp.checkpoint import GPT2Shape, attention_views, weight_shapes
    >>> s = GPT2Shape(n_layers=1, n_heads=2, d_model=4, d_mlp=8, d_vocab=5, n_ctx=3, eps=1e-5, act_fn="gelu_new", tied=True)
    >>> w = attention_views({k: torch.randn(shape, dtype=torch.float64) for k, shape in weight_shapes(s).items()}, 2)
    >>> w = fold_layer_norm(w)
    >>> bool((w["ln1_w"] == 1).all() and (w["ln1_b"] == 0).all()), round(float(w["W_Q"].mean(-2).abs().max()), 12)
    (True, 0.0)
    """
    for layer in range(w["W_qkv"].shape[0]):
        fold_layer(w, layer)
    return fold_embeddings(w)


def fold_layer(w: dict[str, Tensor], layer: int) -> None:
    """One block, in place: ln1 into ``W_qkv``/``b_qkv``, ln2 into ``W_in``/``b_in``; ``W_O``, ``W_out`` and biases centred."""
    for key in _FUSED:
        write_folded(key, w, layer, w[key][layer], w[key][layer])
    finish_layer(w, layer)


#: The weights :func:`write_folded` writes (the loader fuses them with reading the checkpoint).
_FUSED = ("W_qkv", "W_in", "W_O", "W_out")


def write_folded(key: str, w: dict[str, Tensor], layer: int, src: Tensor, out: Tensor) -> None:
    """Write ``w[key][layer]`` folded (``W_qkv``, ``W_in``) or centred (``W_O``, ``W_out``) from ``src``.

    ``src`` holds the raw weight (``out`` itself, or the checkpoint's tensor being read: one pass
    over the data instead of a copy and then a fold); a reader's bias and LayerNorm must be in ``w``
    already (the bias receives ``β·W``). Finish the layer with :func:`finish_layer`.
    """
    dtype = out.dtype if out.dtype in (torch.float32, torch.float64) else torch.float32
    x = src.to(dtype).reshape(out.shape)
    target = out if out.dtype == dtype else torch.empty_like(out, dtype=dtype)
    if key in ("W_qkv", "W_in"):
        ln, b = ("ln1", "b_qkv") if key == "W_qkv" else ("ln2", "b_in")
        with _work(w[b][layer]) as bl:
            _fold_reader(x, target, bl, w[f"{ln}_w"][layer].to(dtype), w[f"{ln}_b"][layer].to(dtype))
    else:  # W_O [n_heads, d_head, d_model] (or its [H·D, d_model] view) and W_out: over d_model
        _centre_rows(x, target)
    if target is not out:
        out.copy_(target)


def finish_layer(w: dict[str, Tensor], layer: int) -> None:
    """After :func:`write_folded` of a layer's four weights: LayerNorms set to identity, ``b_O``, ``b_out`` centred."""
    for ln in ("ln1", "ln2"):
        w[f"{ln}_w"][layer] = 1.0
        w[f"{ln}_b"][layer] = 0.0
    for key in ("b_O", "b_out"):
        with _work(w[key][layer]) as x:
            _centre_rows(x, x)


def fold_embeddings(w: dict[str, Tensor]) -> dict[str, Tensor]:
    """ln_final into a new ``W_U`` and ``b_U``, centred; ``W_E`` and ``W_pos`` centred. Returns ``w``."""
    # The unembedding first: in a tied model the raw W_U is W_E.T, which centring W_E would change;
    # there the unembedding's last pass centres W_E's rows too, each block right after reading it.
    tied = w["W_U"].T.data_ptr() == w["W_E"].data_ptr() and w["W_U"].T.shape == w["W_E"].shape
    w["W_U"] = _fold_unembed(w["W_U"], w["b_U"], w["lnf_w"], w["lnf_b"], centre_source=tied)
    w["lnf_w"].fill_(1.0)
    w["lnf_b"].zero_()
    for key in ("W_pos",) if tied else ("W_E", "W_pos"):
        with _work(w[key]) as x:
            _centre_rows(x, x)
    return w


def folded_reader(W: Tensor, b: Tensor, gain: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """A weight ``W`` ``[d_model, out]`` (and its bias) that reads LayerNorm ``(gain, bias)``, folded: new tensors
    ``(diag(γ)W centred over d_model, b + βW)`` — what loading with ``fold_ln=True`` writes, for code that
    needs one weight as a folded model would hold it (e.g. a raw model's circuits read in the folded basis)."""
    out, b = torch.empty_like(W), b.clone()
    _fold_reader(W, out, b, gain, bias)
    return out, b


def centred(x: Tensor) -> Tensor:
    """A new tensor: every vector of ``x`` along its last dimension minus its mean (how writing weights are folded)."""
    out = torch.empty_like(x)
    _centre_rows(x, out)
    return out


def _fold_reader(W: Tensor, out: Tensor, b: Tensor, gain: Tensor, bias: Tensor) -> None:
    """A weight ``W`` ``[d_model, out]`` reading a LayerNorm: ``b += βW``, ``out = diag(γ)W`` centred over d_model.

    The column means of ``diag(γ)W`` are ``γW / d_model`` (a matrix-vector product), so one fused
    pass (``addcmul``) writes ``out`` (which may be ``W`` itself). ``βW`` goes into the bias as
    TransformerLens computes it, a pairwise sum of products: a BLAS matrix-vector product, summing
    sequentially, is ~5× less exact.
    """
    b.add_((W * bias[:, None]).sum(0))
    torch.addcmul((gain @ W).div_(-W.shape[0]), W, gain[:, None], out=out)


def _centre_rows(x: Tensor, out: Tensor) -> None:
    """``out`` = every vector of ``x`` along the last dimension minus its mean (a matrix-vector product, one pass)."""
    if x.ndim == 1:
        torch.sub(x, x.mean(), out=out)
        return
    ones = torch.full((x.shape[-1],), 1.0 / x.shape[-1], dtype=x.dtype, device=x.device)
    torch.sub(x, (x @ ones).unsqueeze(-1), out=out)


def _fold_unembed(W_U: Tensor, b_U: Tensor, ln_w: Tensor, ln_b: Tensor, rows: int = 4096, *,
                  centre_source: bool = False) -> Tensor:
    """``ln_final`` folded into a new ``W_U`` (a ``[d_model, d_vocab]`` view of ``[d_vocab, d_model]`` memory), centred.

    Works on ``U = W_Uᵀ`` (GPT-2's ``[d_vocab, d_model]`` layout, rows contiguous): ``b_U += Uβ``,
    ``U' = U diag(γ)``, each row centred over d_model, then each column over the vocabulary (logits
    shift by a constant per position); ``b_U`` centred. Two passes over ``U``, a block of rows at a
    time while it is in the CPU's caches: the first gathers ``Uγ``, ``Uβ`` (summed pairwise, see
    :func:`_fold_reader`) and the column sums; the second writes the new tensor. The raw ``U`` is
    only read, unless ``centre_source`` (``U`` is the embedding ``W_E`` of a tied model): then the
    second pass also centres each block of ``U``'s rows once it has been used.
    """
    dtype = W_U.dtype if W_U.dtype in (torch.float32, torch.float64) else torch.float32
    U = W_U.T
    V, M = U.shape
    gain, bias = ln_w.to(dtype), ln_b.to(dtype)
    Ug = torch.empty(V, dtype=dtype, device=U.device)   # U γ
    Ub = torch.empty(V, dtype=dtype, device=U.device)   # U β
    colsum = torch.zeros(M, dtype=dtype, device=U.device)
    buf = torch.empty(min(rows, V), M, dtype=dtype, device=U.device)
    for i in range(0, V, rows):
        j = min(i + rows, V)
        Uc = U[i:j].to(dtype)
        torch.mv(Uc, gain, out=Ug[i:j])
        torch.mul(Uc, bias, out=buf[: j - i])
        torch.sum(buf[: j - i], -1, out=Ub[i:j])
        colsum += Uc.sum(0)
    with _work(b_U) as b:
        b.add_(Ub)
        b.sub_(b.mean())
    row = Ug / M                                        # the mean over d_model of each row of U diag(γ)
    col = (colsum * gain - Ug.sum() / M) / V            # then the mean over the vocabulary of each column
    out = torch.empty((V, M), dtype=dtype, device=U.device)
    for i in range(0, V, rows):
        j = min(i + rows, V)
        torch.addcmul(-col, U[i:j].to(dtype), gain, out=out[i:j])
        out[i:j].sub_(row[i:j, None])
        if centre_source:
            with _work(U[i:j]) as block:
                _centre_rows(block, block)
    return out.to(W_U.dtype).T


@contextlib.contextmanager
def _work(x: Tensor) -> Iterator[Tensor]:
    """``x`` itself to edit in place, or (float16, bfloat16) a float32 copy written back on exit."""
    if x.dtype in (torch.float32, torch.float64):
        yield x
    else:
        y = x.float()
        yield y
        x.copy_(y)


__all__ = ["fold_layer_norm", "fold_layer", "fold_embeddings", "write_folded", "finish_layer"]
