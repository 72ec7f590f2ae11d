"""A head's output in the tensor-product form ``A ⊗ W_OV``.

A Mathematical Framework for Transformer Circuits writes an attention head as
``h(x) = (A ⊗ W_OV) · x``: the attention pattern ``A`` mixes *positions*, the OV
circuit ``W_OV = W_V W_O`` maps each position's vector in the *embedding*
dimension, and the two act independently. With row vectors (TransformerLens's
convention), for one prompt ``out[q] = Σ_k A[q, k] · x[k] @ W_OV``, i.e.
``out = A @ x @ W_OV``; as a single linear map on the flattened residual stream
it is ``torch.kron(A, W_OVᵀ)``. The value bias adds ``b_V W_O`` to every
position (each row of A sums to 1).

The per-head QK/OV matrices themselves are :meth:`HookedGPT2.qk`,
:meth:`HookedGPT2.ov`, :meth:`HookedGPT2.full_qk` and :meth:`HookedGPT2.full_ov`.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor


def head_output(
    model,
    layer: int,
    head: int,
    pattern: Float[Tensor, "batch query_pos key_pos"],
    x: Float[Tensor, "batch key_pos d_model"],
) -> Float[Tensor, "batch query_pos d_model"]:
    """A head's output from its pattern and its input ``x`` (the ln1-normalised residual stream).

    Computed through the factored OV circuit, so it costs ``pos·d_model·d_head``,
    never ``d_model²``.

    >>> import torch
    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> _, cache = model.run("a b c a b", names=["ln1.0", "pattern.0", "result.0"])
    >>> out = head_output(model, 0, 0, cache["pattern", 0][:, 0], cache["ln1", 0])
    >>> bool(torch.allclose(out, cache["result", 0][:, :, 0], atol=1e-5))
    True
    """
    ov = model.ov(layer, head)
    bias = model.b_V[layer, head] @ model.W_O[layer, head]
    return pattern @ ((x @ ov.A) @ ov.B) + bias
