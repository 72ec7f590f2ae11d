"""Composition scores: how strongly each head's output is read by a later head's query, key or value.

A head in an early layer writes ``x @ W_OV`` into the residual stream; a later head reads the stream
through its query (``W_Q`` side of ``W_QK = W_Q W_Kᵀ``), its key (``W_K`` side) or its value (``W_OV``).
"A Mathematical Framework for Transformer Circuits" (Elhage et al., 2021) measures how much of the
sender's output lands where the receiver reads with

    score = ‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F),    W_A = W_OV of the sender,

and ``W_B`` = ``W_QK`` (Q-composition), ``W_QKᵀ = W_K W_Qᵀ`` (K-composition) or the receiver's
``W_OV`` (V-composition) — TransformerLens's ``all_composition_scores`` matrices, row-vector
convention, so the numbers are equal (a test checks it to 1e-5 in both weight modes).

Chance level: for random matrices the score is not 0. If either matrix's singular frame is
uniformly random (e.g. Gaussian factors of the same shapes as ``W_V``/``W_O`` and ``W_Q``/``W_K``),
``E[score²] = 1/d_model`` exactly, whatever ``d_head`` and the kind: write ``W_A = U Σ Wᵀ`` and
``W_B = U' Σ' W'ᵀ``; then ``‖W_A W_B‖² = Σᵢⱼ σᵢ² σ'ⱼ² (wᵢ·u'ⱼ)²`` and ``E[(wᵢ·u'ⱼ)²] = 1/d_model`` for a
uniformly random unit vector. So the ``baseline`` column is ``1/√d_model``, the root-mean-square
score of random matrices (the mean score is below it by the Jensen gap var/2μ, under 0.1 % at GPT-2's
shapes; a test checks both against sampled Gaussian factors). Their spread is small once
``d_head`` is large: for GPT-2 small (768, 64) random scores are 0.0361 ± 0.0004 (std of 200
samples), for ``interp-tiny`` (128, 16) 0.088 ± 0.004, for the planted model (256, 64) 0.063 ± 0.001.
Trained weights are not isotropic, so read the baseline as "unrelated subspaces", not as a p-value.

Cost. Nothing of size d_model × d_model is formed per pair. Thin QRs reduce every circuit to a
d_head × d_model factor ``F`` (``W_V W_O = Q F_A`` for the sender, ``W_B = F_Bᵀ Q'ᵀ`` for the receiver,
``Q``, ``Q'`` orthonormal), so ``‖W_A W_B‖_F = ‖F_A F_Bᵀ‖_F``. Rather than form that d_head × d_head
product for each of GPT-2 small's 9,504 pairs (``d_head² · d_model`` each: 30 G multiply-adds per kind),
the squared norm is taken as ``⟨F_Aᵀ F_A, F_Bᵀ F_B⟩``: Gram matrices built per *head*, in 128 × 128
tiles for all heads at once and never held whole, then one inner product of length d_model²/2 per
pair — about 4× less arithmetic (:func:`_gram_scores` has the numbers). Everything is float64: the
Gram form sums terms of both signs; in float64 a score is within ~1e-15 of one from materialised
float64 products (tests check 1e-9), and within 5e-8 of TransformerLens's float32 SVD route on GPT-2 small.

Weights as loaded: with ``fold_ln=True`` (the default of :func:`interp.load`) LayerNorm's gain is
in ``W_Q``, ``W_K`` and ``W_V`` and ``W_O`` is centred, so the scores read in the residual basis;
LayerNorm's division by the stream's scale is ignored, as in the paper. Biases play no part.

>>> from interp.testing import planted_model
>>> model = planted_model()
>>> df = composition_scores(model, "k")
>>> df.nlargest(1, "score").iloc[:, :4].to_dict("records")  # the induction head keys on L0H0's output
[{'sender_layer': 0, 'sender_head': 0, 'receiver_layer': 1, 'receiver_head': 0}]
>>> float(df["score"].max().round(3)), float(df["baseline"].iloc[0])  # 1/√32 (32 codes); chance: 1/√256
(0.177, 0.0625)
>>> int(df["score"].isna().sum())                           # L0H1–L0H3 write nothing: 3 senders × 4 receivers
12
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from analyses.ov import warn_unfolded
from interp import select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.threads import one_thread

__all__ = ["composition_scores", "KINDS", "COLUMNS"]

#: Composition kinds: the receiver reads the sender's output through its query, key or value.
KINDS = ("q", "k", "v")
#: Columns of :func:`composition_scores`.
COLUMNS = ["sender_layer", "sender_head", "receiver_layer", "receiver_head", "kind", "score", "baseline"]
#: Side of the square tiles the d_model × d_model Gram matrices are built and used in.
TILE = 128


# ---------------------------------------------------------------------------- factors
# Every circuit is reduced to a d_head × d_model factor F with ‖W_A W_B‖_F = ‖F_A F_Bᵀ‖_F: the orthonormal
# halves of two thin QRs drop out of the Frobenius norm.
def _sender_factor(
    W_V: Float[Tensor, "n d_model d_head"], W_O: Float[Tensor, "n d_head d_model"]
) -> Float[Tensor, "n d_head d_model"]:
    """``F = R W_O`` with ``W_V = Q R`` (thin QR), so ``W_V W_O = Q F``."""
    with one_thread():
        R = torch.linalg.qr(W_V, mode="r").R
    return R @ W_O


def _receiver_factor(
    left: Float[Tensor, "n d_model d_head"], right_t: Float[Tensor, "n d_model d_head"]
) -> Float[Tensor, "n d_head d_model"]:
    """``F = R leftᵀ`` with ``right_t = Q R`` (thin QR), so ``left · right_tᵀ = Fᵀ Qᵀ``."""
    with one_thread():
        R = torch.linalg.qr(right_t, mode="r").R
    return R @ left.mT


def _receiver_circuit(weights: tuple, kind: str) -> tuple[Tensor, Tensor]:
    """The receiver's ``W_B = left · right_tᵀ`` as TransformerLens orients it, as ``(left, right_t)``.

    ``"q"``: ``W_QK = W_Q W_Kᵀ`` (the sender's output enters the query side); ``"k"``: ``W_QKᵀ = W_K W_Qᵀ``
    (the key side); ``"v"``: ``W_OV = W_V W_O``.
    """
    W_Q, W_K, W_V, W_O = weights
    return {"q": (W_Q, W_K), "k": (W_K, W_Q), "v": (W_V, W_O.mT)}[kind]


def _unit(F: Tensor, scale: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """``F / ‖F‖_F`` per head, and which heads are numerically zero (0 here, NaN in the scores).

    Zero means ``‖F‖ ≤ rtol · ‖left factor‖ · ‖right factor‖`` (``scale``): scale-free, and true for a
    head whose factors are exactly zero or whose product vanishes to rounding.
    """
    norm = F.norm(dim=(-2, -1))
    zero = norm <= rtol * scale
    return F * torch.where(zero, 0.0, 1.0 / norm)[:, None, None], zero


def _gram_scores(
    S: Float[Tensor, "n_send d_head d_model"], Rs: list, groups: list, bar: Any
) -> list:
    """``‖S_a R_bᵀ‖_F²`` for every sender a and receiver b, for every receiver factor ``R`` in ``Rs``.

    Why Grams: ``‖S_a R_bᵀ‖_F² = ⟨S_aᵀ S_a, R_bᵀ R_b⟩``. Forming each d_head × d_head product ``S_a R_bᵀ``
    costs ``d_head² · d_model`` per pair (30 G multiply-adds per kind for GPT-2 small's 9,504 pairs);
    the Grams cost ``d_model² · d_head / 2`` per *head* and their inner product ``d_model² / 2`` per
    *pair* (GPT-2 small: 2.9 G per side, built once for the senders and once per kind for the
    receivers, and 3.8 G per kind for the inner products; 23 G for all three kinds against 90 G).
    A d_model² Gram per head (4.7 MB in float64) is never held whole: the Grams are built a 128 × 128
    tile at a time for all heads at once, one batched ``[n, d_head, 128]ᵀ @ [n, d_head, 128]`` product
    per side, and consumed at once by ``[n_send, 128²] @ [128², n_recv]`` products. They are
    symmetric, so only the upper tiles are built; one off the diagonal stands for itself and its
    mirror (weight 2). The sender's tile is shared by all kinds. ``groups`` lists the
    ``(n_rows, col_start, col_end)`` blocks of the output worth computing (receivers only pair with
    senders of earlier layers).
    """
    d = S.shape[-1]
    outs = [S.new_zeros(S.shape[0], R.shape[0]) for R in Rs]
    starts = range(0, d, TILE)
    # One thread (interp.threads explains why): the batched products are small, and the others
    # have small outputs (one block of receiver layers at a time) over a 128²-long inner dimension,
    # which BLAS splits poorly; with two threads the whole took 1.5× longer on our shared 2-core machine.
    with one_thread():
        for i in starts:
            for j in starts[i // TILE :]:
                G = (S[:, :, i : i + TILE].mT @ S[:, :, j : j + TILE]).flatten(1)
                for R, out in zip(Rs, outs):
                    K = (R[:, :, i : i + TILE].mT @ R[:, :, j : j + TILE]).flatten(1)
                    for rows, c0, c1 in groups:
                        out[:rows, c0:c1].addmm_(G[:rows], K[c0:c1].T, alpha=1.0 if i == j else 2.0)
                bar.update()
    return [out.clamp_min_(0.0) for out in outs]  # an exact 0 can come out as -1e-16, and √ of it as NaN


def _groups(L: int, H: int, n_groups: int = 4) -> list[tuple[int, int, int]]:
    """Output blocks ``(n_rows, col_start, col_end)`` covering every (sender layer < receiver layer) pair.

    Rows are senders of layers 0..L-2, columns receivers of layers 1..L-1 (H heads each). A block of
    receiver layers ``r0..r1`` needs the senders of layers ``< r1``; a few blocks skip most of the
    output's invalid half (GPT-2 small: 76 of 121 layer blocks computed, 66 valid).
    """
    layers = list(range(1, L))
    size = -(-len(layers) // n_groups)
    return [(g[-1] * H, (g[0] - 1) * H, g[-1] * H) for g in (layers[i : i + size] for i in range(0, len(layers), size))]


def _check_kind(kind: Any) -> tuple[str, ...]:
    if isinstance(kind, str) and kind.lower() in (*KINDS, "all"):
        return KINDS if kind.lower() == "all" else (kind.lower(),)
    raise InterpError(f"unknown composition kind {kind!r}: use 'q', 'k', 'v' or 'all'")


# ---------------------------------------------------------------------------- the table
def composition_scores(model: HookedGPT2, kind: str = "k", *, progress: Optional[bool] = None) -> pd.DataFrame:
    """Q-, K- or V-composition score of every (earlier sender head, later receiver head) pair.

    The score is ``‖W_OV(sender) · W_B(receiver)‖_F / (‖W_OV‖_F ‖W_B‖_F)`` with ``W_B`` the receiver's
    ``W_Q W_Kᵀ`` (``"q"``), ``W_K W_Qᵀ`` (``"k"``) or ``W_V W_O`` (``"v"``): equal to TransformerLens's
    ``bridge.all_composition_scores("Q" | "K" | "V")`` on the same weights. Computed through the
    d_head-sized factors in float64 (module docs). GPT-2 small's 9,504 pairs took ~2 s for one kind
    and ~4.5 s for all three on one thread of a busy two-core machine, where TransformerLens took
    ~70 s per kind.

    Args:
        model: a loaded model (``fold_ln=True`` wanted: the scores then read in the residual basis;
            a warning otherwise).
        kind: ``"q"``, ``"k"``, ``"v"`` (case-insensitive), or ``"all"`` for the three stacked.
        progress: tqdm bar on stderr (None: only on a terminal).

    Returns:
        One row per pair with ``sender_layer < receiver_layer``, in the order (kind, sender, receiver):
        ``sender_layer, sender_head, receiver_layer, receiver_head`` (int64), ``kind`` (``"q"``,
        ``"k"``, ``"v"``), ``score`` in [0, 1] and ``baseline`` = ``1/√d_model``, the root-mean-square
        score of random matrices of the same shapes (module docs). ``score`` is NaN where the
        sender's ``W_OV`` or the receiver's ``W_B`` is numerically zero (a head that writes, or
        reads, nothing has no composition to measure). A one-layer model gives an empty table.
        ``df.attrs["fold_ln"]`` records the weight mode.

    Example in the module docs.
    """
    kinds = _check_kind(kind)
    warn_unfolded(model)
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    squares = _squared_scores(model, kinds, progress) if L > 1 else [torch.empty(0, 0)] * len(kinds)
    baseline = _baseline(cfg.d_model, cfg.d_head)
    df = pd.concat([_frame(sq.sqrt(), L, H, k, baseline) for k, sq in zip(kinds, squares)], ignore_index=True)
    df.attrs["fold_ln"] = cfg.fold_ln
    return select.tidy(df)


def _squared_scores(model: HookedGPT2, kinds: tuple, progress: Optional[bool]) -> list:
    """Per kind, ``score²[sender, receiver]`` over senders of layers 0..L-2 and receivers of layers 1..L-1
    (layer L-1 sends to no one, layer 0 receives from no one); NaN where a circuit is numerically zero."""
    from tqdm.auto import tqdm

    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    # A product of float32 factors that is zero in exact arithmetic comes out at ~eps·‖A‖‖B‖.
    rtol = 100 * torch.finfo(cfg.dtype).eps
    # float64 copies made once, [(L-1)·H, …]: senders are layers 0..L-2, receivers layers 1..L-1
    weights = [w.double() for w in (model.W_Q, model.W_K, model.W_V, model.W_O)]
    W_V, W_O = (w[: L - 1].flatten(0, 1) for w in weights[2:])
    S, zero_s = _unit(_sender_factor(W_V, W_O), _norms(W_V) * _norms(W_O), rtol)
    receivers = tuple(w[1:].flatten(0, 1) for w in weights)
    Rs, zeros_r = [], []
    for k in kinds:
        left, right_t = _receiver_circuit(receivers, k)
        R, zero_r = _unit(_receiver_factor(left, right_t), _norms(left) * _norms(right_t), rtol)
        Rs.append(R)
        zeros_r.append(zero_r)
    del weights, receivers, W_V, W_O, left, right_t  # the float64 copies (230 MB for GPT-2 small)
    n_tiles = math.comb(-(-cfg.d_model // TILE) + 1, 2)
    bar = tqdm(total=n_tiles, desc="composition", disable=None if progress is None else not progress)
    try:
        squares = _gram_scores(S, Rs, _groups(L, H), bar)
    finally:
        bar.close()
    for sq, zero_r in zip(squares, zeros_r):
        sq[zero_s] = math.nan  # a head that writes (or reads) nothing has no composition to measure
        sq[:, zero_r] = math.nan
    return squares


def _baseline(d_model: int, d_head: int) -> float:
    """Root-mean-square composition score of random matrices of these shapes: ``1/√d_model`` for every
    ``d_head`` and kind (module docs; a test checks it against sampled Gaussian factors)."""
    return 1.0 / math.sqrt(d_model)


def _norms(W: Float[Tensor, "n rows cols"]) -> Float[Tensor, " n"]:
    return W.norm(dim=(-2, -1))


def _frame(scores: Tensor, L: int, H: int, kind: str, baseline: float) -> pd.DataFrame:
    """Tidy rows from ``scores[sender, receiver]`` over senders in layers 0..L-2 and receivers in 1..L-1."""
    s_layer = torch.arange(max(L - 1, 0)).repeat_interleave(H)
    s_head = torch.arange(H).repeat(max(L - 1, 0))
    r_layer, r_head = s_layer + 1, s_head
    keep = s_layer[:, None] < r_layer[None, :]
    si, ri = keep.nonzero(as_tuple=True)
    return pd.DataFrame({
        "sender_layer": s_layer[si].numpy(), "sender_head": s_head[si].numpy(),
        "receiver_layer": r_layer[ri].numpy(), "receiver_head": r_head[ri].numpy(),
        "kind": kind, "score": scores[si, ri].cpu().numpy(),
        "baseline": baseline,
    }, columns=COLUMNS).astype({c: "int64" for c in COLUMNS[:4]} | {"score": "float64", "baseline": "float64"})
