"""How good an SAE is, on held-out text: reconstruction, sparsity, and what splicing it in does to the model.

:func:`evaluate` runs the model over text (the bundled corpus's held-out split by default) and
returns one row per SAE:

* ``explained_variance`` — ``1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)`` over every token (SAELens's);
  ``mse`` — ``E‖x − x̂‖²`` (summed over dimensions, averaged over tokens);
* ``l0`` — active features per token; ``dead_fraction`` — features that never fired on the text;
  ``dense_fraction`` — features active on more than ``dense_threshold`` of tokens;
* ``ce_loss_clean``, ``ce_loss_spliced``, ``ce_loss_zero_ablated`` and
  ``ce_loss_recovered = (L_zero − L_spliced) / (L_zero − L_clean)``: the model's next-token loss as it
  is, with the SAE's reconstruction in place of its activation (:func:`interp.features.splice`), and
  with the activation zeroed;
* ``kl_div`` — the mean KL divergence of the spliced model's next-token distribution from the clean
  one's, and ``kl_div_zero_ablated``;
* shrinkage: ``l2_ratio`` (mean ``‖x̂‖ / ‖x‖``, SAELens's) and ``relative_reconstruction_bias``
  (``E‖x̂‖² / E⟨x, x̂⟩``, Wright & Sharkey's: below 1 means the features shrink).

A transcoder's ``x`` is its output hook's activation (the MLP's output) and ``x̂`` its prediction;
"zero-ablated" then zeroes that output. Activations are compared in the model's weight mode.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InterpError
from .sae import SAE

__all__ = ["evaluate", "mean_correlation_coefficient", "to_json"]


def evaluate(model, saes: Union[SAE, Sequence[SAE]], texts: Any = None, *, split: str = "heldout",
             column: Optional[str] = None, n_ctx: Optional[int] = None, batch_size: int = 16,
             max_windows: Optional[int] = 256, dense_threshold: float = 0.1, progress: Optional[bool] = None) -> pd.DataFrame:
    """One row per SAE: reconstruction, sparsity, CE loss recovered, KL and shrinkage on held-out text.

    Args:
        model: a :class:`~interp.model.HookedGPT2`.
        saes: an SAE or a list (each evaluated alone: spliced in by itself).
        texts, split, column: what :func:`interp.corpus.documents` reads (default: the bundled
            corpus's held-out split, kept apart from training).
        n_ctx: tokens per window (default: the model's context); ``max_windows`` of them at most.
        batch_size: windows per forward pass.

    >>> import interp
    >>> from interp.features import SAE, SAEConfig
    >>> model = interp.load("interp-tiny")
    >>> sae = SAE(SAEConfig("topk", d_in=128, d_sae=256, k=8, hook_name="blocks.0.hook_resid_post", fold_ln=True))
    >>> row = evaluate(model, sae, max_windows=8, progress=False).iloc[0]
    >>> bool(row["ce_loss_spliced"] > row["ce_loss_clean"]), float(row["l0"])
    (True, 8.0)
    """
    from tqdm.auto import tqdm

    from ..corpus import documents, token_windows
    from .splice import splice

    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes or not all(isinstance(s, SAE) for s in saes):
        raise InterpError("evaluate needs an SAE or a list of SAEs")
    if not 0 < dense_threshold < 1:
        raise InterpError(f"dense_threshold must be in (0, 1), not {dense_threshold!r}")
    bindings = [s.bind(model) for s in saes]  # refuses a weight mode it cannot convert, before any work
    n_ctx = model.cfg.n_ctx if n_ctx is None else n_ctx
    docs = documents(texts, split=split, column=column)
    windows = list(token_windows(model.tokenizer, docs, n_ctx, limit=max_windows))
    if not windows:
        raise InterpError(f"the text is shorter than one window of {n_ctx} tokens")
    tokens = torch.stack(windows).to(model.cfg.device)
    acc = [_Accumulator(s.d_sae) for s in saes]
    clean_loss = 0.0
    bar = tqdm(total=len(tokens) * (1 + 2 * len(saes)), desc="sae eval", unit="window", leave=False,
               disable=True if progress is False else (None if progress is None else False))
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            toks = tokens[i:i + batch_size]
            clean_logits = model.forward(toks)
            clean_lp = clean_logits[:, :-1].log_softmax(-1)
            clean_loss += float(_token_loss(clean_lp, toks).sum())
            bar.update(len(toks))
            for sae, b, a in zip(saes, bindings, acc):
                out_hook = sae.hook_name_out or sae.hook_name
                seen: dict[str, Tensor] = {}

                def grab_in(x, name, b=b, seen=seen):
                    seen["x_in"] = x

                def grab_out(x, name, seen=seen):
                    seen["actual"] = x

                # The spliced run, watching the SAE's input and the activation it replaces.
                with model.hooks([(sae.hook_name, grab_in), (out_hook, grab_out)]):
                    with splice(model, [sae]):
                        logits = model.forward(toks)
                x_true = b._flat(seen["actual"], out_hook)
                x_in = b.input(seen["x_in"])
                f = sae.encode(x_in)
                x_hat = b._flat(b.output(sae(x_in), seen["actual"]), out_hook)
                lp = logits[:, :-1].log_softmax(-1)
                a.add(x_true.reshape(-1, x_true.shape[-1]), x_hat.reshape(-1, x_hat.shape[-1]), f.reshape(-1, sae.d_sae))
                a.loss += float(_token_loss(lp, toks).sum())
                a.kl += float(_kl(clean_lp, lp).sum())
                bar.update(len(toks))
                with model.hooks([(out_hook, lambda x, name: torch.zeros_like(x))]):
                    zlp = model.forward(toks)[:, :-1].log_softmax(-1)
                a.zero_loss += float(_token_loss(zlp, toks).sum())
                a.zero_kl += float(_kl(clean_lp, zlp).sum())
                bar.update(len(toks))
    bar.close()
    n_pred = tokens.shape[0] * (tokens.shape[1] - 1)
    rows = []
    for sae, a in zip(saes, acc):
        clean, spliced, zero = clean_loss / n_pred, a.loss / n_pred, a.zero_loss / n_pred
        rows.append({
            "hook_name": sae.hook_name, "hook_name_out": sae.hook_name_out, "architecture": sae.architecture,
            "d_sae": sae.d_sae, **a.metrics(dense_threshold),
            "ce_loss_clean": clean, "ce_loss_spliced": spliced, "ce_loss_zero_ablated": zero,
            "ce_loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
            "kl_div": a.kl / n_pred, "kl_div_zero_ablated": a.zero_kl / n_pred,
            "tokens": int(tokens.numel()),
        })
    return pd.DataFrame(rows)


def _token_loss(logprobs: Tensor, tokens: Tensor) -> Tensor:
    return -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]


def _kl(clean_lp: Tensor, lp: Tensor) -> Tensor:
    return (clean_lp.exp() * (clean_lp - lp)).sum(-1)


class _Accumulator:
    def __init__(self, d_sae: int):
        self.n = 0
        self.sum_x: Optional[Tensor] = None
        self.sq_x = self.sse = self.l0 = self.xhat_sq = self.dot = self.ratio = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.loss = self.kl = self.zero_loss = self.zero_kl = 0.0

    def add(self, x: Tensor, x_hat: Tensor, f: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += len(x)
        s = x.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sq_x += float((x * x).sum())
        self.sse += float(((x - x_hat) ** 2).sum())
        active = f != 0
        self.l0 += float(active.sum())
        self.fires += active.sum(0).double()
        self.xhat_sq += float((x_hat * x_hat).sum())
        self.dot += float((x * x_hat).sum())
        xn = x.norm(dim=-1)
        self.ratio += float((x_hat.norm(dim=-1) / torch.where(xn < 1e-4, torch.ones_like(xn), xn)).sum())

    def metrics(self, dense_threshold: float) -> dict:
        n = self.n
        total_var = self.sq_x / n - float((self.sum_x / n).pow(2).sum())
        freq = self.fires / n
        return {
            "explained_variance": 1 - (self.sse / n) / total_var if total_var > 0 else float("nan"),
            "mse": self.sse / n, "l0": self.l0 / n,
            "dead_fraction": float((freq == 0).double().mean()), "dense_fraction": float((freq > dense_threshold).double().mean()),
            "l2_ratio": self.ratio / n, "relative_reconstruction_bias": self.xhat_sq / self.dot if self.dot else float("nan"),
        }


def to_json(df: pd.DataFrame) -> str:
    """The evaluation table as JSON records (NaN as null)."""
    return json.dumps(json.loads(df.to_json(orient="records")), indent=1)


# ============================================================================ matching features to truth
def mean_correlation_coefficient(learned: Float[Tensor, "n_learned d"], truth: Float[Tensor, "n_true d"]) -> float:
    """Mean |cosine| of the best one-to-one matching of ``truth``'s rows to ``learned``'s (SAELens's MCC).

    The matching maximises the total |cosine| (the Hungarian algorithm, written out here with
    numpy: scipy is not a dependency); ``n_learned ≥ n_true``.

    >>> import torch
    >>> truth = torch.eye(3)
    >>> mean_correlation_coefficient(torch.stack([truth[2], -truth[0], truth[1], truth[0] + truth[1]]), truth)
    1.0
    """
    a = learned / learned.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    b = truth / truth.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    sim = (b.double() @ a.double().T).abs().cpu().numpy()  # [n_true, n_learned]
    if sim.shape[0] > sim.shape[1]:
        raise InterpError(f"{sim.shape[1]} learned features cannot match {sim.shape[0]} true ones one-to-one")
    cols = _hungarian(-sim)
    return float(sim[np.arange(len(cols)), cols].mean())


def _hungarian(cost: np.ndarray) -> np.ndarray:
    """Column assigned to each row minimising the total cost (rows ≤ columns; potentials and shortest augmenting paths)."""
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row (1-based) matched to column j; 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            j1 = int(np.argmin(np.where(free, minv[1:], np.inf))) + 1
            delta = minv[j1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.zeros(n, dtype=np.int64)
    for j in range(1, m + 1):
        if p[j]:
            cols[p[j] - 1] = j - 1
    return cols
