"""The local replacement model of one prompt: MLPs replaced by transcoders, attention and LayerNorm frozen.

On a prompt, each MLP's output is written as its transcoder's active features (activation ×
decoder vector) plus an *error node* (what the transcoder misses, so nothing is lost) plus
constants (decoder bias; the skip connection's linear path). With every attention pattern and
every LayerNorm scale frozen at its value on the prompt, the model is affine in these parts:
each feature's pre-activation and each logit is a sum of *direct effects* of the earlier nodes
through the residual stream, the frozen LayerNorms and the frozen attention heads' OV circuits.
An edge of the attribution graph is such a direct effect.

All of GPT-2's arithmetic is the model's: the parts are read from one run with hooks, and edges
are gradients through the model's own forward pass run with its hook points
``blocks.L.ln1.hook_scale``, ``ln2.hook_scale``, ``ln_final.hook_scale`` and
``attn.hook_pattern`` detached (the freezing), each MLP's output replaced by a leaf tensor (so the
gradient reaches it but never goes through the MLP) plus the transcoder's skip path, and the
token embeddings made a leaf. A backward pass from a target — a feature's encoder direction at
its layer's transcoder input, a logit's unembedding direction (minus the mean over the
vocabulary) at the final LayerNorm's output — gives the gradient at every MLP output and
embedding, and the edge from a source is that gradient dotted with the source's vector
(activation × decoder vector, error vector, token embedding). Each backward pass computes many
targets' rows at once. circuit-tracer runs ``batch`` copies of the prompt forward for that and
keeps them; here one run is kept and the backward pass is vectorised over the targets
(``is_grads_batched``), so memory does not grow with the batch; a target at position ``p`` goes
back through a run of the prompt's first ``p + 1`` tokens only (runs of a few prefixes are kept);
and the contraction with the sources is one batched matrix product per layer (no
``[batch, features, d_model]`` gather).

The first position (BOS) carries no feature or error nodes (circuit-tracer's convention: its
residual stream is an outlier); its MLP output counts as a constant, like the biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import hooks as hk
from ..errors import InterpError
from .sae import SAE
from .transcoders import check_transcoders

__all__ = ["Replacement", "Site"]

# Sites where a target's direction is injected: ("x", layer) a transcoder's input, ("lnf", None) the final
# LayerNorm's output at the last position, ("q", layer) / ("k", layer) a head's query / key.
Site = tuple


@dataclass
class Parts:
    """A layer's pieces on the prompt, in the model's own basis (its weight mode)."""

    acts: Optional[Tensor]  # [pos, d_sae] feature activations (position 0 zeroed); dropped once laid out
    encoder: Tensor  # [n_active_ids, d_model] encoder directions of the active feature ids, at the input hook
    decoder: Tensor  # [n_active_ids, d_model] decoder vectors of the active ids, in the model's basis at hook_mlp_out
    ids: Tensor  # [n_active_ids] the active feature ids (rows of encoder/decoder)
    error: Tensor  # [pos, d_model] the error node of each position (position 0: zero)
    x: Tensor  # [pos, d_model] the transcoder's input activation
    mlp_out: Tensor  # [pos, d_model]


class Replacement:
    """The frozen replacement model of ``tokens`` (one prompt, BOS first) with transcoders ``saes`` (one per layer).

    Build one, read :attr:`features` (``[n, 3]``: layer, position, feature id, in
    circuit-tracer's node order), :attr:`activations`, :attr:`errors` ``[n_layers, pos, d_model]``,
    :attr:`embeddings` ``[pos, d_model]`` and :attr:`logits` (the model's, last position), then
    :meth:`rows` for direct effects.
    """

    def __init__(self, model, saes: Sequence[SAE], tokens: Int[Tensor, " pos"]):
        self.model = model
        self.saes = check_transcoders(model, saes)
        self.bindings = [s.bind(model) for s in self.saes]
        self.tokens = tokens
        cfg = model.cfg
        self.n_layers, self.n_pos, self.d_model = cfg.n_layers, len(tokens), cfg.d_model
        self.dtype = model.W_E.dtype
        self.in_names = [s.hook_name for s in self.saes]
        self.out_names = [s.hook_name_out for s in self.saes]
        names = [*self.in_names, *self.out_names, "hook_embed"]
        with torch.no_grad():
            logits, cache = model.run(tokens[None], names=names)
        self.logits: Float[Tensor, " d_vocab"] = logits[0, -1]
        self.embeddings: Float[Tensor, "pos d_model"] = cache["hook_embed"][0]
        self.parts = [self._parts(layer, cache[self.in_names[layer]][0], cache[self.out_names[layer]][0])
                      for layer in range(self.n_layers)]
        feats = []
        for layer, p in enumerate(self.parts):
            pos, fid = p.acts.nonzero(as_tuple=True)
            feats.append(torch.stack([torch.full_like(pos, layer), pos, fid], 1))
        self.features: Int[Tensor, "n 3"] = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
        f = self.features
        self.activations = torch.cat([self.parts[l].acts[f[f[:, 0] == l, 1], f[f[:, 0] == l, 2]] for l in range(self.n_layers)])
        self.errors = torch.stack([p.error for p in self.parts])
        self.n_features = len(f)
        self._layouts = [self._layout(layer) for layer in range(self.n_layers)]
        for p in self.parts:
            p.acts = None  # [pos, d_sae] each: what they held is in features, activations and the layouts
        self._graphs: Optional[list] = None

    # ------------------------------------------------------------------ the parts
    def _parts(self, layer: int, act_in: Tensor, mlp_out: Tensor) -> Parts:
        sae, bind = self.saes[layer], self.bindings[layer]
        with torch.no_grad():
            x_sae = bind.input(act_in)
            acts = sae.encode(x_sae).to(self.dtype)
            acts[0] = 0  # BOS: no features (circuit-tracer's zero_positions)
            recon = sae.decode(acts.to(sae.dtype), x_in=x_sae)
            skip = sae.skip_term(x_sae)
            recon = bind.output(recon if skip is None else recon + skip, mlp_out)
            error = (mlp_out - recon).to(self.dtype)
            error[0] = 0
        ids = acts.ne(0).any(0).nonzero().squeeze(1)
        encoder, decoder = self._directions(layer, ids, act_in)
        return Parts(acts, encoder, decoder, ids, error, act_in, mlp_out)

    def _directions(self, layer: int, ids: Tensor, act_in: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder and decoder directions of features ``ids`` in the model's basis, from the SAE's own arithmetic.

        Both maps are affine: the encoder direction is the gradient of the feature's pre-activation
        with respect to the model's activation at the input hook; the decoder vector is the change
        of the output (at hook_mlp_out) when the feature's activation goes from 0 to 1.
        """
        sae, bind = self.saes[layer], self.bindings[layer]
        n, d = len(ids), act_in.shape[-1]
        enc = torch.empty(n, d, dtype=self.dtype)
        dec = torch.empty(n, d, dtype=self.dtype)
        zero_out = torch.zeros(1, self.d_model, dtype=self.dtype)
        for start in range(0, n, 512):
            chunk = ids[start:start + 512]
            with torch.enable_grad():
                x = act_in[:1].detach().expand(len(chunk), d).clone().requires_grad_(True)
                pre = sae.encode_pre(bind.input(x))
                (g,) = torch.autograd.grad(pre.gather(1, chunk[:, None]).sum(), x)
            enc[start:start + len(chunk)] = g.to(self.dtype)
            with torch.no_grad():
                onehot = torch.zeros(len(chunk) + 1, sae.d_sae, dtype=sae.dtype)
                onehot[torch.arange(len(chunk)), chunk] = 1
                out = bind.output(sae.decode(onehot, x_in=bind.input(act_in[:1].expand(len(chunk) + 1, d))),
                                  zero_out.expand(len(chunk) + 1, -1))
            dec[start:start + len(chunk)] = (out[:-1] - out[-1:]).to(self.dtype)
        return enc, dec

    def _layout(self, layer: int) -> dict:
        """Layer ``layer``'s active features laid out by position (padded), for one batched product per backward.

        Only indices and activations are kept per active feature; the decoder vectors stay one per
        active feature id (``parts[layer].decoder``), so memory does not grow with positions × d_model.
        """
        p = self.parts[layer]
        f = self.features
        rows = (f[:, 0] == layer).nonzero().squeeze(1)  # global node indices of this layer's features
        pos, fid = f[rows, 1], f[rows, 2]
        counts = torch.bincount(pos, minlength=self.n_pos)
        width = int(counts.max()) if len(rows) else 0
        slot = torch.arange(len(rows)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        where = torch.searchsorted(p.ids, fid)
        act = p.acts[pos, fid]
        idx_pad = torch.zeros(self.n_pos, max(width, 1), dtype=torch.long)
        act_pad = torch.zeros(self.n_pos, max(width, 1), dtype=self.dtype)
        idx_pad[pos, slot] = where
        act_pad[pos, slot] = act
        return {"rows": rows, "pos": pos, "slot": slot, "width": width, "where": where, "act": act,
                "idx_pad": idx_pad, "act_pad": act_pad}

    def source_vectors(self, node: int) -> tuple[str, int, Tensor]:
        """What source node ``node`` adds to the model and where: (hook name, position, vector)."""
        nf, L, P = self.n_features, self.n_layers, self.n_pos
        if node < nf:
            layer, pos, fid = self.features[node].tolist()
            lay = self._layouts[layer]
            i = int((lay["rows"] == node).nonzero())
            return self.out_names[layer], pos, self.parts[layer].decoder[lay["where"][i]] * lay["act"][i]
        if node < nf + L * P:
            layer, pos = divmod(node - nf, P)
            return self.out_names[layer], pos, self.errors[layer, pos]
        if node < nf + L * P + P:
            pos = node - nf - L * P
            return "hook_embed", pos, self.embeddings[pos]
        raise InterpError(f"node {node} is not a source (features, errors and tokens are; logits are not)")

    def encoder(self, nodes: Tensor) -> Tensor:
        """Encoder directions ``[len(nodes), d_model]`` of feature nodes."""
        out = torch.empty(len(nodes), self.d_model, dtype=self.dtype)
        layers = self.features[nodes, 0]
        for layer in layers.unique().tolist():
            lay = self._layouts[layer]
            sel = (layers == layer).nonzero().squeeze(1)
            out[sel] = self.parts[layer].encoder[lay["where"][torch.searchsorted(lay["rows"], nodes[sel])]]
        return out

    # ------------------------------------------------------------------ the gradient pass
    def build(self, batch: int, sites: Sequence[Site] = (), *, prefixes: Optional[Sequence[int]] = None) -> None:
        """Run the prompt through the frozen model once, keeping the autograd graph for :meth:`rows`.

        ``batch``: targets per backward pass (each pass is vectorised over its targets,
        ``torch.autograd.grad(..., is_grads_batched=True)``: one copy of the prompt is kept, not one per
        target). ``sites``: extra places targets will be injected (``("q", L)``, ``("k", L)``).
        ``prefixes``: also keep runs of the prompt's first ``n`` tokens for each ``n`` given (attention is
        causal, so a target at position ``p`` needs only the first ``p + 1``: its backward pass over a
        shorter run does less work; :meth:`rows` picks the shortest run that holds its targets).
        """
        lengths = sorted({int(n) for n in (prefixes or ()) if 0 < int(n) < self.n_pos} | {self.n_pos})
        self._batch = int(batch)
        self._graphs = [self._build_one(n, sites) for n in lengths]

    def _build_one(self, n_pos: int, sites: Sequence[Site]) -> dict:
        model, L = self.model, self.n_layers
        store: dict = {}

        def detach(x: Tensor, name: str) -> Tensor:
            return x.detach()

        def leaf(key):
            def fn(x: Tensor, name: str) -> Tensor:
                y = x.detach().requires_grad_(True)
                store[key] = y
                return y
            return fn

        def keep(key, exclusive: bool):
            def fn(x: Tensor, name: str) -> Optional[Tensor]:
                store[key] = x
                # The MLP's own input feeds nothing but the MLP, whose output is replaced below: cut it there,
                # so the MLP builds no autograd graph at all.
                return x.detach() if exclusive else None
            return fn

        def mlp_out(layer):
            sae, bind = self.saes[layer], self.bindings[layer]

            def fn(x: Tensor, name: str) -> Tensor:
                y = x.detach().requires_grad_(True)
                store[("out", layer)] = y
                if sae.W_skip is None:
                    return y
                s = bind.output(sae.skip_term(bind.input(store[("x", layer)])), torch.zeros_like(x)).to(x.dtype)
                return y + (s - s.detach())  # the skip connection's linear path; the value stays the MLP's
            return fn

        hooks = [("hook_embed", leaf("embed"))]
        for layer in range(L):
            hooks += [(hk.name("ln1_scale", layer), detach), (hk.name("ln2_scale", layer), detach),
                      (hk.name("pattern", layer), detach)]
            exclusive = self.in_names[layer].endswith(("ln2.hook_normalized", "hook_mlp_in"))
            hooks += [(self.in_names[layer], keep(("x", layer), exclusive)), (self.out_names[layer], mlp_out(layer))]
        for kind, layer in sites:
            if kind in ("q", "k"):
                hooks.append((hk.name(kind, layer), keep((kind, layer), False)))
            elif kind not in ("x", "lnf"):
                raise InterpError(f"unknown target site {kind!r}")
        with torch.enable_grad():
            tokens = self.tokens[None, :n_pos]
            resid = model.forward(tokens, hooks=hooks, stop_at_layer=L)
            if n_pos == self.n_pos:  # the logits' site: the final LayerNorm at the last position
                final = [(hk.GLOBAL_HOOKS["ln_final_scale"], detach),
                         (hk.GLOBAL_HOOKS["ln_final"], keep(("lnf", None), False))]
                model.unembed(resid[:, -1:], model.hook_table(final))
        return {"store": store, "n_pos": n_pos}

    def release(self) -> None:
        """Drop the kept forward passes (their memory)."""
        self._graphs = None

    @property
    def batch(self) -> int:
        if not self._graphs:
            raise InterpError("build() the gradient pass first")
        return self._batch

    def rows(self, targets: Sequence[tuple[Site, tuple, Tensor]]) -> Float[Tensor, "k n_sources"]:
        """Direct effects of every source on each target: one backward pass, ``len(targets) ≤ batch``.

        A target is ``(site, index, direction)``: e.g. ``(("x", 3), (pos,), encoder_direction)`` for a
        feature of layer 3, ``(("lnf", None), (0,), unembedding_direction)`` for a logit,
        ``(("q", 2), (pos, head), one_hot_over_d_head)`` for a query component.
        """
        if not self._graphs:
            raise InterpError("build() the gradient pass first")
        need = max(self.n_pos if site[0] == "lnf" else index[0] + 1 for site, index, _ in targets)
        graph = next(g for g in self._graphs if g["n_pos"] >= need)
        store, k = graph["store"], len(targets)
        if not 0 < k <= self._batch:
            raise InterpError(f"{k} targets for passes of {self._batch}")
        by_site: dict = {}
        for b, (site, index, vec) in enumerate(targets):
            by_site.setdefault(tuple(site), []).append((b, index, vec))
        outputs, grads = [], []
        top = 0
        for site, entries in by_site.items():
            act = store[site]  # [1, ...]: the one run; the gradients carry the targets along a batch dimension
            g = act.new_zeros(k, *act.shape)
            for b, index, vec in entries:
                g[(b, 0, *index)] = vec.to(g.dtype)
            outputs.append(act)
            grads.append(g)
            top = max(top, self.n_layers if site[0] == "lnf" else site[1])
        inputs = [store[("out", layer)] for layer in range(top)] + [store["embed"]]
        got = torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True, is_grads_batched=True)
        got = [None if t is None else t[:, 0] for t in got]
        return self._assemble(got[:-1], got[-1], k, graph["n_pos"])

    def _assemble(self, outs: Sequence[Optional[Tensor]], embed: Optional[Tensor], k: int, n: int) -> Tensor:
        """Rows ``[k, n_sources]`` from the gradients at each MLP output and at the embeddings (positions < n)."""
        nf, L, P = self.n_features, self.n_layers, self.n_pos
        rows_t = torch.zeros(nf + L * P + P, k, dtype=self.dtype)  # sources × targets: whole rows written at once
        for layer, g in enumerate(outs):
            if g is None:
                continue
            g = g[:k]
            lay = self._layouts[layer]
            if lay["width"]:
                vectors = self.parts[layer].decoder[lay["idx_pad"][:n]] * lay["act_pad"][:n, :, None]  # [n, width, d]
                prod = torch.bmm(g.transpose(0, 1), vectors.transpose(1, 2))  # [n, k, width]
                sel = lay["pos"] < n
                rows_t[lay["rows"][sel]] = prod[lay["pos"][sel], :, lay["slot"][sel]]
            rows_t[nf + layer * P: nf + layer * P + n] = (g * self.errors[layer, :n]).sum(-1).T
        if embed is not None:
            rows_t[nf + L * P: nf + L * P + n] = (embed[:k] * self.embeddings[:n]).sum(-1).T
        return rows_t.T

    # ------------------------------------------------------------------ the oracle: freeze and intervene
    def frozen(self, edits: Sequence[Sequence[tuple[int, float]]], *, reads: Sequence[tuple[str, int]] = (),
               logit_ids: Optional[Tensor] = None, extra_hooks: Sequence[tuple] = ()) -> dict:
        """Run the frozen replacement model once per edit set; read every feature's pre-activation and more.

        An independent route to the same numbers as :meth:`rows` (forward runs with activations
        replaced, no gradients): LayerNorm scales and attention patterns are *set* to their values on
        the prompt (hook_scale, hook_pattern), each MLP's output is its value on the prompt plus the
        change of the transcoder's skip term, and edit set ``e`` adds ``coef × (source's vector)`` for
        each ``(source node, coef)``. Returns ``{"pre": [E, n_features]`` pre-activations,
        ``"logits": [E, n_logits]`` logits minus their mean (for ``logit_ids``), and each of ``reads``
        (``(short hook name, layer)`` pairs such as ``("q", 1)``) by its short name, ``[E, ...]``}. ``extra_hooks``: more
        ``(name, fn)`` hooks for the run (e.g. one query or key set from another run).
        """
        model, L = self.model, self.n_layers
        E = len(edits)
        scale_names = [hk.name(f"{w}_scale", layer) for layer in range(L) for w in ("ln1", "ln2")]
        scale_names.append(hk.GLOBAL_HOOKS["ln_final_scale"])
        pattern_names = [hk.name("pattern", layer) for layer in range(L)]
        with torch.no_grad():
            _, base = model.run(self.tokens[None], names=[*scale_names, *pattern_names])
        add: dict[tuple[str, int], Tensor] = {}
        for e, edit in enumerate(edits):
            for node, coef in edit:
                name, pos, vec = self.source_vectors(int(node))
                t = add.setdefault((name, pos), torch.zeros(E, self.d_model, dtype=self.dtype))
                t[e] += coef * vec
        x_new: dict[int, Tensor] = {}
        read: dict = {}

        def frozen_value(x: Tensor, name: str) -> Tensor:
            return base[name].expand_as(x)

        def edited(frozen_out):
            def fn(x: Tensor, name: str) -> Tensor:
                out = frozen_out(x, name) if frozen_out else x.clone()
                for (n, pos), t in add.items():
                    if n == name:
                        out[:, pos] += t.to(x.dtype)
                return out
            return fn

        def capture(layer):
            def fn(x: Tensor, name: str) -> None:
                x_new[layer] = x
            return fn

        def mlp_out(layer):
            sae, bind, p = self.saes[layer], self.bindings[layer], self.parts[layer]

            def fn(x: Tensor, name: str) -> Tensor:
                out = p.mlp_out.expand_as(x).clone()
                if sae.W_skip is not None:
                    zero = torch.zeros_like(out)
                    new = bind.output(sae.skip_term(bind.input(x_new[layer])), zero)
                    old = bind.output(sae.skip_term(bind.input(p.x[None])), zero[:1])
                    out = out + (new - old).to(out.dtype)
                return out
            return fn

        def keep(key):
            def fn(x: Tensor, name: str) -> None:
                read[key] = x
            return fn

        hooks = [(n, frozen_value) for n in [*scale_names, *pattern_names]]
        hooks.append(("hook_embed", edited(None)))
        for layer in range(L):
            hooks += [(self.in_names[layer], capture(layer)), (self.out_names[layer], edited(mlp_out(layer)))]
        hooks += list(extra_hooks)
        hooks += [(hk.name(w, layer), keep((w, layer))) for w, layer in reads]
        with torch.no_grad():
            logits = model.forward(self.tokens[None].expand(E, -1), hooks=hooks)[:, -1]
            f = self.features
            pre = torch.empty(E, self.n_features, dtype=self.dtype)
            for layer in range(L):
                sel = (f[:, 0] == layer).nonzero().squeeze(1)
                if len(sel):
                    h = self.saes[layer].encode_pre(self.bindings[layer].input(x_new[layer])).to(self.dtype)
                    pre[:, sel] = h[:, f[sel, 1], f[sel, 2]]
        out = {"pre": pre, **{w: read[(w, layer)] for w, layer in reads}}
        if logit_ids is not None:
            out["logits"] = logits[:, logit_ids] - logits.mean(-1, keepdim=True)
        return out
