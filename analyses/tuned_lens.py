"""The tuned lens: one learned affine translator per layer in front of the logit lens (Belrose et al. 2023).

The logit lens reads layer ℓ's residual stream ``h`` with the model's own final LayerNorm and
unembedding. Early layers are not yet in the basis the unembedding expects, so the tuned lens first
translates the stream, ``h + A_ℓ h + b_ℓ``, with ``A_ℓ`` and ``b_ℓ`` trained so that the translated
stream's distribution matches the model's final one (KL divergence). This module follows the
``tuned-lens`` package (0.2.0) exactly where it defines things:

* **which stream**: translator ℓ reads Hugging Face's ``hidden_states[ℓ]``, the residual stream
  entering block ℓ (``blocks.ℓ.hook_resid_pre``), for ℓ = 0 … n_layers − 1. After the last block
  there is no translator: the lens there is the model's own output (the identity).
* **how it decodes**: the translated stream goes through the final LayerNorm and the unembedding
  (``model.unembed``).
* **the file format**: a directory with ``config.json`` (``base_model_name_or_path``, ``d_model``,
  ``num_hidden_layers``, ``bias``, ``base_model_revision``, ``unembed_hash``, ``lens_type``) and
  ``params.pt``, the translators' state dict (``"{ℓ}.weight"`` ``[d_model, d_model]`` in
  ``torch.nn.Linear``'s out × in layout, ``"{ℓ}.bias"``), read with ``torch.load(weights_only=True)``
  so that loading a lens never runs pickled code. interp also writes ``params.safetensors`` (the same
  tensors) and, for a lens it trained, ``training.json`` (how).
* **the recipe** (:mod:`analyses.lens_training`): zero-initialised translators added residually
  ("so weight decay regularizes toward the identity"), KL to the final distribution, tuned-lens's SGD.

**Weight modes.** With ``fold_ln=True`` interp's residual stream is Hugging Face's *centred* over
d_model (writing weights are centred) and the final LayerNorm's gain and bias live in ``W_U``. The
decoding is the model's own either way, so only the translators care: ``A h`` depends on the
stream's mean ``m`` through ``A 1`` (``A h = A C h + m A 1``, C the centring matrix), and a folded
model has no ``m``. interp therefore trains translators on the centred stream, ``A = A C``: such a
lens gives the same probabilities in both modes and in tuned-lens (Hugging Face's weights). A lens
whose translators read the mean (tuned-lens trains on the raw stream, so its lenses do) is exact
with ``fold_ln=False`` and refused, with that advice, by a ``fold_ln=True`` model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError
from interp.model import HookedGPT2

__all__ = ["TunedLens", "TunedLensConfig", "unembed_hash", "resolve_lens_dir", "check_lens_target", "MEAN_TOLERANCE"]

LENS_TYPE = "linear_tuned_lens"
#: A translator whose gain on the mean direction ``‖C A 1‖ / √d`` is above this (relative to
#: ``max(1, ‖A‖_F)``) reads the stream's mean, which folded models do not have.
MEAN_TOLERANCE = 1e-5
BUNDLED_LENS = "tuned-lens"  # interp/bundled/<model>/tuned-lens


# ---------------------------------------------------------------------------- the file's config
@dataclass(frozen=True)
class TunedLensConfig:
    """tuned-lens's ``config.json``: the same keys, in the same order."""

    base_model_name_or_path: str
    d_model: int
    num_hidden_layers: int
    bias: bool = True
    base_model_revision: Optional[str] = None
    unembed_hash: Optional[str] = None
    lens_type: str = LENS_TYPE

    @classmethod
    def from_dict(cls, values: Any, source: str = "config.json") -> "TunedLensConfig":
        """Build from a parsed ``config.json``; unknown keys are ignored with a warning, as tuned-lens does."""
        if not isinstance(values, dict):
            raise InterpError(f"{source}: expected a JSON object, not {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown tuned-lens config keys {unknown}", stacklevel=2)
        missing = [k for k in ("base_model_name_or_path", "d_model", "num_hidden_layers") if k not in values]
        if missing:
            raise InterpError(f"{source}: missing {', '.join(missing)}")
        cfg = cls(**{k: v for k, v in values.items() if k in known})
        for key in ("d_model", "num_hidden_layers"):
            v = getattr(cfg, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InterpError(f"{source}: {key} must be a positive integer, not {v!r}")
        if cfg.lens_type != LENS_TYPE:
            raise InterpError(f"{source}: lens_type {cfg.lens_type!r} is not supported (only {LENS_TYPE!r})")
        if not isinstance(cfg.bias, bool):
            raise InterpError(f"{source}: bias must be true or false, not {cfg.bias!r}")
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


def unembed_hash(model: HookedGPT2) -> Optional[str]:
    """tuned-lens's fingerprint of the unembedding (``tensor_hash`` of ``lm_head.weight``), or None.

    SHA-256 of numpy's printout of the ``[d_vocab, d_model]`` matrix at one decimal (its corners:
    robust to dtype and small changes), under numpy's default print options. Only a ``fold_ln=False``
    model holds Hugging Face's ``lm_head`` (``W_Uᵀ``); a folded one returns None.
    """
    if model.cfg.fold_ln:
        return None
    return model.cached("tuned_lens.unembed_hash", lambda: _tensor_hash(model.W_U.T))


def _tensor_hash(weight: Tensor) -> str:
    w = weight.detach().cpu().float().numpy()
    with np.printoptions(precision=1, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                         nanstr="nan", infstr="inf", sign="-", floatmode="maxprec", legacy=False):
        return hashlib.sha256(np.array_str(w, precision=1).encode()).hexdigest()


# ---------------------------------------------------------------------------- the lens
class TunedLens:
    """One affine translator per layer boundary; the last boundary's is the identity.

    ``weight[ℓ]`` (``A_ℓ``, ``[d_model, d_model]``, out × in) and ``bias[ℓ]`` translate the residual
    stream entering block ℓ: ``h + h @ A_ℓᵀ + b_ℓ``. Build one with :func:`analyses.lens_training.train_tuned_lens`,
    :meth:`load` (a tuned-lens directory, or a bundled model's name) or :meth:`zeros`.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> lens = TunedLens.zeros(model)        # zero translators: exactly the logit lens
    >>> lens
    TunedLens(the model object: 2 translators, d_model 256, mean-blind)
    >>> h = torch.randn(3, model.cfg.d_model)
    >>> bool(torch.equal(lens.logits(model, h, 0), model.unembed(h)))
    True
    """

    def __init__(self, weight: Float[Tensor, "n_layers d_model d_model"], bias: Float[Tensor, "n_layers d_model"],
                 config: TunedLensConfig, *, record: Optional[dict] = None, source: str = ""):
        L, d = config.num_hidden_layers, config.d_model
        if tuple(weight.shape) != (L, d, d) or tuple(bias.shape) != (L, d):
            raise InterpError(f"translators of shape {tuple(weight.shape)}, {tuple(bias.shape)} do not match "
                              f"the config ({L} layers, d_model {d})")
        self.weight, self.bias, self.config = weight, bias, config
        self.record = record
        self.source = source or config.base_model_name_or_path

    @classmethod
    def zeros(cls, model: HookedGPT2) -> "TunedLens":
        """Zero translators for ``model`` (tuned-lens's initialisation): the logit lens, exactly."""
        _check_model(model)
        L, d = model.cfg.n_layers, model.cfg.d_model
        config = TunedLensConfig(str(model.cfg.name), d, L, unembed_hash=unembed_hash(model))
        return cls(torch.zeros(L, d, d), torch.zeros(L, d), config)

    @property
    def n_layers(self) -> int:
        return self.config.num_hidden_layers

    def __len__(self) -> int:
        return self.n_layers

    def __repr__(self) -> str:
        blind = "mean-blind" if self.mean_blind() else "reads the stream's mean: fold_ln=False only"
        return f"TunedLens({self.source}: {self.n_layers} translators, d_model {self.config.d_model}, {blind})"

    # -------------------------------------------------------------- reading the stream
    def translate(self, resid: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... d_model"]:
        """The translated residual stream entering block ``layer`` (``layer == n_layers``: after the last block, unchanged)."""
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= self.n_layers:
            raise InterpError(f"layer {layer!r} out of range: the lens has boundaries 0..{self.n_layers}")
        if layer == self.n_layers:
            return resid
        A = self.weight[layer].to(resid.device, resid.dtype)
        return resid + resid @ A.T + self.bias[layer].to(resid.device, resid.dtype)

    def logits(self, model: HookedGPT2, resid: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... d_vocab"]:
        """The lens's logits: the translated stream through the model's final LayerNorm and unembedding."""
        return model.unembed(self.translate(resid, layer))

    def mean_gain(self) -> Float[Tensor, " n_layers"]:
        """Per translator, ``‖C A 1‖ / √d``: how much the translated stream moves per unit of the stream's mean.

        The final LayerNorm removes any change along 1 itself (hence C). Zero for interp's lenses.
        """
        A = self.weight.double()
        d = self.config.d_model
        col = A.sum(-1) / math.sqrt(d)  # A (1/√d)
        return (col - col.mean(-1, keepdim=True)).norm(dim=-1).float()

    def mean_blind(self) -> bool:
        """Whether every translator ignores the stream's mean (so the lens works with ``fold_ln=True`` too)."""
        scale = self.weight.double().flatten(1).norm(dim=-1).clamp(min=1.0).float()
        return bool((self.mean_gain() <= MEAN_TOLERANCE * scale).all())

    def check(self, model: HookedGPT2) -> None:
        """Raise :class:`InterpError` unless this lens fits ``model`` (shape, unembedding, weight mode)."""
        _check_model(model)
        c, cfg = self.config, model.cfg
        if (c.num_hidden_layers, c.d_model) != (cfg.n_layers, cfg.d_model):
            raise InterpError(
                f"tuned lens {self.source} is for {c.num_hidden_layers} layers × d_model {c.d_model} "
                f"({c.base_model_name_or_path}); model {cfg.name} has {cfg.n_layers} layers × d_model {cfg.d_model}")
        mine = unembed_hash(model)
        if c.unembed_hash and mine and mine != c.unembed_hash:
            raise InterpError(
                f"tuned lens {self.source} was tuned for another unembedding ({c.base_model_name_or_path}; "
                f"unembed_hash {c.unembed_hash[:12]}… ≠ {mine[:12]}… of {cfg.name}); if it does belong to this "
                "model, set unembed_hash to null in its config.json")
        if cfg.fold_ln and not self.mean_blind():
            worst = int(self.mean_gain().argmax())
            raise InterpError(
                f"tuned lens {self.source} reads the residual stream's mean over d_model (translator {worst}: gain "
                f"{float(self.mean_gain()[worst]):.3g}), which a fold_ln=True model centres away: load the model "
                "with fold_ln=False (--no-fold-ln) to use it")

    # -------------------------------------------------------------- files
    def state_dict(self) -> dict[str, Tensor]:
        """tuned-lens's ``layer_translators.state_dict()``: ``"{ℓ}.weight"``, ``"{ℓ}.bias"`` (with ``bias``)."""
        out = {}
        for i in range(self.n_layers):
            out[f"{i}.weight"] = self.weight[i].detach().cpu().contiguous().clone()
            if self.config.bias:
                out[f"{i}.bias"] = self.bias[i].detach().cpu().contiguous().clone()
        return out

    def save(self, path: Any) -> Path:
        """Write ``config.json``, ``params.pt``, ``params.safetensors`` (and ``training.json``) into ``path``.

        All files are rendered beside their targets first and renamed into place only when every one
        succeeded; the directory is created if needed (its parent must exist). Other files are left alone.
        """
        from safetensors.torch import save_file

        from interp.export import new_file_mode

        path = check_lens_target(path)
        created = not path.exists()
        path.mkdir(exist_ok=True)
        state = self.state_dict()
        writers = {
            "config.json": lambda p: p.write_text(json.dumps(self.config.to_dict()), encoding="utf-8"),
            "params.pt": lambda p: torch.save(state, p),
            "params.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt", "lens_type": LENS_TYPE}),
        }
        if self.record is not None:
            writers["training.json"] = lambda p: p.write_text(json.dumps(self.record, indent=1), encoding="utf-8")
        temps: list[tuple[Path, Path]] = []
        try:
            for name, write in writers.items():
                tmp = path / f".{name}.part"
                temps.append((tmp, path / name))
                write(tmp)
                os.chmod(tmp, new_file_mode())
            for tmp, target in temps:
                os.replace(tmp, target)
        except OSError as e:
            raise InterpError(f"cannot write the tuned lens into {path}: {e.strerror or e}") from None
        finally:
            for tmp, _ in temps:
                tmp.unlink(missing_ok=True)
            if created and not any(path.iterdir()):
                path.rmdir()
        return path

    @classmethod
    def load(cls, path: Any) -> "TunedLens":
        """Read a tuned-lens directory (``config.json`` + ``params.pt``, or ``params.safetensors``), or a bundled model's lens by name.

        ``params.pt`` is read with ``torch.load(weights_only=True)``: tensors only, never pickled code.

        >>> lens = TunedLens.load("interp-tiny")     # the lens shipped with the bundled model
        >>> lens.n_layers, lens.config.d_model
        (2, 128)
        """
        d = resolve_lens_dir(path)
        config = TunedLensConfig.from_dict(_read_json(d / "config.json"), str(d / "config.json"))
        state = _read_params(d)
        L, dm = config.num_hidden_layers, config.d_model
        want = [f"{i}.{k}" for i in range(L) for k in (("weight", "bias") if config.bias else ("weight",))]
        missing, extra = [k for k in want if k not in state], sorted(set(state) - set(want))
        if missing or extra:
            raise InterpError(f"{d}: the translators' keys do not match its config ({L} layers, bias={config.bias}): "
                              + (f"missing {missing[:4]}" if missing else f"unexpected {extra[:4]}"))
        for k in want:
            shape = (dm, dm) if k.endswith("weight") else (dm,)
            t = state[k]
            if not isinstance(t, Tensor) or tuple(t.shape) != shape or not t.is_floating_point():
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise InterpError(f"{d}: {k} should be a float tensor of shape {shape}, not {got}")
        weight = torch.stack([state[f"{i}.weight"].float() for i in range(L)])
        bias = torch.stack([state[f"{i}.bias"].float() for i in range(L)]) if config.bias else torch.zeros(L, dm)
        record = _read_json(d / "training.json") if (d / "training.json").is_file() else None
        return cls(weight, bias, config, record=record, source=str(path))


def resolve_lens_dir(path: Any) -> Path:
    """A lens directory: ``path`` itself, or the lens bundled with the model of that name (``interp-tiny``)."""
    from interp.loading import BUNDLED_DIR, bundled_models

    if not isinstance(path, (str, os.PathLike)):
        raise InterpError(f"a tuned lens is a directory or a bundled model's name, not {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InterpError(f"tuned lens {path}: no config.json in this directory")
        return p
    bundled = [m for m in bundled_models() if (BUNDLED_DIR / m / BUNDLED_LENS / "config.json").is_file()]
    if str(path) in bundled:
        return BUNDLED_DIR / str(path) / BUNDLED_LENS
    if p.exists():
        raise InterpError(f"tuned lens {path}: not a directory")
    raise InterpError(f"tuned lens {path}: no such directory (bundled lenses: {', '.join(bundled) or 'none'})")


def check_lens_target(path: Any) -> Path:
    """Where a lens can be written: a directory that exists or whose parent does, writable; else InterpError."""
    if not isinstance(path, (str, os.PathLike)):
        raise InterpError(f"a lens is saved to a directory path, not {type(path).__name__}")
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.exists() and not p.is_dir():
        raise InterpError(f"cannot save a tuned lens to {p}: it is a file, not a directory")
    if not p.exists() and not parent.is_dir():
        raise InterpError(f"cannot save a tuned lens to {p}: directory {parent} does not exist")
    if not os.access(p if p.exists() else parent, os.W_OK):
        raise InterpError(f"cannot save a tuned lens to {p}: {p if p.exists() else parent} is not writable")
    return p


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InterpError(f"{path}: cannot read it as JSON ({e})") from None


def _read_params(d: Path) -> dict:
    if (d / "params.pt").is_file():
        try:
            state = torch.load(d / "params.pt", map_location="cpu", weights_only=True)
        except Exception as e:  # an unpickler refusal, a truncated zip, …: all mean "not a lens's tensors"
            raise InterpError(f"{d / 'params.pt'}: not a state dict of tensors "
                              f"(read with weights_only=True): {str(e).splitlines()[0]}") from None
    elif (d / "params.safetensors").is_file():
        from safetensors.torch import load_file

        try:
            state = load_file(str(d / "params.safetensors"))
        except Exception as e:
            raise InterpError(f"{d / 'params.safetensors'}: cannot read it: {str(e).splitlines()[0]}") from None
    else:
        raise InterpError(f"tuned lens {d}: no params.pt or params.safetensors")
    if not isinstance(state, dict):
        raise InterpError(f"{d}: the parameters are a {type(state).__name__}, not a state dict")
    return state


def _check_model(model: Any) -> None:
    if not isinstance(model, HookedGPT2):
        raise InterpError(f"model must be an interp HookedGPT2 (from interp.load), not {type(model).__name__}")
