"""Hook-point names: TransformerLens's vocabulary, resolved and checked in one place.

A hook point is a named activation in the forward pass. The names are the ones
TransformerLens users already know (``blocks.3.attn.hook_pattern``), so code and
habits carry over; a short form ``("pattern", 3)`` or ``"pattern.3"`` is accepted
everywhere a name is.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Optional, Sequence, Union

from .errors import InterpError

#: Per-layer hook points, short name -> full-name template, in forward-pass order.
LAYER_HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "q_input": "blocks.{}.hook_q_input",
    "k_input": "blocks.{}.hook_k_input",
    "v_input": "blocks.{}.hook_v_input",
    "ln1_scale": "blocks.{}.ln1.hook_scale",
    "ln1": "blocks.{}.ln1.hook_normalized",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "attn_scores": "blocks.{}.attn.hook_attn_scores",
    "pattern": "blocks.{}.attn.hook_pattern",
    "z": "blocks.{}.attn.hook_z",
    "result": "blocks.{}.attn.hook_result",
    "attn_out": "blocks.{}.hook_attn_out",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "mlp_in": "blocks.{}.hook_mlp_in",
    "ln2_scale": "blocks.{}.ln2.hook_scale",
    "ln2": "blocks.{}.ln2.hook_normalized",
    "mlp_pre": "blocks.{}.mlp.hook_pre",
    "mlp_post": "blocks.{}.mlp.hook_post",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "resid_post": "blocks.{}.hook_resid_post",
}
#: Hook points outside the blocks.
GLOBAL_HOOKS: dict[str, str] = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final_scale": "ln_final.hook_scale",
    "ln_final": "ln_final.hook_normalized",
}

#: A hook function gets the activation and the hook's name; it may return a
#: replacement tensor of the same shape, or None to leave the activation as it is.
HookFn = Callable[..., Optional[object]]
NameSpec = Union[str, tuple, Sequence[Union[str, tuple]], Callable[[str], bool], None]


def name(short: str, layer: Optional[int] = None) -> str:
    """The full hook name for a short one.

    >>> name("pattern", 3)
    'blocks.3.attn.hook_pattern'
    >>> name("embed")
    'hook_embed'
    """
    if short in GLOBAL_HOOKS:
        return GLOBAL_HOOKS[short]
    if short in LAYER_HOOKS:
        if layer is None:
            raise InterpError(f"hook {short!r} is per layer: give a layer, e.g. ({short!r}, 0)")
        return LAYER_HOOKS[short].format(layer)
    known = ", ".join([*GLOBAL_HOOKS, *LAYER_HOOKS])
    raise InterpError(f"unknown hook {short!r}: known short names are {known}")


def all_names(n_layers: int) -> list[str]:
    """Every hook name of a model with ``n_layers`` blocks, in forward-pass order."""
    names = [GLOBAL_HOOKS["embed"], GLOBAL_HOOKS["pos_embed"]]
    for layer in range(n_layers):
        names += [t.format(layer) for t in LAYER_HOOKS.values()]
    return names + [GLOBAL_HOOKS["ln_final_scale"], GLOBAL_HOOKS["ln_final"]]


def layer_of(hook_name: str) -> int:
    """The block a hook name belongs to; -1 for embeddings, a large number for ln_final."""
    if hook_name.startswith("blocks."):
        return int(hook_name.split(".")[1])
    return -1 if hook_name in (GLOBAL_HOOKS["embed"], GLOBAL_HOOKS["pos_embed"]) else 1 << 30


def resolve(spec: NameSpec, n_layers: int) -> list[str]:
    """Turn a user's selection of hook points into full names, checking each exists.

    ``spec`` may be a full name, a glob (``"blocks.*.hook_resid_post"``), a short
    name with a layer (``("pattern", 3)`` or ``"pattern.3"``), a short name alone
    for every layer (``"pattern"``), a list of those, or a predicate on full names.

    >>> resolve(["pattern.1", "hook_embed"], n_layers=2)
    ['hook_embed', 'blocks.1.attn.hook_pattern']
    >>> resolve("resid_post", n_layers=2)
    ['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post']
    """
    every = all_names(n_layers)
    if spec is None:
        return []
    if callable(spec):
        return [n for n in every if spec(n)]
    items: Iterable = [spec] if isinstance(spec, (str, tuple)) else spec
    chosen: set[str] = set()
    for item in items:
        chosen.update(_resolve_one(item, every, n_layers))
    return [n for n in every if n in chosen]


def _resolve_one(item, every: list[str], n_layers: int) -> list[str]:
    if isinstance(item, tuple):
        short, layer = item
        _check_layer(layer, n_layers)
        return [name(short, layer)]
    if not isinstance(item, str):
        raise InterpError(f"hook names must be strings, (name, layer) pairs or a predicate, not {item!r}")
    if item in GLOBAL_HOOKS:
        return [GLOBAL_HOOKS[item]]
    if item in LAYER_HOOKS:
        return [LAYER_HOOKS[item].format(layer) for layer in range(n_layers)]
    short, _, layer = item.rpartition(".")
    if short in LAYER_HOOKS and layer.lstrip("-").isdigit():
        _check_layer(int(layer), n_layers)
        return [name(short, int(layer))]
    matches = fnmatch.filter(every, item)
    if not matches:
        raise InterpError(
            f"no hook point matches {item!r}: use a name such as 'blocks.0.attn.hook_pattern', "
            f"a glob such as 'blocks.*.hook_resid_post', or a short name such as 'pattern.0'"
        )
    return matches


def _check_layer(layer: int, n_layers: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise InterpError(f"layer {layer!r} out of range: model has {n_layers} layers (0–{n_layers - 1})")
