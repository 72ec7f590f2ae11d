"""An independent reference: interventions on plain Hugging Face GPT-2 with torch hooks.

Nothing here uses interp's forward pass, weights or hooks. A head's output is what
Hugging Face computes: the head's slice of the input of ``transformer.h[L].attn.c_proj``
(its ``z``, value bias included) times its rows of ``c_proj.weight``. Edits are made by a
``register_forward_pre_hook`` on ``c_proj``; the attention pattern and values an edit
needs are recomputed from the output of ``c_attn`` in the same pass (a forward hook), so
edits in several layers compose as they would in the model.

Used by the tests to check interp's ablations, scans, residual decomposition and direct
logit attribution in both weight modes (``fold_ln=True`` and ``False``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# fn(z, pattern, v) -> z', all for one layer: z [batch, pos, head, d_head], pattern [batch, head, q, k].
ZEdit = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _heads(hf) -> tuple[int, int]:
    cfg = hf.config
    return cfg.n_head, cfg.n_embd // cfg.n_head


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens (what GPT-2 needs for left padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _pattern(hf, qkv: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pattern [b, h, q, k], v [b, pos, h, d]) recomputed from c_attn's output."""
    H, D = _heads(hf)
    B, P, _ = qkv.shape
    q, k, v = qkv.split(H * D, dim=-1)
    q, k, v = (t.view(B, P, H, D) for t in (q, k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / D**0.5
    allowed = torch.ones(P, P, dtype=torch.bool, device=qkv.device).tril() & mask[:, None, None, :].bool()
    allowed = allowed | torch.eye(P, dtype=torch.bool, device=qkv.device)  # padding queries: no empty row
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1), v


# fn(out, z) -> out', for one layer: c_proj's output [batch, pos, d_model] and input z [batch, pos, head, d_head].
OutEdit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def edits(hf, mask: torch.Tensor, z_edits: dict[int, ZEdit], out_edits: Optional[dict[int, OutEdit]] = None):
    """Attach edits of ``z`` (c_proj's input) and of c_proj's output; removed on exit, error or not."""
    H, D = _heads(hf)
    handles, stash = [], {}
    try:
        for layer, fn in (out_edits or {}).items():
            def edit_out(module, args, out, fn=fn):
                z = args[0]
                return fn(out, z.view(*z.shape[:2], H, D))

            handles.append(hf.transformer.h[layer].attn.c_proj.register_forward_hook(edit_out))
        for layer, fn in z_edits.items():
            attn = hf.transformer.h[layer].attn

            def keep_qkv(module, args, out, layer=layer):
                stash[layer] = out

            def edit(module, args, layer=layer, fn=fn):
                (z,) = args
                B, P, _ = z.shape
                pattern, v = _pattern(hf, stash.pop(layer), mask)
                return (fn(z.view(B, P, H, D).clone(), pattern, v).reshape(B, P, H * D),)

            handles.append(attn.c_attn.register_forward_hook(keep_qkv))
            handles.append(attn.c_proj.register_forward_pre_hook(edit))
        yield
    finally:
        for h in handles:
            h.remove()


def logits(hf, tokens: torch.Tensor, mask: torch.Tensor, z_edits: Optional[dict[int, ZEdit]] = None,
           out_edits: Optional[dict[int, OutEdit]] = None) -> torch.Tensor:
    """Hugging Face's logits with the given edits of heads' ``z`` (or of the attention output)."""
    with torch.no_grad(), edits(hf, mask, z_edits or {}, out_edits):
        return hf(input_ids=tokens, attention_mask=mask.long(), position_ids=position_ids(mask)).logits


def z_of(hf, tokens: torch.Tensor, mask: torch.Tensor, layers) -> dict[int, torch.Tensor]:
    """Each layer's ``z`` [batch, pos, head, d_head] on a clean run (value bias included)."""
    H, D = _heads(hf)
    got, handles = {}, []
    for layer in layers:
        def keep(module, args, layer=layer):
            z = args[0]
            got[layer] = z.view(*z.shape[:2], H, D).clone()

        handles.append(hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            hf(input_ids=tokens, attention_mask=mask.long(), position_ids=position_ids(mask))
    finally:
        for h in handles:
            h.remove()
    return got


# ---------------------------------------------------------------------------- the methods
def zero(heads) -> ZEdit:
    def fn(z, pattern, v):
        z[:, :, heads] = 0
        return z

    return fn


def replace(heads, value: torch.Tensor) -> ZEdit:
    """z of ``heads`` := value ([pos, head, d_head], [head, d_head] or [batch, pos, head, d_head])."""
    def fn(z, pattern, v):
        val = value[..., : z.shape[1], :, :] if value.ndim >= 3 else value
        z[:, :, heads] = torch.broadcast_to(val, z.shape)[:, :, heads].to(z.dtype)
        return z

    return fn


def mean_z(hf, tokens, mask, layer: int, per_position: bool) -> torch.Tensor:
    """The mean z over the reference's real tokens: per position ([pos, head, d]) or pooled ([head, d])."""
    z = z_of(hf, tokens, mask, [layer])[layer].double()
    pos = position_ids(mask)
    if not per_position:
        return z[mask.bool()].mean(0)
    P = int(pos[mask.bool()].max()) + 1
    return torch.stack([z[mask.bool() & (pos == p)].mean(0) for p in range(P)])


def pattern(heads, remove: torch.Tensor, renormalize: bool = False) -> ZEdit:
    """Remove the attention given by ``remove`` [q, k] (True = removed) from ``heads``.

    ``z'[q] = z[q] − Σ_removed A[q,k]·v[k]`` (v with its bias); renormalised: divided by the
    attention that remains (a query left with none writes 0).
    """
    def fn(z, A, v):
        P = z.shape[1]
        cut = A * remove[:P, :P].to(A.dtype)
        lost = torch.einsum("bhqk,bkhd->bqhd", cut, v)
        new = z - lost
        if renormalize:
            kept = (A - cut).sum(-1).transpose(1, 2)[..., None]  # [b, q, h, 1]
            new = torch.where(kept > 0, new / torch.where(kept > 0, kept, torch.ones_like(kept)), torch.zeros_like(new))
        z[:, :, heads] = new[:, :, heads]
        return z

    return fn


def rank_k(hf, layer: int, heads, k: int) -> OutEdit:
    """Each head's OV circuit cut to rank k, as it acts on the normalised residual stream.

    ``W = C diag(γ) W_V W_O C`` (ln_1's gain γ, ``C`` centring over d_model) is materialised and
    decomposed with a full SVD; the head's output minus its constant part ``(b_V + β W_V) W_O``,
    centred, is projected onto W's top-k right singular vectors; its mean over d_model is kept.
    """
    H, D = _heads(hf)
    blk = hf.transformer.h[layer]
    d = hf.config.n_embd
    W_V = blk.attn.c_attn.weight[:, 2 * d :].view(d, H, D)
    b_V = blk.attn.c_attn.bias[2 * d :].view(H, D)
    W_O = blk.attn.c_proj.weight.view(H, D, d)
    gamma, beta = blk.ln_1.weight, blk.ln_1.bias
    C = torch.eye(d, dtype=W_O.dtype) - 1.0 / d

    def fn(out, z):
        out = out.clone()
        for h in heads:
            W = C @ (gamma[:, None] * W_V[:, h]) @ W_O[h] @ C  # [d_model, d_model]
            V = torch.linalg.svd(W).Vh[:k].T  # [d_model, k]
            y = z[:, :, h] @ W_O[h]
            x = (y - (b_V[h] + beta @ W_V[:, h]) @ W_O[h]) @ C
            out += -x + x @ V @ V.T
        return out

    return fn


# ---------------------------------------------------------------------------- the residual stream taken apart
def head_outputs(hf, tokens, mask, layer: int) -> torch.Tensor:
    """Each head's output at ``layer``, [head, batch, pos, d_model]: z_h times its rows of c_proj."""
    H, D = _heads(hf)
    z = z_of(hf, tokens, mask, [layer])[layer]
    W = hf.transformer.h[layer].attn.c_proj.weight  # Conv1D: [in = H·D, out = d_model]
    return torch.einsum("bphd,hdm->hbpm", z, W.view(H, D, -1))


def components(hf, tokens, mask) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(labels, parts [n, batch, pos, d_model], final residual stream before ln_f), Hugging Face's view.

    Labels follow interp's: embed, pos_embed, L{l}H{h}, L{l} attn bias, L{l} mlp.
    """
    tr = hf.transformer
    mlp_out, resid = {}, {}
    handles = [blk.mlp.register_forward_hook(lambda m, a, out, i=i: mlp_out.__setitem__(i, out))
               for i, blk in enumerate(tr.h)]
    handles.append(tr.ln_f.register_forward_pre_hook(lambda m, a: resid.__setitem__("final", a[0])))
    try:
        with torch.no_grad():
            hf(input_ids=tokens, attention_mask=mask.long(), position_ids=position_ids(mask))
    finally:
        for h in handles:
            h.remove()
    labels = ["embed", "pos_embed"]
    parts = [tr.wte.weight[tokens], tr.wpe.weight[position_ids(mask)]]
    shape = parts[0].shape
    for i, blk in enumerate(tr.h):
        heads = head_outputs(hf, tokens, mask, i)
        labels += [f"L{i}H{h}" for h in range(len(heads))] + [f"L{i} attn bias", f"L{i} mlp"]
        parts += [*heads, blk.attn.c_proj.bias.expand(shape), mlp_out[i]]
    return labels, torch.stack(parts), resid["final"]


def direct_logit_attribution(hf, tokens, mask, target: int, contrast: int, position: int = -1):
    """Each component's direct effect on logit[target] − logit[contrast] at one position, ln_f's scale frozen."""
    labels, parts, final = components(hf, tokens, mask)
    rows = torch.arange(tokens.shape[0])
    cols = position_ids(mask).max(-1).values if position == -1 else torch.full_like(rows, position)
    x, comps = final[rows, cols], parts[:, rows, cols]
    ln = hf.transformer.ln_f
    sigma = (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    W_U = hf.lm_head.weight  # [vocab, d_model]
    u = ln.weight * (W_U[target] - W_U[contrast])
    contrib = ((comps - comps.mean(-1, keepdim=True)) / sigma) @ u  # [component, batch]
    total = F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps) @ (W_U[target] - W_U[contrast])
    return labels, contrib, total


# ---------------------------------------------------------------------------- path patching
def path_patched_logits(hf, clean, corrupted, mask, senders, receivers, mlps: str = "recomputed",
                        cascade: bool = False) -> torch.Tensor:
    """Wang et al.'s path patching on Hugging Face GPT-2, written out with its own modules, in three steps.

    Step 1: the senders' clean-minus-corrupted writes ``z_h · W_O[h]`` (c_proj's rows of the head).
    Step 2: added to the corrupted residual stream, every other head frozen at its corrupted output,
    the MLPs between them and a receiver rerun on the changed stream (``mlps="recomputed"``) or keeping
    their corrupted outputs (``"frozen"``): the stream ``x + Δ`` each receiver layer would see, ``x`` the
    corrupted run's stream entering it. Step 3: the corrupted run again, each receiver
    ``(layer, head, "q"|"k"|"v")`` reading ``c_attn(ln_1(x + Δ))`` for its slice; ``"logits"`` adds Δ
    before ln_f. With ``cascade`` the receivers read the live stream of step 3 plus Δ instead of ``x + Δ``
    (later receivers then see earlier receivers' changes).
    """
    H, D = _heads(hf)
    d = hf.config.n_embd
    tr = hf.transformer
    layers = sorted({l for l, _ in senders})
    zc, zk = z_of(hf, clean, mask, layers), z_of(hf, corrupted, mask, layers)
    writes = {}
    for l, h in senders:
        W = tr.h[l].attn.c_proj.weight.view(H, D, d)[h]
        writes[l] = writes.get(l, 0) + (zc[l][:, :, h] - zk[l][:, :, h]) @ W
    mids, outs, pres, handles = {}, {}, {}, []
    for i, blk in enumerate(tr.h):
        handles.append(blk.ln_1.register_forward_pre_hook(lambda m, a, i=i: pres.__setitem__(i, a[0])))
        handles.append(blk.ln_2.register_forward_pre_hook(lambda m, a, i=i: mids.__setitem__(i, a[0])))
        handles.append(blk.mlp.register_forward_hook(lambda m, a, out, i=i: outs.__setitem__(i, out)))
    try:
        with torch.no_grad():
            hf(input_ids=corrupted, attention_mask=mask.long(), position_ids=position_ids(mask))
    finally:
        for h in handles:
            h.remove()
    upto = len(tr.h) if receivers == "logits" else max(l for l, _, _ in receivers)
    delta, at = torch.zeros_like(mids[0]), {}
    with torch.no_grad():
        for l in range(upto):
            at[l] = delta
            delta = delta + writes.get(l, 0)
            if mlps == "recomputed":
                blk = tr.h[l]
                delta = delta + blk.mlp(blk.ln_2(mids[l] + delta)) - outs[l]
        at[upto] = delta
    handles, live = [], {}
    if receivers == "logits":
        handles.append(tr.ln_f.register_forward_pre_hook(lambda m, a: (a[0] + at[upto],)))
    else:
        for l in sorted({l for l, _, _ in receivers}):
            blk = tr.h[l]
            handles.append(blk.ln_1.register_forward_pre_hook(lambda m, a, l=l: live.__setitem__(l, a[0])))

            def edit(module, args, out, l=l, blk=blk):
                c_attn = blk.attn.c_attn  # Conv1D: x @ W + b (called by hand: this hook is on it)
                new = blk.ln_1((live[l] if cascade else pres[l]) + at[l]) @ c_attn.weight + c_attn.bias
                out = out.clone()
                for ll, h, x in receivers:
                    if ll == l:
                        s = {"q": 0, "k": d, "v": 2 * d}[x] + h * D
                        out[..., s : s + D] = new[..., s : s + D]
                return out

            handles.append(blk.attn.c_attn.register_forward_hook(edit))
    try:
        with torch.no_grad():
            return hf(input_ids=corrupted, attention_mask=mask.long(), position_ids=position_ids(mask)).logits
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- one head's own input
def input_edited_logits(hf, tokens, mask, layer: int, head: int, what: str, push: torch.Tensor) -> torch.Tensor:
    """Hugging Face's logits with ``push`` added to head ``(layer, head)``'s own copy of the stream before
    ``ln_1``, for its queries, keys or values (``what``) only: that head's slice of ``c_attn``'s output is
    recomputed by hand as ``c_attn(ln_1(x + push))``, every other slice left as it is."""
    H, D = _heads(hf)
    d = hf.config.n_embd
    blk = hf.transformer.h[layer]
    live = {}

    def keep(module, args):
        live["x"] = args[0]

    def edit(module, args, out):
        new = blk.ln_1(live["x"] + push) @ blk.attn.c_attn.weight + blk.attn.c_attn.bias
        s = {"q": 0, "k": d, "v": 2 * d}[what] + head * D
        out = out.clone()
        out[..., s : s + D] = new[..., s : s + D]
        return out

    handles = [blk.ln_1.register_forward_pre_hook(keep), blk.attn.c_attn.register_forward_hook(edit)]
    try:
        with torch.no_grad():
            return hf(input_ids=tokens, attention_mask=mask.long(), position_ids=position_ids(mask)).logits
    finally:
        for h in handles:
            h.remove()
