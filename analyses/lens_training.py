"""Training the tuned lens with tuned-lens 0.2.0's recipe, on the model's own text.

tuned-lens's ``train`` defaults: zero-initialised translators added residually (so weight decay
regularizes towards the identity), the loss the KL divergence from the model's final distribution at
the same position summed over the translators, SGD with Nesterov momentum 0.9 and learning rate
``lr_scale · (1 − momentum)`` (PyTorch's momentum scales the step by 1/(1 − β); with that undone
tuned-lens finds 1 the right scale), weight decay 1e-3, the learning rate decayed linearly to 0 with
no warm-up, gradients clipped to norm 1 over all translators. Text: by default the bundled model's
training split (:func:`interp.corpus.documents`), shuffled by the seed; if it runs out before the
requested steps, an error before any step (tuned-lens #113 stops silently). The translators read
the centred stream, so the lens is the same for both weight modes (:mod:`analyses.tuned_lens`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Optional

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.model import HookedGPT2

from .tuned_lens import TunedLens, TunedLensConfig, _check_model, unembed_hash

__all__ = ["train_tuned_lens", "training_windows"]


def training_windows(model: HookedGPT2, text: Any, n_windows: int, *, n_ctx: Optional[int] = None,
                     seed: int = 0, split: str = "train", what: str = "training") -> Int[Tensor, "n_windows pos"]:
    """``n_windows`` token windows of the text, shuffled by ``seed``; an error if the text has fewer.

    ``text``: None (the bundled corpus's ``split``), a path or documents (:func:`interp.corpus.documents`),
    or token windows ``[n, pos]`` (used as they are, in their order). Documents are shuffled, cut into
    windows of ``n_ctx`` tokens that start with BOS (:func:`interp.corpus.token_windows`), and the
    windows shuffled again, so that each step mixes documents.
    """
    from itertools import islice

    from interp.corpus import documents, token_windows

    if isinstance(text, Tensor):
        if text.ndim != 2 or text.dtype.is_floating_point or text.dtype == torch.bool:
            raise InterpError(f"token windows must be an integer tensor [n, pos], not {text.dtype} {tuple(text.shape)}")
        if len(text) < n_windows:
            raise InterpError(_ran_out(what, len(text), text.shape[1], n_windows))
        return text[:n_windows]
    n_ctx = model.cfg.n_ctx if n_ctx is None else n_ctx
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 2 <= n_ctx <= model.cfg.n_ctx:
        raise InterpError(f"n_ctx must be an integer from 2 to the model's context {model.cfg.n_ctx}, not {n_ctx!r}")
    docs = documents(text, split=split)
    g = torch.Generator().manual_seed(seed)
    docs = [docs[i] for i in torch.randperm(len(docs), generator=g).tolist()]
    windows = list(islice(token_windows(model.tokenizer, docs, n_ctx), n_windows))
    if len(windows) < n_windows:
        raise InterpError(_ran_out(what, len(windows), n_ctx, n_windows))
    out = torch.stack(windows)
    return out[torch.randperm(len(out), generator=g)]


def _ran_out(what: str, have: int, n_ctx: int, need: int) -> str:
    # tuned-lens #113: its loop zips the steps with the data loader and stops silently when the data ends.
    return (f"the {what} text runs out: it gives {have} windows of {n_ctx} tokens, and {need} are needed; "
            "give more text, fewer steps or fewer tokens per step")


def train_tuned_lens(
    model: HookedGPT2,
    text: Any = None,
    *,
    steps: int = 250,
    tokens_per_step: int = 2**11,
    n_ctx: Optional[int] = None,
    batch_size: Optional[int] = None,
    seed: int = 0,
    lr_scale: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    progress: Optional[bool] = None,
) -> TunedLens:
    """Train a tuned lens on ``model``'s own text with tuned-lens's recipe (see the module docs).

    Args:
        model: a :class:`~interp.model.HookedGPT2` (either weight mode: the lens is the same).
        text: None — the bundled model's training split (:func:`interp.corpus.documents`); a path,
            documents, or token windows ``[n, pos]`` (see :func:`training_windows`).
        steps: optimizer steps (tuned-lens: 250).
        tokens_per_step: tokens per step, a multiple of the window length (tuned-lens: 2**18 with its
            Pile data; the default here fits the bundled corpus, 711k tokens).
        n_ctx: window length (default the model's context).
        batch_size: windows per forward pass (gradients are accumulated over a step's passes).
        seed: the text's shuffle; the translators start at zero, so nothing else is random.
        lr_scale, momentum, weight_decay: SGD with Nesterov momentum, ``lr = lr_scale · (1 − momentum)``.
        progress: a progress bar (default: only on a terminal).

    Returns:
        The :class:`TunedLens`, with ``record`` saying how it was trained (saved as ``training.json``).

    Raises:
        InterpError: if the text runs out before ``steps × tokens_per_step`` tokens (checked before
            training starts), or an argument is out of range.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> windows = torch.randint(1, model.cfg.d_vocab, (8, 16)); windows[:, 0] = 0
    >>> lens = train_tuned_lens(model, windows, steps=4, tokens_per_step=32, progress=False)
    >>> lens.record["steps"], lens.mean_blind()
    (4, True)
    """
    _check_model(model)
    for name, v, low in (("steps", steps, 1), ("tokens_per_step", tokens_per_step, 2), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InterpError(f"{name} must be an integer ≥ {low}, not {v!r}")
    for name, v, ok in (("lr_scale", lr_scale, lr_scale > 0 if _real(lr_scale) else False),
                        ("momentum", momentum, 0 <= momentum < 1 if _real(momentum) else False),
                        ("weight_decay", weight_decay, weight_decay >= 0 if _real(weight_decay) else False)):
        if not ok:
            raise InterpError(f"{name} out of range: {v!r}")
    window = text.shape[1] if isinstance(text, Tensor) and text.ndim == 2 else (n_ctx or model.cfg.n_ctx)
    per_step, rem = divmod(int(tokens_per_step), int(window))
    if rem or per_step < 1:
        raise InterpError(f"tokens_per_step {tokens_per_step} is not a multiple of the window length {window}")
    if batch_size is None:
        batch_size = min(per_step, max(1, 4096 // window))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InterpError(f"batch_size must be a positive integer, not {batch_size!r}")
    windows = training_windows(model, text, steps * per_step, n_ctx=n_ctx, seed=seed)

    L, d = model.cfg.n_layers, model.cfg.d_model
    t0 = time.perf_counter()
    # Gradients for the translators even when the caller runs under no_grad or inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        W, b, kl_log = _fit(model, windows, steps, per_step, batch_size, lr_scale, momentum, weight_decay, progress)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        centre = torch.eye(d, dtype=W.dtype, device=W.device) - 1.0 / d
        weight = (W.detach() @ centre).float().cpu()  # rounding aside, A 1 = 0 already: this makes it exact
    from interp import __version__

    tail = np.asarray(kl_log[-max(1, steps // 10):]).mean(0)
    record = {
        "trainer": f"interp {__version__} analyses.lens_training.train_tuned_lens", "model": str(model.cfg.name),
        "fold_ln": bool(model.cfg.fold_ln), "text": _describe_text(text), "steps": int(steps),
        "tokens_per_step": int(tokens_per_step), "n_ctx": int(windows.shape[1]), "batch_size": int(batch_size),
        "seed": int(seed), "optimizer": {"name": "SGD", "nesterov": momentum > 0, "lr": lr_scale * (1 - momentum),
                                         "momentum": momentum, "weight_decay": weight_decay,
                                         "schedule": "linear decay to 0, no warm-up", "clip_grad_norm": 1.0},
        "seconds": round(seconds, 3), "kl_first_step": [round(v, 6) for v in kl_log[0]],
        "kl_last_tenth": [round(float(v), 6) for v in tail],
    }
    config = TunedLensConfig(str(model.cfg.name), d, L, unembed_hash=unembed_hash(model))
    return TunedLens(weight, b.detach().float().cpu(), config, record=record, source=f"trained on {model.cfg.name}")


def _fit(model: HookedGPT2, windows: Tensor, steps: int, per_step: int, batch_size: int, lr_scale: float,
         momentum: float, weight_decay: float, progress: Optional[bool]) -> tuple[Tensor, Tensor, list]:
    """The training loop: translators ``(W, b)`` and each step's KL per translator."""
    L, d, dtype = model.cfg.n_layers, model.cfg.d_model, model.cfg.dtype
    train_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    W = torch.zeros(L, d, d, dtype=train_dtype, device=model.cfg.device, requires_grad=True)
    b = torch.zeros(L, d, dtype=train_dtype, device=model.cfg.device, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lr_scale * (1 - momentum), momentum=momentum, nesterov=momentum > 0,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)]
    kl_log: list[list[float]] = []
    bar = tqdm(range(steps), desc="tuned lens", unit="step", disable=None if progress is None else not progress,
               leave=False)
    for step in bar:
        rows = windows[step * per_step:(step + 1) * per_step]
        kl = torch.zeros(L, dtype=torch.float64)
        for chunk in rows.split(batch_size):
            with torch.no_grad():
                logits, cache = model.run(chunk, names=names)
                target = logits.to(train_dtype).log_softmax(-1)
                p = target.exp()
                neg_entropy = (p * target).sum(-1)
            for layer in range(L):
                h = cache[names[layer]].to(train_dtype)
                # The translator reads the centred stream: a fold_ln=True model has no other (module docs).
                x = h + (h - h.mean(-1, keepdim=True)) @ W[layer].T + b[layer]
                z = model.unembed(x.to(dtype)).to(train_dtype)
                # KL(p ‖ softmax z) = Σ p log p − Σ p z + logsumexp z (Σ p = 1): no log-softmax of z kept for backward.
                loss = (neg_entropy - (p * z).sum(-1) + z.logsumexp(-1)).mean()
                (loss * (len(chunk) / per_step)).backward()
                kl[layer] += loss.detach().double() * len(chunk) / per_step
        torch.nn.utils.clip_grad_norm_([W, b], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        kl_log.append(kl.tolist())
        bar.set_postfix_str(f"KL {kl.mean():.4f}")
    bar.close()
    return W, b, kl_log


def _real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


def _describe_text(text: Any) -> str:
    if text is None:
        return "interp.corpus: the bundled corpus, train split"
    if isinstance(text, Tensor):
        return f"token windows {tuple(text.shape)}"
    if isinstance(text, (str, os.PathLike)):
        return str(text)
    return "documents given in Python"
