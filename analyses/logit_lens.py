"""The logit lens: what the model "would say" if it stopped after each layer.

At every layer *boundary* — the embeddings (``blocks.0.hook_resid_pre``), after each
attention layer (``resid_mid``) and after each MLP (``resid_post``) — the residual stream
at a few chosen positions is read with the model's own final LayerNorm and unembedding.
At the last boundary that is exactly the model's output; earlier ones show the answer forming.

Two views (and :mod:`analyses.dla`, each component's direct contribution to a logit):

* :func:`logit_lens` — top-k tokens (and a target token's probability and rank) per boundary,
  as a tidy DataFrame; :func:`lens_logits` gives the raw lens logits as a tensor.
* ``unembed="pinv"`` — a second unembedding, the minimum-norm least-squares inverse of the
  embedding (:func:`pinv_unembedding`), compared against ``W_U`` in the output.
* ``lens=tuned`` — the tuned lens (:class:`analyses.tuned_lens.TunedLens`): each boundary's stream
  goes through its learned translator first; its boundaries are the embeddings and after each block.

What "final LayerNorm on" means. With ``fold_ln=False`` models it is GPT-2's ``ln_f``:
centre, divide by the scale, multiply by the gain, add the bias; then ``@ W_U + b_U``. With
``fold_ln=True`` models the gain is already folded into ``W_U`` (and the bias into ``b_U``),
so the final LayerNorm has no parameters: it centres and divides by the scale. Either way the
lens at the last boundary equals the model's logits. With ``final_ln=False`` the lens is the
raw projection ``resid @ W_U`` (no normalisation, no bias), with whichever ``W_U`` the model
holds — in folded models that includes ``ln_f``'s gain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp import select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.tokens import Batch, decoder

__all__ = ["logit_lens", "lens_logits", "LensLogits", "pinv_unembedding", "lens_summary", "describe", "UNEMBEDDINGS",
           "lens_name"]

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

    :mod:`interp.select`'s positions (real tokens counted, BOS = 0; default the last real token).
    """
    p = select.positions(batch, positions)
    return p.cols, p.rel.cpu(), p.valid.cpu()


def _token_ids(model: HookedGPT2, token: Any, n_prompts: int, what: str) -> Optional[Tensor]:
    """One token id per prompt (a single token is shared), or None."""
    return None if token is None else select.token_ids(model, token, n_prompts, what).cpu()


# ---------------------------------------------------------------------------- the lenses
def pinv_unembedding(model: HookedGPT2) -> Float[Tensor, "d_model d_vocab"]:
    """The minimum-norm least-squares inverse of the embedding: ``pinv(W_E)``, ``[d_model, d_vocab]``.

    The embedding maps token coefficients ``c`` (``d_vocab``) to the residual stream ``x = A c``
    with ``A = W_Eᵀ`` (``d_model × d_vocab``, more unknowns than equations). The least-squares
    solution of least norm is ``c = B x`` with ``B = Aᵀ (A Aᵀ)⁺ = W_E (W_Eᵀ W_E)⁺``: it needs only
    the ``d_model × d_model`` Gram matrix ``W_Eᵀ W_E``, inverted on its range (folded models centre
    ``W_E``, so the all-ones direction is in its null space), with ``torch.linalg.pinv``'s default
    cutoff. Returned transposed, to read row vectors as ``x @ pinv_unembedding(model)``; computed
    in float64, once per model (``model.cached``; weights are never changed in place).

    >>> import interp
    >>> from interp.testing import random_gpt2_hf
    >>> hf_model, tok = random_gpt2_hf()
    >>> m = interp.load(hf_model, tokenizer=tok, fold_ln=False)
    >>> B = pinv_unembedding(m)
    >>> bool(torch.allclose(B @ m.W_E, torch.eye(m.cfg.d_model), atol=1e-4))   # a left inverse of W_E
    True
    """
    return model.cached("pinv_unembedding", lambda: _pinv(model.W_E))


def _pinv(W_E: Tensor) -> Tensor:
    with torch.no_grad():
        E = W_E.to(torch.float64)
        lam, V = torch.linalg.eigh(E.T @ E)  # d_model × d_model: never a d_vocab × d_vocab matrix
        s = lam.clamp(min=0).sqrt()  # the singular values of W_E
        keep = s > torch.finfo(W_E.dtype).eps * max(W_E.shape) * s.max()
        gram_pinv = (V[:, keep] / lam[keep]) @ V[:, keep].T
        # The Gram matrix and its inverse need float64 (its condition number is W_E's squared); the
        # product with W_E does not, and in W_E's own precision it is 2-3× faster on a CPU.
        return (gram_pinv.to(W_E.dtype) @ W_E.T).contiguous()


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


def _check_options(model: Any, k: Any, unembed: Any, final_ln: Any, lens: Any = None, resid_post_only: Any = None) -> bool:
    """Check the options; returns ``resid_post_only`` resolved (a tuned lens has only those boundaries)."""
    if not isinstance(model, HookedGPT2):
        raise InterpError(f"model must be an interp HookedGPT2 (from interp.load), not {type(model).__name__}")
    if lens is not None:
        from .tuned_lens import TunedLens

        if not isinstance(lens, TunedLens):
            raise InterpError(f"lens must be a TunedLens (analyses.tuned_lens), not {type(lens).__name__}")
        if unembed != "wu" or final_ln is not True:
            raise InterpError("a tuned lens decodes through the final LayerNorm and W_U: leave unembed='wu', final_ln=True")
        if resid_post_only is False:
            raise InterpError("a tuned lens has translators only at the embeddings and after each block: "
                              "resid_post_only=False (after each attention layer) is not available")
        lens.check(model)
        resid_post_only = True
    if unembed not in UNEMBEDDINGS:
        raise InterpError(f"unembed must be one of {', '.join(map(repr, UNEMBEDDINGS))}, not {unembed!r}")
    if not isinstance(final_ln, bool):
        raise InterpError(f"final_ln must be True or False, not {final_ln!r}")
    V = model.cfg.d_vocab
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= V:
        raise InterpError(f"k must be an integer from 1 to the vocabulary size {V}, not {k!r}")
    if resid_post_only is None:
        return False
    if not isinstance(resid_post_only, bool):
        raise InterpError(f"resid_post_only must be True or False, not {resid_post_only!r}")
    return resid_post_only


def lens_name(unembed: str, lens: Any = None) -> str:
    """The lens a table reads: ``logit`` (W_U), ``pinv`` or ``tuned``."""
    return "tuned" if lens is not None else {"wu": "logit", "pinv": "pinv"}[unembed]


def _translate(resid: Tensor, lens: Any) -> Tensor:
    """Each boundary's stream through its translator (boundary b = the stream entering block b; the last unchanged)."""
    return resid if lens is None else torch.stack([lens.translate(r, b) for b, r in enumerate(resid)])


def _resid_at_boundaries(
    model: HookedGPT2, batch: Batch, cols: Tensor, bounds: list
) -> Float[Tensor, "boundary batch pos d_model"]:
    rows = torch.arange(len(batch), device=cols.device)[:, None].expand_as(cols)
    store: dict[str, Tensor] = {}

    def keep(x: Tensor, name: str) -> None:
        store[name] = x[rows, cols].detach()  # reduce in the hook: memory does not grow with pos

    # stop_at_layer=n_layers: the final stream, not the logits: the lens needs no logits over every position (~1/3 of GPT-2 small's forward).
    model.forward(
        batch.tokens, attention_mask=batch.attention_mask, hooks=[(h, keep) for _, h, _ in bounds], stop_at_layer=model.cfg.n_layers
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
    lens: str = "logit"


def lens_logits(
    model: HookedGPT2,
    inputs: Any,
    *,
    positions: Any = None,
    resid_post_only: Any = None,
    final_ln: Any = True,
    unembed: Any = "wu",
    lens: Any = None,
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
    resid_post_only = _check_options(model, 1, unembed, final_ln, lens, resid_post_only)
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        cols, rel, valid = _positions(batch, positions)
        bounds = _boundaries(model.cfg.n_layers, resid_post_only)
        resid = _translate(_resid_at_boundaries(model, batch, cols, bounds), lens)
        logits = _lens(model, unembed, final_ln)(resid)
    return LensLogits(logits, [b[0] for b in bounds], [b[1] for b in bounds], rel, valid, batch, unembed, final_ln,
                      lens_name(unembed, lens))


def logit_lens(
    model: HookedGPT2,
    inputs: Any,
    *,
    positions: Any = None,
    k: Any = 5,
    target: Any = None,
    resid_post_only: Any = None,
    final_ln: Any = True,
    unembed: Any = "wu",
    lens: Any = None,
    prepend_bos: bool = True,
    progress: Optional[bool] = None,
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
            boundaries) instead of after each attention layer and each MLP (``2L + 1``); the
            default with a tuned lens (the only boundaries it has).
        final_ln: apply the final LayerNorm before unembedding (see the module docs for what that
            means with folded and raw models); ``False`` gives the raw ``resid @ W_U``.
        unembed: ``"wu"`` (the model's unembedding) or ``"pinv"`` (:func:`pinv_unembedding`; the
            table then compares each cell with the ``W_U`` lens).
        lens: a :class:`~analyses.tuned_lens.TunedLens`: read each boundary through its translator
            first (checked against the model: shape, unembedding, weight mode).
        progress: a progress bar while unembedding many positions (default: only on a terminal).

    Returns:
        One row per prompt, boundary, position and rank: ``prompt, boundary`` (0 = embeddings),
        ``label`` (``embed``, ``attn 3``, ``mlp 3`` = the residual stream after that sublayer),
        ``hook, layer, position, input_token`` (the token there; the lens predicts the next one),
        ``rank`` (1 = top), ``token_id, token, prob, logprob, logit``; with a target ``target,
        target_prob, target_logprob, target_logit, target_rank``; with ``unembed="pinv"``
        ``wu_token`` (the W_U lens's token at that rank), ``wu_top1_agrees`` and ``wu_corr`` (the
        Pearson correlation of the two lenses' scores over the vocabulary); and the lens used,
        ``unembed, final_ln``. For ``pinv``, ``logit`` is the least-squares coefficient and ``prob``
        its softmax: read its ranks, not its probabilities' scale. ``lens`` names the lens
        (``logit``, ``pinv`` or ``tuned``).

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
    resid_post_only = _check_options(model, k, unembed, final_ln, lens, resid_post_only)
    k, tuned = int(k), lens
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        targets = _token_ids(model, target, len(batch), "target")
        cols, rel, valid = _positions(batch, positions)
        bounds = _boundaries(model.cfg.n_layers, resid_post_only)
        resid = _translate(_resid_at_boundaries(model, batch, cols, bounds), tuned)[:, valid.to(cols.device)]  # [boundary, n, d_model]
        n_b, n = resid.shape[:2]
        prompt_of = torch.arange(len(batch))[:, None].expand_as(rel)[valid]  # [n]
        lens = _lens(model, unembed, final_ln)
        wu = _lens(model, "wu", final_ln) if unembed == "pinv" else None
        flat = resid.reshape(n_b * n, -1)
        flat_prompt = prompt_of.repeat(n_b)
        chunk = max(1, _CHUNK_BYTES // (4 * model.cfg.d_vocab * (2 if wu else 1)))
        parts: dict[str, list] = {}
        starts = range(0, n_b * n, chunk)
        for s in tqdm(starts, desc="logit lens", disable=None if progress is None else not progress, leave=False):
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
    df["unembed"], df["final_ln"], df["lens"] = unembed, final_ln, lens_name(unembed, tuned)
    df = df.sort_values(["prompt", "position", "boundary", "rank"], kind="stable").reset_index(drop=True)
    df.attrs.update(unembed=unembed, final_ln=final_ln, fold_ln=model.cfg.fold_ln, model=model.cfg.name,
                    lens=lens_name(unembed, tuned), tuned_lens=None if tuned is None else tuned.source)
    return select.tidy(df)


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
    return decoder(model.tokenizer)


# ---------------------------------------------------------------------------- reading the table
def describe(df: pd.DataFrame) -> str:
    """One line saying what a :func:`logit_lens` table reads: which unembedding, which final LayerNorm."""
    a = df.attrs
    if a.get("lens") == "tuned":
        return (f"tuned lens of {a['model']}: each boundary's translator from {a['tuned_lens']}, then the final "
                "LayerNorm and W_U; probabilities of the next token")
    lens = {"wu": "W_U", "pinv": "pinv(W_E), compared with W_U"}[a["unembed"]]
    ln = "raw resid @ unembedding, no final LayerNorm"
    if a["final_ln"]:
        ln = "final LayerNorm (parameter-free: its gain and bias are folded into W_U)" if a["fold_ln"] else \
            "final LayerNorm (GPT-2's ln_f, with gain and bias)"
    reads = "probabilities of the next token" if a["unembed"] == "wu" else \
        "softmax of least-squares token coefficients (which input tokens the stream resembles)"
    return f"logit lens of {a['model']}: {lens}; {ln}; {reads}"


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
