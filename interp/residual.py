"""The residual stream, taken apart: embeddings + each head + each attention bias + each MLP."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .errors import InterpError
from .tokens import Batch

WHERE = ("pre", "mid", "post")


@dataclass(frozen=True)
class ResidDecomposition:
    """The residual stream at one point as a sum of the parts that wrote it.

    ``components[i]`` is what ``labels[i]`` wrote; ``components.sum(0)`` equals
    ``resid`` (the residual stream itself, from the same run) to float tolerance.
    Labels: ``embed``, ``pos_embed``, ``L{l}H{h}`` (a head's output: its ``z``, value
    bias included, times its rows of ``W_O``), ``L{l} attn bias`` (the layer's ``b_O``),
    ``L{l} mlp``. Each part equals Hugging Face's in both weight modes up to its mean
    over d_model, which folding centres away (see :class:`~interp.model.HookedGPT2`).
    """

    labels: list[str]
    components: Float[Tensor, "component batch pos d_model"]
    resid: Float[Tensor, "batch pos d_model"]
    batch: Batch

    def total(self) -> Float[Tensor, "batch pos d_model"]:
        return self.components.sum(0)

    def norms(self) -> pd.DataFrame:
        """Mean L2 norm of each component over real (non-padding) tokens, one row per component."""
        mask = self.batch.attention_mask
        norms = self.components.norm(dim=-1)[:, mask].mean(-1)
        return pd.DataFrame({"component": self.labels, "norm": norms.cpu().numpy()})


def decompose_resid(model, inputs, layer: int, where: str = "pre") -> ResidDecomposition:
    """Decompose the residual stream at ``blocks.{layer}.hook_resid_{where}``.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> d = decompose_resid(model, "a b a b", layer=1, where="pre")
    >>> d.labels[:4]
    ['embed', 'pos_embed', 'L0H0', 'L0H1']
    >>> bool(torch.allclose(d.total(), d.resid, atol=1e-5))
    True
    """
    model.check_layer(layer)
    if where not in WHERE:
        raise InterpError(f"where must be one of {', '.join(WHERE)}, not {where!r}")
    upto = layer + (where != "pre")  # layers whose attention is included
    mlps = layer + (where == "post")  # layers whose MLP is included
    names = ["hook_embed", "hook_pos_embed", (f"resid_{where}", layer)]
    names += [("z", i) for i in range(upto)] + [("mlp_out", i) for i in range(mlps)]
    _, cache = model.run(inputs, names=names, stop_at_layer=layer + 1)
    batch_shape = cache["hook_embed"].shape
    labels, parts = ["embed", "pos_embed"], [cache["hook_embed"], cache["hook_pos_embed"].expand(batch_shape)]
    for i in range(upto):
        heads = model.head_write(i, cache["z", i]).permute(2, 0, 1, 3)
        labels += [f"L{i}H{h}" for h in range(model.cfg.n_heads)] + [f"L{i} attn bias"]
        parts += [*heads, model.b_O[i].expand(batch_shape)]
        if i < mlps:
            labels.append(f"L{i} mlp")
            parts.append(cache["mlp_out", i])
    return ResidDecomposition(labels, torch.stack(parts), cache[f"resid_{where}", layer], cache.batch)
