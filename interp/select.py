"""What users select — heads, layers, positions, tokens — read by one grammar, checked in one place.

Every analysis, intervention and command line option reads its selections here, so
``"4.11"`` means the same head and ``-1`` the same position everywhere, and a bad
selection gets the same one-line error wherever it is made.

Heads
    a ``(layer, head)`` pair; a string ``"4.11"``, ``"L4H11"`` or ``"4:11"``; ``"4.*"`` (every
    head of layer 4); a comma-separated string of those (``"4.11,0.5"``); or a list of any of
    them. A head given twice is an error, and so is an empty selection.
Layers
    an int, a list of ints, or a string ``"3"``, ``"0-5"``, ``"1,4,6-7"``; ``None`` = every layer.
Positions
    token positions *within each prompt*, counted over its real tokens (BOS = 0; negative
    positions count back from its last real token, -1 = the last), so they mean the same with
    left or right padding: an int, a list of ints, a slice, ``"all"``, or a string ``"-1"``,
    ``"0,3,-1"``, ``"2:6"``.
Tokens
    an int is a token id; a string is text that must be exactly one token (``" Paris"``, with
    GPT-2's leading space). On the command line a token is text; write ``id:464`` for an id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .errors import InterpError
from .tokens import Batch

__all__ = ["Head", "heads", "head_groups", "layers", "head_label", "receivers", "node", "RECEIVER_INPUTS", "positions", "Positions", "parse_positions", "token_id",
           "token_ids", "cli_token", "counts"]

Head = tuple[int, int]
_HEAD = re.compile(r"\s*L?(\d+)\s*(?:[.:]|H)\s*H?(\d+|\*)\s*", re.IGNORECASE)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def head_label(head: Head) -> str:
    """``(4, 11)`` -> ``"L4H11"``."""
    return f"L{head[0]}H{head[1]}"


def _shape(model: Any) -> tuple[int, int]:
    cfg = model.cfg if hasattr(model, "cfg") else model
    return cfg.n_layers, cfg.n_heads


def _check_layer(layer: Any, n_layers: int) -> int:
    if not _is_int(layer) or not 0 <= layer < n_layers:
        raise InterpError(f"layer {layer!r} out of range: model has {n_layers} layers (0–{n_layers - 1})")
    return int(layer)


def _check_head(layer: Any, head: Any, n_layers: int, n_heads: int) -> Head:
    layer = _check_layer(layer, n_layers)
    if not _is_int(head) or not 0 <= head < n_heads:
        raise InterpError(f"head {head!r} out of range: model has {n_heads} heads per layer (0–{n_heads - 1})")
    return layer, int(head)


def _items(spec: Any) -> list:
    """The single heads of a selection, before checking: strings split at commas, pairs kept whole."""
    if isinstance(spec, str):
        return [s for s in spec.split(",")]
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(_is_int(x) for x in spec):
        return [tuple(spec)]
    if isinstance(spec, Tensor) and spec.ndim == 1 and len(spec) == 2:
        return [tuple(spec.tolist())]
    try:
        items = list(spec)
    except TypeError:
        raise InterpError(f"heads must be (layer, head) pairs or strings such as '4.11', not {spec!r}") from None
    out = []
    for item in items:
        out += [s for s in item.split(",")] if isinstance(item, str) else [item]
    return out


def heads(model: Any, spec: Any, *, sort: bool = True) -> list[Head]:
    """The heads a selection names, checked against the model (see the module docs for the grammar).

    ``model`` is a model or anything with ``cfg.n_layers``/``cfg.n_heads``. Sorted by layer and
    head unless ``sort=False`` (then in the order given).

    >>> from interp.testing import planted_model
    >>> heads(planted_model(), ["1.0", (0, 3), "L0H1"])
    [(0, 1), (0, 3), (1, 0)]
    >>> heads(planted_model(), "1.*,0.2", sort=False)
    [(1, 0), (1, 1), (1, 2), (1, 3), (0, 2)]
    """
    n_layers, n_heads = _shape(model)
    if spec is None:
        raise InterpError("no heads given: pass e.g. heads=[(4, 11)] or heads='4.11' ('4.*' for a whole layer)")
    out: list[Head] = []
    for item in _items(spec):
        if isinstance(item, str):
            if not item.strip():
                continue
            m = _HEAD.fullmatch(item)
            if not m:
                raise InterpError(
                    f"cannot read head {item.strip()!r}: write 'layer.head' ('4.11'), 'L4H11' or 'layer.*' ('4.*')"
                )
            layer = _check_layer(int(m.group(1)), n_layers)
            found = [(layer, h) for h in range(n_heads)] if m.group(2) == "*" else [
                _check_head(layer, int(m.group(2)), n_layers, n_heads)]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            found = [_check_head(item[0], item[1], n_layers, n_heads)]
        else:
            raise InterpError(f"a head is a (layer, head) pair or a string such as '4.11', not {item!r}")
        for head in found:
            if head in out:
                raise InterpError(f"head {head[0]}.{head[1]} given twice")
            out.append(head)
    if not out:
        raise InterpError("no heads given: pass e.g. heads=[(4, 11)] or heads='4.11' ('4.*' for a whole layer)")
    return sorted(out) if sort else out


def head_groups(model: Any, spec: Any) -> list[list[Head]]:
    """The selection item by item: ``"4.11,5.*"`` -> ``[[(4, 11)], [(5, 0), …, (5, 11)]]`` (checked as :func:`heads`).

    >>> from interp.testing import planted_model
    >>> head_groups(planted_model(), "1.2,0.*")
    [[(1, 2)], [(0, 0), (0, 1), (0, 2), (0, 3)]]
    """
    everything = heads(model, spec, sort=False)  # checks the whole selection (repeats across items too)
    groups, i = [], 0
    for item in _items(spec):
        if isinstance(item, str) and not item.strip():
            continue
        n = len(heads(model, item))
        groups.append(everything[i : i + n])
        i += n
    return groups


def layers(model: Any, spec: Any) -> list[int]:
    """Sorted layer indices from ``None`` (every layer), an int, a list, or ``"0-5"`` / ``"1,4,6-7"``.

    >>> from interp.testing import planted_model
    >>> layers(planted_model(), "0-1"), layers(planted_model(), None), layers(planted_model(), 1)
    ([0, 1], [0, 1], [1])
    """
    n_layers, _ = _shape(model)
    if spec is None:
        return list(range(n_layers))
    if isinstance(spec, str):
        items: list = []
        for part in spec.split(","):
            lo, sep, hi = part.strip().partition("-")
            try:
                items += list(range(int(lo), int(hi) + 1)) if sep and lo else [int(part)]
            except ValueError:
                raise InterpError(f"cannot read layers {spec!r}: use indices and ranges such as '0,3,5-7'") from None
    elif _is_int(spec):
        items = [spec]
    else:
        try:
            items = list(spec)
        except TypeError:
            raise InterpError(f"layers must be an int, a list of ints or a string such as '0-5', not {spec!r}") from None
    if not items:
        raise InterpError("no layers given: pass a layer, a list of layers, or None for every layer")
    out = [_check_layer(x, n_layers) for x in items]
    if len(set(out)) < len(out):
        twice = next(x for x in out if out.count(x) > 1)
        raise InterpError(f"layer {twice} given twice")
    return sorted(out)


# ---------------------------------------------------------------------------- receivers and graph nodes
#: A receiver head's inputs that a path can end in.
RECEIVER_INPUTS = ("q", "k", "v")


def receivers(model: Any, spec: Any) -> Any:
    """``"logits"``, or checked ``(layer, head, input)`` triples: a head (in the heads grammar) and its input.

    Written ``"1.0.k,1.2.q"``, ``"L1H0.k"``, ``"1.*.v"`` (every head of layer 1, values), or as
    ``[(1, 0, "k")]``. A receiver given twice is an error.

    >>> from interp.testing import planted_model
    >>> receivers(planted_model(), "1.0.k, L1H1.q")
    [(1, 0, 'k'), (1, 1, 'q')]
    >>> len(receivers(planted_model(), "1.*.v"))
    4
    """
    if isinstance(spec, str) and spec.strip() == "logits":
        return "logits"
    if isinstance(spec, tuple) and len(spec) == 3 and isinstance(spec[2], str):
        spec = [spec]
    items = [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    out: list[tuple[int, int, str]] = []
    for item in items:
        if isinstance(item, str):
            where, _, what = item.strip().rpartition(".")
            what = what.lower()
            if what not in RECEIVER_INPUTS or not where:
                raise InterpError(f"cannot read receiver {item.strip()!r}: write layer.head.input, e.g. '1.0.k' "
                                  "or '1.*.k' (input q, k or v), or 'logits'")
            found = [(l, h, what) for l, h in heads(model, where, sort=False)]
        elif isinstance(item, (tuple, list)) and len(item) == 3 and item[2] in RECEIVER_INPUTS:
            found = [(*heads(model, [tuple(item[:2])])[0], item[2])]
        else:
            raise InterpError(f"a receiver is (layer, head, 'q'|'k'|'v') or 'layer.head.input', not {item!r}")
        for r in found:
            if r in out:
                raise InterpError(f"receiver {r[0]}.{r[1]}.{r[2]} given twice")
            out.append(r)
    if not out:
        raise InterpError("no receivers given: e.g. receivers='1.0.k' or 'logits'")
    return out


def node(model: Any, text: str) -> tuple[str, Optional[int], Optional[int]]:
    """A node of the circuit graph by name: ``("embed"|"logits", None, None)``, ``("mlp", layer, None)`` for
    ``"MLP3"`` or ``("head", layer, head)`` for a head in the heads grammar (``"L3H7"``, ``"3.7"``).

    >>> from interp.testing import planted_model
    >>> node(planted_model(), "L1H2"), node(planted_model(), "MLP0"), node(planted_model(), "embed")
    (('head', 1, 2), ('mlp', 0, None), ('embed', None, None))
    """
    name = text.strip()
    if name in ("embed", "logits"):
        return name, None, None
    if name.upper().startswith("MLP") and name[3:].isdigit():
        return "mlp", _check_layer(int(name[3:]), _shape(model)[0]), None
    found = heads(model, name)
    if len(found) != 1:
        raise InterpError(f"node {name!r} names {len(found)} heads: a node is one head, an MLP, embed or logits")
    return "head", *found[0]


# ---------------------------------------------------------------------------- positions
def parse_positions(text: str) -> Any:
    """A position selection written as text: ``"all"``, ``"-1"``, ``"0,3,-1"`` or a slice ``"2:6"``.

    >>> parse_positions("2:6"), parse_positions("0,-1"), parse_positions("all")
    (slice(2, 6, None), [0, -1], 'all')
    """
    text = text.strip()
    try:
        if text == "all":
            return "all"
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise InterpError(
            f"cannot read positions {text!r}: use 'all', an index (-1 = last), a list '0,3,-1' or a slice '2:6'"
        ) from None


@dataclass(frozen=True)
class Positions:
    """Chosen positions of each prompt of a batch.

    ``cols[i, j]`` indexes the padded tensor, ``rel[i, j]`` counts prompt ``i``'s real tokens
    (BOS = 0); entries with ``valid[i, j]`` False are filler (prompts may select different numbers).
    """

    cols: Int[Tensor, "batch n"]
    rel: Int[Tensor, "batch n"]
    valid: Bool[Tensor, "batch n"]

    def mask(self, width: int) -> Bool[Tensor, "batch pos"]:
        """The same selection as a ``[batch, pos]`` mask over the padded tensor."""
        out = torch.zeros(self.cols.shape[0], width, dtype=torch.bool, device=self.cols.device)
        rows = torch.arange(self.cols.shape[0], device=self.cols.device)[:, None].expand_as(self.cols)
        out[rows[self.valid], self.cols[self.valid]] = True
        return out


def positions(batch: Batch, spec: Any, *, default: Any = -1, what: str = "positions", ragged: str = "error") -> Positions:
    """The positions ``spec`` selects in each prompt (see the module docs); ``None`` means ``default``.

    A slice or ``"all"`` may select different numbers of positions per prompt; an index outside a
    prompt is an error naming the prompt, or with ``ragged="skip"`` is left out for that prompt.

    >>> from interp.tokens import Batch
    >>> b = Batch(torch.tensor([[5, 6, 7], [0, 5, 6]]), torch.tensor([[True, True, True], [False, True, True]]))
    >>> positions(b, -1).cols.tolist(), positions(b, 0).cols.tolist()   # left padding in prompt 1
    ([[2], [2]], [[0], [1]])
    """
    if spec is None:
        spec = default
    if isinstance(spec, str):
        spec = parse_positions(spec)
    lengths = batch.lengths.tolist()
    if isinstance(spec, str) and spec == "all":
        per_prompt = [list(range(n)) for n in lengths]
    elif isinstance(spec, slice):
        per_prompt = [list(range(n))[spec] for n in lengths]
        if not all(per_prompt):
            raise InterpError(f"{what} {_show(spec)} select no token of some prompt (lengths {lengths})")
    else:
        if isinstance(spec, Tensor):
            spec = spec.tolist()
        items = [spec] if _is_int(spec) else spec
        try:
            items = list(items)
        except TypeError:
            items = [None]
        if not items or not all(_is_int(p) for p in items):
            raise InterpError(f"{what} must be an int, a list of ints, a slice or 'all', not {spec!r}")
        per_prompt = []
        for i, n in enumerate(lengths):
            if ragged == "skip":
                per_prompt.append([int(p) % n for p in items if -n <= p < n])
                continue
            for p in items:
                if not -n <= p < n:
                    raise InterpError(
                        f"position {int(p)} out of range for prompt {i}: it has {n} tokens (BOS included), "
                        f"so positions 0–{n - 1} or {-n}–-1"
                    )
            per_prompt.append([int(p) % n for p in items])
    width = max(len(p) for p in per_prompt)
    if width == 0 and ragged != "skip":
        raise InterpError(f"{what} {_show(spec)} select no token of any prompt (lengths {lengths})")
    rel = torch.zeros(len(lengths), width, dtype=torch.long)
    valid = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, ps in enumerate(per_prompt):
        rel[i, : len(ps)], valid[i, : len(ps)] = torch.tensor(ps, dtype=torch.long), True
    first_real = batch.attention_mask.int().argmax(-1).cpu()  # 0 with right padding
    dev = batch.tokens.device
    return Positions((rel + first_real[:, None]).to(dev), rel.to(dev), valid.to(dev))


def _show(spec: Any) -> str:
    if isinstance(spec, slice):
        return f"{'' if spec.start is None else spec.start}:{'' if spec.stop is None else spec.stop}"
    return repr(spec)


# ---------------------------------------------------------------------------- tokens
def token_id(model: Any, token: Any, what: str = "token") -> int:
    """One token id from an id or a string that is exactly one token.

    >>> from interp.testing import planted_model
    >>> token_id(planted_model(), "c"), token_id(planted_model(), 3)
    (3, 3)
    """
    tok, V = model.tokenizer, model.cfg.d_vocab
    if _is_int(token):
        if not 0 <= token < V:
            raise InterpError(f"{what} id {token} out of range: vocabulary has {V} tokens (0–{V - 1})")
        return int(token)
    if not isinstance(token, str):
        raise InterpError(f"{what} must be a token string or a token id, not {type(token).__name__}")
    ids = tok(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([i]) for i in ids]
        hint = " (GPT-2 words usually start with a space: ' Paris')" if len(ids) > 1 else ""
        raise InterpError(f"{what} {token!r} is {len(ids)} tokens: {pieces}; give a single token{hint}")
    if tok.unk_token_id is not None and ids[0] == tok.unk_token_id and token != tok.unk_token:
        raise InterpError(f"{what} {token!r} is not in the vocabulary (it tokenises to {tok.unk_token!r})")
    if not 0 <= ids[0] < V:
        raise InterpError(f"{what} {token!r} has id {ids[0]}, outside the model's vocabulary of {V}")
    return ids[0]


def token_ids(model: Any, spec: Any, n_prompts: int, what: str = "token") -> Int[Tensor, " batch"]:
    """One token id per prompt: one token for all, or a list (or 1-D tensor) with one per prompt."""
    if isinstance(spec, Tensor):
        spec = spec.reshape(-1).tolist() if spec.ndim else int(spec)
    if isinstance(spec, (list, tuple)):
        if len(spec) == 1:
            spec = spec[0]
        elif len(spec) != n_prompts:
            raise InterpError(f"got {len(spec)} {what}s for {n_prompts} prompts: give one, or one per prompt")
        else:
            return torch.tensor([token_id(model, t, what) for t in spec], device=model.cfg.device)
    return torch.full((n_prompts,), token_id(model, spec, what), device=model.cfg.device)


def cli_token(text: str) -> Any:
    """A token as written on the command line: text, or ``id:464`` for a token id."""
    if text.startswith("id:"):
        try:
            return int(text[3:])
        except ValueError:
            raise InterpError(f"cannot read token {text!r}: write id:N for a token id, or the token's text") from None
    return text


def counts(text: str, what: str) -> list[int]:
    """``"8"`` or ``"0,1,4,16"`` -> a list of non-negative ints (ranks, sizes…)."""
    try:
        out = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InterpError(f"cannot read {what} {text!r}: use an integer or a list such as '0,1,4,16'") from None
    if not out:
        raise InterpError(f"no {what} given")
    return out


#: Columns that name a layer, a head or a position in every table interp returns.
INDEX_COLUMNS = ("layer", "head", "position", "sender_layer", "sender_head", "receiver_layer", "receiver_head")


def tidy(df):
    """The table with its layer/head/position columns as integers: ``int64``, or ``Int64`` where some row has none.

    Every analysis returns its tables through this, so they join and compare without casts. A column
    is nullable (pandas ``Int64``, ``<NA>`` for "no head") only in tables with layer-wide rows (scans
    by layer, patching by layer, attribution of embeddings): a plain ``int64`` column keeps a row's
    other values plain floats (with ``Int64`` in the row, ``df.loc[i]`` turns NaN into ``<NA>``).
    """
    present = {c: ("Int64" if df[c].isna().any() else "int64") for c in INDEX_COLUMNS if c in df.columns}
    return df.astype(present) if present else df
