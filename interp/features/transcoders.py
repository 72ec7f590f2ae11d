"""Transcoder sets on disk: circuit-tracer's per-layer format and SAELens's, read into :class:`~interp.features.SAE` objects.

An attribution graph (:mod:`interp.features.graph`) replaces every MLP of the model by a
transcoder, one per layer. They come from three places, all read by :func:`load_transcoders`:

* **circuit-tracer** (0.5): a directory with ``config.yaml`` (``model_kind: transcoder_set``,
  ``feature_input_hook``, ``feature_output_hook``, ``transcoders``: one file per layer) and
  ``layer_{i}.safetensors`` holding ``W_enc`` ``[d_transcoder, d_model]`` (the transpose of
  SAELens's), ``W_dec`` ``[d_transcoder, d_model]``, ``b_enc``, ``b_dec``, optionally ``W_skip``
  (applied as ``x @ W_skip.T``) and a JumpReLU's ``activation_function.threshold``. Its models are
  loaded raw (TransformerLens ``fold_ln=False``), so its transcoders read the raw MLP input:
  ``mlp.hook_in`` is interp's ``blocks.{L}.ln2.hook_normalized`` and ``mlp.hook_out`` is
  ``blocks.{L}.hook_mlp_out``. A directory of ``layer_*.safetensors`` without a config is read the
  same way.
* **SAELens** / interp (:meth:`SAE.save`): a directory of per-layer SAE directories (``cfg.json`` +
  ``sae_weights.safetensors`` each), in any names; each says its hook points, and so its layer.

:func:`save_circuit_tracer` writes circuit-tracer's format back (so interp's transcoders can be
opened by circuit-tracer), and :func:`fold_transcoder` turns a transcoder trained on a raw model
into the same function on the folded model, exactly (it needs the raw model's LayerNorm gains,
which a folded model no longer has).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import InterpError
from .sae import SAE, SAEConfig, CFG_FILENAME

__all__ = ["load_transcoders", "bundled_transcoders", "save_circuit_tracer", "fold_transcoder", "check_transcoders", "layer_of_transcoder"]

PathLike = Union[str, os.PathLike]
#: circuit-tracer's hook names (TransformerLens blocks' sub-hooks) -> interp's, per layer.
CIRCUIT_TRACER_HOOKS = {
    "mlp.hook_in": "blocks.{}.ln2.hook_normalized",
    "ln2.hook_normalized": "blocks.{}.ln2.hook_normalized",
    "hook_resid_mid": "blocks.{}.hook_resid_mid",
    "hook_mlp_in": "blocks.{}.hook_mlp_in",
    "mlp.hook_out": "blocks.{}.hook_mlp_out",
    "hook_mlp_out": "blocks.{}.hook_mlp_out",
}
#: Where a transcoder replacing MLP L may read (the MLP's input, or the residual stream it is computed from).
INPUT_HOOKS = ("blocks.{}.ln2.hook_normalized", "blocks.{}.hook_mlp_in", "blocks.{}.hook_resid_mid")
OUTPUT_HOOK = "blocks.{}.hook_mlp_out"


def layer_of_transcoder(sae: SAE) -> int:
    """The layer whose MLP ``sae`` replaces (from its hook names), or an :class:`InterpError` saying why it cannot.

    >>> cfg = SAEConfig("standard", d_in=4, d_sae=8, hook_name="blocks.3.ln2.hook_normalized",
    ...                 hook_name_out="blocks.3.hook_mlp_out", apply_b_dec_to_input=False)
    >>> layer_of_transcoder(SAE(cfg))
    3
    """
    if not isinstance(sae, SAE):
        raise InterpError(f"a transcoder must be an interp.features.SAE, not {type(sae).__name__}")
    cfg = sae.cfg
    if not cfg.is_transcoder:
        raise InterpError(f"{cfg.hook_name or 'this SAE'}: an SAE, not a transcoder (an attribution graph replaces "
                          "each MLP by a transcoder: hook_name = the MLP's input, hook_name_out = its output)")
    m = re.fullmatch(r"blocks\.(\d+)\.hook_mlp_out", cfg.hook_name_out or "")
    if not m:
        raise InterpError(f"transcoder writes {cfg.hook_name_out!r}: a graph needs transcoders that write "
                          "blocks.L.hook_mlp_out")
    layer = int(m.group(1))
    if cfg.hook_name not in [h.format(layer) for h in INPUT_HOOKS]:
        allowed = ", ".join(h.format(layer) for h in INPUT_HOOKS)
        raise InterpError(f"transcoder of MLP {layer} reads {cfg.hook_name!r}: it must read the MLP's input ({allowed})")
    if cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        raise InterpError(f"transcoder of MLP {layer} normalises its input ({cfg.normalize_activations}): "
                          "not linear in it, so it has no attribution graph")
    return layer


def check_transcoders(model, transcoders: Sequence[SAE]) -> list[SAE]:
    """One transcoder per layer of ``model``, in layer order, each of the model's width (else an InterpError)."""
    by_layer: dict[int, SAE] = {}
    for sae in transcoders:
        layer = layer_of_transcoder(sae)
        if layer in by_layer:
            raise InterpError(f"two transcoders for MLP {layer}")
        if layer >= model.cfg.n_layers:
            raise InterpError(f"transcoder for MLP {layer}: {model.cfg.name} has {model.cfg.n_layers} layers")
        if sae.d_in != model.cfg.d_model or sae.d_out != model.cfg.d_model:
            raise InterpError(f"transcoder of MLP {layer} maps {sae.d_in} -> {sae.d_out} dimensions; "
                              f"{model.cfg.name} has d_model {model.cfg.d_model}")
        by_layer[layer] = sae
    missing = [i for i in range(model.cfg.n_layers) if i not in by_layer]
    if missing:
        raise InterpError(f"no transcoder for MLP {', '.join(map(str, missing))}: a graph replaces every MLP "
                          f"({model.cfg.n_layers} layers)")
    return [by_layer[i] for i in range(model.cfg.n_layers)]


# ---------------------------------------------------------------------------- reading
def bundled_transcoders(name: str) -> Optional[Path]:
    """The directory of the transcoders a bundled model ships (``"interp-tiny"``), or None.

    >>> bundled_transcoders("interp-tiny").name, bundled_transcoders("gpt2")
    ('transcoders', None)
    """
    from ..loading import BUNDLED_DIR

    path = BUNDLED_DIR / name / "transcoders"
    return path if "/" not in name and path.is_dir() else None


def load_transcoders(path: PathLike, *, dtype: Optional[str] = None, device: str = "cpu") -> list[SAE]:
    """Read a transcoder set (see the module docs for the formats) as a list of SAEs in layer order.

    ``path``: a directory, or the name of a bundled model that ships transcoders
    (``load_transcoders("interp-tiny")``, :func:`bundled_transcoders`).

    >>> import tempfile
    >>> saes = [SAE(SAEConfig("standard", d_in=4, d_sae=8, hook_name=f"blocks.{i}.ln2.hook_normalized",
    ...                       hook_name_out=f"blocks.{i}.hook_mlp_out", apply_b_dec_to_input=False, fold_ln=False))
    ...         for i in range(2)]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = load_transcoders(save_circuit_tracer(saes, d))
    >>> [layer_of_transcoder(s) for s in back], bool((back[1].W_enc == saes[1].W_enc).all())
    ([0, 1], True)
    """
    if not Path(path).exists():
        path = bundled_transcoders(str(path)) or path  # a bundled model's name: its own transcoders
    path = Path(path)
    if not path.is_dir():
        raise InterpError(f"transcoders {path}: not a directory")
    if (path / "config.yaml").is_file() or list(path.glob("layer_*.safetensors")):
        saes = _read_circuit_tracer(path, dtype, device)
    else:
        dirs = sorted(p for p in path.iterdir() if (p / CFG_FILENAME).is_file())
        if not dirs:
            raise InterpError(f"transcoders {path}: neither circuit-tracer's format (config.yaml, layer_*.safetensors) "
                              f"nor SAE directories ({CFG_FILENAME} + weights) inside")
        saes = [SAE.load(p, dtype=dtype, device=device) for p in dirs]
    saes.sort(key=layer_of_transcoder)
    layers = [layer_of_transcoder(s) for s in saes]
    if len(set(layers)) != len(layers):
        raise InterpError(f"transcoders {path}: two transcoders for one layer ({layers})")
    return saes


def _read_circuit_tracer(path: Path, dtype: Optional[str], device: str) -> list[SAE]:
    from safetensors import safe_open

    conf: dict = {}
    if (path / "config.yaml").is_file():
        import yaml

        try:
            conf = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise InterpError(f"{path / 'config.yaml'}: not YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(conf, dict):
            raise InterpError(f"{path / 'config.yaml'}: expected a mapping")
        kind = conf.get("model_kind", "transcoder_set")
        if kind != "transcoder_set":
            raise InterpError(f"{path / 'config.yaml'}: model_kind {kind!r}; interp reads per-layer transcoders "
                              "(transcoder_set), not cross-layer transcoders")
    hooks = []
    for key, default in (("feature_input_hook", "mlp.hook_in"), ("feature_output_hook", "mlp.hook_out")):
        name = conf.get(key, default)
        if name not in CIRCUIT_TRACER_HOOKS:
            raise InterpError(f"{path / 'config.yaml'}: {key} {name!r} is not one interp reads "
                              f"({', '.join(CIRCUIT_TRACER_HOOKS)})")
        hooks.append(CIRCUIT_TRACER_HOOKS[name])
    if "transcoders" in conf:
        files = []
        for f in conf["transcoders"]:
            if str(f).startswith("hf://"):
                raise InterpError(f"{path / 'config.yaml'}: {f} is on the Hugging Face hub; download the files and "
                                  "list local paths")
            files.append(path / f)  # relative paths are relative to the config's directory
    else:
        files = sorted(path.glob("layer_*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    saes = []
    for layer, file in enumerate(files):
        if not Path(file).is_file():
            raise InterpError(f"transcoders {path}: {file} is missing")
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; the user needs one line
            raise InterpError(f"{file}: not a safetensors file ({e})") from None
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(t)
        if missing:
            raise InterpError(f"{file}: no {', '.join(sorted(missing))}")
        n, d = t["W_enc"].shape
        threshold = t.get("activation_function.threshold", t.get("threshold"))
        if threshold is not None and bool((threshold < 0).any()):
            # circuit-tracer's JumpReLU passes x > threshold even when negative; SAELens's (interp's) zeroes x ≤ 0.
            raise InterpError(f"{file}: negative JumpReLU thresholds (circuit-tracer and SAELens disagree below 0)")
        cfg = SAEConfig(
            "jumprelu" if threshold is not None else "standard", d_in=d, d_sae=n, d_out=t["W_dec"].shape[1],
            hook_name=hooks[0].format(layer), hook_name_out=hooks[1].format(layer), apply_b_dec_to_input=False,
            skip="W_skip" in t, dtype=dtype or str(t["W_enc"].dtype).replace("torch.", ""),
            model_name=conf.get("model_name"), fold_ln=False,  # circuit-tracer runs models raw
            metadata={"format": "circuit-tracer", "scan": conf.get("scan"), "file": Path(file).name},
        )
        sae = SAE(cfg, device="meta")
        values = {"W_enc": t["W_enc"].T, "W_dec": t["W_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"]}
        if threshold is not None:
            values["threshold"] = threshold
        if "W_skip" in t:
            values["W_skip"] = t["W_skip"].T  # circuit-tracer applies x @ W_skip.T
        for name, value in values.items():
            setattr(sae, name, torch.nn.Parameter(value.to(cfg.torch_dtype).to(device).contiguous(), requires_grad=False))
        saes.append(sae)
    return saes


# ---------------------------------------------------------------------------- writing
def save_circuit_tracer(transcoders: Sequence[SAE], path: PathLike, *, scan: Optional[str] = None) -> Path:
    """Write ``transcoders`` (standard or jumprelu, per layer) in circuit-tracer's format into directory ``path``.

    circuit-tracer runs its models raw, so the transcoders must read and write the raw model's
    activations (``cfg.fold_ln`` False) at ``ln2.hook_normalized`` → ``hook_mlp_out``.
    """
    from safetensors.torch import save_file

    from ..export import atomic_path

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InterpError(f"cannot write transcoders to {path}: it is a file")
    saes = sorted(transcoders, key=layer_of_transcoder)
    for sae in saes:
        c = sae.cfg
        if c.architecture not in ("standard", "jumprelu") or c.apply_b_dec_to_input or c.rescale_acts_by_decoder_norm:
            raise InterpError(f"{c.hook_name_out}: circuit-tracer's transcoders are ReLU or JumpReLU on the raw input, "
                              f"not {c.architecture}")
        if not c.hook_name.endswith("ln2.hook_normalized") or c.fold_ln:
            raise InterpError(f"{c.hook_name_out}: circuit-tracer's transcoders read the raw model's ln2 output "
                              f"(fold_ln=False), not {c.hook_name} with fold_ln={c.fold_ln}")
    layers = [layer_of_transcoder(s) for s in saes]
    if layers != list(range(len(saes))):
        raise InterpError(f"circuit-tracer needs one transcoder per layer from 0, got layers {layers}")
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for layer, sae in enumerate(saes):
        t = {"W_enc": sae.W_enc.T, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
        if sae.threshold is not None:
            t["activation_function.threshold"] = sae.threshold
        if sae.W_skip is not None:
            t["W_skip"] = sae.W_skip.T
        name = f"layer_{layer}.safetensors"
        with atomic_path(path / name) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(tmp))
        files.append(name)
    conf = {"model_name": saes[0].cfg.model_name or "", "model_kind": "transcoder_set",
            "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out",
            "scan": scan or f"interp-{path.name}", "transcoders": files}
    import yaml

    with atomic_path(path / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- weight modes
def fold_transcoder(sae: SAE, raw_model) -> SAE:
    """A transcoder trained on the raw model (``fold_ln=False``), rewritten for the folded model: the same function.

    On the folded model ``ln2.hook_normalized`` has lost LayerNorm's gain ``w`` and bias ``b`` and
    ``hook_mlp_out`` its mean over d_model, so the encoder takes ``x·w + b`` in
    (``W_enc ← diag(w)·W_enc``, ``b_enc ← b_enc + b·W_enc``; the skip connection likewise) and the
    decoder's output is centred. ``raw_model`` supplies ``w`` and ``b`` (a folded model has
    thrown them away). Exact: the folded graph equals the raw one (tests/test_graph_parity.py).
    """
    layer = layer_of_transcoder(sae)
    c = sae.cfg
    if raw_model.cfg.fold_ln:
        raise InterpError("fold_transcoder needs the raw model (fold_ln=False): it holds LayerNorm's gains")
    if c.fold_ln is not False:
        raise InterpError(f"transcoder of MLP {layer} has fold_ln={c.fold_ln}: fold_transcoder converts raw ones")
    if c.apply_b_dec_to_input or c.rescale_acts_by_decoder_norm:
        raise InterpError(f"transcoder of MLP {layer}: fold_transcoder handles inputs read without b_dec")
    with torch.no_grad():
        dt = sae.dtype
        W_enc, b_enc = sae.W_enc, sae.b_enc
        W_skip = sae.W_skip
        b_extra = None
        if c.hook_name.endswith("ln2.hook_normalized"):
            w, b = (t.to(dt) for t in raw_model.ln_weights("ln2", layer))
            b_enc = b_enc + b @ W_enc
            W_enc = w[:, None] * W_enc
            if W_skip is not None:
                b_extra = b @ W_skip
                W_skip = w[:, None] * W_skip
        elif c.hook_name.endswith(("hook_resid_mid", "hook_mlp_in")):
            # The folded residual stream is the raw one centred: an encoder reading it raw needs the mean
            # a folded model no longer has.
            raise InterpError(f"transcoder of MLP {layer} reads {c.hook_name} raw: the folded model has lost its mean; "
                              "use the raw model (fold_ln=False)")
        centre = lambda m: m - m.mean(-1, keepdim=True)  # noqa: E731
        b_dec = sae.b_dec + (b_extra if b_extra is not None else 0)
        new = SAE(replace(c, fold_ln=True), device="meta")
        values = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": centre(sae.W_dec), "b_dec": centre(b_dec)}
        if sae.threshold is not None:
            values["threshold"] = sae.threshold
        if W_skip is not None:
            values["W_skip"] = centre(W_skip)
        for name, value in values.items():
            setattr(new, name, torch.nn.Parameter(value.detach().clone().contiguous(), requires_grad=False))
    return new


def describe(transcoders: Sequence[SAE]) -> str:
    """One line: how many transcoders, their architecture and width (for the CLI and the graph's metadata)."""
    archs = sorted({s.architecture + ("+skip" if s.W_skip is not None else "") for s in transcoders})
    widths = sorted({s.d_sae for s in transcoders})
    return f"{len(transcoders)} transcoders ({'/'.join(archs)}, d_transcoder {'/'.join(map(str, widths))})"

