"""Train ``interp-tiny``: the small GPT-2 that ships inside the package.

The model is a plain ``transformers.GPT2LMHeadModel`` (learned positional
embeddings, LayerNorm, GELU MLP, causal attention) trained from scratch on text
that every Python installation has offline, so every ``interp`` command can run
without a network and the head detectors meet heads that were *learned*.

Corpus (collected deterministically, nothing is imported or executed):

* ``pydoc_data.topics.topics`` -- the text of ``help("topic")``;
* every docstring in the standard library, read by ``ast``-parsing the ``.py``
  files under ``sysconfig.get_paths()["stdlib"]`` in sorted order
  (``site-packages`` excluded, exact duplicates dropped).

About 1 document in 20 (chosen by a CRC of its text) is held out. Text batches
are mixed with synthetic sequences that reward copying, because docstrings alone
give a tiny model too little reason to form copying circuits:

* *repeat*: ``[BOS] r r r ...`` with ``r`` random tokens -- rewards
  previous-token heads composed with induction heads;
* *skip*: random tokens where, at random positions, ``x[t] = x[t-2]`` -- a
  direct one-layer reward for previous-token heads;
* *reverse*: ``[BOS] r reversed(r) ...`` -- predicting ``r[i-1]`` after ``r[i]``;
  the model learns it with a layer-0 head attending two tokens back, read by the
  induction heads;
* *mark*: ``[BOS] x1 m1 x2 m2 ...``, ``m`` = "was ``x`` seen before?" (off in the
  shipped recipe: the induction heads solve it, so it grows no duplicate-token head).

The shipped model is trained in two stages (the defaults of the flags are stage 1):

1. from scratch, synthetic sequences only at first (a curriculum: induction forms
   without text competing for capacity; the phase change shows as a sudden drop of
   the loss on the repeated half of the probe), then half text;
2. ``--init-from`` stage 1's output: half text, half synthetic with more *reverse*
   rows, the random-token range ramped up again. Text loss falls far below a unigram
   model's and the previous-token and induction heads sharpen.

Every batch is a pure function of ``(seed, step)``, so a run is deterministic
for a given seed and thread count, and resuming from a checkpoint gives the
same result as not stopping. Checkpoints hold only tensors and plain Python
values and load with ``torch.load(weights_only=True)``.

Example (the shipped model):
    python -m interp.train_bundled --out /tmp/interp-tiny-stage1 \\
        --ckpt-dir /tmp/interp-tiny-ckpt1 --seed 0
    python -m interp.train_bundled --out interp/bundled/interp-tiny \\
        --ckpt-dir /tmp/interp-tiny-ckpt2 --seed 0 --init-from /tmp/interp-tiny-stage1 \\
        --steps 9000 --synthetic-only-steps 0 --ramp-steps 1 --reverse-frac 0.4 \\
        --syn-vocab-ramp 3000
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import platform
import sys
import sysconfig
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

# The tokenizers library trains BPE on a rayon thread pool; one thread keeps the
# second core free and the merges reproducible. Must be set before import.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from jaxtyping import Float, Int  # noqa: E402
from torch import Tensor  # noqa: E402

BOS = "<|endoftext|>"
CSV_COLUMNS = (
    "step",
    "lr",
    "synthetic_frac",
    "train_loss",
    "heldout_loss",
    "rep_first_loss",
    "rep_second_loss",
    "prev_best",
    "prev_head",
    "dup_best",
    "dup_head",
    "ind_best",
    "ind_head",
    "prev_text_best",
    "mark_loss",
    "elapsed_s",
)


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a run; a checkpoint is only resumed under the same recipe."""

    seed: int = 0
    steps: int = 7000
    # A model directory written by an earlier run: start from its weights and tokenizer
    # (a second stage) instead of a random initialisation and a new tokenizer.
    init_from: str = ""
    # Model shape: attention-heavy (many small heads, MLP only 2x d_model) because
    # the point of the model is its attention heads, not its text loss.
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 8
    mlp_mult: int = 2
    n_ctx: int = 64
    vocab_size: int = 4096
    init_std: float = 0.08
    tie_embeddings: bool = True
    # Optimisation.
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 200
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Curriculum: synthetic-only for `synthetic_only_steps`, then the text share
    # ramps linearly over `ramp_steps` until synthetic rows are `final_synthetic_frac`.
    synthetic_only_steps: int = 3500
    ramp_steps: int = 1000
    final_synthetic_frac: float = 0.5
    # Among synthetic rows, this share is *mark* (``x m x m ...``, m = "seen before?"; meant
    # to reward duplicate-token heads, but induction heads solve it: see the model card),
    mark_frac: float = 0.0
    # ... this share is *reverse* (``r reversed(r)``),
    reverse_frac: float = 0.2
    # ... this share is *skip* (``a b a c d c ...``), and the rest *repeat*.
    skip_frac: float = 0.2
    # Random span tokens are first drawn from ids [1, syn_vocab_start) and the range
    # grows linearly to the whole vocabulary over syn_vocab_ramp steps: with 4096
    # tokens each embedding is seen too rarely for copying to get started.
    syn_vocab_start: int = 256
    syn_vocab_ramp: int = 4500
    # Learned positional embeddings start as scaled sinusoids (then train freely), so
    # "attend to position q-1" is a simple rotation from step 0 instead of
    # something the position table must first discover.
    sinusoid_pos_init: bool = True
    min_span: int = 8
    max_span: int = 30
    # Monitoring.
    eval_every: int = 200
    ckpt_every: int = 500
    monitor_span: int = 25
    heldout_frac_mod: int = 20

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Build a recipe from a dict, rejecting keys that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys: {sorted(names)}")
        return cls(**d)


# --------------------------------------------------------------------------- corpus


def collect_corpus() -> list[str]:
    """Return the documents of the corpus in a deterministic order.

    Returns:
        The pydoc topics (sorted by topic name) followed by the standard library's
        docstrings (files in sorted path order, nodes in ``ast.walk`` order),
        exact duplicates and docstrings shorter than 40 characters dropped.
    """
    import pydoc_data.topics

    docs: list[str] = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(
        p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts
    )
    node_types = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for path in paths:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            # The stdlib ships a few deliberately broken files (test fixtures).
            continue
        for node in ast.walk(tree):
            if isinstance(node, node_types):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= 40:
                    docs.append(doc)
    seen: set[str] = set()
    unique = []
    for d in docs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def split_corpus(docs: list[str], mod: int) -> tuple[list[str], list[str]]:
    """Split documents into (train, held-out) by a CRC of their text: 1 in ``mod`` is held out."""
    train, held = [], []
    for d in docs:
        (held if zlib.crc32(d.encode("utf-8")) % mod == 0 else train).append(d)
    return train, held


def train_tokenizer(docs: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer (GPT-2 style) with ``<|endoftext|>`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def wrap_tokenizer(tok, n_ctx: int):
    """Wrap a ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` configured like GPT-2's."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        unk_token=BOS,
        model_max_length=n_ctx,
    )


def encode_stream(tok, docs: list[str], bos_id: int) -> Int[Tensor, " n_tokens"]:
    """Tokenize documents into one stream, each document followed by ``<|endoftext|>``."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(bos_id)
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- batches


def repeat_row(
    g: torch.Generator, n_ctx: int, vocab: int, lo: int, hi: int
) -> Int[Tensor, " pos"]:
    """``[BOS] r r r ...`` truncated to ``n_ctx``; ``r`` has uniform random length in [lo, hi]."""
    span = int(torch.randint(lo, hi + 1, (1,), generator=g))
    r = torch.randint(1, vocab, (span,), generator=g)
    reps = (n_ctx - 1) // span + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), r.repeat(reps)[: n_ctx - 1]])


def reverse_row(
    g: torch.Generator, n_ctx: int, vocab: int, lo: int, hi: int
) -> Int[Tensor, " pos"]:
    """``[BOS] r reversed(r) r' reversed(r') ...`` truncated to ``n_ctx``."""
    parts = [torch.zeros(1, dtype=torch.long)]
    total = 1
    while total < n_ctx:
        span = int(torch.randint(lo, min(hi, 32) + 1, (1,), generator=g))
        r = torch.randint(1, vocab, (span,), generator=g)
        parts += [r, r.flip(0)]
        total += 2 * span
    return torch.cat(parts)[:n_ctx]


def skip_row(g: torch.Generator, n_ctx: int, vocab: int, p: float = 0.35) -> Int[Tensor, " pos"]:
    """``[BOS]`` then random tokens where, at random positions, ``x[t] = x[t-2]`` (``a b a``).

    Copying "any token from the context" cannot predict such a token, but one
    head attending to ``q-1`` and copying it can: a direct, single-layer reward
    for the previous-token heads that induction and duplicate-token circuits
    later build on. The positions are random (not every third) so that the head
    must attend to ``q-1`` everywhere rather than at a fixed phase.
    """
    x = torch.randint(1, vocab, (n_ctx - 1,), generator=g)
    hit = torch.rand((n_ctx - 1,), generator=g) < p
    for t in range(2, n_ctx - 1):
        if hit[t]:
            x[t] = x[t - 2]
    return torch.cat([torch.zeros(1, dtype=torch.long), x])


def mark_row(
    g: torch.Generator, n_ctx: int, vocab: int, markers: tuple[int, int]
) -> Int[Tensor, " pos"]:
    """``[BOS] x1 m1 x2 m2 ...`` where ``m_t`` says whether ``x_t`` occurred earlier in the row.

    ``m_t`` is ``markers[1]`` ("seen") if ``x_t`` is a copy of an earlier item, else
    ``markers[0]`` ("new"). Predicting it after ``x_t`` is a one-layer task for a head
    that attends from a token to its earlier copies (and to ``[BOS]`` when there
    are none): a direct reward for duplicate-token heads, as *skip* rows are for
    previous-token heads. The items are drawn from a random pool of 0.5 to 1.5
    times the number of items, so about half of them are repeats.
    """
    n_items = n_ctx // 2
    pool_size = int(torch.randint(n_items // 2, 3 * n_items // 2 + 1, (1,), generator=g))
    pool = torch.randint(1, vocab, (pool_size,), generator=g)
    # The markers are never items (shifted past them; both are byte tokens < 256).
    pool = torch.where((pool == markers[0]) | (pool == markers[1]), pool + 2, pool)
    x = pool[torch.randint(0, pool_size, (n_items,), generator=g)]
    seen: set[int] = set()
    m = torch.empty_like(x)
    for t, v in enumerate(x.tolist()):
        m[t] = markers[1] if v in seen else markers[0]
        seen.add(v)
    body = torch.stack([x, m], dim=1).flatten()
    return torch.cat([torch.zeros(1, dtype=torch.long), body])[:n_ctx]


def marker_ids(tok) -> tuple[int, int]:
    """Ids of the byte tokens ``\\x01`` ("new") and ``\\x02`` ("seen"): bytes no document contains."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ids = []
    for b in (1, 2):
        (piece, _), = byte_level.pre_tokenize_str(chr(b))
        ids.append(tok.token_to_id(piece))
    return ids[0], ids[1]


def text_row(g: torch.Generator, stream: Int[Tensor, " n_tokens"], n_ctx: int) -> Int[Tensor, " pos"]:
    """``[BOS]`` followed by a random window of the token stream."""
    start = int(torch.randint(0, len(stream) - n_ctx, (1,), generator=g))
    return torch.cat([torch.zeros(1, dtype=torch.long), stream[start : start + n_ctx - 1]])


def synthetic_frac(r: Recipe, step: int) -> float:
    """Share of synthetic rows in the batch at ``step`` (the curriculum)."""
    if step < r.synthetic_only_steps:
        return 1.0
    t = min(1.0, (step - r.synthetic_only_steps) / max(1, r.ramp_steps))
    return 1.0 - t * (1.0 - r.final_synthetic_frac)


def syn_vocab(r: Recipe, step: int) -> int:
    """Random span tokens at ``step`` are drawn from ids ``[1, syn_vocab(r, step))``."""
    t = min(1.0, step / max(1, r.syn_vocab_ramp))
    return int(r.syn_vocab_start + t * (r.vocab_size - r.syn_vocab_start))


def make_batch(
    r: Recipe, step: int, stream: Int[Tensor, " n_tokens"], markers: tuple[int, int]
) -> Int[Tensor, "batch pos"]:
    """The training batch for ``step``: a pure function of ``(r.seed, step)``.

    Deriving each batch from its own generator (instead of one long-lived RNG)
    is what makes resuming exact without having to restore data-loader state.
    """
    g = torch.Generator().manual_seed(r.seed * 1_000_003 + step)
    n_syn = round(r.batch_size * synthetic_frac(r, step))
    n_mark = round(n_syn * r.mark_frac)
    n_rev = round(n_syn * r.reverse_frac)
    n_skip = round(n_syn * r.skip_frac)
    vocab = syn_vocab(r, step)
    rows = []
    for i in range(r.batch_size):
        if i < n_mark:
            rows.append(mark_row(g, r.n_ctx, vocab, markers))
        elif i < n_mark + n_rev:
            rows.append(reverse_row(g, r.n_ctx, vocab, r.min_span, r.max_span))
        elif i < n_mark + n_rev + n_skip:
            rows.append(skip_row(g, r.n_ctx, vocab))
        elif i < n_syn:
            rows.append(repeat_row(g, r.n_ctx, vocab, r.min_span, r.max_span))
        else:
            rows.append(text_row(g, stream, r.n_ctx))
    return torch.stack(rows)


# --------------------------------------------------------------------------- model


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


def token_losses(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """Per-position next-token cross-entropy (nats)."""
    logits = model(tokens).logits[:, :-1]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none"
    ).view(tokens.shape[0], -1)


def train_step(
    model, opt, r: Recipe, step: int, stream: Int[Tensor, " n_tokens"], markers: tuple[int, int]
) -> float:
    """One optimizer step on ``make_batch(r, step, ...)``; returns the batch's mean loss."""
    for grp in opt.param_groups:
        grp["lr"] = lr_at(r, step)
    loss = token_losses(model, make_batch(r, step, stream, markers)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
    opt.step()
    return float(loss.detach())


# --------------------------------------------------------------------------- monitor


def monitor_batch(r: Recipe, n: int = 64) -> Int[Tensor, "batch pos"]:
    """Fixed probe ``[BOS] r r`` with ``len(r) = monitor_span``, independent of the training stream."""
    g = torch.Generator().manual_seed(10_000_019 + r.seed)
    rr = torch.randint(1, r.vocab_size, (n, r.monitor_span), generator=g)
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), rr, rr], dim=1)


def head_scores(
    attentions: tuple[Float[Tensor, "batch n_heads pos pos"], ...], span: int
) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
    """Previous-token, duplicate-token and induction scores of every head on ``[BOS] r r``.

    Each score is the mean attention weight on the expected key, averaged over the
    query positions where the kind is defined: all non-BOS positions for
    previous-token, the second copy of ``r`` for duplicate and induction.
    """
    pat = torch.stack(attentions)  # n_layers batch n_heads pos pos
    n_pos = pat.shape[-1]
    q_all = torch.arange(1, n_pos)
    q_second = torch.arange(span + 1, n_pos)
    prev = pat[..., q_all, q_all - 1].mean(dim=(1, 3))
    dup = pat[..., q_second, q_second - span].mean(dim=(1, 3))
    ind = pat[..., q_second, q_second - span + 1].mean(dim=(1, 3))
    return {"prev": prev, "dup": dup, "ind": ind}


def best(score: Float[Tensor, "n_layers n_heads"]) -> tuple[float, str]:
    """The best score and its head as ``"L.H"``."""
    i = int(score.argmax())
    return float(score.flatten()[i]), f"{i // score.shape[1]}.{i % score.shape[1]}"


def mark_probe(r: Recipe, markers: tuple[int, int], n: int = 64) -> Int[Tensor, "batch pos"]:
    """Fixed *mark* rows over the whole vocabulary, independent of the training stream."""
    g = torch.Generator().manual_seed(20_000_003 + r.seed)
    return torch.stack([mark_row(g, r.n_ctx, r.vocab_size, markers) for _ in range(n)])


@torch.no_grad()
def evaluate(
    model,
    r: Recipe,
    heldout: Int[Tensor, "batch pos"],
    probe: Int[Tensor, "batch pos"],
    marks: Int[Tensor, "batch pos"],
) -> dict:
    """Held-out text loss, first/repeated-half loss on the probe, marker loss, best head scores."""
    model.eval()
    # Markers sit at even positions 2, 4, ...; they are predicted from odd positions.
    mark_loss = float(token_losses(model, marks)[:, 1::2].mean())
    out = model(heldout, output_attentions=True)
    logits = out.logits[:, :-1]
    heldout_loss = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), heldout[:, 1:].reshape(-1)))
    text_prev = torch.stack(out.attentions)
    q = torch.arange(1, heldout.shape[1])
    prev_text = text_prev[..., q, q - 1].mean(dim=(1, 3))

    out = model(probe, output_attentions=True)
    logits = out.logits[:, :-1]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), probe[:, 1:].reshape(-1), reduction="none"
    ).view(probe.shape[0], -1)
    s = r.monitor_span
    # Prediction at position p targets token p+1: positions 1..s-1 predict the first
    # copy (the first prediction, from BOS, is excluded as trivially unpredictable
    # either way), positions s+1..2s-1 predict the second copy from inside it.
    first = float(losses[:, 1:s].mean())
    second = float(losses[:, s + 1 :].mean())
    sc = head_scores(out.attentions, s)
    model.train()
    res = {
        "heldout_loss": heldout_loss,
        "rep_first_loss": first,
        "rep_second_loss": second,
        "mark_loss": mark_loss,
    }
    for k in ("prev", "dup", "ind"):
        res[f"{k}_best"], res[f"{k}_head"] = best(sc[k])
    res["prev_text_best"], _ = best(prev_text)
    res["_scores"] = {k: v.tolist() for k, v in sc.items()}
    res["_prev_text"] = prev_text.tolist()
    return res


def unigram_losses(train: Int[Tensor, " n"], held: Int[Tensor, " m"], vocab: int) -> dict:
    """Cross-entropy (nats/token) of add-one unigram models on the held-out tokens.

    ``unigram_train``: fitted on the training split (the honest baseline);
    ``unigram_heldout_entropy``: the held-out split's own unigram entropy (a floor
    for any model that ignores context).
    """
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    hc = torch.bincount(held, minlength=vocab).double()
    hp = hc / hc.sum()
    ent = float(-(hp[hc > 0] * hp[hc > 0].log()).sum())
    return {"unigram_train_xent": float(-logp[held].mean()), "unigram_heldout_entropy": ent}


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path, model, opt, step: int, r: Recipe, elapsed: float, loss_sum: float, loss_n: int
) -> None:
    """Atomically write model + optimizer + step + RNG state (tensors and plain values only).

    ``loss_sum``/``loss_n`` are the running train-loss average since the last log row,
    saved so that a resumed run logs exactly the same curve as an uninterrupted one.
    """
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "recipe": dataclasses.asdict(r),
            "torch_rng": torch.get_rng_state(),
            "elapsed_s": elapsed,
            "loss_sum": loss_sum,
            "loss_n": loss_n,
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, model, opt, r: Recipe) -> dict:
    """Restore model, optimizer and RNG from ``path``; refuse a checkpoint of another recipe.

    Returns:
        The checkpoint's plain values (``step``, ``elapsed_s``, ``loss_sum``, ``loss_n``).
    """
    ck = torch.load(path, weights_only=True)
    saved = Recipe.from_dict(ck["recipe"])
    if saved != r:
        diff = {k: (v, getattr(r, k)) for k, v in dataclasses.asdict(saved).items() if v != getattr(r, k)}
        raise SystemExit(f"--resume: recipe differs from checkpoint (saved, given): {diff}")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    torch.set_rng_state(ck["torch_rng"])
    return {k: ck[k] for k in ("step", "elapsed_s", "loss_sum", "loss_n")}


def read_csv_rows(path: Path, upto_step: int) -> list[str]:
    """Rows of an existing curve CSV with ``step <= upto_step`` (so a resumed log has no duplicates)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= upto_step]


# --------------------------------------------------------------------------- main


RECIPE_HELP = {
    "seed": "seed for initialisation and every batch (a run is a pure function of it)",
    "steps": "total optimizer steps (also the length of the LR schedule)",
    "init_from": "start from this earlier run's output directory (weights + tokenizer); '' = from scratch",
    "n_layer": "transformer blocks",
    "d_model": "residual stream width",
    "n_head": "attention heads per layer",
    "mlp_mult": "MLP width as a multiple of d_model",
    "n_ctx": "training context = config n_positions",
    "vocab_size": "BPE vocabulary size, including <|endoftext|> (id 0)",
    "init_std": "GPT2Config.initializer_range (0.02 is for d_model 768; small models plateau with it)",
    "tie_embeddings": "tie input and output embeddings (GPT-2 does)",
    "batch_size": "sequences per step",
    "lr": "peak AdamW learning rate",
    "warmup_steps": "linear LR warmup steps",
    "min_lr_frac": "cosine decays the LR to this fraction of the peak",
    "weight_decay": "AdamW weight decay on weight matrices (not embeddings, biases, LayerNorm)",
    "grad_clip": "gradient-norm clip",
    "synthetic_only_steps": "curriculum: steps trained on synthetic copying sequences only",
    "ramp_steps": "curriculum: steps over which text is then mixed in",
    "final_synthetic_frac": "curriculum: share of synthetic rows after the ramp",
    "mark_frac": "share of synthetic rows x1 m1 x2 m2 ... with m = 'x seen before?' (duplicate-token reward)",
    "reverse_frac": "share of synthetic rows that are r + reversed(r)",
    "skip_frac": "share of synthetic rows with random x[t] = x[t-2] (previous-token reward)",
    "syn_vocab_start": "random tokens are first drawn from ids [1, this)",
    "syn_vocab_ramp": "steps over which that range grows to the whole vocabulary",
    "sinusoid_pos_init": "initialise the (learned) positional embeddings as sinusoids",
    "min_span": "shortest repeated random span",
    "max_span": "longest repeated random span",
    "eval_every": "steps between rows of curves.csv",
    "ckpt_every": "steps between checkpoints",
    "monitor_span": "span of the fixed [BOS] r r probe used for head scores",
    "heldout_frac_mod": "hold out documents with crc32(text) %% this == 0",
}


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m interp.train_bundled",
        description=(
            "Train the bundled tiny GPT-2 (interp-tiny) from scratch on CPU, offline: a "
            "byte-level BPE tokenizer and a small GPT2LMHeadModel trained on the Python "
            "docs + stdlib docstrings mixed with repeated/reversed random-token sequences. "
            "Writes a Hugging Face model directory (config.json, model.safetensors, "
            "tokenizer.json, tokenizer_config.json) plus curves.csv and training.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output model directory")
    p.add_argument(
        "--ckpt-dir",
        type=Path,
        default=None,
        help="where resumable checkpoints go (default: OUT/checkpoints; do not ship it)",
    )
    p.add_argument("--resume", action="store_true", help="continue from CKPT_DIR/last.pt")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="exit after this many steps of this invocation (checkpointing first); for testing resume",
    )
    defaults = Recipe()
    for f in dataclasses.fields(Recipe):
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=_parse_bool if isinstance(getattr(defaults, f.name), bool) else type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=RECIPE_HELP[f.name],
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    recipe = Recipe.from_dict({f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    out: Path = args.out
    ckpt_dir: Path = args.ckpt_dir or out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"
    csv_path = out / "curves.csv"

    t0 = time.time()
    docs = collect_corpus()
    train_docs, held_docs = split_corpus(docs, recipe.heldout_frac_mod)
    tok_path = ckpt_dir / "tokenizer.json"
    if recipe.init_from:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(recipe.init_from) / "tokenizer.json"))
        tok.save(str(tok_path))
    elif args.resume and tok_path.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = train_tokenizer(train_docs, recipe.vocab_size)
        tok.save(str(tok_path))
    if tok.get_vocab_size() != recipe.vocab_size or tok.token_to_id(BOS) != 0:
        raise RuntimeError(
            f"tokenizer has {tok.get_vocab_size()} tokens and {BOS} id {tok.token_to_id(BOS)}; "
            f"expected {recipe.vocab_size} and 0"
        )
    train_stream = encode_stream(tok, train_docs, 0)
    held_stream = encode_stream(tok, held_docs, 0)
    print(
        f"corpus: {len(docs)} docs ({len(train_docs)} train, {len(held_docs)} held out), "
        f"{len(train_stream)} train / {len(held_stream)} held-out tokens, "
        f"{time.time() - t0:.1f}s",
        flush=True,
    )
    # Fixed evaluation sets: the held-out stream cut into consecutive windows.
    n_eval = min(64, len(held_stream) // (recipe.n_ctx - 1))
    chunks = held_stream[: n_eval * (recipe.n_ctx - 1)].view(n_eval, recipe.n_ctx - 1)
    heldout = torch.cat([torch.zeros(n_eval, 1, dtype=torch.long), chunks], dim=1)
    probe = monitor_batch(recipe)
    markers = marker_ids(tok)
    marks = mark_probe(recipe, markers)

    model = build_model(recipe)
    if recipe.init_from:
        from safetensors.torch import load_file

        # Tied embeddings: the file holds wte once; lm_head.weight is the same tensor.
        missing, unexpected = model.load_state_dict(
            load_file(str(Path(recipe.init_from) / "model.safetensors")), strict=False
        )
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise SystemExit(f"--init-from {recipe.init_from}: missing {missing}, unexpected {unexpected}")
    opt = make_optimizer(model, recipe)
    start_step, prev_elapsed = 0, 0.0
    resumed_loss = (0.0, 0)
    rows: list[str] = []
    if args.resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, model, opt, recipe)
        start_step, prev_elapsed = ck["step"], ck["elapsed_s"]
        resumed_loss = (ck["loss_sum"], ck["loss_n"])
        rows = read_csv_rows(csv_path, start_step)
        print(f"resumed at step {start_step}", flush=True)
    elif args.resume:
        print(f"--resume: no checkpoint at {ckpt_path}; starting from scratch", flush=True)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters; recipe: {dataclasses.asdict(recipe)}", flush=True)
    model.train()
    t_start = time.time()
    loss_acc, loss_n = resumed_loss
    last_eval: dict = {}

    def log(step: int) -> None:
        nonlocal last_eval, loss_acc, loss_n
        ev = evaluate(model, recipe, heldout, probe, marks)
        last_eval = ev
        row = {
            "step": step,
            "lr": lr_at(recipe, max(step - 1, 0)),
            "synthetic_frac": synthetic_frac(recipe, max(step - 1, 0)),
            "train_loss": loss_acc / loss_n if loss_n else float("nan"),
            "elapsed_s": prev_elapsed + time.time() - t_start,
            **{k: v for k, v in ev.items() if not k.startswith("_")},
        }
        rows.append(",".join(
            f"{row[c]:.5g}" if isinstance(row[c], float) else str(row[c]) for c in CSV_COLUMNS
        ))
        csv_path.write_text(",".join(CSV_COLUMNS) + "\n" + "\n".join(rows) + "\n")
        print(
            f"step {step:5d} train {row['train_loss']:.3f} held {ev['heldout_loss']:.3f} "
            f"rep {ev['rep_first_loss']:.2f}/{ev['rep_second_loss']:.2f} "
            f"prev {ev['prev_best']:.2f}@{ev['prev_head']} dup {ev['dup_best']:.2f}@{ev['dup_head']} "
            f"ind {ev['ind_best']:.2f}@{ev['ind_head']} prevtext {ev['prev_text_best']:.2f} "
            f"mark {ev['mark_loss']:.2f} "
            f"t {row['elapsed_s']:.0f}s",
            flush=True,
        )
        loss_acc, loss_n = 0.0, 0

    if start_step == 0:
        log(0)
    step = start_step
    stop_at = recipe.steps if args.stop_after is None else min(recipe.steps, start_step + args.stop_after)
    while step < stop_at:
        loss_acc += train_step(model, opt, recipe, step, train_stream, markers)
        loss_n += 1
        step += 1
        if step % recipe.eval_every == 0 or step == recipe.steps:
            log(step)
        if step % recipe.ckpt_every == 0 or step == stop_at:
            save_checkpoint(
                ckpt_path, model, opt, step, recipe, prev_elapsed + time.time() - t_start, loss_acc, loss_n
            )
    if step < recipe.steps:
        print(f"stopped at step {step} of {recipe.steps} (--stop-after); resume with --resume")
        return

    wall = prev_elapsed + time.time() - t_start
    if not last_eval:
        last_eval = evaluate(model, recipe, heldout, probe, marks)
    export(model, tok, recipe, out, wall, last_eval, train_stream, held_stream, len(train_docs), len(held_docs))


def export(model, tok, r: Recipe, out: Path, wall: float, ev: dict, train_stream, held_stream, n_train_docs, n_held_docs) -> None:
    """Write the Hugging Face model directory and ``training.json``."""
    import numpy
    import safetensors
    import tokenizers
    import transformers

    model.save_pretrained(out, safe_serialization=True)
    wrap_tokenizer(tok, r.n_ctx).save_pretrained(out)
    uni = unigram_losses(train_stream, held_stream, r.vocab_size)
    info = {
        "model": "interp-tiny",
        "recipe": dataclasses.asdict(r),
        "n_params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(wall, 1),
        "threads": torch.get_num_threads(),
        "command": "python -m interp.train_bundled " + " ".join(sys.argv[1:]),
        "corpus": {
            "sources": [
                "pydoc_data.topics.topics",
                "docstrings of sysconfig.get_paths()['stdlib'] **/*.py (ast, sorted, site-packages excluded)",
            ],
            "train_docs": n_train_docs,
            "heldout_docs": n_held_docs,
            "train_tokens": len(train_stream),
            "heldout_tokens": len(held_stream),
        },
        "final": {
            **{k: v for k, v in ev.items() if not k.startswith("_")},
            **uni,
            "head_scores_repeat_probe": ev["_scores"],
            "prev_scores_heldout_text": ev["_prev_text"],
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": numpy.__version__,
            "platform": platform.platform(),
        },
    }
    if r.init_from:
        # Keep the earlier stage's record beside this one: together they are the recipe.
        prev = Path(r.init_from)
        for name in ("training", "curves"):
            src = prev / (name + (".json" if name == "training" else ".csv"))
            if src.exists() and src.resolve() != (out / src.name).resolve():
                (out / f"{name}-stage1{src.suffix}").write_bytes(src.read_bytes())
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out} (wall {wall:.0f}s); final: {json.dumps(info['final'] | {'head_scores_repeat_probe': '...', 'prev_scores_heldout_text': '...'})}")


if __name__ == "__main__":
    main()
