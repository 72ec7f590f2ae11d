"""The logit, pseudo-inverse and tuned lenses side by side: per-layer quality on text, and a prompt's trajectory.

All three read the same boundaries — the residual stream entering each block (the embeddings first)
and after the last block, ``n_layers + 1`` of them, where the tuned lens has its translators — and
are compared with the model's own final distribution:

* ``logit``: the final LayerNorm and ``W_U`` (:mod:`analyses.logit_lens`);
* ``pinv``: the normalised stream times ``pinv(W_E)`` (least-squares token coefficients; their softmax
  is not a calibrated distribution, so its KL and cross-entropy say how far it is from being one);
* ``tuned``: each boundary's translator, then the final LayerNorm and ``W_U``
  (:class:`analyses.tuned_lens.TunedLens`).

At the last boundary the logit and tuned lenses *are* the model's output: KL exactly 0.

:func:`evaluate_lenses` averages, over text (by default the bundled corpus's held-out split), the
KL divergence from the model's final distribution to each lens's (``KL(final ‖ lens)``, the tuned
lens's training loss) and the lens's cross-entropy on the next token. :func:`prediction_trajectory`
gives, for one prompt, each lens's top token at every boundary and position with its probability,
the distribution's entropy, its KL to the final distribution and the probability of the token that
actually comes next — the table the trajectory figure draws (:func:`interp.plotting.trajectory_figure`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp import select
from interp.errors import InterpError
from interp.model import HookedGPT2
from interp.tokens import decoder

from .logit_lens import _boundaries, _lens, _positions, _resid_at_boundaries
from .lens_training import training_windows
from .tuned_lens import TunedLens

__all__ = ["evaluate_lenses", "prediction_trajectory", "LENSES", "COLOR_BY"]

#: The lenses compared here.
LENSES = {"logit": "final LayerNorm + W_U", "pinv": "normalised stream @ pinv(W_E)",
          "tuned": "translator, then final LayerNorm + W_U"}
#: What a trajectory cell's colour can show.
COLOR_BY = {"entropy": "entropy of the lens's distribution (nats)", "target_prob": "probability of the next token",
            "kl": "KL(final ‖ lens) (nats)"}


def _choose(model: Any, lenses: Any, tuned: Any) -> list[str]:
    if not isinstance(model, HookedGPT2):
        raise InterpError(f"model must be an interp HookedGPT2 (from interp.load), not {type(model).__name__}")
    if tuned is not None:
        if not isinstance(tuned, TunedLens):
            raise InterpError(f"tuned must be a TunedLens (analyses.tuned_lens), not {type(tuned).__name__}")
        tuned.check(model)
    if lenses is None:
        return ["logit", "pinv"] + (["tuned"] if tuned is not None else [])
    names = [lenses] if isinstance(lenses, str) else list(lenses)
    bad = [n for n in names if n not in LENSES]
    if bad or not names:
        raise InterpError(f"unknown lens {bad[0] if bad else names!r}: choose from {', '.join(LENSES)}")
    if "tuned" in names and tuned is None:
        raise InterpError("lens 'tuned' needs a tuned lens: pass tuned=TunedLens.load(DIR) or train_tuned_lens(model)")
    return list(dict.fromkeys(names))


def _readers(model: HookedGPT2, names: list[str], tuned: Optional[TunedLens]) -> dict[str, Callable]:
    """lens name -> fn(resid [n, d_model], boundary) -> scores [n, d_vocab]."""
    out: dict[str, Callable] = {}
    for name in names:
        if name == "logit":
            out[name] = lambda x, b: model.unembed(x)
        elif name == "pinv":
            pinv = _lens(model, "pinv", True)
            out[name] = lambda x, b, pinv=pinv: pinv(x)
        else:
            out[name] = lambda x, b: tuned.logits(model, x, b)
    return out


def _hooks(model: HookedGPT2) -> list[tuple[str, str, int]]:
    return _boundaries(model.cfg.n_layers, True)


# ---------------------------------------------------------------------------- quality on text
def evaluate_lenses(
    model: HookedGPT2,
    tuned: Optional[TunedLens] = None,
    text: Any = None,
    *,
    lenses: Any = None,
    max_windows: Optional[int] = None,
    n_ctx: Optional[int] = None,
    batch_size: int = 16,
    progress: Optional[bool] = None,
) -> pd.DataFrame:
    """Per lens and boundary: mean KL to the model's final distribution, and next-token cross-entropy.

    Args:
        model: a :class:`~interp.model.HookedGPT2`.
        tuned: a :class:`~analyses.tuned_lens.TunedLens` (adds the ``tuned`` rows).
        text: None — the bundled corpus's **held-out** split; a path, documents or token windows
            ``[n, pos]`` (:func:`analyses.tuned_lens.training_windows`'s kinds; in their order).
        lenses: which lenses (default ``logit``, ``pinv`` and, with ``tuned``, ``tuned``).
        max_windows: read at most this many windows (default all the text gives).
        n_ctx: window length (default the model's context).
        batch_size: windows per forward pass.
        progress: a progress bar (default: only on a terminal).

    Returns:
        One row per lens and boundary: ``lens, boundary, label`` (``embed``, ``mlp 3`` = after block
        3), ``hook``, ``kl`` (mean over every token, nats), ``ce`` (mean over every token that has a
        next one, nats), ``tokens``, ``predictions``. ``attrs`` say what was read.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> windows = torch.randint(1, model.cfg.d_vocab, (4, 12)); windows[:, 0] = 0
    >>> df = evaluate_lenses(model, TunedLens.zeros(model), windows, progress=False)
    >>> df[df.lens == "tuned"]["kl"].tolist() == df[df.lens == "logit"]["kl"].tolist()   # zero translators
    True
    >>> float(df[df.lens == "logit"]["kl"].iloc[-1])       # the last boundary is the model itself
    0.0
    """
    names = _choose(model, lenses, tuned)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InterpError(f"batch_size must be a positive integer, not {batch_size!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, (int, np.integer))
                                    or max_windows < 1):
        raise InterpError(f"max_windows must be a positive integer, not {max_windows!r}")
    windows = _eval_windows(model, text, max_windows, n_ctx)
    bounds = _hooks(model)
    readers = _readers(model, names, tuned)
    n_b = len(bounds)
    kl = torch.zeros(len(names), n_b, dtype=torch.float64)
    ce = torch.zeros(len(names), n_b, dtype=torch.float64)
    n_tok = n_pred = 0
    batches = windows.split(batch_size)
    with torch.no_grad():
        for chunk in tqdm(batches, desc="lens eval", disable=None if progress is None else not progress, leave=False):
            chunk = chunk.to(model.cfg.device)
            B, P = chunk.shape
            resid = _resid_at_boundaries(model, model.to_batch(chunk), torch.arange(P).expand(B, P), bounds)
            resid = resid.flatten(1, 2)  # [boundary, B·P, d_model]
            final = model.unembed(resid[-1]).float().log_softmax(-1)
            p = final.exp()
            nxt = torch.cat([chunk[:, 1:], chunk[:, :1]], 1).flatten()  # the next token (the last wraps: dropped)
            has_next = (torch.arange(P) < P - 1).expand(B, P).flatten().to(chunk.device)
            for i, name in enumerate(names):
                for b in range(n_b):
                    logq = readers[name](resid[b], b).float().log_softmax(-1)
                    kl[i, b] += (p * (final - logq)).sum(-1).double().sum().cpu()
                    ce[i, b] -= logq.gather(-1, nxt[:, None])[:, 0][has_next].double().sum().cpu()
            n_tok += B * P
            n_pred += B * (P - 1)
    rows = [{"lens": name, "boundary": b, "label": bounds[b][0], "hook": bounds[b][1],
             "kl": float(kl[i, b] / n_tok), "ce": float(ce[i, b] / n_pred), "tokens": n_tok, "predictions": n_pred}
            for i, name in enumerate(names) for b in range(n_b)]
    df = pd.DataFrame(rows)
    # The logit and tuned lenses at the last boundary are the model's own distribution: exactly 0, not rounding.
    last = (df["boundary"] == n_b - 1) & df["lens"].isin(["logit", "tuned"])
    df.loc[last, "kl"] = 0.0
    df.attrs.update(model=model.cfg.name, fold_ln=model.cfg.fold_ln, windows=len(windows), n_ctx=windows.shape[1],
                    text="interp.corpus: the bundled corpus, held-out split" if text is None else
                    (f"token windows {tuple(text.shape)}" if isinstance(text, Tensor) else str(text)[:200]),
                    tuned_lens=None if tuned is None else tuned.source)
    return df


def _eval_windows(model: HookedGPT2, text: Any, max_windows: Optional[int], n_ctx: Optional[int]) -> Tensor:
    from itertools import islice

    from interp.corpus import documents, token_windows

    if isinstance(text, Tensor):
        return training_windows(model, text, len(text) if max_windows is None else min(len(text), max_windows),
                                what="evaluation")
    n = model.cfg.n_ctx if n_ctx is None else n_ctx
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= model.cfg.n_ctx:
        raise InterpError(f"n_ctx must be an integer from 2 to the model's context {model.cfg.n_ctx}, not {n!r}")
    docs = documents(text, split="heldout")
    windows = list(islice(token_windows(model.tokenizer, docs, n), max_windows))
    if not windows:
        raise InterpError(f"the evaluation text gives no window of {n} tokens: give more text or a smaller n_ctx")
    return torch.stack(windows)


# ---------------------------------------------------------------------------- one prompt
def prediction_trajectory(
    model: HookedGPT2,
    inputs: Any,
    *,
    tuned: Optional[TunedLens] = None,
    lenses: Any = None,
    prepend_bos: bool = True,
) -> pd.DataFrame:
    """Each lens's prediction at every boundary and position of the prompt(s): the trajectory figure's table.

    Args:
        model: a :class:`~interp.model.HookedGPT2`.
        inputs: a prompt, a list of prompts (padded), token ids or a Batch.
        tuned: a :class:`~analyses.tuned_lens.TunedLens` (adds the ``tuned`` lens).
        lenses: which lenses (default ``logit``, ``pinv`` and, with ``tuned``, ``tuned``).

    Returns:
        One row per prompt, lens, boundary and position (every real token; BOS is position 0):
        ``prompt, lens, boundary, label, layer, position, input_token``, the lens's top token
        ``token_id, token, prob``, ``entropy`` (nats), ``kl`` (KL from the model's final distribution
        at that position, nats), and the token that comes next in the prompt ``target, target_prob,
        target_rank`` (empty/NaN at each prompt's last position).

    >>> from interp.testing import planted_model
    >>> df = prediction_trajectory(planted_model(), "a b c d a b c")
    >>> cell = df[(df.lens == "logit") & (df.label == "mlp 1") & (df.position == 6)]   # after "a b c d a b"
    >>> cell[["token", "target"]].values.tolist()
    [['c', 'c']]
    """
    names = _choose(model, lenses, tuned)
    bounds = _hooks(model)
    readers = _readers(model, names, tuned)
    tok_text = decoder(model.tokenizer)
    frames = []
    with torch.no_grad():
        batch = model.to_batch(inputs, prepend_bos=prepend_bos)
        cols, rel, valid = _positions(batch, "all")
        resid = _resid_at_boundaries(model, batch, cols, bounds)[:, valid.to(cols.device)]  # [boundary, n, d_model]
        prompt_of = torch.arange(len(batch))[:, None].expand_as(rel)[valid]
        pos = rel[valid]
        ids = batch.tokens[prompt_of.to(cols.device), cols[valid.to(cols.device)]].cpu()
        is_last = pos == batch.lengths.cpu()[prompt_of] - 1
        target = torch.where(is_last, 0, torch.roll(ids, -1))  # the next token of the same prompt
        final = model.unembed(resid[-1]).float().log_softmax(-1)
        p = final.exp()
        for name in names:
            for b, (label, hook, layer) in enumerate(bounds):
                logq = readers[name](resid[b], b).float().log_softmax(-1)
                q = logq.exp()
                top_logq, top_id = logq.max(-1)
                t_logq = logq.gather(-1, target[:, None].to(logq.device))[:, 0]
                frames.append(pd.DataFrame({
                    "prompt": prompt_of.numpy(), "lens": name, "boundary": b, "label": label,
                    "layer": layer,
                    "position": pos.numpy(), "input_token": [tok_text(i) for i in ids.tolist()],
                    "token_id": top_id.cpu().numpy(), "token": [tok_text(i) for i in top_id.tolist()],
                    "prob": top_logq.exp().cpu().numpy(), "entropy": -(q * logq).nan_to_num().sum(-1).cpu().numpy(),
                    "kl": (p * (final - logq)).sum(-1).clamp(min=0).cpu().numpy(),
                    "target": [None if last else tok_text(int(t)) for t, last in zip(target, is_last)],
                    "target_prob": np.where(is_last.numpy(), np.nan, t_logq.exp().cpu().numpy()),
                    "target_rank": np.where(is_last.numpy(), np.nan,
                                            (1 + (logq > t_logq[:, None]).sum(-1)).cpu().numpy()),
                }))
    df = pd.concat(frames, ignore_index=True)
    df.loc[(df["boundary"] == len(bounds) - 1) & df["lens"].isin(["logit", "tuned"]), "kl"] = 0.0
    df = df.sort_values(["prompt", "lens", "boundary", "position"], kind="stable",
                        key=lambda c: c.map({n: i for i, n in enumerate(names)}) if c.name == "lens" else c)
    df = df.reset_index(drop=True)
    df.attrs.update(model=model.cfg.name, fold_ln=model.cfg.fold_ln, lenses=names,
                    tuned_lens=None if tuned is None else tuned.source)
    return select.tidy(df)
