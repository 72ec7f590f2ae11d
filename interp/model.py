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

    def _merged(self, extra: Optional[HookList]) -> dict[str, list]:
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
        start_at_mid: bool = False,
        unembed: bool = True,
        stop_after: Optional[str] = None,
    ) -> Tensor:
        """Run blocks ``start_at_layer … stop_at_layer - 1``.

        ``inputs`` are token ids (or prompts, or a Batch), run from the embeddings, or the residual
        stream entering ``start_at_layer`` (a float tensor; from layer 0 that skips the embeddings). Returns logits ``[batch, pos, d_vocab]`` when
        the run reaches the end (and ``unembed`` is True), else the residual stream entering
        ``stop_at_layer`` (the final residual stream if the run reaches the end). ``attention_mask`` (True = real token) handles padding on either side.
        With ``start_at_mid=True`` the inputs are the residual stream at
        ``blocks.{start_at_layer}.hook_resid_mid`` and the run starts at that block's MLP:
        an edit to one layer's attention output then costs no recomputation of the attention.
        With ``stop_after`` (a hook name) the run stops right after that hook point and returns
        its activation (as the hooks there left it): nothing after it is computed.
        """
        h = self._merged(hooks)
        if stop_after is None:
            return self._run(inputs, attention_mask, start_at_layer, stop_at_layer, h, start_at_mid, unembed)
        stop_after = self._resolve_one(stop_after)
        if stop_at_layer is None:
            stop_at_layer = min(self.cfg.n_layers, hk.layer_of(stop_after) + 1)
        try:
            self._run(inputs, attention_mask, start_at_layer, stop_at_layer,
                      {**h, stop_after: [*h.get(stop_after, ()), _stop_here]}, start_at_mid, unembed)
        except _Stopped as done:
            return done.activation
        raise InterpError(f"the run never reached {stop_after} (it stops before block {stop_at_layer})")

    __call__ = forward

    def _run(self, inputs, attention_mask, start_at_layer: int, stop_at_layer: Optional[int], h: dict,
             start_at_mid: bool, unembed: bool) -> Tensor:
        cfg = self.cfg
        stop = cfg.n_layers if stop_at_layer is None else stop_at_layer
        if not 0 <= start_at_layer <= stop <= cfg.n_layers:
            raise InterpError(
                f"layers {start_at_layer}..{stop} out of range: model has {cfg.n_layers} layers; "
                "need 0 <= start_at_layer <= stop_at_layer <= n_layers"
            )
        if start_at_mid and start_at_layer == stop:
            raise InterpError(f"start_at_mid resumes inside block {start_at_layer}: stop_at_layer must be after it")
        if start_at_layer == 0 and not start_at_mid and not (isinstance(inputs, Tensor) and inputs.is_floating_point()):
            if not isinstance(inputs, Tensor):  # prompts or a Batch
                batch = self.to_batch(inputs)
                inputs, attention_mask = batch.tokens, batch.attention_mask
            batch = from_tokens(inputs, attention_mask, cfg.d_vocab, cfg.n_ctx)
            positions = batch.position_ids if batch.padded else torch.arange(inputs.shape[-1], device=cfg.device)
            resid = self._fire(h, "hook_embed", self.W_E[batch.tokens]) + self._fire(
                h, "hook_pos_embed", self.W_pos[positions].expand(len(batch), -1, -1)
            )
            attention_mask = batch.attention_mask
        else:
            resid = inputs
        mask = _attention_mask(attention_mask, resid.shape[1])
        for layer in range(start_at_layer, stop):
            if not (start_at_mid and layer == start_at_layer):
                resid = self._attention(layer, resid, mask, h)
            resid = self._mlp(layer, resid, h)
        return self.unembed(resid, h) if stop == cfg.n_layers and unembed else resid

    def _attention(self, layer: int, resid: Tensor, mask: Optional[Tensor], h: dict) -> Tensor:
        """A block's first half, resid_pre -> resid_mid. Expensive hook points are computed only when hooked."""
        cfg, name = self.cfg, (lambda short: hk.LAYER_HOOKS[short].format(layer))
        B, P = resid.shape[:2]
        resid = self._fire(h, name("resid_pre"), resid)
        x = self._fire(h, name("ln1"), _layer_norm(resid, self.ln1_w[layer], self.ln1_b[layer], cfg.eps))
        qkv = torch.addmm(self._b_qkv[layer], x.reshape(B * P, -1), self._W_qkv[layer]).view(B, P, 3, cfg.n_heads, -1)
        q = self._fire(h, name("q"), qkv[:, :, 0])
        k = self._fire(h, name("k"), qkv[:, :, 1])
        v = self._fire(h, name("v"), qkv[:, :, 2])
        if name("attn_scores") in h or name("pattern") in h:
            scores = torch.einsum("bqhd,bkhd->bhqk", q / math.sqrt(cfg.d_head), k)
            scores.masked_fill_(~_causal(mask, P, scores.device), torch.finfo(scores.dtype).min)
            scores = self._fire(h, name("attn_scores"), scores)
            pattern = self._fire(h, name("pattern"), scores.softmax(-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=mask is None
            ).transpose(1, 2)
        z = self._fire(h, name("z"), z)
        if name("result") in h:
            result = self._fire(h, name("result"), torch.einsum("bqhd,hdm->bqhm", z, self.W_O[layer]))
            attn_out = result.sum(2) + self.b_O[layer]
        else:
            attn_out = (z.reshape(B * P, -1) @ self._W_O_flat[layer]).view(B, P, -1) + self.b_O[layer]
        return resid + self._fire(h, name("attn_out"), attn_out)

    def _mlp(self, layer: int, resid: Tensor, h: dict) -> Tensor:
        """A block's second half, resid_mid -> resid_post (where a run resumed with start_at_mid begins)."""
        resid = self._fire(h, hk.name("resid_mid", layer), resid)
        return self._fire(h, hk.name("resid_post", layer), resid + self.mlp(layer, resid, h))

    def mlp(self, layer: int, resid: Float[Tensor, "... d_model"], hooks: Optional[dict] = None) -> Float[Tensor, "... d_model"]:
        """MLP ``layer``'s output for a residual stream at ``hook_resid_mid`` (its ln2 included)."""
        cfg, h, name = self.cfg, hooks or {}, (lambda short: hk.LAYER_HOOKS[short].format(layer))
        x = self._fire(h, name("ln2"), _layer_norm(resid, self.ln2_w[layer], self.ln2_b[layer], cfg.eps))
        pre = self._fire(h, name("mlp_pre"), x @ self.W_in[layer] + self.b_in[layer])
        post = self._fire(h, name("mlp_post"), self._act(pre))
        return self._fire(h, name("mlp_out"), post @ self.W_out[layer] + self.b_out[layer])

    def unembed(self, resid: Float[Tensor, "... d_model"], hooks: Optional[dict] = None) -> Float[Tensor, "... d_vocab"]:
        """Final LayerNorm then unembedding, on any residual-stream tensor (e.g. a few positions)."""
        x = _layer_norm(resid, self.lnf_w, self.lnf_b, self.cfg.eps)
        if hooks:
            x = self._fire(hooks, hk.GLOBAL_HOOKS["ln_final"], x)
        return x @ self.W_U + self.b_U

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
        if not logits and stop_at_layer is None:
            stop_at_layer = min(self.cfg.n_layers, max([hk.layer_of(n) + 1 for n in wanted], default=0))
        if stop_at_layer is not None and not 0 <= stop_at_layer <= self.cfg.n_layers:
            raise InterpError(f"stop_at_layer {stop_at_layer} out of range: model has {self.cfg.n_layers} layers")
        store: dict[str, Tensor] = {}

        def keep(x: Tensor, name: str) -> None:
            store[name] = x.detach()

        # Unembedding every position is a third of GPT-2 small's forward: skip it unless needed.
        unembed = logits or hk.GLOBAL_HOOKS["ln_final"] in wanted
        out = self.forward(
            batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=stop_at_layer,
            hooks=[*(hooks or ()), *((n, keep) for n in wanted)], unembed=unembed,
        )
        done = stop_at_layer is None or stop_at_layer == self.cfg.n_layers
        return (out if done and logits else None), Cache({n: store[n] for n in wanted if n in store}, batch)

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


class _Stopped(Exception):
    """How ``forward(stop_after=...)`` leaves the pass (private to the model: callers get a return value)."""

    def __init__(self, activation: Tensor):
        super().__init__()
        self.activation = activation


def _stop_here(x: Tensor, name: str) -> None:
    raise _Stopped(x)


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], w, b, eps)


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


def _attention_mask(attention_mask: Optional[Tensor], n: int) -> Optional[Tensor]:
    """Boolean ``[batch, 1, q, k]`` mask (True = may attend), or None when nothing is padded.

    A query always may attend to itself: a padding query then never sees an empty
    row (which would make softmax NaN), and real queries never see padding keys.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    causal = torch.ones(n, n, dtype=torch.bool, device=attention_mask.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=attention_mask.device)
    return (causal & (attention_mask[:, None, None, :] | eye))


def _causal(mask: Optional[Tensor], n: int, device) -> Tensor:
    if mask is not None:
        return mask
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()
