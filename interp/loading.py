"""``interp.load``: one call from a name, a directory or a model object to a HookedGPT2.

Weights are read only from safetensors files, or from a ``pytorch_model.bin`` with
``torch.load(weights_only=True)``: loading a model never unpickles arbitrary code.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Union

import torch

from .errors import InterpError
from .model import HookedGPT2, ModelConfig

#: GPT-2 checkpoints on the Hugging Face hub (the normal path with a network).
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
BUNDLED_DIR = Path(__file__).parent / "bundled"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    fold_ln: bool = True,
    tokenizer: Any = None,
) -> HookedGPT2:
    """Load a GPT-2 as a :class:`HookedGPT2`.

    Args:
        spec: a hub name (``"gpt2"``, ``"gpt2-medium"``, …, or ``"org/name"``), a
            local Hugging Face directory (config.json, model.safetensors and
            tokenizer files), the name of a bundled model (``"interp-tiny"``), or a
            ``transformers`` GPT-2 model object (copied, never modified).
        device: torch device, e.g. ``"cpu"``.
        dtype: ``"float32"`` (default), ``"float64"``, ``"bfloat16"`` or ``"float16"``.
        fold_ln: fold LayerNorm into the weights and centre the writing weights
            (TransformerLens's processing, with value biases kept per head; what
            circuit analyses want). Logits then differ from Hugging Face's by a
            constant per position; log-probs are equal, and so is everything a
            head writes (see :class:`~interp.model.HookedGPT2`). ``False`` keeps
            Hugging Face's weights and logits exactly.
        tokenizer: a ``transformers`` tokenizer; needed with a model object whose
            tokenizer cannot be found offline.

    >>> from interp.testing import planted_hf_model
    >>> hf_model, tok = planted_hf_model()
    >>> load(hf_model, tokenizer=tok).cfg.n_layers
    2
    """
    dev = _device(device)
    dt = _dtype(dtype)
    hf_model, tok, name = _hf_model_and_tokenizer(spec, tokenizer, dt)
    hf_model = hf_model.to(device=dev, dtype=dt).eval()
    cfg = _config(hf_model.config, name, fold_ln, dt, dev)
    tok = _prepare_tokenizer(tok)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tok, device=dev, dtype=dt)
    if fold_ln:
        # Value biases stay in each head's b_V: folded into b_O, a head's z would lack them and
        # "z = 0" would not silence it (see HookedGPT2's docstring: one meaning in both modes).
        bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False)
    return HookedGPT2(bridge, cfg)


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


def _hf_model_and_tokenizer(spec, tokenizer, dtype):
    """Resolve ``spec`` to (transformers model, tokenizer, name)."""
    from transformers import PreTrainedModel

    if isinstance(spec, PreTrainedModel):
        _check_gpt2(spec.config, "the model object")
        name = getattr(spec.config, "_name_or_path", "") or "gpt2-like"
        tok = tokenizer if tokenizer is not None else _tokenizer_for_object(name)
        # The bridge wraps the modules it is given; never let that touch the caller's model.
        return copy.deepcopy(spec), tok, name
    if not isinstance(spec, (str, os.PathLike)):
        raise InterpError(
            f"cannot load a {type(spec).__name__}: give a hub name, a local directory, a bundled model name "
            "or a transformers GPT-2 model"
        )
    spec = os.fspath(spec)
    if not spec:
        raise InterpError("model spec is empty: give a hub name such as 'gpt2' or a local directory")
    if spec in bundled_models():
        return (*_from_directory(BUNDLED_DIR / spec, tokenizer, dtype), spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return (*_from_directory(path, tokenizer, dtype), str(path))
    if path.exists():
        raise InterpError(f"{spec} is a file; give the directory that holds config.json and model.safetensors")
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise InterpError(f"model directory {spec} does not exist")
    if spec not in HUB_NAMES and "/" not in spec:
        known = ", ".join([*HUB_NAMES, *bundled_models()])
        raise InterpError(f"unknown model {spec!r}: use one of {known}, an 'org/name' hub id, or a local directory")
    return (*_from_hub(spec, tokenizer, dtype), spec)


def _from_directory(path: Path, tokenizer, dtype):
    from transformers import AutoConfig, AutoTokenizer, GPT2LMHeadModel

    if not (path / "config.json").is_file():
        raise InterpError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds here
        raise InterpError(f"cannot read {path / 'config.json'}: {_one_line(e)}") from None
    _check_gpt2(config, str(path))
    config._attn_implementation = "eager"
    model = _load_weights(path, config, GPT2LMHeadModel, dtype)
    if tokenizer is None:
        if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            raise InterpError(f"{path} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise InterpError(f"cannot read the tokenizer in {path}: {_one_line(e)}") from None
    return model, tokenizer


def _load_weights(path: Path, config, model_class, dtype):
    safetensors = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    pickle = path / "pytorch_model.bin"
    if safetensors.is_file() or index.is_file():
        try:
            with _quiet_transformers():
                return model_class.from_pretrained(
                    path, config=config, local_files_only=True, use_safetensors=True, dtype=dtype
                )
        except Exception as e:  # noqa: BLE001
            culprit = safetensors if safetensors.is_file() else index
            raise InterpError(f"cannot load weights from {culprit}: {_one_line(e)}") from None
    if pickle.is_file():
        try:
            state = torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise InterpError(f"cannot load weights from {pickle} (read with weights_only=True): {_one_line(e)}") from None
        model = model_class(config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias", "lm_head.weight"))]
        if missing or unexpected:
            raise InterpError(f"{pickle} does not match the config: missing {missing[:3]}, unexpected {unexpected[:3]}")
        model.tie_weights()
        return model
    raise InterpError(f"{path} has no weights: expected model.safetensors (or pytorch_model.bin)")


def _from_hub(name: str, tokenizer, dtype):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    try:
        with _quiet_transformers():
            model = GPT2LMHeadModel.from_pretrained(name, use_safetensors=True, attn_implementation="eager", dtype=dtype)
        _check_gpt2(model.config, name)
        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(name)
    except InterpError:
        raise
    except Exception as e:  # noqa: BLE001
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or "connect" in str(e).lower()
        if offline:
            raise InterpError(
                f"{name!r} is not in the local Hugging Face cache and the hub cannot be reached (offline); "
                f"download it on a machine with a network and pass its directory: interp.load('/path/to/{name}')"
            ) from None
        raise InterpError(f"cannot load {name!r} from the Hugging Face hub: {_one_line(e)}") from None
    return model, tok


def _tokenizer_for_object(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception:  # noqa: BLE001
        raise InterpError(
            f"no tokenizer found offline for the model object ({name!r}): pass tokenizer=..."
        ) from None


def _check_gpt2(config, where: str) -> None:
    if getattr(config, "model_type", None) != "gpt2":
        raise InterpError(f"{where} is a {getattr(config, 'model_type', 'unknown')!r} model; interp supports GPT-2")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) or not getattr(config, "scale_attn_weights", True):
        raise InterpError(f"{where}: non-standard attention scaling is not supported")


def _prepare_tokenizer(tok):
    """A private copy the bridge may adjust (TransformerLens re-reads ``name_or_path``)."""
    tok = copy.deepcopy(tok)
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token or "<|endoftext|>"
    tok.init_kwargs.setdefault("name_or_path", getattr(tok, "name_or_path", ""))
    # We always tokenize with add_special_tokens=False and prepend BOS ourselves, so
    # telling TransformerLens the tokenizer already adds BOS keeps it from re-loading it.
    tok.init_kwargs["add_bos_token"] = True
    return tok


def _config(hf_config, name: str, fold_ln: bool, dtype, device) -> ModelConfig:
    return ModelConfig(
        name=name,
        n_layers=hf_config.n_layer,
        n_heads=hf_config.n_head,
        d_model=hf_config.n_embd,
        d_head=hf_config.n_embd // hf_config.n_head,
        d_mlp=hf_config.n_inner or 4 * hf_config.n_embd,
        d_vocab=hf_config.vocab_size,
        n_ctx=hf_config.n_positions,
        eps=hf_config.layer_norm_epsilon,
        act_fn=hf_config.activation_function,
        fold_ln=fold_ln,
        dtype=dtype,
        device=device,
    )


@contextlib.contextmanager
def _quiet_transformers():
    """No "Loading weights" progress bar for a model that loads in a second."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


__all__ = ["load", "bundled_models", "HUB_NAMES"]
