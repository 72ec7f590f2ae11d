"""Sparse autoencoders and transcoders: one module, SAELens's arithmetic and on-disk format.

An :class:`SAE` maps an activation ``x`` ``[..., d_in]`` to sparse features ``f`` ``[..., d_sae]``
and back to ``x̂`` ``[..., d_out]``::

    hidden_pre = (norm_in(x) - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc    encode_pre
    f          = activation(hidden_pre)                                            activation
    x̂          = norm_out(f @ W_dec + b_dec) + x @ W_skip                          decode (+ skip)

exactly as SAELens 6.54 computes it (``sae_lens/saes/*.py``; ``tests/test_sae_saelens.py`` checks
every architecture against SAELens's own outputs to 1e-6, both ways). The architectures:
``standard`` (ReLU, trained with an L1 penalty), ``topk`` (the k largest pre-activations, then ReLU),
``batchtopk`` (trained with a top-k over the whole batch; at inference a JumpReLU with the learned
threshold, which is how SAELens saves it) and ``jumprelu`` (``relu(h)·[h > threshold]``). A
*transcoder* reads one hook point and writes another (``hook_name`` → ``hook_name_out``, e.g. an
MLP's input → its output), optionally with a linear skip connection ``W_skip``.

On disk: SAELens's directory, ``cfg.json`` + ``sae_weights.safetensors``, read in both its 6.x
layout and the pre-6.0 field names it still reads (``hook_point``, ``activation_fn_str``, …). No
pickle is ever loaded.

The weight mode. A model loaded with ``fold_ln=True`` has LayerNorm folded into the next weights
and its writing weights centred, so some hook points hold different numbers in the two modes: the
residual stream and everything written into it (``*_out``, ``hook_result``, the embeddings) lose
their mean over ``d_model``; ``ln*.hook_normalized`` loses LayerNorm's gain and bias. ``cfg.fold_ln``
records the mode of the model an SAE was trained on, and :meth:`SAE.bind` converts where the
conversion is exact (centring a raw activation; applying or removing a known gain and bias) and
refuses otherwise, with one line naming both modes.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..errors import InterpError

__all__ = ["SAE", "SAEConfig", "ARCHITECTURES", "NORMALIZATIONS", "CFG_FILENAME", "WEIGHTS_FILENAME", "Binding"]

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu")
#: SAELens's input normalisations. At inference ``expected_average_only_in`` is the identity (the
#: scaling factor is folded into the weights when the SAE is saved), so is ``covariance_whitening``.
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm", "covariance_whitening")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
#: The SAELens version whose format :meth:`SAE.save` writes (``metadata.sae_lens_version``: SAELens
#: reads a file without one as pre-6.0).
SAELENS_FORMAT_VERSION = "6.54.12"

# SAELens architecture name -> (interp architecture, transcoder?, skip?)
_FROM_SAELENS = {
    "standard": ("standard", False, False),
    "topk": ("topk", False, False),
    "jumprelu": ("jumprelu", False, False),
    "transcoder": ("standard", True, False),
    "skip_transcoder": ("standard", True, True),
    "jumprelu_transcoder": ("jumprelu", True, False),
    "jumprelu_skip_transcoder": ("jumprelu", True, True),
    # No SAELens class: interp writes these for TopK transcoders (SAELens cannot load them).
    "topk_transcoder": ("topk", True, False),
    "topk_skip_transcoder": ("topk", True, True),
}
# Pre-6.0 metadata keys SAELens moves from the top level into ``metadata``.
_LLM_METADATA_KEYS = {
    "model_name", "hook_name", "model_class_name", "hook_head_index", "model_from_pretrained_kwargs", "prepend_bos",
    "exclude_special_tokens", "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version", "hook_name_out", "hook_head_index_out", "hf_hook_name", "hf_hook_name_out",
}


# ============================================================================ the config
@dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its architecture, sizes, the hook points it reads and writes, its normalisation.

    ``d_out`` defaults to ``d_in`` (an SAE); a transcoder names ``hook_name_out``. ``fold_ln`` is the
    weight mode of the model the SAE was trained on (None if unknown). ``metadata`` is free-form
    (JSON-serialisable): training details, SAELens's metadata of a loaded file.

    >>> cfg = SAEConfig("topk", d_in=64, d_sae=512, k=8, hook_name="blocks.0.hook_resid_post")
    >>> cfg.d_out, cfg.is_transcoder
    (64, False)
    """

    architecture: str
    d_in: int
    d_sae: int
    d_out: Optional[int] = None
    hook_name: str = ""
    hook_name_out: Optional[str] = None
    k: Optional[int] = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    skip: bool = False
    dtype: str = "float32"
    model_name: Optional[str] = None
    fold_ln: Optional[bool] = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise InterpError(f"architecture {self.architecture!r} unknown: choose from {', '.join(ARCHITECTURES)}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InterpError(f"{name} must be a whole number ≥ 1, not {value!r}")
        if self.d_out is None:
            object.__setattr__(self, "d_out", self.d_in)
        elif isinstance(self.d_out, bool) or not isinstance(self.d_out, int) or self.d_out < 1:
            raise InterpError(f"d_out must be a whole number ≥ 1, not {self.d_out!r}")
        if self.architecture in ("topk", "batchtopk"):
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise InterpError(f"k must be a whole number in 1..d_sae={self.d_sae} for {self.architecture}, not {self.k!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise InterpError(f"normalize_activations {self.normalize_activations!r} unknown: choose from "
                              f"{', '.join(NORMALIZATIONS)}")
        if self.dtype not in DTYPES:
            raise InterpError(f"dtype {self.dtype!r} unknown: choose from {', '.join(DTYPES)}")
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise InterpError("rescale_acts_by_decoder_norm is a topk option (SAELens's TopKSAEConfig)")
        if self.is_transcoder:
            if self.apply_b_dec_to_input:
                raise InterpError("a transcoder cannot apply b_dec to its input (b_dec is d_out-sized): "
                                  "set apply_b_dec_to_input=False")
        else:
            if self.d_out != self.d_in:
                raise InterpError(f"an SAE has d_out = d_in ({self.d_in}), not {self.d_out}: name hook_name_out for a transcoder")
            if self.skip:
                raise InterpError("a skip connection (W_skip) belongs to transcoders: name hook_name_out")
        if not isinstance(self.metadata, dict):
            raise InterpError(f"metadata must be a dict, not {type(self.metadata).__name__}")

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def from_dict(cls, values: dict) -> "SAEConfig":
        """Build from :meth:`to_dict`'s output, rejecting unknown keys (a typo should not pass silently).

        For a SAELens ``cfg.json`` (either layout) use :meth:`from_saelens_dict`.
        """
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise InterpError(f"unknown SAEConfig keys: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------------ SAELens
    def saelens_architecture(self) -> str:
        """The ``architecture`` SAELens 6.x names this SAE by (a batchtopk SAE is saved as a JumpReLU, as SAELens does)."""
        arch = "jumprelu" if self.architecture == "batchtopk" else self.architecture
        if not self.is_transcoder:
            return arch
        base = {"standard": "", "jumprelu": "jumprelu_", "topk": "topk_"}[arch]
        return f"{base}{'skip_' if self.skip else ''}transcoder"

    def to_saelens_dict(self) -> dict:
        """The ``cfg.json`` SAELens 6.x writes for this SAE (its field names; interp's extras in ``metadata``)."""
        meta = dict(self.metadata)
        meta.update({
            "sae_lens_version": meta.get("sae_lens_version") or SAELENS_FORMAT_VERSION,
            "model_name": self.model_name,
            "hook_name": self.hook_name,
            "hook_head_index": None,
        })
        if self.is_transcoder:
            meta["hook_name_out"] = self.hook_name_out
        if self.fold_ln is not None:
            # SAELens loads a model with HookedTransformer.from_pretrained_no_processing(**these); interp's
            # folded mode keeps value biases per head.
            meta["model_from_pretrained_kwargs"] = {
                "fold_ln": self.fold_ln, "center_writing_weights": self.fold_ln, "fold_value_biases": False,
            }
        if self.architecture == "batchtopk":
            meta["training_architecture"] = "batchtopk"
            details = dict(meta.get("training_architecture_details") or {})
            details["k"] = self.k
            meta["training_architecture_details"] = details
        # What interp needs back that SAELens's fields cannot say, and which metadata keys were the SAE's own.
        meta["interp"] = {"architecture": self.architecture, "fold_ln": self.fold_ln, "k": self.k,
                          "metadata_keys": sorted(self.metadata)}
        out: dict[str, Any] = {
            "architecture": self.saelens_architecture(),
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "hook_z" if self.hook_name.endswith("hook_z") else "none",
            "metadata": meta,
        }
        if self.architecture == "topk":
            out["k"] = self.k
            out["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        if self.is_transcoder:
            out["d_out"] = self.d_out
        return out

    @classmethod
    def from_saelens_dict(cls, raw: dict, *, fold_ln: Optional[bool] = None) -> "SAEConfig":
        """Read a SAELens ``cfg.json``: the 6.x layout, or the pre-6.0 names SAELens still reads.

        Fields SAELens's inference classes do not use (training options) are kept in
        ``metadata["saelens_extra"]``. ``fold_ln`` overrides the weight mode found in the file.
        """
        if not isinstance(raw, dict):
            raise InterpError("cfg.json must hold a JSON object")
        version = raw.get("sae_lens_version") or (raw.get("metadata") or {}).get("sae_lens_version")
        d = _from_pre_6(raw) if not version or _version_tuple(version) < (6, 0) else dict(raw)
        meta = dict(d.get("metadata") or {})
        interp_meta = meta.get("interp") if isinstance(meta.get("interp"), dict) else {}
        name = d.get("architecture", "standard")
        if name not in _FROM_SAELENS:
            known = ", ".join(_FROM_SAELENS)
            raise InterpError(f"SAELens architecture {name!r} is not supported: interp reads {known}")
        arch, transcoder, skip = _FROM_SAELENS[name]
        k = d.get("k")
        if arch == "jumprelu" and (interp_meta.get("architecture") == "batchtopk"
                                   or meta.get("training_architecture") == "batchtopk"):
            # SAELens saves a BatchTopK SAE as a JumpReLU with its learned threshold; read it back as
            # batchtopk when its k (SAELens allows an average such as 31.5) is a whole number — at
            # inference the two are the same function.
            bk = interp_meta.get("k") or (meta.get("training_architecture_details") or {}).get("k")
            if isinstance(bk, (int, float)) and not isinstance(bk, bool) and float(bk).is_integer():
                arch, k = "batchtopk", int(bk)
        if meta.get("hook_head_index") is not None:
            raise InterpError("SAEs on one attention head (hook_head_index) are not supported: interp reads "
                              "hook_z SAEs over every head")
        hook_name = meta.get("hook_name") or d.get("hook_name") or ""
        hook_out = (meta.get("hook_name_out") or d.get("hook_name_out")) if transcoder else None
        if transcoder and not hook_out:
            hook_out = ""  # a transcoder whose output hook the file does not name
        used = {"architecture", "d_in", "d_sae", "d_out", "dtype", "device", "apply_b_dec_to_input",
                "normalize_activations", "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm",
                "hook_name", "hook_name_out", "model_name"}
        extra = {key: v for key, v in d.items() if key not in used}
        if extra:
            meta["saelens_extra"] = extra
        mode = interp_meta.get("fold_ln") if "fold_ln" in interp_meta else _saelens_mode(meta, hook_name, hook_out)
        model_name = meta.get("model_name") or d.get("model_name")
        if "metadata_keys" in interp_meta:  # written by interp: keep the SAE's own metadata, not what save() added
            meta = {key: meta[key] for key in interp_meta["metadata_keys"] if key in meta}
        try:
            return cls(
                architecture=arch,
                d_in=int(d["d_in"]),
                d_sae=int(d["d_sae"]),
                d_out=int(d["d_out"]) if transcoder and d.get("d_out") is not None else None,
                hook_name=hook_name,
                hook_name_out=hook_out,
                k=int(k) if isinstance(k, float) and k.is_integer() else k,
                apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", not transcoder)),
                normalize_activations=d.get("normalize_activations") or "none",
                rescale_acts_by_decoder_norm=bool(d.get("rescale_acts_by_decoder_norm", False)) if arch == "topk" else False,
                skip=skip,
                dtype=_dtype_name(d.get("dtype", "float32")),
                model_name=model_name,
                fold_ln=fold_ln if fold_ln is not None else mode,
                metadata=meta,
            )
        except KeyError as e:
            raise InterpError(f"cfg.json has no {e.args[0]!r}") from None


def _version_tuple(version: str) -> tuple:
    nums = re.findall(r"\d+", str(version))[:2]
    return tuple(int(n) for n in nums) if nums else (0,)


def _dtype_name(dtype: str) -> str:
    name = str(dtype).replace("torch.", "")
    return {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)


def _from_pre_6(cfg: dict) -> dict:
    """SAELens's ``handle_pre_6_0_config``: the old names renamed, the old defaults filled in."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index", "activation_fn_str": "activation_fn"}
    new = {renames.get(k, k): v for k, v in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    kwargs = new.get("activation_fn_kwargs") or {}
    if new.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        new["architecture"] = "topk"
        new["k"] = kwargs["k"]
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    if new.get("normalize_activations") is None:
        new["normalize_activations"] = "none"
    if new.get("activation_fn") not in (None, "relu", "topk"):
        raise InterpError(f"pre-6.0 activation_fn {new['activation_fn']!r} is not supported (relu or topk)")
    meta = {k: v for k, v in new.items() if k in _LLM_METADATA_KEYS}
    out = {k: v for k, v in new.items() if k not in _LLM_METADATA_KEYS}
    out["metadata"] = meta
    return out


# Hook points whose activations depend on the weight mode, and how.
_CENTRED = re.compile(r"(^hook_(embed|pos_embed)$|\.hook_resid_(pre|mid|post)$|\.hook_(attn_out|mlp_out|mlp_in)$"
                      r"|\.hook_(q_input|k_input|v_input)$|\.attn\.hook_result$)")
_LN = re.compile(r"(^ln_final|\.ln[12])\.hook_normalized$")


def hook_kind(name: str) -> str:
    """How a hook point's activation differs between the weight modes.

    ``"centred"``: folded = raw minus its mean over d_model (the residual stream and its writers);
    ``"ln"``: LayerNorm's output, with its gain and bias only when raw; ``"same"``: equal in both.

    >>> hook_kind("blocks.0.hook_resid_post"), hook_kind("blocks.1.ln2.hook_normalized"), hook_kind("blocks.0.attn.hook_z")
    ('centred', 'ln', 'same')
    """
    if _CENTRED.search(name):
        return "centred"
    if _LN.search(name):
        return "ln"
    return "same"


def _saelens_mode(meta: dict, hook_name: str, hook_out: Optional[str]) -> Optional[bool]:
    """interp's weight mode equivalent to the model SAELens trained on, for the hooks this SAE uses.

    SAELens loads the model with ``HookedTransformer.from_pretrained_no_processing(**kwargs)``: nothing
    folded unless the kwargs say so. The residual stream is centred iff ``center_writing_weights``;
    LayerNorm outputs lack gain and bias iff ``fold_ln``. None: unknown, or a mix interp has no mode for.
    """
    kwargs = meta.get("model_from_pretrained_kwargs")
    if not isinstance(kwargs, dict):
        return None
    if kwargs.get("fold_value_biases") and (hook_name.endswith("hook_z") or (hook_out or "").endswith("hook_z")):
        return None
    modes = set()
    for name in (hook_name, hook_out or ""):
        kind = hook_kind(name)
        if kind == "centred":
            modes.add(bool(kwargs.get("center_writing_weights", False)))
        elif kind == "ln":
            modes.add(bool(kwargs.get("fold_ln", False)))
    if not modes:
        return bool(kwargs.get("fold_ln", False))
    return modes.pop() if len(modes) == 1 else None


# ============================================================================ the module
class SAE(nn.Module):
    """A sparse autoencoder or transcoder (SAELens's parameter names and layout).

    Parameters: ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``,
    ``threshold [d_sae]`` (jumprelu; batchtopk's inference threshold) and ``W_skip [d_in, d_out]``
    (transcoders with ``cfg.skip``; SAELens stores its transpose, which :meth:`save` writes).

    A new SAE has unit-norm decoder rows drawn at random (``seed``), the encoder their transpose and
    zero biases (the initialisation of SAELens and of OpenAI's TopK paper, up to the decoder's norm).

    >>> sae = SAE(SAEConfig("topk", d_in=16, d_sae=64, k=4, hook_name="blocks.0.hook_resid_post"), seed=0)
    >>> x = torch.randn(3, 16)
    >>> f = sae.encode(x)
    >>> tuple(f.shape), int((f != 0).sum(-1).max()) <= 4, tuple(sae(x).shape)
    ((3, 64), True, (3, 16))
    """

    def __init__(self, cfg: SAEConfig, *, seed: int = 0, device: Union[str, torch.device] = "cpu"):
        super().__init__()
        if not isinstance(cfg, SAEConfig):
            raise InterpError(f"cfg must be an SAEConfig, not {type(cfg).__name__}")
        self.cfg = cfg
        dt, dev = cfg.torch_dtype, torch.device(device)
        shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "b_enc": (cfg.d_sae,), "W_dec": (cfg.d_sae, cfg.d_out), "b_dec": (cfg.d_out,)}
        if dev.type == "meta":  # an empty shell for load() to fill
            init = {k: torch.empty(s, dtype=dt, device=dev) for k, s in shapes.items()}
        else:
            g = torch.Generator().manual_seed(seed)
            w_dec = torch.randn(cfg.d_sae, cfg.d_out, generator=g, dtype=torch.float64)
            w_dec /= w_dec.norm(dim=-1, keepdim=True)
            w_enc = (w_dec.T if cfg.d_in == cfg.d_out
                     else torch.randn(cfg.d_in, cfg.d_sae, generator=g, dtype=torch.float64) / math.sqrt(cfg.d_in))
            init = {"W_enc": w_enc.contiguous(), "b_enc": torch.zeros(cfg.d_sae), "W_dec": w_dec, "b_dec": torch.zeros(cfg.d_out)}
            init = {k: v.to(dt).to(dev) for k, v in init.items()}
        for name, value in init.items():
            setattr(self, name, nn.Parameter(value))
        thr = cfg.architecture in ("jumprelu", "batchtopk")
        self.register_parameter("threshold", nn.Parameter(torch.zeros(cfg.d_sae, dtype=dt, device=dev)) if thr else None)
        self.register_parameter(
            "W_skip", nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out, dtype=dt, device=dev)) if cfg.skip else None)

    # ------------------------------------------------------------------ properties
    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return self.cfg.d_out

    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    @property
    def hook_name_out(self) -> Optional[str]:
        return self.cfg.hook_name_out

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.is_transcoder

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def extra_repr(self) -> str:
        c = self.cfg
        what = f"{c.hook_name} -> {c.hook_name_out}" if c.is_transcoder else c.hook_name
        k = f", k={c.k}" if c.k is not None else ""
        return f"{c.architecture}{k}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}, {what!r}, fold_ln={c.fold_ln}"

    # ------------------------------------------------------------------ arithmetic
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise InterpError(f"SAE input must be a tensor, not {type(x).__name__}")
        if x.shape[-1:] != (self.cfg.d_in,):
            hint = " (flatten hook_z's heads: [..., n_heads * d_head])" if self.cfg.hook_name.endswith("hook_z") else ""
            raise InterpError(f"SAE input has last dimension {tuple(x.shape)[-1:]}, expected d_in={self.cfg.d_in}{hint}")

    def _norm_in(self, x: Tensor) -> Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return x * (math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True))
        if mode == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            return x / (x.std(dim=-1, keepdim=True) + 1e-5)
        return x  # none; expected_average_only_in / covariance_whitening: folded into the weights at save

    def _norm_out(self, y: Tensor, x_in: Optional[Tensor]) -> Tensor:
        mode = self.cfg.normalize_activations
        if mode not in ("constant_norm_rescale", "layer_norm") or self.cfg.is_transcoder:
            return y  # SAELens's transcoders never de-normalise their output
        if x_in is None:
            raise InterpError(f"decode() of an SAE with normalize_activations={mode!r} needs x_in=, the input "
                              "whose scale it restores")
        x_in = x_in.to(self.dtype)
        if mode == "constant_norm_rescale":
            return y / (math.sqrt(self.cfg.d_in) / x_in.norm(dim=-1, keepdim=True))
        mu = x_in.mean(dim=-1, keepdim=True)
        return y * (x_in - mu).std(dim=-1, keepdim=True) + mu

    def sae_in(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The input as the encoder reads it: cast, normalised, ``b_dec`` subtracted (when applied to the input)."""
        self._check_input(x)
        x = self._norm_in(x.to(self.dtype))
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def encode_pre(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Pre-activations ``hidden_pre = sae_in(x) @ W_enc + b_enc`` (SAELens's ``hook_sae_acts_pre``)."""
        return self.sae_in(x) @ self.W_enc + self.b_enc

    def activation(self, hidden_pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The architecture's nonlinearity: ReLU, TopK-then-ReLU, or JumpReLU (jumprelu and batchtopk)."""
        arch = self.cfg.architecture
        if arch == "standard":
            return hidden_pre.relu()
        if self.cfg.rescale_acts_by_decoder_norm:  # rank as if every decoder row had unit norm (decode undoes it)
            hidden_pre = hidden_pre * self.W_dec.norm(dim=-1)
        if arch == "topk":
            values, indices = hidden_pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())
        return hidden_pre.relu() * (hidden_pre > self.threshold).to(hidden_pre.dtype)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations ``f = activation(encode_pre(x))``."""
        return self.activation(self.encode_pre(x))

    def decode(self, f: Float[Tensor, "... d_sae"], *, x_in: Optional[Tensor] = None) -> Float[Tensor, "... d_out"]:
        """``f @ W_dec + b_dec``, de-normalised; **without** the skip term (see :meth:`forward`).

        ``x_in``: the input ``f`` was encoded from, needed only to undo ``constant_norm_rescale`` or
        ``layer_norm`` (SAELens keeps that scale on the module between encode and decode).
        """
        if f.shape[-1:] != (self.cfg.d_sae,):
            raise InterpError(f"feature activations have last dimension {tuple(f.shape)[-1:]}, expected d_sae={self.cfg.d_sae}")
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return self._norm_out(f @ self.W_dec + self.b_dec, x_in)

    def skip_term(self, x: Float[Tensor, "... d_in"]) -> Optional[Float[Tensor, "... d_out"]]:
        """``x @ W_skip`` (the raw input, as SAELens), or None without a skip connection."""
        return None if self.W_skip is None else x.to(self.dtype) @ self.W_skip

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The reconstruction ``decode(encode(x)) + x @ W_skip``."""
        out = self.decode(self.encode(x), x_in=x)
        skip = self.skip_term(x)
        return out if skip is None else out + skip

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale each decoder row to unit norm and the encoder column, bias (and threshold) by its old norm.

        The SAE's function is unchanged for standard, jumprelu and batchtopk SAEs (the scale moves
        from the decoder into the activation); for topk the ranking of pre-activations can change,
        unless ``rescale_acts_by_decoder_norm`` (SAELens's reason for folding norms only then).
        """
        norms = self.W_dec.norm(dim=-1).clamp(min=1e-8)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms)
        self.b_enc.mul_(norms)
        if self.threshold is not None:
            self.threshold.mul_(norms)

    def fold_activation_norm_scaling_factor(self, factor: float) -> None:
        """Fold an input scale (``expected_average_only_in``) into the weights: the SAE then reads raw activations.

        A trained SAE saw ``x * factor``; afterwards it gives the same features on ``x`` and
        reconstructs ``x`` (SAELens's method of the same name). ``cfg.normalize_activations``
        becomes ``"none"`` and the factor is kept in ``metadata``.
        """
        if self.cfg.is_transcoder:
            raise InterpError("expected_average_only_in scales an SAE's input and output alike: not for transcoders")
        with torch.no_grad():
            self.W_enc.mul_(factor)
            self.W_dec.div_(factor)
            self.b_dec.div_(factor)
        meta = dict(self.cfg.metadata, norm_scaling_factor=float(factor))
        self.cfg = replace(self.cfg, normalize_activations="none", metadata=meta)

    def with_config(self, **changes) -> "SAE":
        """This SAE (same parameters, not copied) with some config fields changed, e.g. ``fold_ln=True``."""
        self.cfg = replace(self.cfg, **changes)
        return self

    def state_dict_saelens(self) -> dict[str, Tensor]:
        """The tensors SAELens stores, by its names and layouts (``W_skip`` as ``[d_out, d_in]``)."""
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip.T
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    # ------------------------------------------------------------------ disk
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write SAELens's format into directory ``path`` (created if needed): ``cfg.json`` + ``sae_weights.safetensors``.

        Each file is written beside its target and renamed over it, weights first: an interrupted
        save leaves the previous files (or none), never half of one.
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InterpError(f"cannot save an SAE to {path}: it is a file, not a directory")
        path.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg.to_saelens_dict()
        cfg["dtype"] = {v: k for k, v in DTYPES.items()}[self.dtype]
        tensors = self.state_dict_saelens()
        _atomic_write(path / WEIGHTS_FILENAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        _atomic_write(path / CFG_FILENAME, lambda tmp: tmp.write_text(json.dumps(cfg, indent=1), encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, fold_ln: Optional[bool] = None, device: Union[str, torch.device] = "cpu",
             dtype: Optional[str] = None) -> "SAE":
        """Read an SAE or transcoder saved by :meth:`save` or by SAELens (6.x or the pre-6.0 layout).

        ``fold_ln`` sets the weight mode of the model it was trained on when the file does not say
        (or overrides it). ``dtype`` converts (default: the file's).

        >>> import tempfile
        >>> sae = SAE(SAEConfig("jumprelu", d_in=8, d_sae=32, hook_name="blocks.0.hook_resid_pre", model_name="gpt2", fold_ln=True))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     back = SAE.load(sae.save(d))
        >>> back.cfg == sae.cfg, bool((back.W_dec == sae.W_dec).all())
        (True, True)
        """
        from safetensors import safe_open

        path = Path(path)
        cfg_path, weights_path = path / CFG_FILENAME, path / WEIGHTS_FILENAME
        if not path.is_dir():
            raise InterpError(f"no SAE at {path}: not a directory")
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise InterpError(f"no SAE at {path}: {p.name} is missing")
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InterpError(f"{cfg_path}: not JSON ({e})") from None
        cfg = SAEConfig.from_saelens_dict(raw, fold_ln=fold_ln)
        try:
            with safe_open(str(weights_path), framework="pt", device="cpu") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; the user needs one line
            raise InterpError(f"{weights_path}: not a safetensors file ({e})") from None
        if "log_threshold" in state:  # older JumpReLU checkpoints
            state["threshold"] = state.pop("log_threshold").exp()
        if "scaling_factor" in state:
            if not torch.allclose(state["scaling_factor"], torch.ones_like(state["scaling_factor"])):
                raise InterpError(f"{weights_path}: a finetuning scaling_factor is not supported")
            del state["scaling_factor"]
        if cfg.is_transcoder and cfg.d_out == cfg.d_in and "W_dec" in state:
            cfg = replace(cfg, d_out=int(state["W_dec"].shape[-1]))
        if cfg.is_transcoder and raw.get("d_out") is None and "W_dec" in state:
            cfg = replace(cfg, d_out=int(state["W_dec"].shape[-1]))
        if dtype is not None:
            cfg = replace(cfg, dtype=_dtype_name(dtype))
        sae = cls(cfg, device="meta")
        expected = {n: tuple(s) for n, s in sae.state_dict_shapes().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InterpError(f"{weights_path}: weights {missing or ''} missing {unexpected or ''} unexpected for a "
                              f"{cfg.saelens_architecture()}".replace("  ", " "))
        for name, shape in expected.items():
            got = tuple(state[name].shape)
            if got != shape:
                raise InterpError(f"{weights_path}: {name} has shape {got}, expected {shape} from cfg.json")
        for name, value in state.items():
            value = value.to(cfg.torch_dtype).to(device)
            if name == "W_skip":
                value = value.T.contiguous()
            setattr(sae, name, nn.Parameter(value))
        return sae

    def state_dict_shapes(self) -> dict[str, torch.Size]:
        """Shapes of the tensors SAELens stores (``W_skip`` as ``[d_out, d_in]``)."""
        c = self.cfg
        out = {"W_enc": (c.d_in, c.d_sae), "b_enc": (c.d_sae,), "W_dec": (c.d_sae, c.d_out), "b_dec": (c.d_out,)}
        if c.architecture in ("jumprelu", "batchtopk"):
            out["threshold"] = (c.d_sae,)
        if c.skip:
            out["W_skip"] = (c.d_out, c.d_in)
        return {k: torch.Size(v) for k, v in out.items()}

    # ------------------------------------------------------------------ a model's activations
    def bind(self, model) -> "Binding":
        """How this SAE reads ``model``'s activations and writes its reconstruction back (see :class:`Binding`)."""
        return Binding(self, model)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        from ..export import new_file_mode

        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ============================================================================ SAE <-> model
class Binding:
    """An SAE attached to a model: the model's activations in the SAE's weight mode and shape, and back.

    :meth:`input` turns the activation at ``hook_name`` (``hook_z``'s heads flattened) into what the
    SAE was trained on; :meth:`output` turns the SAE's output into the activation at its output hook
    (``hook_name`` for an SAE, ``hook_name_out`` for a transcoder), given the activation it replaces.

    Conversions, when the SAE's mode (``cfg.fold_ln``) differs from the model's:

    * residual-stream-like hooks (the residual stream, ``*_out``, ``hook_result``, embeddings,
      ``hook_mlp_in``): an SAE trained folded reads a raw model's activation centred, exactly, and its
      reconstruction gets back the mean of the activation it replaces (so the error is the same in both
      modes); one trained raw would need the mean a folded model has thrown away: refused.
    * ``ln*.hook_normalized``: an SAE trained folded reads ``(x - b) / w`` of a raw model (``w``,
      ``b`` its LayerNorm's gain and bias) and writes ``x̂ w + b``; one trained raw would need the
      gain and bias that folding moved into the next weights: refused.
    * everything else (``hook_z``, q/k/v, the MLP's hidden layer, patterns) is the same in both.
    """

    def __init__(self, sae: SAE, model):
        self.sae = sae
        self.model = model
        cfg = sae.cfg
        names = set(model.hook_names)
        for option, name in (("hook_name", cfg.hook_name), ("hook_name_out", cfg.hook_name_out)):
            if name is not None and name not in names:
                if option == "hook_name_out" and name == "":
                    raise InterpError("this transcoder's cfg names no hook_name_out: set it with sae.with_config(hook_name_out=...)")
                raise InterpError(f"SAE {option} {name!r} is not a hook point of {model.cfg.name}")
        model_mode = bool(model.cfg.fold_ln)
        self._in = self._converter(cfg.hook_name, model_mode)
        self._out = self._converter(cfg.hook_name_out or cfg.hook_name, model_mode)

    def _converter(self, name: str, model_mode: bool):
        cfg = self.sae.cfg
        kind = hook_kind(name)
        if kind == "same" or cfg.fold_ln == model_mode:
            return None
        if cfg.fold_ln is None:
            raise InterpError(f"the weight mode this SAE was trained in is unknown and {name} differs between modes: "
                              f"load it with SAE.load(dir, fold_ln=True|False)")
        if not cfg.fold_ln and model_mode:
            what = "the mean over d_model" if kind == "centred" else "LayerNorm's gain and bias"
            raise InterpError(f"SAE at {name} was trained with fold_ln=False; this model has fold_ln=True, whose "
                              f"{name} has lost {what}: load the model with fold_ln=False")
        if kind == "centred":
            return ("centre",)
        parts = name.split(".")
        w, b = (self.model.ln_weights("ln_final") if name.startswith("ln_final")
                else self.model.ln_weights(parts[2], int(parts[1])))
        if bool((w == 0).any()):
            raise InterpError(f"cannot convert {name} to fold_ln=True: its LayerNorm has a zero gain")
        return ("ln", w, b)

    @staticmethod
    def _flat(x: Tensor, name: str) -> Tensor:
        return x.flatten(-2) if x.dim() >= 4 or name.endswith("hook_z") else x

    def _to_sae(self, act: Tensor, conv) -> Tensor:
        # Conversions act on the model's own last dimension (d_model of each head's copy for
        # hook_q_input or hook_result), before the heads are flattened.
        if conv is not None:
            if conv[0] == "centre":
                act = act - act.mean(-1, keepdim=True)
            else:
                act = (act - conv[2]) / conv[1]
        return act

    def input(self, act: Tensor) -> Tensor:
        """The model's activation at ``hook_name`` (``[..., d]``, or ``[..., n_heads, d_head]``) as the SAE's input."""
        return self._flat(self._to_sae(act, self._in), self.sae.cfg.hook_name)

    def target(self, actual: Tensor) -> Tensor:
        """The activation at the output hook as the SAE's output space has it (what its reconstruction aims at)."""
        name = self.sae.cfg.hook_name_out or self.sae.cfg.hook_name
        return self._flat(self._to_sae(actual, self._out), name)

    def delta(self, d: Tensor, actual: Tensor) -> Tensor:
        """A change ``d`` of the SAE's output as a change of the activation at its output hook (shaped like ``actual``)."""
        d = d.reshape(actual.shape)
        if self._out is not None and self._out[0] == "ln":
            d = d * self._out[1]
        return d.to(actual.dtype)

    def output(self, x_hat: Tensor, actual: Tensor) -> Tensor:
        """The SAE's output as the activation at its output hook, shaped like ``actual`` (the one it replaces)."""
        y = x_hat.reshape(actual.shape)
        conv = self._out
        if conv is not None:
            y = y + actual.mean(-1, keepdim=True) if conv[0] == "centre" else y * conv[1] + conv[2]
        return y.to(actual.dtype)
