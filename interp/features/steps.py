"""One SAE training step's losses and gradients, per architecture (the arithmetic of :mod:`interp.features.training`).

TopK and BatchTopK have hand-written gradients that touch only the active latents: of a step's
work, the dense ``x @ W_enc`` (every latent's pre-activation, which the top-k needs) is the one
product of size ``batch × d_in × d_sae``; the decoder reads the k active rows of each token
(``embedding_bag``), and the gradients of ``W_enc`` and ``W_dec`` are sparse-times-dense products
over the ``batch × k`` active entries. Autograd through a dense ``f @ W_dec`` (what SAELens does
by default) costs four more products of the full size. Standard (ReLU + L1) and JumpReLU SAEs,
whose activations are not sparse early in training, use autograd on the dense forward pass.

Every loss is a sum over the rows of a batch divided by the *global* batch size, so in
data-parallel training each process's gradient over its rows, summed over processes, is the
gradient of the whole batch.

Parameters are held as plain tensors (:class:`Params`), the encoder transposed (``W_encT``
``[d_sae, d_in]``: its gradient is produced in that layout, rows per latent).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: Parameter names, in the order the optimizer holds them.
PARAM_NAMES = ("W_encT", "b_enc", "W_dec", "b_dec", "threshold", "W_skip")


@dataclass
class StepSettings:
    """What one step needs to know besides the parameters and the batch."""

    architecture: str
    k: Optional[int]
    apply_b_dec_to_input: bool
    l1_coefficient: float = 0.0
    l0_coefficient: float = 0.0
    bandwidth: float = 0.05
    aux_coefficient: float = 1.0
    n_global: int = 1  # rows in the whole (global) batch: every loss is divided by it


class Params:
    """An SAE's trainable tensors: ``W_encT [d_sae, d_in]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec``,
    and ``threshold`` / ``W_skip [d_in, d_out]`` when the architecture has them."""

    def __init__(self, tensors: dict[str, Tensor]):
        self.tensors = {k: v for k, v in tensors.items() if v is not None}

    def __getattr__(self, name: str) -> Any:
        tensors = self.__dict__.get("tensors", {})
        if name in PARAM_NAMES:
            return tensors.get(name)
        raise AttributeError(name)

    def items(self):
        return [(n, self.tensors[n]) for n in PARAM_NAMES if n in self.tensors]


# ============================================================================ sparse helpers
def _row_offsets(rows: Tensor, n_rows: int) -> Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def _decode(cols: Tensor, offsets: Tensor, vals: Tensor, W: Tensor) -> Tensor:
    """``Σ_j vals_j W[cols_j]`` per row: the sparse decoder, reading only the active rows of ``W``."""
    return F.embedding_bag(cols, W, offsets, mode="sum", per_sample_weights=vals)


def _row_dots(rows: Tensor, cols: Tensor, n_rows: int, G: Tensor, W: Tensor) -> Tensor:
    """``G[rows_e] · W[cols_e]`` for each entry (``rows`` sorted, ``cols`` ascending within a row)."""
    if len(rows) == 0:
        return G.new_zeros(0)
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(len(cols), dtype=G.dtype), (n_rows, W.shape[0]),
                                          check_invariants=False)
    return torch.sparse.sampled_addmm(pattern, G, W.t(), beta=0.0).values()


def _scatter_rows(cols: Tensor, rows: Tensor, vals: Tensor, n_latents: int, X: Tensor) -> Tensor:
    """``Σ_e vals_e X[rows_e]`` into row ``cols_e`` of a ``[n_latents, X.shape[1]]`` result (a sparse × dense product)."""
    if len(cols) == 0:
        return X.new_zeros(n_latents, X.shape[1])
    G = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, (n_latents, X.shape[0]), check_invariants=False)
    return torch.sparse.mm(G, X)


# ============================================================================ TopK / BatchTopK
def sparse_step(P: Params, x: Tensor, y: Tensor, s: StepSettings, dead: Optional[Tensor], dist) -> tuple[dict, dict]:
    """Gradients and statistics of one TopK or BatchTopK step (with AuxK when latents are dead).

    ``x``: the SAE's input rows (scaled), ``y``: its targets (``x`` for an SAE). Returns
    ``(grads by parameter name, stats)``; nothing is reduced across processes here except what the
    BatchTopK selection needs (the global threshold).
    """
    B = x.shape[0]
    S = P.W_encT.shape[0]
    x_in = x - P.b_dec if s.apply_b_dec_to_input else x
    pre = torch.addmm(P.b_enc, x_in, P.W_encT.t())
    stats: dict[str, Any] = {}
    if s.architecture == "batchtopk":
        acts = pre.relu()
        want = s.k * s.n_global
        local = acts.flatten().topk(min(want, acts.numel()), sorted=False).values
        everyone = dist.all_gather_cat(local)
        v = everyone.topk(min(want, everyone.numel()), sorted=False).values.min()
        mask = (acts >= v) & (acts > 0)
        rows, cols = mask.nonzero(as_tuple=True)
        pre_sel = acts[rows, cols]
        stats["batch_threshold"] = float(v)
    else:
        top, idx = pre.topk(s.k, dim=-1, sorted=False)
        idx, order = idx.sort(dim=-1)
        pre_sel = top.gather(-1, order).flatten()
        rows = torch.arange(B, device=x.device).repeat_interleave(s.k)
        cols = idx.flatten()
    vals = pre_sel.relu()
    x_hat = _decode(cols, _row_offsets(rows, B), vals, P.W_dec) + P.b_dec
    if P.W_skip is not None:
        x_hat = x_hat + x @ P.W_skip
    e = x_hat - y
    g = e * (2.0 / s.n_global)
    grads = {"b_dec": g.sum(0), "W_dec": _scatter_rows(cols, rows, vals, S, g)}
    if P.W_skip is not None:
        grads["W_skip"] = x.t() @ g
    g_vals = _row_dots(rows, cols, B, g, P.W_dec) * (pre_sel > 0)
    enc_rows, enc_cols, enc_g = [rows], [cols], [g_vals]
    aux_sse = x.new_zeros(())
    n_dead = int(dead.sum()) if dead is not None else 0
    if n_dead:
        # AuxK (Gao et al. 2024, as SAELens): the top dead latents reconstruct the live ones' error.
        k_aux_full = y.shape[1] // 2
        k_aux = min(k_aux_full, n_dead)
        scale = min(n_dead / k_aux_full, 1.0)
        dead_idx = dead.nonzero(as_tuple=True)[0]
        av, ai = pre.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
        ai, order = dead_idx[ai].sort(dim=-1)
        av = av.gather(-1, order).flatten()
        arows = torch.arange(B, device=x.device).repeat_interleave(k_aux)
        acols = ai.flatten()
        e_hat = _decode(acols, _row_offsets(arows, B), av, P.W_dec)
        diff = e_hat + e  # ê − (y − x̂)
        aux_sse = (diff * diff).sum()
        ga = diff * (2.0 * s.aux_coefficient * scale / s.n_global)
        grads["W_dec"] += _scatter_rows(acols, arows, av, S, ga)
        enc_rows.append(arows)
        enc_cols.append(acols)
        enc_g.append(_row_dots(arows, acols, B, ga, P.W_dec))
        stats["aux_loss"] = float(aux_sse) * s.aux_coefficient * scale
    r, c, gg = torch.cat(enc_rows), torch.cat(enc_cols), torch.cat(enc_g)
    grads["W_encT"] = _scatter_rows(c, r, gg, S, x_in)
    grads["b_enc"] = torch.zeros(S, dtype=x.dtype, device=x.device).index_add_(0, c, gg)
    if s.apply_b_dec_to_input:
        grads["b_dec"] = grads["b_dec"] - P.W_encT.t() @ grads["b_enc"]
    fired = torch.zeros(S, dtype=torch.bool, device=x.device)
    fired[cols[vals > 0]] = True
    stats.update(sse=float((e * e).sum()), l0_sum=float((vals > 0).sum()), fired=fired)
    return grads, stats


# ============================================================================ dense: standard, JumpReLU
class _JumpReLU(torch.autograd.Function):
    """``x·[x > θ]`` with the straight-through gradient for θ (Rajamanoharan et al. 2024, as SAELens)."""

    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return x * (x > threshold)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        window = ((x - threshold).abs() < bw / 2).to(x.dtype)
        return (x > threshold) * grad, (-(threshold / bw) * window * grad).sum(0), None


class _Step(torch.autograd.Function):
    """``[x > θ]`` (the L0 count) with the straight-through gradient for θ."""

    @staticmethod
    def forward(ctx, x, threshold, bandwidth):
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        window = ((x - threshold).abs() < bw / 2).to(x.dtype)
        return None, (-(1.0 / bw) * window * grad).sum(0), None


def dense_step(P: Params, x: Tensor, y: Tensor, s: StepSettings, dead: Optional[Tensor], dist) -> tuple[dict, dict]:
    """Gradients and statistics of one standard (ReLU + L1) or JumpReLU (+ L0) step, by autograd."""
    leaves = {n: t.detach().requires_grad_(True) for n, t in P.items()}
    with torch.enable_grad():
        x_in = x - leaves["b_dec"] if s.apply_b_dec_to_input else x
        pre = x_in @ leaves["W_encT"].t() + leaves["b_enc"]
        if s.architecture == "standard":
            f = pre.relu()
            # L1 weighted by the decoder's row norms (SAELens): invariant to moving scale into the decoder.
            sparsity = s.l1_coefficient * (f * leaves["W_dec"].norm(dim=1)).sum() / s.n_global
        else:
            f = _JumpReLU.apply(pre, leaves["threshold"], s.bandwidth)
            sparsity = s.l0_coefficient * _Step.apply(pre, leaves["threshold"], s.bandwidth).sum() / s.n_global
        x_hat = f @ leaves["W_dec"] + leaves["b_dec"]
        if "W_skip" in leaves:
            x_hat = x_hat + x @ leaves["W_skip"]
        e = x_hat - y
        sse = (e * e).sum()
        loss = sse / s.n_global + sparsity
        loss.backward()
    grads = {n: t.grad if t.grad is not None else torch.zeros_like(t) for n, t in leaves.items()}
    active = f.detach() > 0
    stats = {"sse": float(sse), "l0_sum": float(active.sum()), "fired": active.any(0),
             "sparsity_loss": float(sparsity) * s.n_global}
    return grads, stats


def step(P: Params, x: Tensor, y: Tensor, s: StepSettings, dead: Optional[Tensor], dist) -> tuple[dict, dict]:
    """One step's gradients and statistics for any architecture."""
    fn = sparse_step if s.architecture in ("topk", "batchtopk") else dense_step
    return fn(P, x, y, s, dead, dist)


def lr_at(step: int, total: int, lr: float, warmup: int, decay_steps: int) -> float:
    """Linear warm-up over ``warmup`` steps, constant, then linear decay to 0 over the last ``decay_steps``.

    >>> [round(lr_at(i, 10, 1.0, 2, 4), 2) for i in range(10)]
    [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay_steps > 0 and step >= total - decay_steps:
        f = min(f, (total - 1 - step) / decay_steps)
    return lr * max(f, 0.0)


def init_params(d_in: int, d_sae: int, d_out: int, architecture: str, skip: bool, seed: int, dtype: torch.dtype,
                init_threshold: float) -> Params:
    """Unit-norm random decoder rows, the encoder their transpose (the SAE's own init: :class:`~interp.features.sae.SAE`)."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_out, generator=g, dtype=torch.float64)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_encT = W_dec.clone() if d_in == d_out else torch.randn(d_sae, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in)
    tensors = {"W_encT": W_encT, "b_enc": torch.zeros(d_sae), "W_dec": W_dec, "b_dec": torch.zeros(d_out),
               "threshold": torch.full((d_sae,), init_threshold) if architecture in ("jumprelu", "batchtopk") else None,
               "W_skip": torch.zeros(d_in, d_out) if skip else None}
    if architecture == "batchtopk":
        tensors["threshold"] = torch.zeros(d_sae)  # learned from the batches, not by gradient
    return Params({k: v.to(dtype).contiguous() for k, v in tensors.items() if v is not None})
