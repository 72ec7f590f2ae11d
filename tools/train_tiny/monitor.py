"""The curves' numbers: fixed probes, losses and head scores of the model being trained.

Head scores come from the toolkit's own detector, :func:`analyses.heads.classify`
(``measure="defined"``), run on a copy of the model; losses from
:func:`interp.metrics.token_loss`. On the ``[BOS] r r`` probe the detector's scores
equal the attention on ``key = query - 1`` (previous-token), ``query - span``
(duplicate) and ``query - span + 1`` (induction) averaged over the defined query
positions, except that where ``r`` happens to hold a token twice, every earlier copy
counts.
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.metrics import token_loss

from .recipe import Recipe
from .model import lens_logits
from .rows import mark_row, marker_positions, where_row

#: The monitor's short names for the detector's head kinds.
KINDS = {"prev": "previous_token", "self": "self", "dup": "duplicate_token", "ind": "induction"}


def monitor_batch(r: Recipe, n: int = 64) -> Int[Tensor, "batch pos"]:
    """Fixed probe ``[BOS] r r`` with ``len(r) = monitor_span``, independent of the training stream."""
    g = torch.Generator().manual_seed(10_000_019 + r.seed)
    rr = torch.randint(1, r.vocab_size, (n, r.monitor_span), generator=g)
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), rr, rr], dim=1)


def mark_probe(r: Recipe, markers: tuple[int, int], n: int = 64) -> Int[Tensor, "batch pos"]:
    """Fixed *mark* rows over the whole vocabulary, independent of the training stream."""
    g = torch.Generator().manual_seed(20_000_003 + r.seed)
    return torch.stack([mark_row(g, r.n_ctx, r.vocab_size, markers) for _ in range(n)])


def where_probe(r: Recipe, markers: tuple[int, ...], n: int = 64) -> Int[Tensor, "batch pos"]:
    """Fixed *where* rows over the whole vocabulary, independent of the training stream."""
    g = torch.Generator().manual_seed(30_000_001 + r.seed)
    return torch.stack([where_row(g, r.n_ctx, r.vocab_size, markers) for _ in range(n)])


def marker_losses(model, r: Recipe, tokens: Int[Tensor, "batch pos"], at: Bool[Tensor, "batch pos-1"]) -> tuple[float, float]:
    """Loss on the markers (predictions ``at``): the model's, and the logit lens's at ``r.exit_layer``."""
    out = model(tokens, output_hidden_states=True)
    final = float(token_loss(out.logits, tokens)[at].mean())
    layer = min(r.exit_layer, r.n_layer - 2)
    if layer < 0:
        return final, float("nan")
    lens = lens_logits(model, out.hidden_states[layer + 1])
    return final, float(token_loss(lens, tokens)[at].mean())


def heldout_windows(stream: Int[Tensor, " n_tokens"], n_ctx: int, n: int = 64) -> Int[Tensor, "batch pos"]:
    """The held-out stream cut into (at most ``n``) consecutive windows, each after ``[BOS]``."""
    n = min(n, len(stream) // (n_ctx - 1))
    chunks = stream[: n * (n_ctx - 1)].view(n, n_ctx - 1)
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), chunks], dim=1)


def best(score: Float[Tensor, "n_layers n_heads"]) -> tuple[float, str]:
    """The best score and its head as ``"L.H"``."""
    i = int(score.argmax())
    return float(score.flatten()[i]), f"{i // score.shape[1]}.{i % score.shape[1]}"


def head_scores(model, tokenizer, tokens: Int[Tensor, "batch pos"], kinds=tuple(KINDS)) -> dict[str, Tensor]:
    """``{kind: [n_layers, n_heads]}`` from :func:`analyses.heads.classify` on a copy of ``model``.

    ``interp.load`` copies the training model (it is never modified) and keeps Hugging
    Face's weights (``fold_ln=False``: attention patterns do not depend on folding).
    """
    import interp
    from analyses.heads import classify

    hooked = interp.load(model, tokenizer=tokenizer, fold_ln=False)
    df: pd.DataFrame = classify(hooked, tokens, kinds=[KINDS[k] for k in kinds], progress=False)
    shape = (hooked.cfg.n_layers, len(df) // hooked.cfg.n_layers)
    return {k: torch.tensor(df[KINDS[k]].to_numpy()).view(shape) for k in kinds}


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    r: Recipe,
    heldout: Int[Tensor, "batch pos"],
    probe: Int[Tensor, "batch pos"],
    marks: Int[Tensor, "batch pos"],
    wheres: Int[Tensor, "batch pos"],
    markers: tuple[int, ...],
) -> dict:
    """Held-out text loss, first/repeated-half loss on the probe, marker losses, best head scores.

    Marker losses are the model's and the logit lens's at ``r.exit_layer`` (``exit_*``), on
    the fixed mark and where probes.

    Keys starting with ``_`` hold every head's scores (for ``training.json``), the others one
    number each (a row of ``curves.csv``). The global RNG is left as it was.
    """
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        mark_at, where_at = (torch.stack([marker_positions(row, markers, kind) for row in rows])
                             for rows, kind in ((marks, "mark"), (wheres, "where")))
        mark_loss, exit_mark_loss = marker_losses(model, r, marks, mark_at)
        where_loss, exit_where_loss = marker_losses(model, r, wheres, where_at)
        heldout_loss = float(token_loss(model(heldout).logits, heldout).mean())
        losses = token_loss(model(probe).logits, probe)
        sc = head_scores(model, tokenizer, probe)
        prev_text = head_scores(model, tokenizer, heldout, kinds=("prev",))["prev"]
    model.train(was_training)
    s = r.monitor_span
    # Prediction at position p targets token p+1: positions 1..s-1 predict the first
    # copy (the first prediction, from BOS, is excluded as trivially unpredictable
    # either way), positions s+1..2s-1 predict the second copy from inside it.
    res = {
        "heldout_loss": heldout_loss,
        "rep_first_loss": float(losses[:, 1:s].mean()),
        "rep_second_loss": float(losses[:, s + 1 :].mean()),
        "mark_loss": mark_loss,
        "exit_mark_loss": exit_mark_loss,
        "where_loss": where_loss,
        "exit_where_loss": exit_where_loss,
    }
    for k in KINDS:
        res[f"{k}_best"], res[f"{k}_head"] = best(sc[k])
    res["prev_text_best"], _ = best(prev_text)
    res["_scores"] = {k: v.tolist() for k, v in sc.items()}
    res["_prev_text"] = prev_text.tolist()
    return res
