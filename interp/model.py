"""The hooked GPT-2: a readable forward pass over weights in TransformerLens's layout.

:func:`interp.load` reads a GPT-2 checkpoint itself (:mod:`interp.checkpoint`) and folds
LayerNorm with :mod:`interp.folding`, which equals TransformerLens 4's processing. The
``TransformerBridge``'s own forward pass wraps Hugging Face's modules and fires ~500 hook
points; analyses that run the model hundreds of times want something leaner, so this
module runs GPT-2 itself, firing a hook only where one is attached. The bridge, the
reference implementation, stays available as ``model.bridge``: built on first use, with
the same weights (checked), for TransformerLens's own tools and parity tests.

Hooks use TransformerLens's names (see :mod:`interp.hooks`). A hook function is
called as ``fn(activation, name)`` and may return a replacement tensor.

Why one module of ~550 lines: it is one object — its weights, the inputs it accepts, its
scoped hooks, the forward pass that fires them and the factored circuits read from its
weights — and every part reads the others' private state (the fused ``W_qkv``, the hook
table). What is not the object lives beside it: the bridge's names and check
(:mod:`interp.bridge`), caches (:mod:`interp.cache`), hook names (:mod:`interp.hooks`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from . import hooks as hk
from .cache import Cache
from .errors import InterpError
from .tokens import Batch, Prompts, from_tokens, tokenize

# A prompt, a list of prompts, token ids [batch, pos] or a Batch. Deliberately untyped for the
# runtime checker: to_batch() checks user input itself, with messages that name the culprit.
Inputs = Any
HookList = Sequence[tuple]  # [(name or (short, layer), fn), ...]


def __getattr__(name: str):
    # TransformerLens takes seconds to import: FactoredMatrix (the type of model.qk() and friends)
    # is imported the first time a circuit is asked for, not when the model module is.
    if name == "FactoredMatrix":
        from transformer_lens.FactoredMatrix import FactoredMatrix

        return FactoredMatrix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a loaded model."""

    name: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    eps: float
    act_fn: str
    fold_ln: bool
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Build from a dict, rejecting unknown keys (a typo should not pass silently)."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InterpError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**values)


class HookedGPT2:
    """GPT-2 with its residual stream, attention heads and circuits opened up.

    Build one with :func:`interp.load`. Weights are stacked over layers in
    TransformerLens layout: ``W_Q[layer, head]`` is ``[d_model, d_head]``.

    With ``fold_ln=True`` (the default of :func:`interp.load`) LayerNorm's scale and
    bias are folded into the next linear map and the weights that write to the
    residual stream are centred, as HookedTransformer did: circuits read directly
    in the residual basis, logits differ from Hugging Face's by a constant per
    position and log-probabilities are equal. With ``fold_ln=False`` the weights
    are Hugging Face's own and so are the logits.

    A head's output is one thing in both modes (the convention every intervention,
    decomposition and attribution of interp follows; documented here, once): what
    Hugging Face's GPT-2 computes as the head's slice of the input of
    ``attn.c_proj`` — its ``z`` at ``hook_z``, **value bias included** — times its
    rows of ``W_O``. TransformerLens's default processing also folds the value
    biases into ``b_O`` (so a folded ``z`` would lack them, and zeroing it would
    leave the head writing ``b_V·W_O[h]``); interp keeps them per head
    (``enable_compatibility_mode(fold_value_biases=False)``), so ``b_V`` holds
    ``b_V + β·W_V`` when folded. The layer's ``b_O`` (``c_proj``'s bias) belongs to
    no head. Folding also centres ``W_O`` over d_model, so a head's output *vector*
    differs between modes by its mean over d_model, which the next LayerNorm
    removes: losses, log-probs, logit differences and attributions read through a
    LayerNorm are equal in both modes (tests check each against Hugging Face with
    torch hooks).
    """

    def __init__(self, weights: dict[str, Tensor], cfg: ModelConfig, tokenizer: Any, *, bridge: Any = None):
        """``weights``: every weight stacked over layers, by the names of :meth:`weights` (``W_Q`` is
        ``[n_layers, n_heads, d_model, d_head]``, …); when it also holds the fused ``W_qkv``/``b_qkv``
        of :func:`interp.checkpoint.weight_shapes`, the forward pass uses them as they are (``W_Q``…
        are then views of them). ``bridge``: a TransformerBridge holding the same weights, or a
        function that builds one (called on first use of :attr:`bridge`), or None.
        """
        self.tokenizer = tokenizer
        self.cfg = cfg
        self._bridge = bridge
        self._hooks: dict[str, list] = {}
        self._derived: dict[str, Any] = {}
        self._runs: list[tuple] = []  # (attention mask, first column) of the runs in progress, innermost last
        p = weights
        self.W_E: Float[Tensor, "d_vocab d_model"] = p["W_E"]
        self.W_pos: Float[Tensor, "n_ctx d_model"] = p["W_pos"]
        self.W_Q: Float[Tensor, "n_layers n_heads d_model d_head"] = p["W_Q"]
        self.W_K: Float[Tensor, "n_layers n_heads d_model d_head"] = p["W_K"]
        self.W_V: Float[Tensor, "n_layers n_heads d_model d_head"] = p["W_V"]
        self.W_O: Float[Tensor, "n_layers n_heads d_head d_model"] = p["W_O"]
        self.b_Q: Float[Tensor, "n_layers n_heads d_head"] = p["b_Q"]
        self.b_K: Float[Tensor, "n_layers n_heads d_head"] = p["b_K"]
        self.b_V: Float[Tensor, "n_layers n_heads d_head"] = p["b_V"]
        self.b_O: Float[Tensor, "n_layers d_model"] = p["b_O"]
        self.W_in: Float[Tensor, "n_layers d_model d_mlp"] = p["W_in"]
        self.b_in: Float[Tensor, "n_layers d_mlp"] = p["b_in"]
        self.W_out: Float[Tensor, "n_layers d_mlp d_model"] = p["W_out"]
        self.b_out: Float[Tensor, "n_layers d_model"] = p["b_out"]
        self.ln1_w, self.ln1_b = p["ln1_w"], p["ln1_b"]
        self.ln2_w, self.ln2_b = p["ln2_w"], p["ln2_b"]
        self.lnf_w, self.lnf_b = p["lnf_w"], p["lnf_b"]
        self.W_U: Float[Tensor, "d_model d_vocab"] = p["W_U"]
        self.b_U: Float[Tensor, " d_vocab"] = p["b_U"]
        # One fused matmul for q, k and v (as GPT-2's own c_attn): [L, d_model, 3 * H * d_head].
        H, D, M = cfg.n_heads, cfg.d_head, cfg.d_model
        if "W_qkv" in p:  # the loader's layout: W_Q, W_K, W_V are views of it
            self._W_qkv, self._b_qkv = p["W_qkv"], p["b_qkv"]
        else:
            self._W_qkv = torch.cat(
                [w.permute(0, 2, 1, 3).reshape(cfg.n_layers, M, H * D) for w in (self.W_Q, self.W_K, self.W_V)], -1
            ).contiguous()
            self._b_qkv = torch.cat([b.reshape(cfg.n_layers, H * D) for b in (self.b_Q, self.b_K, self.b_V)], -1)
        self._W_O_flat = self.W_O.reshape(cfg.n_layers, H * D, M)
        self._act = _activation(cfg.act_fn)
        self.hook_names: list[str] = hk.all_names(cfg.n_layers)

    @classmethod
    def from_bridge(cls, bridge, cfg: ModelConfig) -> "HookedGPT2":
        """Take the weights (and tokenizer) of a TransformerBridge, which stays ``model.bridge``."""
        from .bridge import bridge_weights

        return cls(bridge_weights(bridge, cfg.n_layers), cfg, bridge.tokenizer, bridge=bridge)

    @property
    def bridge(self):
        """TransformerLens's ``TransformerBridge`` over the same weights (the reference implementation).

        Built on first use (TransformerLens takes seconds to import and boot): from the same
        checkpoint, with ``enable_compatibility_mode(fold_value_biases=False)`` when folded; its
        weights are checked against this model's before it is returned.
        """
        if self._bridge is None:
            raise InterpError("this model has no TransformerBridge (it was built from weights alone)")
        if callable(self._bridge) and not hasattr(self._bridge, "tl_parameters"):
            from .bridge import check_same_weights

            bridge = self._bridge()
            check_same_weights(self, bridge)
            self._bridge = bridge
        return self._bridge

    def weights(self) -> dict[str, Tensor]:
        """Every weight, stacked over layers, by name (``W_Q``, ``b_V``, ``ln1_w``, …, and the fused ``W_qkv``,
        ``b_qkv`` the forward pass runs): the layout ``__init__`` takes."""
        from .bridge import TL_NAMES

        return {**{k: getattr(self, k) for k in TL_NAMES}, "W_qkv": self._W_qkv, "b_qkv": self._b_qkv}

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedGPT2({c.name!r}: {c.n_layers} layers × {c.n_heads} heads, d_model {c.d_model}, "
            f"vocab {c.d_vocab}, context {c.n_ctx}, fold_ln={c.fold_ln}, {c.dtype}, {c.device})"
        )

    # ------------------------------------------------------------------ inputs
    def tokenize(self, prompts: Prompts, *, prepend_bos: bool = True, padding_side: str = "right") -> Batch:
        """Tokenize prompts into a padded :class:`~interp.tokens.Batch` (BOS prepended by default)."""
        return tokenize(
            self.tokenizer, prompts, n_ctx=self.cfg.n_ctx, prepend_bos=prepend_bos,
            padding_side=padding_side, device=self.cfg.device,
        )

    def to_batch(self, inputs: Inputs, *, prepend_bos: bool = True, padding_side: str = "right") -> Batch:
        """Accept a prompt, a list of prompts, a token tensor or a Batch; return a checked Batch."""
        if isinstance(inputs, Batch):
            return from_tokens(inputs.tokens, inputs.attention_mask, self.cfg.d_vocab, self.cfg.n_ctx)
        if isinstance(inputs, Tensor):
            return from_tokens(inputs.to(self.cfg.device), None, self.cfg.d_vocab, self.cfg.n_ctx)
        return self.tokenize(inputs, prepend_bos=prepend_bos, padding_side=padding_side)

    def to_str_tokens(self, tokens: Union[Tensor, Sequence[int], str]) -> list[str]:
        """The text of each token (a string is tokenized first, with BOS)."""
        if isinstance(tokens, str):
            tokens = self.tokenize(tokens).tokens[0]
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        return [self.tokenizer.decode([i]) for i in ids]

    # ------------------------------------------------------------------ checks
    def check_layer(self, layer: int) -> int:
        n = self.cfg.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
            raise InterpError(f"layer {layer!r} out of range: model has {n} layers (0–{n - 1})")
        return layer

    def check_head(self, layer: int, head: int) -> tuple[int, int]:
        self.check_layer(layer)
        n = self.cfg.n_heads
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n:
            raise InterpError(f"head {head!r} out of range: model has {n} heads per layer (0–{n - 1})")
        return layer, head

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: HookList) -> Iterator["HookedGPT2"]:
        """Attach hooks for the duration of a ``with`` block; they are removed on exit, error or not.

        Blocks nest: an inner block's hooks run after the outer block's on the same point.
        """
        added = [(self._resolve_one(n), fn) for n, fn in fwd_hooks]
        for name, fn in added:
            self._hooks.setdefault(name, []).append(fn)
        try:
            yield self
        finally:
            for name, fn in reversed(added):
                fns = self._hooks[name]
                del fns[len(fns) - 1 - fns[::-1].index(fn)]
                if not fns:
                    del self._hooks[name]

    @property
    def has_hooks(self) -> bool:
        """True while any scoped hook is attached."""
        return bool(self._hooks)

    @contextlib.contextmanager
    def hooks_suspended(self) -> Iterator["HookedGPT2"]:
        """Run without the attached hooks inside the block; they are back on exit, error or not.

        For statistics that must describe the clean model (e.g. an ablation's reference means)
        whatever the caller has attached.
        """
        attached, self._hooks = self._hooks, {}
        try:
            yield self
        finally:
            self._hooks = attached

    @contextlib.contextmanager
    def running(self, attention_mask: Optional[Bool[Tensor, "batch pos"]], n_rows: int, n_pos: int,
                first_col: int = 0) -> Iterator[None]:
        """Declare a run in progress over ``n_rows × n_pos`` (the forward pass and the engine's partial runs
        do): hooks that need to know where each prompt's tokens are ask :meth:`run_positions`.

        ``attention_mask`` covers the whole padded width; a run of columns ``first_col …`` only (one that
        reuses earlier columns' keys and values) says where it starts.
        """
        if attention_mask is None:
            attention_mask = torch.ones(n_rows, first_col + n_pos, dtype=torch.bool, device=self.cfg.device)
        self._runs.append((attention_mask, first_col))
        try:
            yield
        finally:
            self._runs.pop()

    def run_positions(self) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"], Int[Tensor, " batch"]]:
        """Inside a hook, for the run in progress: ``(positions, real, first)`` — each column's token position
        within its prompt (BOS = 0), whether it holds a real token (not padding), and each row's first real
        column of the whole padded width. Positions mean the same with left or right padding, so edits that
        depend on a position (mean ablation, resampling, attention to given keys) read them here rather than
        assume columns."""
        if not self._runs:
            raise InterpError("run_positions() is only defined inside a hook, while the model runs")
        mask, first_col = self._runs[-1]
        ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return ids[:, first_col:], mask[:, first_col:], mask.int().argmax(-1)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """A quantity derived from the weights, computed once per model (weights are never changed in place)."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def _resolve_one(self, name) -> str:
        if callable(name) and not isinstance(name, str):
            raise InterpError("a hook is attached to one name, not a predicate: give (name, fn) pairs")
        names = hk.resolve(name, self.cfg.n_layers)
        if len(names) != 1:
            raise InterpError(f"hook name {name!r} matches {len(names)} hook points; attach to one name at a time")
        return names[0]

    def hook_table(self, extra: Optional[HookList] = None) -> dict[str, list]:
        """The attached hooks plus ``extra`` ``(name, fn)`` pairs, by full name: what the blocks fire
        (:meth:`attention_block`, :meth:`mlp_block` take it)."""
        if not extra:
            return self._hooks
        merged = {k: list(v) for k, v in self._hooks.items()}
        for name, fn in extra:
            merged.setdefault(self._resolve_one(name), []).append(fn)
        return merged

    @staticmethod
    def _fire(hooks: dict, name: str, x: Tensor) -> Tensor:
        for fn in hooks.get(name, ()):
            out = fn(x, name)
            if out is not None:
                if out.shape != x.shape:
                    raise InterpError(f"hook on {name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
                x = out
        return x

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        inputs: Union[Int[Tensor, "batch pos"], Float[Tensor, "batch pos d_model"], str, Sequence[str], Batch],
        *,
        attention_mask: Optional[Bool[Tensor, "batch pos"]] = None,
        start_at_layer: int = 0,
        stop_at_layer: Optional[int] = None,
        hooks: Optional[HookList] = None,
    ) -> Tensor:
        """Run blocks ``start_at_layer … stop_at_layer - 1`` (TransformerLens's arguments and meaning).

        ``inputs`` are token ids (or prompts, or a Batch), run from the embeddings, or the residual
        stream entering ``start_at_layer`` (a float tensor; from layer 0 that skips the embeddings).
        Returns the logits ``[batch, pos, d_vocab]`` when ``stop_at_layer`` is None, else the residual
        stream entering block ``stop_at_layer`` (``n_layers``: the final stream, before the final
        LayerNorm). ``attention_mask`` (True = real token) handles padding on either side.

        Runs that start inside a block, stack variants of one run along the batch or reuse another
        run's keys and values are :class:`interp.engine.Engine`'s, built from the same blocks:
        :meth:`embed`, :meth:`attention_block`, :meth:`mlp_block`, :meth:`unembed`.
        """
        h = self.hook_table(hooks)
        cfg = self.cfg
        stop = cfg.n_layers if stop_at_layer is None else stop_at_layer
        if not 0 <= start_at_layer <= stop <= cfg.n_layers:
            raise InterpError(
                f"layers {start_at_layer}..{stop} out of range: model has {cfg.n_layers} layers; "
                "need 0 <= start_at_layer <= stop_at_layer <= n_layers"
            )
        if start_at_layer == 0 and not (isinstance(inputs, Tensor) and inputs.is_floating_point()):
            resid, batch = self.embed(inputs, attention_mask, h)
            attention_mask = batch.attention_mask
        else:
            resid = inputs
        mask = self.attention_mask(attention_mask, resid.shape[1])
        with self.running(attention_mask, *resid.shape[:2]):
            for layer in range(start_at_layer, stop):
                resid = self.mlp_block(layer, self.attention_block(layer, resid, mask, h), h)
            return self.unembed(resid, h) if stop_at_layer is None else resid

    __call__ = forward

    # ------------------------------------------------------------------ the blocks (the engine's primitives)
    def embed(self, inputs: Inputs, attention_mask: Optional[Tensor] = None,
              hooks: Optional[dict] = None) -> tuple[Float[Tensor, "batch pos d_model"], Batch]:
        """Token and position embeddings of ``inputs`` (fires ``hook_embed``, ``hook_pos_embed``), and the checked batch.

        Position ids count each prompt's real tokens, so a prompt gets the same embeddings
        whatever side its padding is on.
        """
        h = hooks or {}
        if isinstance(inputs, Tensor):
            batch = from_tokens(inputs, attention_mask, self.cfg.d_vocab, self.cfg.n_ctx)
        else:  # prompts or a Batch
            batch = self.to_batch(inputs)
        positions = batch.position_ids if batch.padded else torch.arange(batch.tokens.shape[-1], device=self.cfg.device)
        resid = self._fire(h, "hook_embed", self.W_E[batch.tokens]) + self._fire(
            h, "hook_pos_embed", self.W_pos[positions].expand(len(batch), -1, -1)
        )
        return resid, batch

    @staticmethod
    def attention_mask(attention_mask: Optional[Bool[Tensor, "batch key_pos"]], n_query: int,
                       n_key: Optional[int] = None) -> Optional[Bool[Tensor, "_ 1 query_pos key_pos"]]:
        """Who may attend to whom: boolean ``[batch, 1, query, key]`` (True = may attend), or None for
        plain causal attention over an unpadded batch.

        The queries are the last ``n_query`` of ``n_key`` positions (a run that reuses the keys and
        values of earlier positions). A query always may attend to itself: a padding query then never
        sees an empty row (which would make softmax NaN), and real queries never see padding keys.
        """
        n_key = n_query if n_key is None else n_key
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and n_query == n_key:
            return None
        device = attention_mask.device if attention_mask is not None else None
        offset = n_key - n_query
        causal = torch.ones(n_query, n_key, dtype=torch.bool, device=device).tril(offset)
        if not padded:
            return causal[None, None]
        own = torch.zeros(n_query, n_key, dtype=torch.bool, device=device)
        own[torch.arange(n_query), torch.arange(n_query) + offset] = True
        return causal & (attention_mask[:, None, None, -n_key:] | own)

    def attention_block(
        self, layer: int, resid: Float[Tensor, "batch pos d_model"], mask: Optional[Tensor] = None,
        hooks: Optional[dict] = None, *, past: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """A block's first half, ``resid_pre -> resid_mid``. Costly hook points are computed only when hooked.

        ``mask`` is :meth:`attention_mask`'s. ``past``: the keys and values ``[batch, p, n_heads, d_head]``
        of the ``p`` positions before ``resid``'s (``resid`` then holds positions ``p …`` only, and
        ``mask`` covers ``p + pos`` keys): causal attention makes a position depend only on the
        positions up to it, so a run that differs from another only from position ``p`` on can reuse
        that run's keys and values before ``p``.
        """
        cfg, h = self.cfg, hooks or {}
        name = lambda short: hk.LAYER_HOOKS[short].format(layer)  # noqa: E731
        B, P = resid.shape[:2]
        resid = self._fire(h, name("resid_pre"), resid)
        split = [i for i, w in enumerate("qkv") if name(f"{w}_input") in h]
        if len(split) < 3:
            x = self._norm("ln1", layer, resid, h)
            qkv = torch.addmm(self._b_qkv[layer], x.reshape(B * P, -1), self._W_qkv[layer]).view(B, P, 3, cfg.n_heads, -1)
            parts = list(qkv.unbind(2))
        else:
            parts = [None, None, None]
        for i in split:  # each head reads its own copy of the stream (TransformerLens's split q/k/v input)
            what = "qkv"[i]
            copies = self._fire(h, name(f"{what}_input"), resid[:, :, None].expand(B, P, cfg.n_heads, -1).clone())
            parts[i] = self.project(layer, what, copies, hooks=h)
        q, k, v = (self._fire(h, name(w), t) for w, t in zip("qkv", parts))
        if past is not None:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        if name("attn_scores") in h or name("pattern") in h:
            scores = torch.einsum("bqhd,bkhd->bhqk", q / math.sqrt(cfg.d_head), k)
            allowed = mask if mask is not None else torch.ones(P, k.shape[1], dtype=torch.bool,
                                                               device=scores.device).tril(k.shape[1] - P)
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            scores = self._fire(h, name("attn_scores"), scores)
            pattern = self._fire(h, name("pattern"), scores.softmax(-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None
            ).transpose(1, 2)
        z = self._fire(h, name("z"), z)
        if name("result") in h:
            attn_out = self._fire(h, name("result"), self.head_write(layer, z)).sum(2) + self.b_O[layer]
        else:
            attn_out = (z.reshape(B * P, -1) @ self._W_O_flat[layer]).view(B, P, -1) + self.b_O[layer]
        return resid + self._fire(h, name("attn_out"), attn_out)

    def mlp_block(self, layer: int, resid: Float[Tensor, "batch pos d_model"],
                  hooks: Optional[dict] = None) -> Float[Tensor, "batch pos d_model"]:
        """A block's second half, ``resid_mid -> resid_post``."""
        h = hooks or {}
        resid = self._fire(h, hk.name("resid_mid", layer), resid)
        mlp_in = hk.name("mlp_in", layer)
        x = self._fire(h, mlp_in, resid.clone()) if mlp_in in h else resid  # the MLP's own copy of the stream
        return self._fire(h, hk.name("resid_post", layer), resid + self.mlp(layer, x, h))

    def mlp(self, layer: int, resid: Float[Tensor, "... d_model"], hooks: Optional[dict] = None) -> Float[Tensor, "... d_model"]:
        """MLP ``layer``'s output for a residual stream at ``hook_resid_mid`` (its ln2 included)."""
        h, name = hooks or {}, (lambda short: hk.LAYER_HOOKS[short].format(layer))
        x = self._norm("ln2", layer, resid, h)
        pre = self._fire(h, name("mlp_pre"), x @ self.W_in[layer] + self.b_in[layer])
        post = self._fire(h, name("mlp_post"), self._act(pre))
        return self._fire(h, name("mlp_out"), post @ self.W_out[layer] + self.b_out[layer])

    def unembed(self, resid: Float[Tensor, "... d_model"], hooks: Optional[dict] = None) -> Float[Tensor, "... d_vocab"]:
        """Final LayerNorm then unembedding, on any residual-stream tensor (e.g. a few positions)."""
        return self._norm("ln_final", None, resid, hooks or {}) @ self.W_U + self.b_U

    # ------------------------------------------------------------------ GPT-2's arithmetic, once
    def ln_weights(self, which: str, layer: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """The gain and bias of LayerNorm ``which`` (``"ln1"``, ``"ln2"`` of ``layer``, or ``"ln_final"``)
        as this model applies them (ones and zeros once folded into the next weights)."""
        if which not in ("ln1", "ln2", "ln_final"):
            raise InterpError(f"unknown LayerNorm {which!r}: use 'ln1', 'ln2' or 'ln_final'")
        if which != "ln_final":
            self.check_layer(layer)
        return self._ln_params(which, layer)

    def _ln_params(self, which: str, layer: Optional[int]) -> tuple[Tensor, Tensor]:
        if which == "ln_final":
            return self.lnf_w, self.lnf_b
        return (self.ln1_w[layer], self.ln1_b[layer]) if which == "ln1" else (self.ln2_w[layer], self.ln2_b[layer])

    def _norm(self, which: str, layer: Optional[int], x: Tensor, h: dict) -> Tensor:
        """LayerNorm ``which``, firing its ``hook_scale`` (only computed apart when hooked) and ``hook_normalized``."""
        w, b = self._ln_params(which, layer)
        scale_name = hk.name(f"{which}_scale", layer)
        if scale_name in h:  # TransformerLens's LayerNorm: centre, divide by the (hookable) scale, gain, bias
            centred = x - x.mean(-1, keepdim=True)
            scale = self._fire(h, scale_name, (centred.pow(2).mean(-1, keepdim=True) + self.cfg.eps).sqrt())
            y = centred / scale * w + b
        else:
            y = F.layer_norm(x, x.shape[-1:], w, b, self.cfg.eps)
        return self._fire(h, hk.name(which, layer), y) if h else y

    def project(self, layer: int, which: str, stream: Float[Tensor, "... n d_model"], heads: Optional[Sequence[int]] = None,
                hooks: Optional[dict] = None) -> Float[Tensor, "... n d_head"]:
        """What heads of ``layer`` compute as their queries, keys or values (``which``) from their own copies
        of the residual stream before ``ln1``: ``stream[..., i, :]`` is head ``heads[i]``'s (every head by default).

        The one definition of a head's q/k/v from its input: the split q/k/v-input hook points
        (``blocks.L.hook_q_input``…) run through it, and so does every intervention that gives one
        head a different input (path patching, edge patching, the circuit run).
        """
        W = {"q": self.W_Q, "k": self.W_K, "v": self.W_V}[which][layer]
        b = {"q": self.b_Q, "k": self.b_K, "v": self.b_V}[which][layer]
        if heads is not None:
            idx = torch.as_tensor(list(heads), dtype=torch.long, device=W.device)
            W, b = W[idx], b[idx]
        h = {k: fns for k, fns in (hooks or {}).items() if k == hk.name("ln1_scale", layer)}
        x = self._norm("ln1", layer, stream, h) if h else F.layer_norm(
            stream, stream.shape[-1:], self.ln1_w[layer], self.ln1_b[layer], self.cfg.eps)
        return torch.einsum("...nm,nmd->...nd", x, W) + b

    def head_write(self, layer: int, z: Float[Tensor, "... n d_head"], heads: Optional[Sequence[int]] = None, *,
                   sum_heads: bool = False) -> Tensor:
        """What heads of ``layer`` write into the residual stream: ``z[..., i, :] @ W_O[layer, heads[i]]``.

        The one definition of a head's output (its ``z``, value bias included, times its rows of
        ``W_O``; ``b_O`` is no head's — see the class docs). ``heads``: which heads ``z``'s
        head dimension holds (default every head). Returns ``[..., n, d_model]``, or with
        ``sum_heads`` their sum ``[..., d_model]`` in one matrix product.
        """
        W = self.W_O[layer]
        if heads is not None:
            W = W[torch.as_tensor(list(heads), dtype=torch.long, device=W.device)]
        if sum_heads:
            return z.reshape(*z.shape[:-2], -1) @ W.reshape(-1, self.cfg.d_model)
        return torch.einsum("...nd,ndm->...nm", z, W)

    # ------------------------------------------------------------------ run
    def run(
        self,
        inputs: Inputs,
        names: hk.NameSpec = None,
        *,
        hooks: Optional[HookList] = None,
        stop_at_layer: Optional[int] = None,
        logits: bool = True,
        prepend_bos: bool = True,
        padding_side: str = "right",
    ) -> tuple[Optional[Tensor], Cache]:
        """Run the model and keep only the activations named in ``names``.

        Args:
            inputs: a prompt, a list of prompts (padded, BOS prepended), token ids
                ``[batch, pos]`` or a :class:`~interp.tokens.Batch`.
            names: hook points to cache (see :func:`interp.hooks.resolve`); nothing by default.
            hooks: extra ``(name, fn)`` hooks for this run only.
            stop_at_layer: stop before this block; logits are then None.
            logits: if False, stop right after the last block a cached name needs.

        Returns:
            ``(logits or None, cache)``; ``cache.batch`` holds the tokens and mask.

        >>> from interp.testing import planted_model
        >>> model = planted_model()
        >>> logits, cache = model.run("a b c a b c", names=["pattern.0"])
        >>> tuple(cache["pattern", 0].shape)   # batch, head, query, key (BOS + 6 tokens)
        (1, 4, 7, 7)
        """
        batch = self.to_batch(inputs, prepend_bos=prepend_bos, padding_side=padding_side)
        wanted = hk.resolve(names, self.cfg.n_layers)
        n_layers = self.cfg.n_layers
        final_ln = any(hk.layer_of(n) > n_layers for n in wanted)  # the final LayerNorm's hook points
        if not logits and stop_at_layer is None and not final_ln:
            stop_at_layer = min(n_layers, max([hk.layer_of(n) + 1 for n in wanted], default=0))
        if stop_at_layer is not None and not 0 <= stop_at_layer <= n_layers:
            raise InterpError(f"stop_at_layer {stop_at_layer} out of range: model has {n_layers} layers")
        store: dict[str, Tensor] = {}

        def keep(x: Tensor, name: str) -> None:
            store[name] = x.detach()

        # Unembedding every position is a third of GPT-2 small's forward: skip it unless needed.
        to_end = stop_at_layer is None or stop_at_layer == n_layers
        out = self.forward(
            batch.tokens, attention_mask=batch.attention_mask,
            stop_at_layer=None if to_end and (logits or final_ln) else stop_at_layer,
            hooks=[*(hooks or ()), *((n, keep) for n in wanted)],
        )
        return (out if to_end and logits else None), Cache({n: store[n] for n in wanted if n in store}, batch)

    def decompose_resid(self, inputs: Inputs, layer: int, where: str = "pre"):
        """The residual stream at ``blocks.{layer}.hook_resid_{where}`` as a sum of its writers.

        See :func:`interp.residual.decompose_resid`.
        """
        from .residual import decompose_resid

        return decompose_resid(self, inputs, layer, where)

    # ------------------------------------------------------------------ circuits
    def qk(self, layer: int, head: int) -> FactoredMatrix:
        """The head's QK circuit ``W_Q W_Kᵀ`` ``[d_model, d_model]``, factored through d_head."""
        from transformer_lens.FactoredMatrix import FactoredMatrix

        self.check_head(layer, head)
        return FactoredMatrix(self.W_Q[layer, head], self.W_K[layer, head].T)

    def ov(self, layer: int, head: int) -> FactoredMatrix:
        """The head's OV circuit ``W_V W_O`` ``[d_model, d_model]``, factored through d_head.

        Row vectors convention (as TransformerLens): a residual vector ``x`` is written as ``x @ W_OV``.
        """
        from transformer_lens.FactoredMatrix import FactoredMatrix

        self.check_head(layer, head)
        return FactoredMatrix(self.W_V[layer, head], self.W_O[layer, head])

    def full_qk(self, layer: int, head: int) -> FactoredMatrix:
        """``W_E · W_QK · W_Eᵀ`` ``[d_vocab, d_vocab]``: query token × key token, never materialised."""
        from transformer_lens.FactoredMatrix import FactoredMatrix

        self.check_head(layer, head)
        return FactoredMatrix(self.W_E @ self.W_Q[layer, head], self.W_K[layer, head].T @ self.W_E.T)

    def full_ov(self, layer: int, head: int) -> FactoredMatrix:
        """``W_E · W_OV · W_U`` ``[d_vocab, d_vocab]``: token attended to × logit written, never materialised."""
        from transformer_lens.FactoredMatrix import FactoredMatrix

        self.check_head(layer, head)
        return FactoredMatrix(self.W_E @ self.W_V[layer, head], self.W_O[layer, head] @ self.W_U)


def _activation(name: str):
    # torch's fused GELUs equal Hugging Face's to ~1e-7 and run ~4x faster on CPU than
    # transformers' own gelu_new, which is written out in Python ops.
    fused = {
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "gelu": F.gelu,
        "relu": F.relu,
    }
    if name in fused:
        return fused[name]
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise InterpError(f"unsupported activation function {name!r}")
    return ACT2FN[name]
