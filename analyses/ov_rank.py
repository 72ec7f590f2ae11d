"""How many dimensions does a head really use? Its ``W_OV`` cut to rank k, and the loss that follows.

:func:`low_rank_ov` replaces heads' OV circuits by their rank-k approximations for the duration of a
``with`` block (the same cut in both weight modes: see :func:`_effective_ov`); :func:`rank_k_loss`
tabulates the loss per head and k. The spectra themselves are :mod:`analyses.ov`'s.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from interp import select
from interp.errors import InterpError
from interp.folding import centred, folded_reader
from interp.model import HookedGPT2

from .ov import check_rank, factored_svd, ov_spectrum, ov_summary, ov_tokens

__all__ = ["low_rank_ov", "rank_k_loss", "default_ranks", "ov_view"]


def _effective_ov(model: HookedGPT2, layer: int) -> tuple[
    Float[Tensor, "n_heads d_model d_head"], Float[Tensor, "n_heads d_head"], Float[Tensor, "n_heads d_head d_model"]
]:
    """A layer's OV circuit as it acts on the *normalised* residual stream, the same in both weight modes.

    ``(W_V', b_V', W_O')`` with ``W_V' = C diag(γ) W_V`` and ``b_V' = b_V + β W_V`` (ln1's gain γ and bias
    β taken in, as folding does; ``C`` centres over d_model, a direction the normalised stream never
    has) and ``W_O' = W_O C`` (the next LayerNorm removes that mean anyway). Folded models already
    hold exactly these; for raw ones they are computed here, so a rank-k cut means the same thing
    whatever ``fold_ln`` is.
    """
    H, M, D = model.W_V.shape[1:]
    gain, bias = model.ln_weights("ln1", layer)
    W_V, b_V = folded_reader(model.W_V[layer].permute(1, 0, 2).reshape(M, H * D), model.b_V[layer].reshape(-1),
                             gain, bias)
    return W_V.reshape(M, H, D).permute(1, 0, 2), b_V.reshape(H, D), centred(model.W_O[layer])


@contextlib.contextmanager
def low_rank_ov(model: HookedGPT2, heads: Any, k: Any) -> Iterator[HookedGPT2]:
    """Run the model with the given heads' ``W_OV`` replaced by its rank-k approximation (scoped).

    Since ``U_k S_k V_kᵀ = W_OV V_k V_kᵀ``, the hook (on ``hook_result``) projects each head's output,
    minus its value-bias part, onto the top-k right singular directions. The value bias ``b_V`` is not
    part of the linear map ``W_OV``: its contribution ``b_V W_O`` is the same at every position (each
    row of the attention pattern sums to 1) and is kept as it is. So ``k = 0`` leaves a head that
    writes only that constant, and ``k ≥ rank(W_OV)`` changes nothing. The hooks are removed on
    exit, error or not.

    The same in both weight modes: ``W_OV`` is the circuit as it acts on the normalised residual
    stream (:func:`_effective_ov`: ln1's gain and bias taken into ``W_V`` and ``b_V``, ``W_O``
    centred), i.e. the folded model's; in a raw model the head output's mean over d_model, which
    the next LayerNorm removes, is left as it is. So losses under a cut are equal with
    ``fold_ln=True`` and ``False`` (a test checks both against Hugging Face with hooks).

    Args:
        heads: ``(layer, head)`` or a list of them.
        k: the rank kept, 0–d_head (the same for every head given).

    >>> import torch
    >>> from interp.testing import planted_model
    >>> from interp.prompts import repeated_tokens
    >>> model = planted_model()
    >>> tokens = repeated_tokens(model, n_prompts=1, half=8)
    >>> with low_rank_ov(model, (1, 0), k=32):          # the induction head's full rank: no change
    ...     same = model(tokens)
    >>> bool(torch.allclose(same, model(tokens), atol=1e-4)), model.has_hooks
    (True, False)
    """
    heads, k = select.heads(model, heads, sort=False), check_rank(model, k)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in sorted(by_layer.items()):
        W_V, b_V, W_O = _effective_ov(model, layer)
        V_k = factored_svd(W_V[hs], W_O[hs])[2][..., :k].to(model.cfg.dtype)  # [n, d_model, k]
        bias = torch.einsum("nd,ndm->nm", b_V[hs], model.W_O[layer, hs])  # as the head writes it in this mode
        hooks.append((("result", layer), _projector(torch.tensor(hs, device=V_k.device), V_k, bias)))
    with model.hooks(hooks):
        yield model


def _projector(idx: Tensor, V_k: Tensor, bias: Tensor):
    def hook(result: Tensor, name: str) -> Tensor:
        out = result.clone()
        x = result[:, :, idx] - bias  # [batch, pos, n, d_model]
        x = x - x.mean(-1, keepdim=True)  # V_k is centred; a raw head's mean stays as it is
        coef = torch.einsum("bpnm,nmk->bpnk", x, V_k)
        out[:, :, idx] = result[:, :, idx] - x + torch.einsum("bpnk,nmk->bpnm", coef, V_k)
        return out

    return hook


#: Rows of logits turned into a loss at once (1024 × 50257 float32 ≈ 200 MB).
_LOSS_CHUNK = 1024
#: Prompts run together are chosen so that their logits stay under this many bytes.
_LOGITS_BUDGET = 256 * 2**20


def _loss_sum(logits: Tensor, tokens: Tensor, mask: Tensor) -> float:
    """Summed next-token cross-entropy over real tokens, a prompt and a chunk at a time (no copy of the logits)."""
    keep = mask[:, 1:] & mask[:, :-1]
    total, P = 0.0, logits.shape[1] - 1
    for b in range(logits.shape[0]):
        for i in range(0, P, _LOSS_CHUNK):
            j = min(i + _LOSS_CHUNK, P)
            ce = F.cross_entropy(logits[b, i:j], tokens[b, i + 1 : j + 1], reduction="none")
            total += float((ce * keep[b, i:j]).sum())
    return total


def default_ranks(d_head: int) -> list[int]:
    """0, 1, 2, 4, … up to d_head (always included)."""
    return sorted({0, d_head, *(2**i for i in range(int(math.log2(d_head)) + 1))})


def rank_k_loss(
    model: HookedGPT2,
    inputs: Any,
    heads: Any = None,
    ks: Optional[Sequence[int]] = None,
    *,
    progress: Optional[bool] = None,
) -> pd.DataFrame:
    """How many dimensions does a head really use? Loss with its ``W_OV`` cut to rank k, per head and k.

    Each (head, k) is one run with :func:`low_rank_ov` on that head alone, resumed from the clean
    residual stream entering the head's layer (earlier layers are not recomputed). Prompts run in
    groups whose logits fit in 256 MB, so long texts on GPT-2 never hold all their logits at once.

    Args:
        inputs: text to score — a prompt, a list of prompts, token ids or a Batch (≥ 2 tokens).
        heads: ``(layer, head)`` pairs; all heads by default.
        ks: ranks to try (0–d_head); default 0, 1, 2, 4, …, d_head.
        progress: tqdm bar on stderr (None: only on a terminal).

    Returns:
        ``layer, head, k, loss, clean_loss, delta`` with ``loss`` the mean next-token cross-entropy
        over real tokens and ``delta = loss - clean_loss``; ``delta`` is ~0 once ``k`` reaches the
        rank the head uses on this text.

    >>> from interp.testing import planted_model
    >>> from interp.prompts import repeated_tokens
    >>> model = planted_model()
    >>> tokens = repeated_tokens(model, n_prompts=4, half=12)
    >>> df = rank_k_loss(model, tokens, heads=[(1, 0)], ks=[0, 32])
    >>> df[["k", "loss", "clean_loss"]].round(2).to_dict("records")   # k = 0: log 32, it knows nothing
    [{'k': 0, 'loss': 3.47, 'clean_loss': 2.49}, {'k': 32, 'loss': 2.49, 'clean_loss': 2.49}]
    """
    from tqdm.auto import tqdm

    from interp.tokens import Batch

    cfg = model.cfg
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)] if heads is None else heads
    heads = select.heads(model, heads, sort=False)
    ks = default_ranks(cfg.d_head) if ks is None else [check_rank(model, k) for k in ks]
    if not ks:
        raise InterpError("no ranks given: pass ks=[...] with values 0–d_head, or None for the default")
    batch = model.to_batch(inputs)
    n_tokens = int((batch.attention_mask[:, 1:] & batch.attention_mask[:, :-1]).sum())
    if n_tokens == 0:
        raise InterpError("the text has fewer than 2 tokens: nothing to predict")
    runs = [(layer, head, k) for layer, head in heads for k in ks]
    layers = sorted({layer for layer, _ in heads if layer > 0})
    per_prompt = batch.tokens.shape[1] * cfg.d_vocab * torch.finfo(cfg.dtype).bits // 8
    size = max(1, _LOGITS_BUDGET // per_prompt)
    groups = [Batch(batch.tokens[i : i + size], batch.attention_mask[i : i + size]) for i in range(0, len(batch), size)]
    clean, sums = 0.0, [0.0] * len(runs)
    bar = tqdm(total=len(groups) * len(runs), desc="rank-k OV", disable=None if progress is None else not progress)
    try:
        with torch.inference_mode():
            for group in groups:
                toks, mask = group.tokens, group.attention_mask
                logits, cache = model.run(group, names=[("resid_pre", layer) for layer in layers])
                clean += _loss_sum(logits, toks, mask)
                del logits
                for i, (layer, head, k) in enumerate(runs):
                    # from layer 0 the run starts from the tokens (forward embeds them itself)
                    start = toks if layer == 0 else cache["resid_pre", layer]
                    with low_rank_ov(model, (layer, head), k):
                        out = model.forward(start, attention_mask=mask, start_at_layer=layer)
                    sums[i] += _loss_sum(out, toks, mask)
                    bar.update()
    finally:
        bar.close()
    clean /= n_tokens
    rows = [(layer, head, k, s / n_tokens, clean, s / n_tokens - clean) for (layer, head, k), s in zip(runs, sums)]
    return select.tidy(pd.DataFrame(rows, columns=["layer", "head", "k", "loss", "clean_loss", "delta"]))


def ov_view(
    model: HookedGPT2,
    layer: Any = None,
    head: Any = None,
    *,
    ks: Optional[Sequence[int]] = None,
    inputs: Any = None,
    n_directions: int = 3,
    top: int = 8,
    progress: Optional[bool] = None,
) -> dict:
    """Everything ``interp ov`` shows, as tables; ``result["table"]`` is the one ``--out`` writes.

    ``summary`` (every head, :func:`ov_summary`) and its ``rows`` (the layer's or head's); with a head,
    its ``spectrum`` and ``tokens`` (:func:`ov_spectrum`, :func:`ov_tokens`); with ``ks``, the
    ``rank_k`` loss table on ``inputs`` (default: 8 repeated random-token sequences), for the head,
    the layer's heads, or every head. ``table`` is ``rank_k`` if asked for, else the head's spectrum,
    else the layer's rows, else the summary.
    """
    from interp.prompts import repeated_tokens

    if head is not None and layer is None:
        raise InterpError("a head needs its layer")
    if head is not None:
        model.check_head(layer, head)
    elif layer is not None:
        model.check_layer(layer)
    if ks is not None:
        ks = [check_rank(model, k) for k in ks]
    summary = ov_summary(model)
    rows = summary if layer is None else summary[summary["layer"] == layer]
    rows = rows if head is None else rows[rows["head"] == head]
    out: dict[str, Any] = {"summary": summary, "rows": rows, "table": rows if layer is not None else summary}
    if head is not None:
        out["spectrum"] = out["table"] = ov_spectrum(model, layer, head)
        out["tokens"] = ov_tokens(model, layer, head, n_directions=n_directions, top=top)
    if ks is not None:
        heads = [(layer, head)] if head is not None else (
            [(layer, h) for h in range(model.cfg.n_heads)] if layer is not None else None)
        out["rank_k"] = out["table"] = rank_k_loss(model, repeated_tokens(model, 8) if inputs is None else inputs,
                                                   heads=heads, ks=ks, progress=progress)
    return out
