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
* **the recipe**: zero-initialised translators added residually ("so weight decay regularizes toward
  the identity"), KL to the final distribution at the same position, SGD with Nesterov momentum 0.9,
  learning rate ``lr_scale · (1 − momentum)`` (PyTorch's momentum scales the step by 1/(1 − β); with
  that undone tuned-lens finds 1 the right scale), weight decay 1e-3, the learning rate decayed
  linearly to 0 over the steps with no warm-up, gradients clipped to norm 1 over all translators.

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
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.model import HookedGPT2

__all__ = ["TunedLens", "TunedLensConfig", "train_tuned_lens", "unembed_hash", "training_windows", "MEAN_TOLERANCE"]

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
    weight = model.W_U.T.detach().cpu().float().numpy()
    with np.printoptions(precision=1, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                         nanstr="nan", infstr="inf", sign="-", floatmode="maxprec", legacy=False):
        return hashlib.sha256(np.array_str(weight, precision=1).encode()).hexdigest()


# ---------------------------------------------------------------------------- the lens
class TunedLens:
    """One affine translator per layer boundary; the last boundary's is the identity.

    ``weight[ℓ]`` (``A_ℓ``, ``[d_model, d_model]``, out × in) and ``bias[ℓ]`` translate the residual
    stream entering block ℓ: ``h + h @ A_ℓᵀ + b_ℓ``. Build one with :func:`train_tuned_lens`,
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


# ---------------------------------------------------------------------------- training
def training_windows(model: HookedGPT2, text: Any, n_windows: int, *, n_ctx: Optional[int] = None,
                     seed: int = 0, split: str = "train", what: str = "training") -> Int[Tensor, "n_windows pos"]:
    """``n_windows`` token windows of the text, shuffled by ``seed``; an error if the text has fewer.

    ``text``: None (the bundled corpus's ``split``), a path or documents (:func:`interp.corpus.documents`),
    or token windows ``[n, pos]`` (used as they are, in their order). Documents are shuffled, cut into
    windows of ``n_ctx`` tokens that start with BOS (:func:`interp.corpus.token_windows`), and the
    windows shuffled again, so that each step mixes documents.
    """
    from itertools import islice

    from interp.corpus import documents, token_windows

    if isinstance(text, Tensor):
        if text.ndim != 2 or text.dtype.is_floating_point or text.dtype == torch.bool:
            raise InterpError(f"token windows must be an integer tensor [n, pos], not {text.dtype} {tuple(text.shape)}")
        if len(text) < n_windows:
            raise InterpError(_ran_out(what, len(text), text.shape[1], n_windows))
        return text[:n_windows]
    n_ctx = model.cfg.n_ctx if n_ctx is None else n_ctx
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 2 <= n_ctx <= model.cfg.n_ctx:
        raise InterpError(f"n_ctx must be an integer from 2 to the model's context {model.cfg.n_ctx}, not {n_ctx!r}")
    docs = documents(text, split=split)
    g = torch.Generator().manual_seed(seed)
    docs = [docs[i] for i in torch.randperm(len(docs), generator=g).tolist()]
    windows = list(islice(token_windows(model.tokenizer, docs, n_ctx), n_windows))
    if len(windows) < n_windows:
        raise InterpError(_ran_out(what, len(windows), n_ctx, n_windows))
    out = torch.stack(windows)
    return out[torch.randperm(len(out), generator=g)]


def _ran_out(what: str, have: int, n_ctx: int, need: int) -> str:
    # tuned-lens #113: its loop zips the steps with the data loader and stops silently when the data ends.
    return (f"the {what} text runs out: it gives {have} windows of {n_ctx} tokens, and {need} are needed; "
            "give more text, fewer steps or fewer tokens per step")


def train_tuned_lens(
    model: HookedGPT2,
    text: Any = None,
    *,
    steps: int = 250,
    tokens_per_step: int = 2**11,
    n_ctx: Optional[int] = None,
    batch_size: Optional[int] = None,
    seed: int = 0,
    lr_scale: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    progress: Optional[bool] = None,
) -> TunedLens:
    """Train a tuned lens on ``model``'s own text with tuned-lens's recipe (see the module docs).

    Args:
        model: a :class:`~interp.model.HookedGPT2` (either weight mode: the lens is the same).
        text: None — the bundled model's training split (:func:`interp.corpus.documents`); a path,
            documents, or token windows ``[n, pos]`` (see :func:`training_windows`).
        steps: optimizer steps (tuned-lens: 250).
        tokens_per_step: tokens per step, a multiple of the window length (tuned-lens: 2**18 with its
            Pile data; the default here fits the bundled corpus, 711k tokens).
        n_ctx: window length (default the model's context).
        batch_size: windows per forward pass (gradients are accumulated over a step's passes).
        seed: the text's shuffle; the translators start at zero, so nothing else is random.
        lr_scale, momentum, weight_decay: SGD with Nesterov momentum, ``lr = lr_scale · (1 − momentum)``.
        progress: a progress bar (default: only on a terminal).

    Returns:
        The :class:`TunedLens`, with ``record`` saying how it was trained (saved as ``training.json``).

    Raises:
        InterpError: if the text runs out before ``steps × tokens_per_step`` tokens (checked before
            training starts), or an argument is out of range.

    >>> from interp.testing import planted_model
    >>> model = planted_model()
    >>> windows = torch.randint(1, model.cfg.d_vocab, (8, 16)); windows[:, 0] = 0
    >>> lens = train_tuned_lens(model, windows, steps=4, tokens_per_step=32, progress=False)
    >>> lens.record["steps"], lens.mean_blind()
    (4, True)
    """
    _check_model(model)
    for name, v, low in (("steps", steps, 1), ("tokens_per_step", tokens_per_step, 2), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise InterpError(f"{name} must be an integer ≥ {low}, not {v!r}")
    for name, v, ok in (("lr_scale", lr_scale, lr_scale > 0 if _real(lr_scale) else False),
                        ("momentum", momentum, 0 <= momentum < 1 if _real(momentum) else False),
                        ("weight_decay", weight_decay, weight_decay >= 0 if _real(weight_decay) else False)):
        if not ok:
            raise InterpError(f"{name} out of range: {v!r}")
    window = text.shape[1] if isinstance(text, Tensor) and text.ndim == 2 else (n_ctx or model.cfg.n_ctx)
    per_step, rem = divmod(int(tokens_per_step), int(window))
    if rem or per_step < 1:
        raise InterpError(f"tokens_per_step {tokens_per_step} is not a multiple of the window length {window}")
    if batch_size is None:
        batch_size = min(per_step, max(1, 4096 // window))
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InterpError(f"batch_size must be a positive integer, not {batch_size!r}")
    windows = training_windows(model, text, steps * per_step, n_ctx=n_ctx, seed=seed)

    L, d = model.cfg.n_layers, model.cfg.d_model
    t0 = time.perf_counter()
    # Gradients for the translators even when the caller runs under no_grad or inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        W, b, kl_log = _fit(model, windows, steps, per_step, batch_size, lr_scale, momentum, weight_decay, progress)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        centre = torch.eye(d, dtype=W.dtype, device=W.device) - 1.0 / d
        weight = (W.detach() @ centre).float().cpu()  # rounding aside, A 1 = 0 already: this makes it exact
    from interp import __version__

    tail = np.asarray(kl_log[-max(1, steps // 10):]).mean(0)
    record = {
        "trainer": f"interp {__version__} analyses.tuned_lens.train_tuned_lens", "model": str(model.cfg.name),
        "fold_ln": bool(model.cfg.fold_ln), "text": _describe_text(text), "steps": int(steps),
        "tokens_per_step": int(tokens_per_step), "n_ctx": int(windows.shape[1]), "batch_size": int(batch_size),
        "seed": int(seed), "optimizer": {"name": "SGD", "nesterov": momentum > 0, "lr": lr_scale * (1 - momentum),
                                         "momentum": momentum, "weight_decay": weight_decay,
                                         "schedule": "linear decay to 0, no warm-up", "clip_grad_norm": 1.0},
        "seconds": round(seconds, 3), "kl_first_step": [round(v, 6) for v in kl_log[0]],
        "kl_last_tenth": [round(float(v), 6) for v in tail],
    }
    config = TunedLensConfig(str(model.cfg.name), d, L, unembed_hash=unembed_hash(model))
    return TunedLens(weight, b.detach().float().cpu(), config, record=record, source=f"trained on {model.cfg.name}")


def _fit(model: HookedGPT2, windows: Tensor, steps: int, per_step: int, batch_size: int, lr_scale: float,
         momentum: float, weight_decay: float, progress: Optional[bool]) -> tuple[Tensor, Tensor, list]:
    """The training loop: translators ``(W, b)`` and each step's KL per translator."""
    L, d, dtype = model.cfg.n_layers, model.cfg.d_model, model.cfg.dtype
    train_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    W = torch.zeros(L, d, d, dtype=train_dtype, device=model.cfg.device, requires_grad=True)
    b = torch.zeros(L, d, dtype=train_dtype, device=model.cfg.device, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=lr_scale * (1 - momentum), momentum=momentum, nesterov=momentum > 0,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(L)]
    kl_log: list[list[float]] = []
    bar = tqdm(range(steps), desc="tuned lens", unit="step", disable=None if progress is None else not progress,
               leave=False)
    for step in bar:
        rows = windows[step * per_step:(step + 1) * per_step]
        kl = torch.zeros(L, dtype=torch.float64)
        for chunk in rows.split(batch_size):
            with torch.no_grad():
                logits, cache = model.run(chunk, names=names)
                target = logits.to(train_dtype).log_softmax(-1)
                p = target.exp()
                neg_entropy = (p * target).sum(-1)
            for layer in range(L):
                h = cache[names[layer]].to(train_dtype)
                # The translator reads the centred stream: a fold_ln=True model has no other (module docs).
                x = h + (h - h.mean(-1, keepdim=True)) @ W[layer].T + b[layer]
                z = model.unembed(x.to(dtype)).to(train_dtype)
                # KL(p ‖ softmax z) = Σ p log p − Σ p z + logsumexp z (Σ p = 1): no log-softmax of z kept for backward.
                loss = (neg_entropy - (p * z).sum(-1) + z.logsumexp(-1)).mean()
                (loss * (len(chunk) / per_step)).backward()
                kl[layer] += loss.detach().double() * len(chunk) / per_step
        torch.nn.utils.clip_grad_norm_([W, b], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        kl_log.append(kl.tolist())
        bar.set_postfix_str(f"KL {kl.mean():.4f}")
    bar.close()
    return W, b, kl_log


def _real(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


def _describe_text(text: Any) -> str:
    if text is None:
        return "interp.corpus: the bundled corpus, train split"
    if isinstance(text, Tensor):
        return f"token windows {tuple(text.shape)}"
    if isinstance(text, (str, os.PathLike)):
        return str(text)
    return "documents given in Python"
