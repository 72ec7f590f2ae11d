"""What one feature does, read from the weights and the model's own hooks: its direct effects.

* :func:`resid_directions`: what one unit of each feature writes into the residual stream — the
  decoder row (``decode(e_f) - decode(0)``, normalisation included), taken from the SAE's output hook
  into the residual stream: as it is for residual-stream hooks, through ``W_O`` for ``hook_z``,
  ``W_out`` for ``mlp.hook_post``; None for hooks that are not written there (q, k, v, LayerNorm outputs).
* :func:`logit_effects`: a direction's direct effect on the logits through the final LayerNorm's
  linearisation (centred, times its gain, its scale taken as 1) and ``W_U``, centred over the
  vocabulary: the same in both weight modes.
* direct feature attribution (DFA) for ``hook_z`` features: a feature's pre-activation at a query
  position split over the source positions attention reads, from ``pattern`` and ``v`` as the
  model's hooks give them (never recomputed).

:mod:`interp.report.feature_pages` shows them on each feature's page.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from .. import hooks as hk

__all__ = ["resid_directions", "logit_effects", "LOGIT_HIST_BINS"]

#: Bars of the logit-effect histogram.
LOGIT_HIST_BINS = 40
_RESID_WRITERS = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
                  "hook_attn_out", "hook_mlp_out")


def _out_hook(sae) -> str:
    return sae.cfg.hook_name_out or sae.cfg.hook_name


def resid_directions(model, sae, features: list[int]) -> Optional[Float[Tensor, "n_features d_model"]]:
    """What one unit of each feature writes into the residual stream (None if its hook is not written there).

    The decoder row per unit of activation (``decode(e_f) - decode(0)``: normalisation and
    ``rescale_acts_by_decoder_norm`` included), mapped from the output hook's space: residual-stream
    hooks as they are, ``hook_z`` through ``W_O``, ``mlp.hook_post`` through ``W_out``.
    """
    name = _out_hook(sae)
    short = name.split(".")[-1]
    layer = hk.layer_of(name)
    if not (short in _RESID_WRITERS or name.endswith("attn.hook_z") or name.endswith("mlp.hook_post")):
        return None
    idx = torch.tensor(features, dtype=torch.long)
    with torch.no_grad():
        if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm") and not sae.is_transcoder:
            rows = sae.W_dec[idx]  # per unit of the normalised activation: the scale is the input's
            if sae.cfg.rescale_acts_by_decoder_norm:
                rows = rows / sae.W_dec[idx].norm(dim=-1, keepdim=True)
        else:
            eye = torch.zeros(len(idx), sae.d_sae, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
            eye[torch.arange(len(idx)), idx] = 1
            rows = sae.decode(eye) - sae.decode(torch.zeros_like(eye[:1]))
        rows = rows.to(model.W_U.dtype).to(model.W_U.device)
        if name.endswith("attn.hook_z"):
            rows = model.head_write(layer, rows.view(-1, model.cfg.n_heads, model.cfg.d_head), sum_heads=True)
        elif name.endswith("mlp.hook_post"):
            rows = rows @ model.W_out[layer]
    return rows


def logit_effects(model, dirs: Float[Tensor, "n_features d_model"]) -> Float[Tensor, "n_features d_vocab"]:
    """Direct effect on the logits of residual-stream directions, per unit (final LayerNorm's scale taken as 1).

    ``(d - mean(d)) · w_lnf @ W_U``, then centred over the vocabulary (softmax ignores a constant),
    which makes it the same in both weight modes.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> e = logit_effects(model, model.W_E[3:4])
    >>> tuple(e.shape), abs(float(e.mean())) < 1e-5
    ((1, 32), True)
    """
    d = dirs - dirs.mean(-1, keepdim=True)
    out = (d * model.lnf_w) @ model.W_U
    return out - out.mean(-1, keepdim=True)


def logit_tables(model, dirs: Tensor, n: int) -> list[dict]:
    """Per direction: the top/bottom ``n`` tokens and a histogram over the vocabulary, in chunks of rows."""
    out = []
    step = max(1, (1 << 24) // model.cfg.d_vocab)  # ~64 MB of logits at a time
    for i in range(0, len(dirs), step):
        eff = logit_effects(model, dirs[i:i + step]).float().cpu()
        k = min(n, eff.shape[-1])
        top, bot = eff.topk(k, dim=-1), eff.topk(k, dim=-1, largest=False)
        lo, hi = eff.min(-1).values, eff.max(-1).values
        width = ((hi - lo) / LOGIT_HIST_BINS).clamp(min=1e-30)
        which = ((eff - lo[:, None]) / width[:, None]).long().clamp_(0, LOGIT_HIST_BINS - 1)
        heights = torch.zeros(len(eff), LOGIT_HIST_BINS, dtype=torch.long).scatter_add_(1, which, torch.ones_like(which))
        for j in range(len(eff)):
            out.append({
                "pos_ids": top.indices[j].tolist(), "pos_values": top.values[j].tolist(),
                "neg_ids": bot.indices[j].tolist(), "neg_values": bot.values[j].tolist(),
                "logits_hist_data_bar_values": (lo[j] + (torch.arange(LOGIT_HIST_BINS) + 0.5) * width[j]).tolist(),
                "logits_hist_data_bar_heights": heights[j].tolist(),
            })
    return out


# ---------------------------------------------------------------------------- direct feature attribution
def dfa_encoder(sae) -> Optional[Tensor]:
    """The linear map from the SAE's input to its pre-activations, ``[d_in, d_sae]``; None if it is not affine."""
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        return None
    with torch.no_grad():
        d = sae.d_in
        base = sae.encode_pre(torch.zeros(1, d, dtype=sae.W_enc.dtype, device=sae.W_enc.device))
        return (sae.encode_pre(torch.eye(d, dtype=sae.W_enc.dtype, device=sae.W_enc.device)) - base).float().cpu()


def dfa_fn(pattern: Tensor, v: Tensor, w_eff: Tensor, n_heads: int):
    """Direct feature attribution of source positions, for (row, query, feature) triples of one batch."""
    P = pattern.shape[-1]

    def dfa(b: Tensor, q: Tensor, f: Tensor, src: Tensor) -> Tensor:
        out = torch.zeros(src.shape, dtype=torch.float32)
        step = max(1, (1 << 22) // (src.shape[1] * v.shape[-2] * v.shape[-1]))  # ~16 MB of gathered values at a time
        for i in range(0, len(b), step):
            bb, qq, ff, ss = b[i:i + step], q[i:i + step], f[i:i + step], src[i:i + step]
            ok = (ss >= 0) & (ss < P)
            sc = ss.clamp(0, P - 1)
            w = w_eff[:, ff].T.reshape(len(ff), n_heads, -1)                       # [n, H, D]
            vv = v[bb[:, None], sc]                                                 # [n, W, H, D]
            pat = pattern[bb[:, None, None], torch.arange(n_heads)[None, :, None], qq[:, None, None], sc[:, None, :]]
            out[i:i + step] = torch.where(ok, torch.einsum("nwhd,nhd,nhw->nw", vv, w, pat), 0.0)
        return out

    return dfa
