"""The engine: every intervention's way of running variants of one forward pass.

An intervention — an ablation scan, activation patching, path and edge patching, attribution's
interpolated runs, the circuit run — is a family of *variants* of one run that differ from it
from some point on. The engine runs them, once, for all of them:

* :meth:`Engine.record` runs a batch once and keeps the activations asked for (a :class:`Run`);
* :meth:`Engine.sweep` runs many variants of a recorded run: each starts where it first differs
  (a :class:`Start`: the stream entering a block, entering its MLP, or the final stream; optionally
  only the positions from one column on, reusing the recorded keys and values before it), variants
  with the same start are stacked along the batch in chunks of at most ``chunk_tokens`` tokens, and
  the metric unembeds only the rows it reads;
* :meth:`Engine.resume` runs the rest of the model from such a start;
* :meth:`Engine.feed` gives chosen receivers (a head's q/k/v, an MLP) their own copy of the stream;
* :meth:`Engine.receiver_grads` takes a gradient back to every receiver's own copy of the stream.

The engine composes the model's blocks (:meth:`~interp.HookedGPT2.embed`, ``attention_block``,
``mlp_block``, ``unembed``) and asks the model for GPT-2's arithmetic (``project`` for a head's
q/k/v from a stream, ``head_write`` for what a head writes): no intervention reads a weight matrix
or applies a LayerNorm itself.

>>> from interp.testing import planted_model
>>> model = planted_model()
>>> engine = Engine(model)
>>> run = engine.record(model.to_batch("a b c a b"), names=["resid_mid.1"])
>>> resumed = engine.resume(run["resid_mid", 1], Start(1, mid=True), run.batch.attention_mask)
>>> bool(torch.allclose(resumed, run.final, atol=1e-6))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from . import hooks as hk
from .cache import Cache
from .errors import InterpError
from .tokens import Batch

__all__ = ["Engine", "Run", "Start", "Stacked", "paired_batches", "check_model", "check_span", "check_chunk_tokens"]


# ---------------------------------------------------------------------------- inputs
def check_model(model: Any) -> Any:
    """The model, or a one-line error when something else was passed where it belongs."""
    from .model import HookedGPT2

    if not isinstance(model, HookedGPT2):
        raise InterpError(f"model must be a HookedGPT2 (from interp.load), not {type(model).__name__}")
    return model


def check_chunk_tokens(chunk_tokens: Any) -> int:
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise InterpError(f"chunk_tokens must be a positive int, not {chunk_tokens!r}")
    return chunk_tokens


def paired_batches(model: Any, clean: Any, corrupted: Any) -> tuple[Batch, Batch]:
    """Clean and corrupted inputs as two batches of the same shape and padding, or a one-line error.

    Patching pastes activations position by position, so every clean prompt must have as many
    tokens as its corrupted partner (they may differ in content, which is the point — inputs that
    are the same everywhere are refused: there would be nothing to patch).
    """
    check_model(model)
    for what, x in (("clean", clean), ("corrupted", corrupted)):
        if x is None:
            raise InterpError(f"no {what} input given: pass prompts, token ids or a Batch")
    c, k = model.to_batch(clean), model.to_batch(corrupted)
    if len(c) != len(k):
        raise InterpError(f"{len(c)} clean prompt(s) but {len(k)} corrupted: give them in pairs")
    for i in range(len(c)):
        a, b = int(c.lengths[i]), int(k.lengths[i])
        if a != b:
            ta, tb = c.tokens[i][c.attention_mask[i]].tolist(), k.tokens[i][k.attention_mask[i]].tolist()
            first = next((p for p, (x, y) in enumerate(zip(ta, tb)) if x != y), min(a, b))
            raise InterpError(
                f"clean and corrupted prompt {i} differ in length ({a} vs {b} tokens, first different token "
                f"at position {first}): patching pairs positions, so each pair must tokenize to the same length"
            )
    if not torch.equal(c.attention_mask, k.attention_mask):
        raise InterpError("clean and corrupted prompts are padded differently: pad both on the same side")
    if torch.equal(c.tokens[c.attention_mask], k.tokens[k.attention_mask]):
        raise InterpError("the clean and corrupted inputs are the same tokens: nothing differs to patch; "
                          "give a corrupted input that changes what the metric measures")
    return c, k


def check_span(metric: Any, clean: float, corrupted: float) -> float:
    """``clean − corrupted``, or a one-line error when the metric cannot tell the two runs apart
    (every normalised effect would be 0/0)."""
    span = clean - corrupted
    if span == 0 or span != span:
        raise InterpError(f"the clean and corrupted runs give the same {metric.name} ({clean:.4g}): normalised "
                          "effects are undefined; choose prompts (or a metric, e.g. target and contrast tokens) "
                          "that tell them apart")
    return span


# ---------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Start:
    """Where variants of a run first differ from it, so where they resume.

    ``layer``: the residual stream entering block ``layer`` (``mid=False``) or its MLP
    (``mid=True``); ``layer == n_layers``: the final stream (nothing left to run). ``col``: the
    variants differ only from this column of the padded batch on, so only those columns are rerun,
    attending over the recorded run's keys and values before it (causal attention: a position
    depends only on the positions up to it).
    """

    layer: int
    mid: bool = False
    col: int = 0

    def names(self, n_layers: int) -> list[str]:
        """The hook points a recorded run must keep for variants to resume here."""
        if self.layer >= n_layers:
            return []
        out = [hk.name("resid_mid" if self.mid else "resid_pre", self.layer)]
        if self.col:
            out += [hk.name(x, l) for l in range(self.layer + self.mid, n_layers) for x in ("k", "v")]
        return out


@dataclass
class Run:
    """A recorded run: its batch, its final residual stream (before the final LayerNorm) and kept activations."""

    batch: Batch
    final: Float[Tensor, "batch pos d_model"]
    acts: dict[str, Tensor]
    n_layers: int

    def __getitem__(self, key) -> Tensor:
        return Cache(self.acts, self.batch)[key]

    def stream(self, start: Start) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream at ``start`` (which the run must have recorded)."""
        if start.layer >= self.n_layers:
            return self.final
        return self[("resid_mid" if start.mid else "resid_pre", start.layer)]


@dataclass
class Stacked:
    """What a chunk of variants changes, stacked along the batch (variant ``v`` in rows ``v·B … (v+1)·B``).

    ``delta``: added to the recorded stream at the start, ``[variants, batch, pos, d_model]`` over
    the rerun columns (None: nothing); ``hooks``: ``(name, fn)`` pairs acting on the stacked rows.
    """

    delta: Optional[Tensor] = None
    hooks: list = field(default_factory=list)


class Engine:
    """Runs variants of one forward pass of ``model``: recorded, stacked, chunked, resumed mid-model.

    Args:
        model: a :class:`~interp.HookedGPT2`.
        chunk_tokens: how many tokens (variants × prompts × positions) one stacked pass may hold.
    """

    def __init__(self, model: Any, chunk_tokens: int = 8192):
        self.model = check_model(model)
        self.cfg = model.cfg
        self.chunk_tokens = check_chunk_tokens(chunk_tokens)

    # ------------------------------------------------------------------ one run
    def record(self, batch: Batch, names: Sequence = (), hooks: Sequence = (), *, keep_graph: bool = False) -> Run:
        """Run ``batch`` to the final stream once, keeping the named activations (detached unless ``keep_graph``)."""
        kept: dict[str, Tensor] = {}
        wanted = hk.resolve(list(dict.fromkeys(names)), self.cfg.n_layers) if names else []

        def keep(x: Tensor, name: str) -> None:
            kept[name] = x if keep_graph else x.detach()

        final = self.model.forward(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=self.cfg.n_layers,
                                   hooks=[*hooks, *((n, keep) for n in wanted)])
        return Run(batch, final, kept, self.cfg.n_layers)

    def resume(self, stream: Float[Tensor, "rows pos d_model"], start: Start, attention_mask: Bool[Tensor, "rows key_pos"],
               hooks: Sequence = (), past: Optional[dict] = None) -> Float[Tensor, "rows pos d_model"]:
        """The final stream of a run resumed at ``start`` from ``stream`` (the stream there).

        With ``start.col`` the stream and the result hold columns ``col …`` only and ``past`` maps each
        later layer to the keys and values ``[rows, col, n_heads, d_head]`` of the columns before.
        """
        model, L = self.model, self.cfg.n_layers
        if start.layer >= L:
            return stream
        h = model.hook_table(hooks)
        n_key = attention_mask.shape[1]
        mask = model.attention_mask(attention_mask, stream.shape[1], n_key)
        x = stream
        with model.running(attention_mask, len(stream), stream.shape[1], first_col=n_key - stream.shape[1]):
            for layer in range(start.layer, L):
                if not (start.mid and layer == start.layer):
                    x = model.attention_block(layer, x, mask, h, past=None if past is None else past[layer])
                x = model.mlp_block(layer, x, h)
        return x

    # ------------------------------------------------------------------ many variants
    def per_chunk(self, tokens_each: int) -> int:
        """How many items of ``tokens_each`` tokens one stacked pass may hold (at least one)."""
        return max(1, self.chunk_tokens // max(1, tokens_each))

    def chunks(self, items: Sequence, tokens_each: int) -> Iterator[list]:
        """``items`` in consecutive chunks of :meth:`per_chunk` items."""
        n = self.per_chunk(tokens_each)
        for i in range(0, len(items), n):
            yield list(items[i : i + n])

    def sweep(self, base: Run, items: Sequence, start_of: Callable[[Any], Start],
              build: Callable[[list, Start], Stacked], metric: Any, bar: Any = None) -> list[float]:
        """The metric of every variant of ``base``, in the order of ``items``.

        ``start_of(item)`` says where a variant resumes; items with the same start are stacked along
        the batch in chunks, and ``build(chunk, start)`` says what the chunk changes there (the
        stream's delta over the rerun columns, and hooks for later points). ``base`` must have
        recorded the streams at the starts (:meth:`Start.names`).
        """
        groups: dict[Start, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(start_of(item), []).append(i)
        B, P = base.batch.tokens.shape
        values: dict[int, float] = {}
        for start, todo in groups.items():
            for chunk in self.chunks(todo, B * (P - start.col)):
                got = self._run_chunk(base, start, build([items[i] for i in chunk], start), len(chunk), metric)
                values.update(zip(chunk, got))
                if bar is not None:
                    bar.update(len(chunk))
        return [values[i] for i in range(len(items))]

    def _run_chunk(self, base: Run, start: Start, change: Stacked, V: int, metric: Any) -> list[float]:
        L, batch = self.cfg.n_layers, base.batch
        B, P = batch.tokens.shape
        c = start.col
        x = base.stream(start)[:, c:]
        x = x.repeat(V, 1, 1) if change.delta is None else (x[None] + change.delta).reshape(V * B, P - c, -1)
        past = None
        if c and start.layer < L:
            past = {l: (base[("k", l)][:, :c].repeat(V, 1, 1, 1), base[("v", l)][:, :c].repeat(V, 1, 1, 1))
                    for l in range(start.layer + start.mid, L)}
        out = self.resume(x, start, batch.attention_mask.repeat(V, 1), change.hooks, past)
        if not c:
            return metric.from_stacked_resid(self.model, out, batch)
        read = metric.positions(batch)
        if read is None:  # the metric reads every position: the whole stream of each variant
            full = base.final.repeat(V, 1, 1)
            full[:, c:] = out
            return metric.from_stacked_resid(self.model, full, batch)
        # Only the rows it reads: from the rerun columns where they are in them, else the recorded run's.
        rows = base.final[torch.arange(B), read].repeat(V, 1)
        late = (read >= c).repeat(V)
        rows[late] = out[torch.arange(V * B, device=out.device)[late], read.repeat(V)[late] - c]
        return metric.from_stacked_rows(self.model, rows, batch)

    # ------------------------------------------------------------------ primitives for interventions
    def head_writes(self, run: Run, layers: Sequence[int]) -> dict[int, Float[Tensor, "head batch pos d_model"]]:
        """What each head of ``layers`` wrote in ``run`` (which recorded their ``z``), ``[head, batch, pos, d_model]``."""
        return {l: self.model.head_write(l, run[("z", l)]).permute(2, 0, 1, 3) for l in layers}

    def feed(self, layer: int, receivers: Sequence[tuple[str, Optional[int], slice]],
             streams: Callable[[slice], Tensor]) -> list:
        """Hooks giving receivers of ``layer`` their own copy of the residual stream.

        ``receivers``: ``(input, head, rows)`` triples — ``input`` ``"q"``/``"k"``/``"v"`` (that head's
        queries, keys or values are recomputed by the model from the given stream) or ``"in"`` (the
        MLP's input, ``head`` ignored) — for the stacked rows ``rows``; ``streams(rows)`` is the stream
        those rows' receiver reads, ``[rows, pos, d_model]``, before the LayerNorm.
        """
        model, out = self.model, []
        for what in ("q", "k", "v"):
            mine = [(h, rows) for w, h, rows in receivers if w == what]
            if not mine:
                continue

            def edit(act: Tensor, name: str, mine=mine, what=what) -> Tensor:
                act = act.clone()
                for h, rows in mine:
                    act[rows, :, h] = model.project(layer, what, streams(rows)[:, :, None], [h])[:, :, 0]
                return act

            out.append((hk.name(what, layer), edit))
        mlp_rows = [rows for w, _, rows in receivers if w == "in"]
        if mlp_rows:
            def feed_mlp(x: Tensor, name: str) -> Tensor:
                x = x.clone()
                for rows in mlp_rows:
                    x[rows] = streams(rows)
                return x

            out.append((hk.name("mlp_in", layer), feed_mlp))
        return out

    def receiver_grads(self, acts: dict, grads: dict, layer: int, steps: int) -> Float[Tensor, "receiver batch pos d_model"]:
        """Σ over ``steps`` stacked runs of ∂metric/∂(each receiver's own copy of the stream) at ``layer``.

        Receivers of a layer are its heads' q, k, v inputs then its MLP's (``n_layers``: the
        logits). Read from a run that recorded, with gradients, ``resid_pre``, ``q``, ``k``, ``v`` and
        ``mlp_in`` of the layer (``resid_post`` of the last layer for the logits): the MLP's and the
        logits' gradients are read at their own copies of the stream as they are. A head's q/k/v
        gradient ``g`` goes back through ``W`` and ``ln1``'s Jacobian at the shared
        stream: with ``x̂`` the normalised stream, ``σ`` its scale and ``W̃ = diag(w) W`` (the gain
        folded in), ``∂/∂x = (g/σ)W̃ᵀ − mean_m((g/σ)W̃ᵀ) − x̂·((g/σ)·W̃ᵀx̂)/d_model`` (LayerNorm's
        Jacobian ``(I − 1/n − x̂x̂ᵀ/n) diag(w)/σ`` applied to ``W g``; tests hold it equal to autograd
        through the model's split q/k/v inputs). The first term is summed over the steps in d_head
        space before it is widened; the second is d_head-sized; ``W̃ᵀx̂`` is the head's own q/k/v from
        the forward pass less its biases. So the ``[3·heads + 1, batch, pos, d_model]`` result is
        written once and updated twice in place, whatever ``steps``.
        """
        model, cfg, H = self.model, self.cfg, self.cfg.n_heads
        S = steps
        if layer == cfg.n_layers:
            g = grads[hk.name("resid_post", layer - 1)]
            return g.reshape(S, -1, *g.shape[1:]).sum(0)[None]
        x = acts[hk.name("resid_pre", layer)]
        R, P, M = x.shape
        B = R // S
        sigma = (x.var(-1, unbiased=False, keepdim=True) + cfg.eps).sqrt()  # [R, P, 1]
        w, b = model.ln_weights("ln1", layer)
        out = torch.empty(3 * H + 1, B, P, M, dtype=x.dtype, device=x.device)
        m1, m2 = [], []
        for i, (what, W_, b_) in enumerate(zip("qkv", (model.W_Q, model.W_K, model.W_V), (model.b_Q, model.b_K, model.b_V))):
            Ww = W_[layer] * w[None, :, None]  # [H, d_model, d_head]
            g = grads[hk.name(what, layer)] / sigma[..., None]  # [R, P, H, d_head]
            proj = acts[hk.name(what, layer)] - (torch.einsum("m,hmd->hd", b, W_[layer]) + b_[layer])  # x̂ W̃, per head
            m2.append((g * proj).sum(-1) / M)  # [R, P, H]
            g = g.reshape(S, B, P, H, -1).sum(0)
            torch.bmm(g.permute(2, 0, 1, 3).reshape(H, B * P, -1), Ww.transpose(1, 2),
                      out=out[i * H : (i + 1) * H].view(H, B * P, M))
            m1.append(torch.einsum("bphd,hd->hbp", g, Ww.mean(1)))  # each row's mean over d_model
        heads = out[: 3 * H]
        heads.sub_(torch.cat(m1)[..., None])
        xhat = (x - x.mean(-1, keepdim=True)) / sigma
        m2 = torch.cat(m2, -1)  # [R, P, 3H]
        if S == 1:
            heads.addcmul_(xhat[None], m2.permute(2, 0, 1)[..., None], value=-1)
        else:
            heads.sub_(torch.einsum("sbpm,sbph->hbpm", xhat.view(S, B, P, M), m2.view(S, B, P, -1)))
        out[3 * H] = grads[hk.name("mlp_in", layer)].reshape(S, B, P, M).sum(0)
        return out
