"""``interp.load``: one call from a name, a directory or a model object to a HookedGPT2.

A GPT-2 directory is read by interp itself (:mod:`interp.checkpoint`: config.json and the
safetensors bytes straight into place; :mod:`interp.tokenizer`: tokenizer.json through
``tokenizers``) and folded by :mod:`interp.folding` — no ``transformers`` or
TransformerLens import, so a small model loads in a fraction of a second. TransformerLens's
``TransformerBridge`` remains the reference: ``model.bridge`` boots one over the same
checkpoint on first use and checks that its weights are the model's.

Weights are read only from safetensors files, or from a ``pytorch_model.bin`` with
``torch.load(weights_only=True)``: loading a model never unpickles arbitrary code.
A checkpoint must hold exactly the tensors its config.json implies (no missing layer filled
with random numbers, no extra layer dropped); library warnings and progress bars never reach
the user.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Union

import torch

from . import checkpoint as ckpt
from .errors import InterpError
from .model import HookedGPT2, ModelConfig

#: GPT-2 checkpoints on the Hugging Face hub (the normal path with a network).
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
BUNDLED_DIR = Path(__file__).parent / "bundled"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The files of a hub repository that loading reads.
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package (loadable offline by name)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def load(
    spec: Union[str, os.PathLike, Any],
    *,
    device: str = "cpu",
    dtype: Union[str, torch.dtype] = "float32",
    fold_ln: Any = True,  # a bool, checked below with a message naming the value (not by the runtime checker)
    tokenizer: Any = None,
) -> HookedGPT2:
    """Load a GPT-2 as a :class:`HookedGPT2`.

    Args:
        spec: a hub name (``"gpt2"``, ``"gpt2-medium"``, ``"gpt2-large"``, ``"gpt2-xl"``,
            ``"distilgpt2"`` or ``"org/name"``), a local Hugging Face directory (config.json,
            model.safetensors and tokenizer files), the name of a bundled model
            (``"interp-tiny"``), or a ``transformers`` GPT-2 model object (read, never modified).
        device: torch device, e.g. ``"cpu"``.
        dtype: ``"float32"`` (default), ``"float64"``, ``"bfloat16"`` or ``"float16"``.
        fold_ln: ``True`` or ``False``. True folds LayerNorm into the weights and centres
            the writing weights (TransformerLens's processing, with value biases kept per
            head; what circuit analyses want). Logits then differ from Hugging Face's by a
            constant per position; log-probs are equal, and so is everything a head writes
            (see :class:`~interp.model.HookedGPT2`). ``False`` keeps Hugging Face's weights
            and logits exactly.
        tokenizer: a tokenizer (``transformers`` or :class:`interp.tokenizer.Tokenizer`);
            needed with a model object whose tokenizer cannot be found offline.

    >>> from interp.testing import planted_hf_model
    >>> hf_model, tok = planted_hf_model()
    >>> load(hf_model, tokenizer=tok).cfg.n_layers
    2
    """
    if not isinstance(fold_ln, bool):
        raise InterpError(f"fold_ln must be True or False, not {fold_ln!r}")
    dev = _device(device)
    dt = _dtype(dtype)
    source, shape, tok, name, boot = _resolve(spec, tokenizer, dt, dev, fold_ln)
    from . import folding

    # Each weight is folded as it is read (one pass from the file's pages), embeddings and biases
    # just after, while they are still in the CPU's caches. Reading
    # (a copy out of the page cache) and folding (a few fused passes) use torch's threads: on two
    # cores that is ~1.4x faster than one thread, and threads that run on separate Python threads
    # side by side were slower still (measured for `interp bench --only startup`).
    weights = ckpt.read_weights(source, shape, dtype=dt, device=dev, where=name,
                                after_embeddings=folding.fold_embeddings if fold_ln else None,
                                write=folding.write_folded if fold_ln else None,
                                after_layer=folding.finish_layer if fold_ln else None)
    del source
    cfg = ModelConfig(
        name=name, n_layers=shape.n_layers, n_heads=shape.n_heads, d_model=shape.d_model, d_head=shape.d_head,
        d_mlp=shape.d_mlp, d_vocab=shape.d_vocab, n_ctx=shape.n_ctx, eps=shape.eps, act_fn=shape.act_fn,
        fold_ln=fold_ln, dtype=dt, device=dev,
    )
    return HookedGPT2(weights, cfg, tok, bridge=boot)


def _device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InterpError(f"device {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InterpError(f"device {device!r} requested but CUDA is not available on this machine; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InterpError(f"device {device!r} requested but MPS is not available on this machine; use device='cpu'")
    return dev


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise InterpError(f"dtype {dtype!r} not supported: use one of {', '.join(DTYPES)}")


def _resolve(spec, tokenizer, dtype, device, fold_ln):
    """``(source of tensors, GPT2Shape, tokenizer, name, bridge factory)`` for any spec."""
    if _is_hf_model(spec):
        return _from_object(spec, tokenizer, dtype, device, fold_ln)
    if not isinstance(spec, (str, os.PathLike)):
        raise InterpError(
            f"cannot load a {type(spec).__name__}: give a hub name, a local directory, a bundled model name "
            "or a transformers GPT-2 model"
        )
    spec = os.fspath(spec)
    if not spec:
        raise InterpError("model spec is empty: give a hub name such as 'gpt2' or a local directory")
    if spec in bundled_models():
        return _from_directory(BUNDLED_DIR / spec, spec, tokenizer, dtype, device, fold_ln)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _from_directory(path, str(path), tokenizer, dtype, device, fold_ln)
    if path.exists():
        raise InterpError(f"{spec} is a file; give the directory that holds config.json and model.safetensors")
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise InterpError(f"model directory {spec} does not exist")
    if spec not in HUB_NAMES and "/" not in spec:
        known = ", ".join([*HUB_NAMES, *bundled_models()])
        raise InterpError(f"unknown model {spec!r}: use one of {known}, an 'org/name' hub id, or a local directory")
    return _from_directory(_hub_snapshot(spec), spec, tokenizer, dtype, device, fold_ln)


def _is_hf_model(spec) -> bool:
    # Without importing transformers: a model object comes from it, so it is already imported.
    mod = sys.modules.get("transformers")
    return mod is not None and isinstance(spec, mod.PreTrainedModel)


# ---------------------------------------------------------------------------- a directory
def _from_directory(path: Path, name: str, tokenizer, dtype, device, fold_ln):
    shape = ckpt.read_config(path)
    source = _weights_source(path)
    if tokenizer is None:
        from .tokenizer import Tokenizer

        tok = Tokenizer.from_directory(path)
    else:
        tok = _prepare_tokenizer(tokenizer)

    def boot():
        hf_model = _hf_model_from_directory(path, dtype, device)
        hf_tok = tokenizer if tokenizer is not None else _hf_tokenizer_for_directory(path, tok)
        return _boot_bridge(hf_model, hf_tok, name, dtype, device, fold_ln)

    return source, shape, tok, name, boot


def _weights_source(path: Path):
    safetensors = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    pickle = path / "pytorch_model.bin"
    if safetensors.is_file() or index.is_file():
        culprit = safetensors if safetensors.is_file() else index
        try:
            return ckpt.safetensors_source(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InterpError(f"cannot load weights from {culprit}: {type(e).__name__}: {_first_line(e)}") from None
    if pickle.is_file():
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) file cannot be memory-mapped
            state = None
        except Exception as e:  # noqa: BLE001 - the unpickler raises many kinds
            raise InterpError(f"cannot load weights from {pickle} (read with weights_only=True): {_one_line(e)}") from None
        if state is None:
            try:
                state = torch.load(pickle, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise InterpError(
                    f"cannot load weights from {pickle} (read with weights_only=True): {_one_line(e)}"
                ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InterpError(f"cannot load weights from {pickle}: not a state dict of tensors")
        return ckpt.tensors_source(state)
    raise InterpError(f"{path} has no weights: expected model.safetensors (or pytorch_model.bin)")


class HubUnavailable(InterpError):
    """A hub model that is not in the local cache, with no network to fetch it."""

    def __init__(self, name: str, how: str = ""):
        self.name = name
        how = how or f"interp.load('/path/to/{name}')"
        super().__init__(f"{name!r} is not in the local Hugging Face cache and the hub cannot be reached (offline); "
                         f"download it on a machine with a network and pass its directory: {how} (docs/models.md)")


def _hub_snapshot(name: str) -> Path:
    """The local directory of a hub repository's files (downloaded if needed and possible)."""
    try:
        with _quiet(uses_transformers=False, hub_bars=True):
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - the hub client raises many kinds
        import huggingface_hub.constants as hub

        offline = hub.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or any(
            w in f"{type(e).__name__} {e}".lower() for w in ("connect", "offline", "localentrynotfound")
        )
        if offline:
            raise HubUnavailable(name) from None
        raise InterpError(f"cannot load {name!r} from the Hugging Face hub: {_one_line(e)}") from None


# ---------------------------------------------------------------------------- a model object
def _from_object(spec, tokenizer, dtype, device, fold_ln):
    where = "the model object"
    shape = ckpt.parse_config(spec.config.to_dict(), where)
    name = getattr(spec.config, "_name_or_path", "") or "gpt2-like"
    tok = _prepare_tokenizer(tokenizer if tokenizer is not None else _tokenizer_for_object(name))
    source = ckpt.tensors_source(spec.state_dict())

    def boot():
        # The bridge wraps the modules it is given: never let that touch the caller's model.
        hf_model = copy.deepcopy(spec).to(device=device, dtype=dtype).eval()
        hf_model.config._attn_implementation = "eager"
        return _boot_bridge(hf_model, tokenizer if tokenizer is not None else tok, name, dtype, device, fold_ln)

    return source, shape, tok, where, boot


def _tokenizer_for_object(name: str):
    try:
        with _quiet():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001
        raise InterpError(
            f"no tokenizer found offline for the model object ({name!r}): pass tokenizer=..."
        ) from None


def _prepare_tokenizer(tok):
    """A private copy of a Hugging Face tokenizer that TransformerLens may adjust."""
    if not hasattr(tok, "init_kwargs"):  # interp's own Tokenizer: nothing to adjust
        return tok
    tok = copy.deepcopy(tok)
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token or "<|endoftext|>"
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    # We always tokenize with add_special_tokens=False and prepend BOS ourselves, so
    # telling TransformerLens the tokenizer already adds BOS keeps it from re-loading it.
    tok.init_kwargs["add_bos_token"] = True
    return tok


# ---------------------------------------------------------------------------- the bridge (on demand)
def _boot_bridge(hf_model, hf_tok, name: str, dtype, device, fold_ln: bool):
    with _quiet():
        from transformer_lens.model_bridge import TransformerBridge

        if not hasattr(hf_tok, "init_kwargs"):
            hf_tok = hf_tok.to_hf()
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=_prepare_tokenizer(hf_tok), device=device, dtype=dtype
        )
        if fold_ln:
            # Value biases stay in each head's b_V: folded into b_O, a head's z would lack them and
            # "z = 0" would not silence it (see HookedGPT2's docstring: one meaning in both modes).
            bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False)
    return bridge


def _hf_model_from_directory(path: Path, dtype, device):
    """Hugging Face's ``GPT2LMHeadModel`` of a directory, its weights read by :mod:`interp.checkpoint`."""
    with _quiet():
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config.from_pretrained(path, local_files_only=True)
        config._attn_implementation = "eager"
        with torch.device("meta"):
            model = GPT2LMHeadModel(config)
        state = {}
        for name, (shape, read) in _weights_source(path).items():
            key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
            if key in model.state_dict():
                state[key] = torch.empty(shape, dtype=dtype)
                read(state[key])
        if config.tie_word_embeddings:
            state["lm_head.weight"] = state["transformer.wte.weight"]
        model.load_state_dict(state, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.tie_weights()
    return model.to(device).eval()


def _hf_tokenizer_for_directory(path: Path, tok):
    try:
        with _quiet():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception:  # noqa: BLE001 - fall back to our own, converted
        return tok.to_hf()


@contextlib.contextmanager
def _quiet(uses_transformers: bool = True, hub_bars: bool = False):
    """No library warnings, log lines or progress bars ("Loading weights: 100%|…", load reports).

    ``uses_transformers``: the block uses transformers (imported here to silence it first).
    ``hub_bars``: keep the hub's download bars, on a terminal only.
    """
    hf_logging = None
    if uses_transformers:
        from transformers.utils import logging as hf_logging
    hub = None
    if uses_transformers or "huggingface_hub" in sys.modules or not hub_bars:
        import huggingface_hub.utils as hub
    hub_was_on = hub is not None and not hub.are_progress_bars_disabled()
    if hub is not None and not (hub_bars and sys.stderr.isatty()):
        hub.disable_progress_bars()
    state = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) if hf_logging else None
    if hf_logging:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
        if state:
            hf_logging.set_verbosity(state[0])
            if state[1]:
                hf_logging.enable_progress_bar()
        if hub_was_on:
            hub.enable_progress_bars()


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {_first_line(e)}"


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else ""


__all__ = ["load", "bundled_models", "HUB_NAMES"]
