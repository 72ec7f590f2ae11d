"""The logit lens: what the model "would say" if it stopped after each layer.

At every layer *boundary* — the embeddings (``blocks.0.hook_resid_pre``), after each
attention layer (``resid_mid``) and after each MLP (``resid_post``) — the residual stream
at a few chosen positions is read with the model's own final LayerNorm and unembedding.
At the last boundary that is exactly the model's output; earlier ones show the answer forming.

Three views:

* :func:`logit_lens` — top-k tokens (and a target token's probability and rank) per boundary,
  as a tidy DataFrame; :func:`lens_logits` gives the raw lens logits as a tensor.
* :func:`direct_logit_attribution` — each head's, MLP's, embedding's and bias's direct
  contribution to a target logit (or a logit difference), summing exactly to it.
* ``unembed="pinv"`` — a second unembedding, the minimum-norm least-squares inverse of the
  embedding (:func:`pinv_unembedding`), compared against ``W_U`` in the output.

What "final LayerNorm on" means. With ``fold_ln=False`` models it is GPT-2's ``ln_f``:
centre, divide by the scale, multiply by the gain, add the bias; then ``@ W_U + b_U``. With
``fold_ln=True`` models the gain is already folded into ``W_U`` (and the bias into ``b_U``),
so the final LayerNorm has no parameters: it centres and divides by the scale. Either way the
lens at the last boundary equals the model's logits. With ``final_ln=False`` the lens is the
raw projection ``resid @ W_U`` (no normalisation, no bias), with whichever ``W_U`` the model
holds — in folded models that includes ``ln_f``'s gain.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.tokens import Batch

__all__ = [
    "logit_lens",
    "lens_logits",
    "LensLogits",
    "direct_logit_attribution",
    "pinv_unembedding",
    "lens_summary",
    "plot_logit_lens",
    "UNEMBEDDINGS",
]

#: The lenses: read the residual stream with the model's unembedding, or with the embedding's pseudo-inverse.
UNEMBEDDINGS = {"wu": "W_U, the model's unembedding", "pinv": "pinv(W_E), the min-norm least-squares inverse of the embedding"}
_CHUNK_BYTES = 256 * 2**20  # lens logits held at once while reducing to top-k


# ---------------------------------------------------------------------------- boundaries and positions
def _boundaries(n_layers: int, resid_post_only: bool) -> list[tuple[str, str, int]]:
    """(label, hook name, layer) of each boundary, in forward order."""
    out = [("embed", "blocks.0.hook_resid_pre", 0)]
    for layer in range(n_layers):
        if not resid_post_only:
            out.append((f"attn {layer}", f"blocks.{layer}.hook_resid_mid", layer))
        out.append((f"mlp {layer}", f"blocks.{layer}.hook_resid_post", layer))
    return out


def _positions(batch: Batch, positions: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Per prompt: (index into the padded tensor, index among its real tokens, valid) ``[batch, n]``.

    Positions count each prompt's real tokens (BOS = 0; negative from its last real token), so they
    mean the same with left or right padding. ``None`` = the last real token of each prompt.
    """
    lengths = batch.lengths.tolist()
    if positions is None:
        per_prompt = [[n - 1] for n in lengths]
    elif isinstance(positions, str) and positions == "all":
        per_prompt = [list(range(n)) for n in lengths]
    elif isinstance(positions, slice):
        per_prompt = [list(range(n))[positions] for n in lengths]
        if not all(per_prompt):
            raise InterpError(f"positions {positions} select no token of some prompt (lengths {lengths})")
    else:
        if isinstance(positions, Tensor):
            positions = positions.tolist()
        items = [positions] if isinstance(positions, (int, np.integer)) else positions
        try:
            items = list(items)
        except TypeError:
            items = [None]
        if not items or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in items):
            raise InterpError(f"positions must be an int, a list of ints, a slice or 'all', not {positions!r}")
        per_prompt = []
        for i, n in enumerate(lengths):
            for p in items:
                if not -n <= p < n:
                    raise InterpError(
                        f"position {int(p)} out of range for prompt {i}: it has {n} tokens (BOS included), "
                        f"so positions 0–{n - 1} or {-n}–-1"
                    )
            per_prompt.append([int(p) % n for p in items])
    width = max(len(p) for p in per_prompt)
    rel = torch.zeros(len(lengths), width, dtype=torch.long)
    valid = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, ps in enumerate(per_prompt):
        rel[i, : len(ps)], valid[i, : len(ps)] = torch.tensor(ps, dtype=torch.long), True
    first_real = batch.attention_mask.int().argmax(-1).cpu()  # 0 with right padding
    return (rel + first_real[:, None]).to(batch.tokens.device), rel, valid


def _token_id(model: HookedGPT2, token: Any, what: str) -> int:
    tok = model.tokenizer
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        if not 0 <= token < model.cfg.d_vocab:
            raise InterpError(f"{what} id {token} out of range: vocabulary has {model.cfg.d_vocab} tokens")
        return int(token)
    if not isinstance(token, str):
        raise InterpError(f"{what} must be a token string or a token id, not {type(token).__name__}")
    ids = tok(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        hint = " (GPT-2 words usually start with a space: ' Paris')" if len(ids) > 1 else ""
        raise InterpError(f"{what} {token!r} is {len(ids)} tokens: {pieces}; give a single token{hint}")
    if tok.unk_token_id is not None and ids[0] == tok.unk_token_id and token != tok.unk_token:
        raise InterpError(f"{what} {token!r} is not in the vocabulary (it tokenises to {tok.unk_token!r})")
    return ids[0]


def _token_ids(model: HookedGPT2, token: Any, n_prompts: int, what: str) -> Optional[Tensor]:
    """One token id per prompt (a single token is shared), or None."""
    if token is None:
        return None
    if isinstance(token, (list, tuple)):
        if len(token) != n_prompts:
            raise InterpError(f"got {len(token)} {what}s for {n_prompts} prompts: give one, or one per prompt")
        return torch.tensor([_token_id(model, t, what) for t in token])
    return torch.full((n_prompts,), _token_id(model, token, what))


# ---------------------------------------------------------------------------- the lenses
_PINV_CACHE: "weakref.WeakKeyDictionary[HookedGPT2, tuple]" = weakref.WeakKeyDictionary()


def pinv_unembedding(model: HookedGPT2) -> Float[Tensor, "d_model d_vocab"]:
    """The minimum-norm least-squares inverse of the embedding: ``pinv(W_E)``, ``[d_model, d_vocab]``.

    The embedding maps token coefficients ``c`` (``d_vocab``) to the residual stream ``x = A c``
    with ``A = W_Eᵀ`` (``d_model × d_vocab``, more unknowns than equations). The least-squares
    solution of least norm is ``c = B x`` with ``B = Aᵀ (A Aᵀ)⁺ = W_E (W_Eᵀ W_E)⁺``: it needs only
    the ``d_model × d_model`` Gram matrix ``W_Eᵀ W_E``, inverted on its range (folded models centre
    ``W_E``, so the all-ones direction is in its null space), with ``torch.linalg.pinv``'s default
    cutoff. Returned transposed, to read row vectors as ``x @ pinv_unembedding(model)``; computed
    in float64, once per model (cached until ``W_E`` changes).

    >>> import interp
    >>> from interp.testing import random_gpt2_hf
    >>> hf_model, tok = random_gpt2_hf()
    >>> m = interp.load(hf_model, tokenizer=tok, fold_ln=False)
    >>> B = pinv_unembedding(m)
    >>> bool(torch.allclose(B @ m.W_E, torch.eye(m.cfg.d_model), atol=1e-4))   # a left inverse of W_E
    True
    """
    W_E = model.W_E
    # An inference-mode tensor has no version counter (and cannot be modified in place anyway).
    version = None if W_E.is_inference() else W_E._version
    key = (W_E.data_ptr(), version, W_E.dtype, W_E.device)
    hit = _PINV_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad():
        E = W_E.to(torch.float64)
        lam, V = torch.linalg.eigh(E.T @ E)  # d_model × d_model: never a d_vocab × d_vocab matrix
        s = lam.clamp(min=0).sqrt()  # the singular values of W_E
        keep = s > torch.finfo(W_E.dtype).eps * max(W_E.shape) * s.max()
        gram_pinv = (V[:, keep] / lam[keep]) @ V[:, keep].T
        # The Gram matrix and its inverse need float64 (its condition number is W_E's squared); the
        # product with W_E does not, and in W_E's own precision it is 2-3× faster on a CPU.
        B = (gram_pinv.to(W_E.dtype) @ W_E.T).contiguous()
    _PINV_CACHE[model] = (key, B)
    return B


def _lens(model: HookedGPT2, unembed: str, final_ln: bool) -> Callable[[Tensor], Tensor]:
    """resid ``[..., d_model]`` -> scores ``[..., d_vocab]`` for one lens."""
    if unembed == "wu":
        if final_ln:
            return model.unembed  # the model's own final LN + W_U + b_U: the identity at the last boundary is exact
        return lambda x: x @ model.W_U
    B = pinv_unembedding(model)
    if final_ln:
        # pinv inverts the embedding, which writes to the raw residual stream: normalise (centre and
        # scale, as ln_f does, so layers are comparable) but apply no gain or bias — those belong to W_U.
        return lambda x: F.layer_norm(x, x.shape[-1:], eps=model.cfg.eps) @ B
    return lambda x: x @ B


def _check_options(model: Any, k: Any, unembed: Any, final_ln: Any) -> None:
    if not isinstance(model, HookedGPT2):
        raise InterpError(f"model must be an interp HookedGPT2 (from interp.load), not {type(model).__name__}")
    if unembed not in UNEMBEDDINGS:
        raise InterpError(f"unembed must be one of {', '.join(map(repr, UNEMBEDDINGS))}, not {unembed!r}")
    if not isinstance(final_ln, bool):
        raise InterpError(f"final_ln must be True or False, not {final_ln!r}")
    V = model.cfg.d_vocab
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= V:
        raise InterpError(f"k must be an integer from 1 to the vocabulary size {V}, not {k!r}")


def _resid_at_boundaries(
    model: HookedGPT2, batch: Batch, cols: Tensor, bounds: list
) -> Float[Tensor, "boundary batch pos d_model"]:
    rows = torch.arange(len(batch), device=cols.device)[:, None].expand_as(cols)
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, name: str) -> None:
        store[name] = x[rows, cols].detach()  # reduce in the hook: memory does not grow with pos

    # unembed=False: the lens needs no logits over every position (~1/3 of GPT-2 small's forward).
    model.forward(
        batch.tokens, attention_mask=batch.attention_mask, hooks=[(h, keep) for _, h, _ in bounds], unembed=False
    )
    return torch.stack([store[h] for _, h, _ in bounds])


@dataclass(frozen=True)
class LensLogits:
    """Lens logits at every boundary for the chosen positions of each prompt.

    ``logits[b, i, j]`` reads boundary ``labels[b]`` of prompt ``i`` at token ``positions[i, j]``
    (counted over its real tokens); entries with ``valid[i, j]`` False are filler (ragged selections).
    """

    logits: Float[Tensor, "boundary batch pos d_vocab"]
    labels: list[str]
    hooks: list[str]
    positions: Int[Tensor, "batch pos"]
    valid: Bool[Tensor, "batch pos"]
    batch: Batch
    unembed: str
    final_ln: bool


def lens_logits(
    model: HookedGPT2,
    inputs: Any,
    *,
    positions: Any = None,
    resid_post_only: bool = False,
    final_ln: Any = True,
    unembed: Any = "wu",
    prepend_bos: bool = True,
) -> LensLogits:
    """The full lens logits ``[boundary, batch, pos, d_vocab]`` (see :func:`logit_lens` for the arguments).

    Holds ``d_vocab`` floats per boundary and position; :func:`logit_lens` reduces them to top-k
    in chunks instead.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> lens = lens_logits(model, "a b c a b")
    >>> lens.labels
    ['embed', 'attn 0', 'mlp 0', 'attn 1', 'mlp 1']
    >>> bool(torch.allclose(lens.logits[-1, 0, 0], model("a b c a b")[0, -1], atol=1e-5))
    True
    """
    _check_options(model, 1, unembed, final_ln)
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        cols, rel, valid = _positions(batch, positions)
        bounds = _boundaries(model.cfg.n_layers, resid_post_only)
        resid = _resid_at_boundaries(model, batch, cols, bounds)
        logits = _lens(model, unembed, final_ln)(resid)
    return LensLogits(logits, [b[0] for b in bounds], [b[1] for b in bounds], rel, valid, batch, unembed, final_ln)


def logit_lens(
    model: HookedGPT2,
    inputs: Any,
    *,
    positions: Any = None,
    k: Any = 5,
    target: Any = None,
    resid_post_only: bool = False,
    final_ln: Any = True,
    unembed: Any = "wu",
    prepend_bos: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Top-k tokens of the residual stream at every layer boundary, read through the unembedding.

    Runs the model once, keeping only the residual stream at the boundaries and positions asked
    for (the model's own unembedding of every position is skipped), then unembeds those.

    Args:
        model: a :class:`~interp.model.HookedGPT2`.
        inputs: a prompt, a list of prompts (padded), token ids ``[batch, pos]`` or a Batch.
        positions: token positions per prompt, counted over its real tokens (0 = BOS, -1 = last):
            an int, a list of ints, a slice or ``"all"``; default the last real token of each prompt.
        k: top tokens per boundary and position.
        target: a token (string that is exactly one token, or an id), or one per prompt: adds its
            probability, log-probability, logit and rank at every boundary.
        resid_post_only: only the embeddings and the residual stream after each block (``L + 1``
            boundaries) instead of after each attention layer and each MLP (``2L + 1``).
        final_ln: apply the final LayerNorm before unembedding (see the module docs for what that
            means with folded and raw models); ``False`` gives the raw ``resid @ W_U``.
        unembed: ``"wu"`` (the model's unembedding) or ``"pinv"`` (:func:`pinv_unembedding`; the
            table then compares each cell with the ``W_U`` lens).
        progress: show a progress bar (on a terminal) while unembedding many positions.

    Returns:
        One row per prompt, boundary, position and rank: ``prompt, boundary`` (0 = embeddings),
        ``label`` (``embed``, ``attn 3``, ``mlp 3`` = the residual stream after that sublayer),
        ``hook, layer, position, input_token`` (the token there; the lens predicts the next one),
        ``rank`` (1 = top), ``token_id, token, prob, logprob, logit``; with a target ``target,
        target_prob, target_logprob, target_logit, target_rank``; with ``unembed="pinv"``
        ``wu_token`` (the W_U lens's token at that rank), ``wu_top1_agrees`` and ``wu_corr`` (the
        Pearson correlation of the two lenses' scores over the vocabulary); and the lens used,
        ``unembed, final_ln``. For ``pinv``, ``logit`` is the least-squares coefficient and ``prob``
        its softmax: read its ranks, not its probabilities' scale.

    >>> from interp.testing import planted_model
    >>> model = planted_model()     # its layer-1 induction head predicts the repeat of a sequence
    >>> df = logit_lens(model, "a b c d a b c", target="d", k=1)
    >>> print(df[["label", "target_prob"]].round(3).to_string(index=False))
     label  target_prob
     embed        0.031
    attn 0        0.031
     mlp 0        0.031
    attn 1        0.999
     mlp 1        0.999
    """
    _check_options(model, k, unembed, final_ln)
    k = int(k)
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        targets = _token_ids(model, target, len(batch), "target")
        cols, rel, valid = _positions(batch, positions)
        bounds = _boundaries(model.cfg.n_layers, resid_post_only)
        resid = _resid_at_boundaries(model, batch, cols, bounds)[:, valid.to(cols.device)]  # [boundary, n, d_model]
        n_b, n = resid.shape[:2]
        prompt_of = torch.arange(len(batch))[:, None].expand_as(rel)[valid]  # [n]
        lens = _lens(model, unembed, final_ln)
        wu = _lens(model, "wu", final_ln) if unembed == "pinv" else None
        flat = resid.reshape(n_b * n, -1)
        flat_prompt = prompt_of.repeat(n_b)
        chunk = max(1, _CHUNK_BYTES // (4 * model.cfg.d_vocab * (2 if wu else 1)))
        parts: dict[str, list] = {}
        starts = range(0, n_b * n, chunk)
        for s in tqdm(starts, desc="logit lens", disable=None if progress else True, leave=False):
            x = flat[s : s + chunk]
            for key, val in _reduce(lens(x), k, None if targets is None else targets[flat_prompt[s : s + chunk]],
                                    None if wu is None else wu(x)).items():
                parts.setdefault(key, []).append(val.cpu())
    out = {key: torch.cat(v).numpy() for key, v in parts.items()}

    labels, hooks, layers = zip(*bounds)
    tok_text = _decoder(model)
    input_ids = batch.tokens[prompt_of.to(cols.device), cols[valid.to(cols.device)]].cpu().numpy()
    per_cell = {
        "prompt": np.tile(prompt_of.numpy(), n_b),
        "boundary": np.repeat(np.arange(n_b), n),
        "label": np.repeat(np.array(labels, dtype=object), n),
        "hook": np.repeat(np.array(hooks, dtype=object), n),
        "layer": np.repeat(np.array(layers), n),
        "position": np.tile(rel[valid].numpy(), n_b),
        "input_token": np.tile(np.array([tok_text(i) for i in input_ids], dtype=object), n_b),
    }
    df = pd.DataFrame({key: np.repeat(v, k) for key, v in per_cell.items()})
    df["rank"] = np.tile(np.arange(1, k + 1), n_b * n)
    df["token_id"] = out["top_id"].reshape(-1)
    df["token"] = [tok_text(i) for i in df["token_id"]]
    for col in ("prob", "logprob", "logit"):
        df[col] = out[f"top_{col}"].reshape(-1)
    if targets is not None:
        df["target"] = np.repeat([tok_text(int(targets[p])) for p in per_cell["prompt"]], k)
        for col in ("prob", "logprob", "logit", "rank"):
            df[f"target_{col}"] = np.repeat(out[f"target_{col}"], k)
    if wu is not None:
        df["wu_token"] = [tok_text(i) for i in out["wu_top_id"].reshape(-1)]
        df["wu_top1_agrees"] = np.repeat(out["wu_top1_agrees"], k)
        df["wu_corr"] = np.repeat(out["wu_corr"], k)
    df["unembed"], df["final_ln"] = unembed, final_ln
    df = df.sort_values(["prompt", "position", "boundary", "rank"], kind="stable").reset_index(drop=True)
    df.attrs.update(unembed=unembed, final_ln=final_ln, fold_ln=model.cfg.fold_ln, model=model.cfg.name)
    return df


def _reduce(scores: Tensor, k: int, targets: Optional[Tensor], wu: Optional[Tensor]) -> dict[str, Tensor]:
    """Top-k (and target, and W_U comparison) statistics of a chunk of lens scores ``[n, d_vocab]``."""
    logp = scores.float().log_softmax(-1)
    top_logit, top_id = scores.topk(k, -1)
    top_logp = logp.gather(-1, top_id)
    out = {"top_id": top_id, "top_logit": top_logit.float(), "top_logprob": top_logp, "top_prob": top_logp.exp()}
    if targets is not None:
        t = targets.to(scores.device)[:, None]
        t_logit, t_logp = scores.gather(-1, t)[:, 0], logp.gather(-1, t)[:, 0]
        out.update(
            target_logit=t_logit.float(), target_logprob=t_logp, target_prob=t_logp.exp(),
            target_rank=1 + (scores > t_logit[:, None]).sum(-1),
        )
    if wu is not None:
        wu_id = wu.topk(k, -1).indices
        a, b = scores.float(), wu.float()
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        out.update(
            wu_top_id=wu_id, wu_top1_agrees=wu_id[:, 0] == top_id[:, 0],
            wu_corr=((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).clamp(-1, 1),  # NaN if one is flat
        )
    return out


def _decoder(model: HookedGPT2) -> Callable[[int], str]:
    cache: dict[int, str] = {}

    def text(i) -> str:
        i = int(i)
        if i not in cache:
            cache[i] = model.tokenizer.decode([i])
        return cache[i]

    return text


# ---------------------------------------------------------------------------- direct logit attribution
def direct_logit_attribution(
    model: HookedGPT2,
    inputs: Any,
    target: Any,
    *,
    contrast: Any = None,
    positions: Any = None,
    prepend_bos: bool = True,
    progress: bool = True,
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
    _check_options(model, 1, "wu", True)
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        t_ids = _token_ids(model, target, len(batch), "target").to(model.cfg.device)
        c_ids = _token_ids(model, contrast, len(batch), "contrast")
        c_ids = None if c_ids is None else c_ids.to(model.cfg.device)
        cols, rel, valid = _positions(batch, positions)
        u = model.lnf_w[:, None] * model.W_U[:, t_ids]  # [d_model, batch]: the direction each logit reads
        bias = model.lnf_b @ model.W_U[:, t_ids] + model.b_U[t_ids]
        if c_ids is not None:
            u = u - model.lnf_w[:, None] * model.W_U[:, c_ids]
            bias = bias - model.lnf_b @ model.W_U[:, c_ids] - model.b_U[c_ids]
        cfg = model.cfg
        n_comp = 2 + cfg.n_layers * (cfg.n_heads + 2)
        # decompose_resid holds every component at every position: chunk prompts to bound that memory.
        per_prompt = n_comp * batch.tokens.shape[1] * cfg.d_model * 4
        size = max(1, _CHUNK_BYTES * 2 // per_prompt)
        contrib, totals, labels = [], [], None
        for s in tqdm(range(0, len(batch), size), desc="direct logit attribution",
                      disable=None if progress else True, leave=False):
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
    tok_text = _decoder(model)
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
    return df


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


# ---------------------------------------------------------------------------- reading the table
def lens_summary(df: pd.DataFrame, prompt: int = 0) -> pd.DataFrame:
    """A wide view of :func:`logit_lens`'s table for one prompt: one row per position and boundary.

    Columns ``position, input, boundary, top 1 … top k`` (``'token' prob``), then the target's
    probability and rank and the ``W_U`` comparison when the table has them.
    """
    sub = df[df["prompt"] == prompt]
    if sub.empty:
        raise InterpError(f"prompt {prompt} not in the table (it has prompts {sorted(df['prompt'].unique())})")
    rows = []
    for (pos, b), cell in sub.groupby(["position", "boundary"], sort=True):
        first = cell.iloc[0]
        row = {"position": pos, "input": first["input_token"], "boundary": first["label"]}
        for _, r in cell.iterrows():
            row[f"top {r['rank']}"] = f"{r['token']!r} {_pct(r['prob'])}"
        if "target" in cell:
            row[f"P({first['target']!r})"] = _pct(first["target_prob"])
            row["rank"] = int(first["target_rank"])
        if "wu_token" in cell:
            row["W_U top 1"] = repr(first["wu_token"])
            row["corr W_U"] = round(float(first["wu_corr"]), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(p: Any) -> str:
    p = float(p)
    return f"{100 * p:.1f}%" if p >= 0.001 else f"{100 * p:.2g}%"


def plot_logit_lens(df: pd.DataFrame, path: Any, *, prompt: int = 0, title: str = "") -> Path:
    """The familiar grid for one prompt, and the target's probability across boundaries.

    Left panel: boundaries (embeddings at the bottom) × positions; each cell shows the lens's top
    token, coloured by its probability. Right panel (when the table has a target): the target's
    probability at each boundary, one line per position, on a log scale. Written atomically;
    the format follows the suffix (.png, .svg, .pdf).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from interp.export import save_figure

    sub = df[(df["prompt"] == prompt) & (df["rank"] == 1)]
    if sub.empty:
        raise InterpError(f"prompt {prompt} not in the table (it has prompts {sorted(df['prompt'].unique())})")
    positions = sorted(sub["position"].unique())
    n_b = int(sub["boundary"].max()) + 1
    labels = sub.drop_duplicates("boundary").sort_values("boundary")["label"].tolist()
    inputs = sub.drop_duplicates("position").set_index("position")["input_token"]
    grid = np.full((n_b, len(positions)), np.nan)
    text = np.full((n_b, len(positions)), "", dtype=object)
    col = {p: j for j, p in enumerate(positions)}
    for r in sub.itertuples():
        grid[r.boundary, col[r.position]] = r.prob
        text[r.boundary, col[r.position]] = r.token
    has_target = "target_prob" in sub
    width = min(2 + 0.9 * len(positions), 40)
    fig, axes = plt.subplots(
        1, 2 if has_target else 1, figsize=(width + (5 if has_target else 0), 1.5 + 0.38 * n_b), squeeze=False,
        gridspec_kw={"width_ratios": [width, 5] if has_target else [1], "wspace": 0.45},
    )
    ax = axes[0, 0]
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    if grid.size <= 1500:
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, _short(text[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 else "black")
    ax.set_yticks(range(n_b), labels)
    ax.set_xticks(range(len(positions)), [f"{_short(inputs[p])}\n{p}" for p in positions], fontsize=7)
    ax.set_xlabel("input token / position (the lens predicts the next token)")
    ax.set_ylabel("residual stream after")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="top-1 probability")
    if has_target:
        tax = axes[0, 1]
        for p in positions:
            curve = sub[sub["position"] == p].sort_values("boundary")
            tax.plot(curve["boundary"], curve["target_prob"], marker="o", label=f"pos {p}")
        tax.set_yscale("log")
        tax.set_xticks(range(n_b), labels, rotation=90, fontsize=7)
        tax.set_ylabel("probability (log scale)")
        tax.set_title(f"P({sub['target'].iloc[0]!r})")
        if len(positions) <= 10:
            tax.legend(fontsize=7)
    lens = "W_U" if df.attrs.get("unembed", sub["unembed"].iloc[0]) == "wu" else "pinv(W_E)"
    ln = "final LN" if bool(sub["final_ln"].iloc[0]) else "no final LN"
    fig.suptitle(title or f"logit lens ({lens}, {ln})")
    return save_figure(fig, path, dpi=150)


def _short(token: str, n: int = 8) -> str:
    token = token.replace("\n", "\\n")
    return token if len(token) <= n else token[: n - 1] + "…"
