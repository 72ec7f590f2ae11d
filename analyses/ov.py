"""Low-rank OV circuits: every head's ``W_OV = W_V W_O`` factorised, its rank measured, copying heads found.

A head's OV circuit is a ``d_model × d_model`` matrix of rank at most ``d_head``;
through the embeddings, ``W_E · W_OV · W_U`` is a ``d_vocab × d_vocab`` map from
"token attended to" to "logit written" (50257² floats = 10 GB for GPT-2). Nothing
here materialises either: every SVD and eigen-decomposition runs in the
``d_head``-dimensional inner space, batched over all heads at once.

Conventions (TransformerLens's row vectors): a residual vector ``x`` goes through
the head as ``x @ W_OV``, so with ``W_OV = U diag(S) Vᵀ`` the head *reads* along
the left singular vectors ``U`` and *writes* along the right ones ``V``.

The circuits use the model's weights as loaded: with ``fold_ln=True`` (the default
of :func:`interp.load`) LayerNorm's gain and bias are folded into ``W_V`` and
``W_U`` and the writing weights are centred, so the circuits read in the residual
basis; the normalisation itself (division by each vector's scale) is nonlinear
and ignored, as in "A Mathematical Framework for Transformer Circuits"
(Elhage et al., 2021). The full OV circuit is the direct path ``W_E · W_OV · W_U``:
positional embeddings and earlier layers are left out.

In the planted model (:func:`interp.testing.planted_model`) the induction head L1H0
maps each of the 32 tokens to its own logit: rank 32, all singular values equal,
copying score 1.

>>> from interp.testing import planted_model
>>> model = planted_model()
>>> U, S, V = ov_svd(model, 1, 0)                   # W_OV = U diag(S) Vᵀ, [256, 64] · [64] · [64, 256]
>>> tuple(U.shape), int((S > 1e-3 * S[0]).sum())
((256, 64), 32)
>>> ev = full_ov_eigenvalues(model, 1, 0)          # of the 32 × 32 full circuit, from a 64 × 64 matrix
>>> bool((ev.real > -1e-6).all()), bool((ev.imag.abs() < 1e-6).all())
(True, True)
>>> df = ov_summary(model)                         # every head, one row each
>>> row = df[(df["layer"] == 1) & (df["head"] == 0)]
>>> row[["rank", "rank99", "erank", "copying_score"]].round(3).to_dict("records")
[{'rank': 32, 'rank99': 32, 'erank': 32.0, 'copying_score': 1.0}]
>>> sp = ov_spectrum(model, 1, 0)                  # rank-k approximation error for every k
>>> sp.loc[sp.k.isin([16, 32]), ["k", "cum_energy", "rel_error"]].round(3).to_dict("records")
[{'k': 16, 'cum_energy': 0.5, 'rel_error': 0.707}, {'k': 32, 'cum_energy': 1.0, 'rel_error': 0.0}]
>>> tokens = ov_tokens(model, 1, 0, n_directions=1, top=3)     # a copying head reads and writes the same words
>>> all(tokens["read_token"] == tokens["write_token"])
True
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd
import torch
from jaxtyping import Complex, Float
from torch import Tensor

from interp import select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.threads import one_thread

__all__ = [
    "ov_svd",
    "full_ov_eigenvalues",
    "ov_summary",
    "ov_spectrum",
    "ov_tokens",
]

#: Energy shares (of Σσ²) whose ranks the summary reports as ``rank90`` and ``rank99``.
ENERGY_LEVELS = (0.90, 0.99)
#: A full OV circuit with Σ|λ| below this fraction of ‖W_E‖·‖W_OV‖·‖W_U‖ (Frobenius) is numerically
#: zero (e.g. a head that writes only where the unembedding does not read): its copying score is NaN.
ZERO_CIRCUIT_RTOL = 1e-6


# ---------------------------------------------------------------------------- selection and checks
def _heads_index(model: HookedGPT2, layer: Any, head: Any) -> tuple:
    """Index into the stacked ``[n_layers, n_heads, …]`` weights: all heads, one layer's, or one head."""
    if layer is None:
        if head is not None:
            raise InterpError(f"head {head!r} given without a layer: give both, or a layer alone, or neither")
        return ()
    if head is None:
        return (model.check_layer(layer),)
    return model.check_head(layer, head)


def check_rank(model: HookedGPT2, k: Any) -> int:
    """``k`` if it is a rank a head's ``W_OV`` can have (0–d_head), else a one-line error."""
    d = model.cfg.d_head
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= d:
        raise InterpError(f"rank {k!r} out of range: a head's W_OV has rank at most d_head = {d} (0–{d})")
    return k


# ---------------------------------------------------------------------------- the factorisations
def factored_svd(W_V: Tensor, W_O: Tensor, vectors: bool = True):
    """SVD of ``W_V @ W_O`` through two thin QRs and a ``d_head × d_head`` SVD, batched.

    ``W_V = Q_v R_v`` and ``W_Oᵀ = Q_o R_o`` give ``W_OV = Q_v (R_v R_oᵀ) Q_oᵀ``; the SVD of the small
    middle ``R_v R_oᵀ = U_m S V_mᵀ`` is then ``U = Q_v U_m``, ``V = Q_o V_m``. (TransformerLens's
    ``FactoredMatrix.svd`` takes the SVD of the wide ``d_head × d_model`` factor instead, which LAPACK
    did 40× slower here than the SVD of its tall transpose, and the QR is cheaper still.) Float64:
    the QRs cost about the same, and the small singular values the effective ranks depend on come
    out clean.
    """
    W_V, W_O = W_V.double(), W_O.double()
    with one_thread():
        if not vectors:
            R_v = torch.linalg.qr(W_V, mode="r").R
            R_o = torch.linalg.qr(W_O.mT, mode="r").R
            return torch.linalg.svdvals(R_v @ R_o.mT)
        Q_v, R_v = torch.linalg.qr(W_V)
        Q_o, R_o = torch.linalg.qr(W_O.mT)
        U_m, S, V_mh = torch.linalg.svd(R_v @ R_o.mT)
    return Q_v @ U_m, S, Q_o @ V_mh.mT


def ov_svd(
    model: HookedGPT2, layer: Any = None, head: Any = None
) -> tuple[
    Float[Tensor, "*heads d_model d_head"], Float[Tensor, "*heads d_head"], Float[Tensor, "*heads d_model d_head"]
]:
    """SVD ``W_OV = U diag(S) Vᵀ`` of one head, one layer's heads or all heads, never forming ``W_OV``.

    Args:
        model: a loaded model.
        layer: a layer, or None for every layer.
        head: a head (with ``layer``), or None for every head of the layer(s).

    Returns:
        ``(U, S, V)`` with leading dims ``[n_layers, n_heads]``, ``[n_heads]`` or none. ``S`` is
        descending, of length ``d_head``; the columns of ``U`` (what the head reads: ``x @ W_OV`` is
        ``(x @ U) · S @ Vᵀ``) and ``V`` (what it writes) are orthonormal. The rank-k approximation
        ``U[:, :k] diag(S[:k]) V[:, :k]ᵀ`` equals ``W_OV @ V[:, :k] @ V[:, :k]ᵀ``.
    """
    idx = _heads_index(model, layer, head)
    U, S, V = factored_svd(model.W_V[idx], model.W_O[idx])
    dt = model.cfg.dtype
    return U.to(dt), S.to(dt), V.to(dt)


def full_ov_eigenvalues(
    model: HookedGPT2, layer: Any = None, head: Any = None
) -> Complex[Tensor, "*heads d_head"]:
    """Eigenvalues of the full OV circuit ``W_E · W_OV · W_U`` (``d_vocab × d_vocab``), from a ``d_head``² matrix.

    The nonzero eigenvalues of a product ``A·B`` are those of ``B·A``; with ``A = W_E W_V`` and
    ``B = W_O W_U`` that is ``W_O (W_U W_E) W_V``. ``W_U W_E`` (``d_model × d_model``) is formed once
    for all heads, so the cost is one ``d_model × d_vocab × d_model`` product plus a batched
    ``d_head × d_head`` eigen-decomposition; the other ``d_vocab - d_head`` eigenvalues are zero.

    Returns:
        Complex eigenvalues (float64 precision), leading dims as in :func:`ov_svd`, unordered.
    """
    idx = _heads_index(model, layer, head)
    G = (model.W_U @ model.W_E).double()  # d_model × d_model: the vocabulary summed out once
    M = model.W_O[idx].double() @ G @ model.W_V[idx].double()
    with one_thread():
        return torch.linalg.eigvals(M)


# ---------------------------------------------------------------------------- statistics of a spectrum
def _ranks(S: Tensor, d_model: int) -> dict[str, Tensor]:
    """Numerical rank, energy ranks and entropy effective rank of descending spectra ``[..., n]`` (float64)."""
    energy = S.square()
    total = energy.sum(-1, keepdim=True)
    cum = energy.cumsum(-1) / total
    # numerical rank as torch.linalg.matrix_rank decides it, at the model's float32 precision
    tol = S[..., :1] * d_model * torch.finfo(torch.float32).eps
    out = {"rank": (S > tol).sum(-1)}
    for q in ENERGY_LEVELS:
        # the smallest k with cum[k-1] >= q; the slack keeps exact ties (10 equal values, q = .9) at k = 9
        out[f"rank{round(q * 100)}"] = (cum < q - 1e-9).sum(-1) + 1
    # entropy effective rank (Roy & Vetterli 2007): exp(H(p)) with p = σ / Σσ
    p = S / S.sum(-1, keepdim=True)
    out["erank"] = torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum(-1))
    zero = total[..., 0] == 0
    for key in out:  # a head that writes nothing has rank 0
        out[key] = out[key].masked_fill(zero, 0)
    return out


def _rel_errors(S: Tensor) -> Tensor:
    """``[..., n]``: relative Frobenius error of the rank-k approximation, k = 1..n (tail sums, not 1 - cum)."""
    energy = S.square()
    tail = energy.flip(-1).cumsum(-1).flip(-1)  # tail[i] = Σ_{j >= i} σ_j²
    rest = torch.cat([tail[..., 1:], torch.zeros_like(tail[..., :1])], -1)
    return (rest / tail[..., :1]).sqrt()


def _copying(ev: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """(share of positive mass Σ max(Re λ, 0) / Σ|λ|, Framework statistic Re Σλ / Σ|λ|); NaN if ~zero."""
    mag = ev.abs().sum(-1)
    zero = mag <= ZERO_CIRCUIT_RTOL * scale
    score = (ev.real.clamp_min(0).sum(-1) / mag).masked_fill(zero, math.nan)
    signed = (ev.real.sum(-1) / mag).masked_fill(zero, math.nan)
    return score, signed


def warn_unfolded(model: HookedGPT2) -> None:
    if not model.cfg.fold_ln:
        warnings.warn(
            "circuit analyses read weights in the residual basis: load with fold_ln=True "
            "(LayerNorm's gain is otherwise missing from W_V and W_U)", stacklevel=3,
        )


# ---------------------------------------------------------------------------- tables
def ov_summary(model: HookedGPT2, n_top: int = 3) -> pd.DataFrame:
    """One row per head: its OV circuit's spectrum, effective ranks and copying score.

    Columns:
        ``layer, head``; ``frob`` = ‖W_OV‖_F; ``sigma_1 … sigma_{n_top}`` the top singular values;
        ``rank``: numerical rank (σ > σ₁·d_model·ε₃₂, as ``torch.linalg.matrix_rank``);
        ``rank90`` / ``rank99``: fewest singular values holding 90 % / 99 % of the energy Σσ²;
        ``erank``: entropy effective rank exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ / Σσ (Roy & Vetterli, 2007),
        equal to r for r equal singular values;
        ``copying_score``: Σᵢ max(Re λᵢ, 0) / Σᵢ |λᵢ| over the eigenvalues λ of the full OV circuit
        ``W_E·W_OV·W_U`` — the share of positive eigenvalue mass, 1 for a head that raises the logit of
        the token it attends to, 0 for one that suppresses it (Elhage et al., 2021, "A Mathematical
        Framework for Transformer Circuits", section on copying);
        ``copying_signed``: Re Σλ / Σ|λ| in [−1, 1], the summary statistic as TransformerLens's demos
        compute it (for real eigenvalues, ``copying_signed = 2·copying_score − 1``).
        Both are NaN for a head whose full OV circuit is numerically zero.

    Weights as loaded (see the module docs: ``fold_ln=True`` wanted; LayerNorm's scale ignored).
    Costs one ``d_model × d_vocab × d_model`` product and batched ``d_head``-sized decompositions:
    about a second for all 144 heads of GPT-2 small. Example in the module docs.
    """
    if isinstance(n_top, bool) or not isinstance(n_top, int) or not 0 <= n_top <= model.cfg.d_head:
        raise InterpError(f"n_top {n_top!r} out of range: 0–{model.cfg.d_head} (d_head)")
    warn_unfolded(model)
    cfg = model.cfg
    S = factored_svd(model.W_V, model.W_O, vectors=False)  # [L, H, d_head] float64
    ranks = _ranks(S, cfg.d_model)
    frob = S.square().sum(-1).sqrt()
    scale = float(model.W_E.norm()) * float(model.W_U.norm()) * frob
    score, signed = _copying(full_ov_eigenvalues(model), scale)
    layer, head = torch.meshgrid(torch.arange(cfg.n_layers), torch.arange(cfg.n_heads), indexing="ij")
    cols: dict[str, Any] = {"layer": layer.flatten(), "head": head.flatten(), "frob": frob.flatten()}
    cols.update({f"sigma_{i + 1}": S[..., i].flatten() for i in range(n_top)})
    cols.update({k: v.flatten() for k, v in ranks.items()})
    cols.update({"copying_score": score.flatten(), "copying_signed": signed.flatten()})
    df = pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})
    df.attrs["fold_ln"] = cfg.fold_ln
    return select.tidy(df)


def ov_spectrum(model: HookedGPT2, layer: Any = None, head: Any = None) -> pd.DataFrame:
    """Long table of singular-value spectra: ``layer, head, k, sigma, energy, cum_energy, rel_error``.

    Row ``k`` (1-based) holds σ_k, its share σ_k²/Σσ² of the energy, the cumulative share, and the
    relative Frobenius error ‖W_OV − W_k‖_F / ‖W_OV‖_F = √(Σ_{i>k} σᵢ² / Σσᵢ²) of the rank-k
    approximation ``W_k`` (0 at k = rank). All heads by default; ``layer`` / ``head`` select.
    """
    idx = _heads_index(model, layer, head)
    cfg = model.cfg
    S = factored_svd(model.W_V, model.W_O, vectors=False)
    energy = S.square() / S.square().sum(-1, keepdim=True)
    L, H, D = S.shape
    grid = torch.meshgrid(torch.arange(L), torch.arange(H), torch.arange(1, D + 1), indexing="ij")
    cols = {
        "layer": grid[0], "head": grid[1], "k": grid[2], "sigma": S, "energy": energy,
        "cum_energy": energy.cumsum(-1), "rel_error": _rel_errors(S),
    }
    df = pd.DataFrame({name: col.cpu()[idx].flatten().numpy() for name, col in cols.items()})
    df.attrs["fold_ln"] = cfg.fold_ln
    return select.tidy(df)


def ov_tokens(model: HookedGPT2, layer: Any, head: Any, n_directions: int = 3, top: int = 8) -> pd.DataFrame:
    """For a head's top singular directions, the tokens that read into them and the logits they raise.

    Direction i reads ``x @ uᵢ`` from the attended position and writes ``σᵢ vᵢ``. Through the
    embeddings, token t reads ``read_score = W_E[t] · uᵢ`` into it, and a unit reading changes the
    logit of token t' by ``write_score = σᵢ · vᵢ · W_U[:, t']``. The ``+`` end lists the tokens with
    the largest read scores and the largest write scores; the ``-`` end the most negative of both —
    a negative reading times a negative write is again a raised logit. So on every row, attending to
    ``read_token`` raises the logit of ``write_token`` (along this direction); a copying head shows
    the same words on both sides. Signs are fixed so the largest |read score| is on the ``+`` end.

    Memory: ``d_vocab × n_directions`` scores, never ``d_vocab²``.

    Returns:
        ``direction, sigma, end, rank, read_token, read_score, write_token, write_score``, with
        tokens decoded to strings (ids in ``read_id`` / ``write_id``).
    """
    model.check_head(layer, head)
    for name, val, hi in (("n_directions", n_directions, model.cfg.d_head), ("top", top, model.cfg.d_vocab)):
        if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= hi:
            raise InterpError(f"{name} {val!r} out of range: 1–{hi}")
    warn_unfolded(model)
    U, S, V = ov_svd(model, layer, head)
    U, S, V = U[:, :n_directions], S[:n_directions], V[:, :n_directions]
    reads = model.W_E @ U  # [d_vocab, n]
    writes = (V.T @ model.W_U) * S[:, None]  # [n, d_vocab]
    flip = torch.where(reads.gather(0, reads.abs().argmax(0, keepdim=True))[0] < 0, -1.0, 1.0)
    reads, writes = reads * flip, writes * flip[:, None]
    rows = []
    for i in range(len(S)):
        for end, sign in (("+", 1.0), ("-", -1.0)):
            r_val, r_id = (sign * reads[:, i]).topk(top)
            w_val, w_id = (sign * writes[i]).topk(top)
            r_str, w_str = model.to_str_tokens(r_id), model.to_str_tokens(w_id)
            for j in range(top):
                rows.append((i + 1, float(S[i]), end, j + 1, r_str[j], sign * float(r_val[j]), int(r_id[j]),
                             w_str[j], sign * float(w_val[j]), int(w_id[j])))
    cols = ["direction", "sigma", "end", "rank", "read_token", "read_score", "read_id",
            "write_token", "write_score", "write_id"]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------- one view for the command line
