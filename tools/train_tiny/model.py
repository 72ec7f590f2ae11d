"""The model of a recipe, its optimizer and learning-rate schedule, and one training step."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.metrics import token_loss

from .recipe import Recipe
from .rows import make_batch, marker_targets


def build_model(r: Recipe):
    """A plain GPT-2 of the recipe's shape, dropout off (the data is effectively infinite)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=r.vocab_size,
        n_positions=r.n_ctx,
        n_embd=r.d_model,
        n_layer=r.n_layer,
        n_head=r.n_head,
        n_inner=r.mlp_mult * r.d_model,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=r.tie_embeddings,
        initializer_range=r.init_std,
        attn_implementation="eager",
    )
    torch.manual_seed(r.seed)
    # Eager attention (set in the config): it returns attention patterns for the
    # monitor, and at this size it costs little over SDPA.
    model = GPT2LMHeadModel(cfg)
    if r.sinusoid_pos_init:
        pos = torch.arange(r.n_ctx, dtype=torch.float32)[:, None]
        freq = torch.exp(-math.log(r.n_ctx * 2.0) * torch.arange(0, r.d_model, 2) / r.d_model)
        table = torch.zeros(r.n_ctx, r.d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq)
        # Same row norm as the N(0, initializer_range) token embeddings.
        table *= cfg.initializer_range * math.sqrt(r.d_model) / table.norm(dim=1, keepdim=True)
        with torch.no_grad():
            model.transformer.wpe.weight.copy_(table)
    return model


def parse_heads(spec: str, r: Recipe) -> list[tuple[int, int]]:
    """``"0.2,0.7"`` -> ``[(0, 2), (0, 7)]``, each checked against the recipe's shape."""
    heads = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        try:
            layer, head = (int(v) for v in item.split("."))
        except ValueError:
            raise ValueError(f"head {item!r}: write LAYER.HEAD, e.g. 0.2") from None
        if not (0 <= layer < r.n_layer and 0 <= head < r.n_head):
            raise ValueError(f"head {item!r} out of range: {r.n_layer} layers (0–{r.n_layer - 1}) of {r.n_head} heads (0–{r.n_head - 1})")
        heads.append((layer, head))
    return heads


@torch.no_grad()
def reinit_heads(model, r: Recipe) -> None:
    """Give the heads of ``r.reinit_heads`` fresh random weights, drawn as GPT-2 draws them, from the seed.

    Their query, key and value columns of ``c_attn`` and their rows of ``c_proj`` are
    redrawn (biases zero): a head that starts from scratch inside an already trained
    model, with diffuse attention instead of a committed pattern.
    """
    g = torch.Generator().manual_seed(r.seed * 1_000_003 + 999_983)
    d, dh = r.d_model, r.d_model // r.n_head
    for layer, head in parse_heads(r.reinit_heads, r):
        attn = model.transformer.h[layer].attn
        for part in range(3):  # query, key, value
            cols = slice(part * d + head * dh, part * d + (head + 1) * dh)
            attn.c_attn.weight[:, cols] = torch.randn(d, dh, generator=g) * r.init_std
            attn.c_attn.bias[cols] = 0
        rows = slice(head * dh, (head + 1) * dh)
        attn.c_proj.weight[rows] = torch.randn(dh, d, generator=g) * (r.init_std / math.sqrt(2 * r.n_layer))


def make_optimizer(model, r: Recipe) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, LayerNorm gains or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim == 2 and "wte" not in name and "wpe" not in name else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": r.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=r.lr,
        betas=(0.9, 0.98),
    )


def lr_at(r: Recipe, step: int) -> float:
    """Linear warmup then cosine decay to ``min_lr_frac * lr``."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = min(1.0, (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps))
    return r.lr * (r.min_lr_frac + (1 - r.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def lens_logits(model, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """The logit lens: a block's output read through the final LayerNorm and the unembedding."""
    return model.lm_head(model.transformer.ln_f(hidden))


def losses(model, r: Recipe, tokens: Int[Tensor, "batch pos"], exit_at: Bool[Tensor, "batch pos-1"]) -> tuple[Tensor, Tensor]:
    """The next-token loss, and the early exit's (its mean over ``exit_at``; 0 without an early exit)."""
    if not r.exit_weight:
        return token_loss(model(tokens).logits, tokens).mean(), torch.zeros(())
    out = model(tokens, output_hidden_states=True)
    # hidden_states[0] is the embedding, [k + 1] block k's output (ln_f is applied only to the last).
    hidden = out.hidden_states[r.exit_layer + 1][:, :-1][exit_at]
    exit_loss = F.cross_entropy(lens_logits(model, hidden), tokens[:, 1:][exit_at])
    return token_loss(out.logits, tokens).mean(), exit_loss


@contextlib.contextmanager
def self_masked(model, queries: Bool[Tensor, "batch pos"]) -> Iterator[None]:
    """Within the block, layer 0's heads cannot attend from the ``queries`` positions to themselves.

    A head that matches tokens finds the query's own position as its best match: masking
    it while "where was the earlier copy?" is learned leaves the earlier copy as the only
    match (see ``Recipe.self_mask_steps``).
    """

    def add_mask(module, args, kwargs):
        causal = args[2]  # the additive [batch, 1, q, k] mask the blocks receive (eager attention)
        diag = torch.zeros_like(causal)
        idx = queries.nonzero(as_tuple=True)
        diag[idx[0], 0, idx[1], idx[1]] = torch.finfo(causal.dtype).min
        return (*args[:2], causal + diag, *args[3:]), kwargs

    handle = model.transformer.h[0].register_forward_pre_hook(add_mask, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def train_step(
    model, opt, r: Recipe, step: int, stream: Int[Tensor, " n_tokens"], markers: tuple[int, ...]
) -> float:
    """One optimizer step on ``make_batch(r, step, ...)``; returns the batch's mean next-token loss.

    With an early exit the step minimises ``loss + exit_weight * exit_loss``; the value
    returned (and logged) is the model's own next-token loss either way.
    """
    for grp in opt.param_groups:
        grp["lr"] = lr_at(r, step)
    tokens = make_batch(r, step, stream, markers)
    if r.exit_rows == "all":
        exit_at = torch.ones(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
    else:
        exit_at = marker_targets(r, step, tokens, markers)
    masking = contextlib.nullcontext()
    if step < r.self_mask_steps:
        items = torch.zeros(tokens.shape, dtype=torch.bool)
        items[:, :-1] = marker_targets(r, step, tokens, markers)
        masking = self_masked(model, items)
    with masking:
        loss, exit_loss = losses(model, r, tokens, exit_at)
    total = loss + r.exit_weight * exit_loss if r.exit_weight and exit_at.any() else loss
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
    opt.step()
    return float(loss.detach())
