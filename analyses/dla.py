"""Direct logit attribution: each head's, MLP's, embedding's and bias's direct share of a logit.

The final residual stream is a sum of its writers (:func:`interp.residual.decompose_resid`); with
the final LayerNorm's scale frozen at the clean run's value, the logit (or a logit difference) is
a sum over them too. A head's share is that of its output as :class:`interp.HookedGPT2` defines
it (value bias included), so the numbers are the same in both weight modes for a logit
difference (a single logit differs by folding's per-position constant).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interp import select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.tokens import Batch, decoder

#: Components × positions × d_model floats held at once (prompts are chunked to stay under it).
_CHUNK_BYTES = 512 * 2**20

__all__ = ["direct_logit_attribution"]


def direct_logit_attribution(
    model: HookedGPT2,
    inputs: Any,
    target: Any,
    *,
    contrast: Any = None,
    positions: Any = None,
    prepend_bos: bool = True,
    progress: Optional[bool] = None,
) -> pd.DataFrame:
    """Each component's direct contribution to a target token's logit (or to ``target - contrast``).

    The final residual stream is a sum of its writers (:func:`interp.residual.decompose_resid`):
    embeddings, each head, each layer's attention bias, each MLP. The final LayerNorm is linear
    once its scale is frozen at the clean run's value ``σ`` (the standard linearisation), so
    component ``c`` contributes ``((x_c - mean(x_c)) / σ) · (w ⊙ u)`` with ``u`` the target's
    unembedding column (minus the contrast's) and ``w`` ``ln_f``'s gain (1 when folded); the
    ``unembed bias`` row holds ``ln_f``'s bias through ``u`` plus ``b_U``. The rows sum to the
    model's own logit (difference), given in ``total``, to float precision. A contribution is what
    the logit would lose if that component's direct path were removed with ``σ`` held fixed.

    Args:
        target: one token (a string of exactly one token, or an id), or one per prompt.
        contrast: optional second token (or one per prompt): attribute the logit difference.
        positions: as in :func:`logit_lens`; default the last real token of each prompt.

    Returns:
        One row per prompt, position and component: ``prompt, position, input_token, component,
        kind`` (``embed, pos_embed, head, attn_bias, mlp, unembed_bias``), ``layer, head``
        (nullable), ``target, contrast, contribution, total``.

    >>> from interp.testing import planted_model
    >>> df = direct_logit_attribution(planted_model(), "a b c d a b c", "d")
    >>> top = df.loc[df["contribution"].abs().idxmax()]
    >>> top["component"], bool(abs(df["contribution"].sum() - top["total"]) < 1e-3)
    ('L1H0', True)
    """
    if not isinstance(model, HookedGPT2):
        raise InterpError(f"model must be an interp HookedGPT2 (from interp.load), not {type(model).__name__}")
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        t_ids = select.token_ids(model, target, len(batch), "target")
        c_ids = None if contrast is None else select.token_ids(model, contrast, len(batch), "contrast")
        chosen = select.positions(batch, positions)
        cols, rel, valid = chosen.cols, chosen.rel.cpu(), chosen.valid.cpu()
        u = model.lnf_w[:, None] * model.W_U[:, t_ids]  # [d_model, batch]: the direction each logit reads
        bias = model.lnf_b @ model.W_U[:, t_ids] + model.b_U[t_ids]
        if c_ids is not None:
            u = u - model.lnf_w[:, None] * model.W_U[:, c_ids]
            bias = bias - model.lnf_b @ model.W_U[:, c_ids] - model.b_U[c_ids]
        cfg = model.cfg
        n_comp = 2 + cfg.n_layers * (cfg.n_heads + 2)
        # decompose_resid holds every component at every position: chunk prompts to bound that memory.
        per_prompt = n_comp * batch.tokens.shape[1] * cfg.d_model * 4
        size = max(1, _CHUNK_BYTES // per_prompt)
        contrib, totals, labels = [], [], None
        for s in tqdm(range(0, len(batch), size), desc="direct logit attribution",
                      disable=None if progress is None else not progress, leave=False):
            sub = Batch(batch.tokens[s : s + size], batch.attention_mask[s : s + size])
            d = model.decompose_resid(sub, cfg.n_layers - 1, "post")
            labels = d.labels
            r = torch.arange(len(sub), device=cols.device)[:, None]
            comps, resid = d.components[:, r, cols[s : s + size]], d.resid[r, cols[s : s + size]]
            sigma = (resid.var(-1, unbiased=False, keepdim=True) + cfg.eps).sqrt()  # frozen from the clean run
            centred = (comps - comps.mean(-1, keepdim=True)) / sigma
            uu = u[:, s : s + size].T  # [sub, d_model]
            contrib.append(torch.einsum("cipm,im->cip", centred, uu).cpu())
            logits = model.unembed(resid)  # the model's own logits at these positions
            tot = logits.gather(-1, t_ids[s : s + size, None, None].expand(-1, resid.shape[1], 1))[..., 0]
            if c_ids is not None:
                tot = tot - logits.gather(-1, c_ids[s : s + size, None, None].expand(-1, resid.shape[1], 1))[..., 0]
            totals.append(tot.cpu())
        contrib_t = torch.cat(contrib, 1)  # [component, batch, pos]
        contrib_t = torch.cat([contrib_t, bias.cpu()[None, :, None].expand(1, -1, contrib_t.shape[2])])
        total = torch.cat(totals)

    labels = [*labels, "unembed bias"]
    tok_text = decoder(model.tokenizer)
    prompt_of = torch.arange(len(batch))[:, None].expand_as(rel)[valid].numpy()
    n_c, n = len(labels), len(prompt_of)
    kinds, layers, heads = zip(*(_kind(lab) for lab in labels))
    input_ids = batch.tokens[torch.as_tensor(prompt_of, device=cols.device), cols[valid.to(cols.device)]].cpu().numpy()
    df = pd.DataFrame({
        "prompt": np.tile(prompt_of, n_c),
        "position": np.tile(rel[valid].numpy(), n_c),
        "input_token": np.tile(np.array([tok_text(i) for i in input_ids], dtype=object), n_c),
        "component": np.repeat(np.array(labels, dtype=object), n),
        "kind": np.repeat(np.array(kinds, dtype=object), n),
        "layer": pd.array(np.repeat(np.array(layers, dtype=object), n), dtype="Int64"),
        "head": pd.array(np.repeat(np.array(heads, dtype=object), n), dtype="Int64"),
        "target": np.tile([tok_text(int(t_ids[p])) for p in prompt_of], n_c),
        "contrast": np.tile([None if c_ids is None else tok_text(int(c_ids[p])) for p in prompt_of], n_c),
        "contribution": contrib_t[:, valid].reshape(-1).numpy(),
        "total": np.tile(total[valid].numpy(), n_c),
    })
    df = df.sort_values(["prompt", "position"], kind="stable").reset_index(drop=True)
    df.attrs.update(fold_ln=model.cfg.fold_ln, model=model.cfg.name)
    return select.tidy(df)


def _kind(label: str) -> tuple[str, Optional[int], Optional[int]]:
    if label in ("embed", "pos_embed"):
        return label, None, None
    if label == "unembed bias":
        return "unembed_bias", None, None
    layer, _, rest = label[1:].partition(" ")
    if not rest:  # "L3H7"
        layer, head = layer.split("H")
        return "head", int(layer), int(head)
    return {"attn bias": "attn_bias", "mlp": "mlp"}[rest], int(layer), None


