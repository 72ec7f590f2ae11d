"""GPT-2 checkpoints read into interp's weight layout: config.json, safetensors, nothing else imported.

Booting ``transformers`` and a TransformerBridge costs seconds before any work; reading a GPT-2 is a
JSON file and a few hundred tensors. This module does that with ``json`` and ``torch`` only:

* :func:`read_config` — ``config.json`` to :class:`GPT2Shape` (Hugging Face's ``GPT2Config`` defaults for
  absent keys), refusing what is not a plain GPT-2;
* :class:`SafetensorsFile` — the safetensors format (an 8-byte header length, a JSON header of
  ``name -> dtype, shape, byte range``, then the raw bytes) read with ``readinto`` straight into the
  destination tensor: no memory map, no second copy of a tensor;
* :func:`read_weights` — every GPT-2 tensor into :func:`weight_shapes`'s stacked layout, each one
  read straight into its place (peak memory: the model), after checking that the checkpoint has
  exactly the tensors the config implies, with exactly their shapes.

The layout (TransformerLens's, stacked over layers) is what :class:`~interp.model.HookedGPT2`
takes: ``W_Q[layer, head]`` is ``[d_model, d_head]``, ``W_O[layer, head]`` is ``[d_head, d_model]``,
``W_U`` is ``[d_model, d_vocab]``. GPT-2 stores its linear maps as ``Conv1D`` weights ``[in, out]``,
so ``c_attn.weight`` ``[d_model, 3·d_model]`` holds ``W_Q | W_K | W_V`` side by side, each
``[d_model, n_heads·d_head]`` with heads in consecutive blocks of ``d_head`` columns.
These are raw (Hugging Face's) weights; :mod:`interp.folding` folds LayerNorm into them.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import Tensor

from .errors import InterpError

#: Hugging Face ``GPT2Config`` defaults for keys a config.json may leave out.
GPT2_DEFAULTS = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": None,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False, "tie_word_embeddings": True,
}
#: ``GPT2Config.attribute_map``: other names a config.json may use.
ALIASES = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions", "num_attention_heads": "n_head",
           "num_hidden_layers": "n_layer"}
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
# Buffers some checkpoints carry (the original GPT-2's causal mask): not weights, never read.
_IGNORED = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$")


@dataclass(frozen=True)
class GPT2Shape:
    """The hyperparameters of a GPT-2 that decide its weights and forward pass."""

    n_layers: int
    n_heads: int
    d_model: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    eps: float
    act_fn: str
    tied: bool

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def parse_config(values: Mapping[str, Any], where: str) -> GPT2Shape:
    """A GPT-2 config (config.json's dict or ``GPT2Config.to_dict()``) as a :class:`GPT2Shape`."""
    if values.get("model_type") != "gpt2":
        raise InterpError(f"{where} is a {values.get('model_type', 'unknown')!r} model; interp supports GPT-2")
    c = {**GPT2_DEFAULTS, **{ALIASES.get(k, k): v for k, v in values.items()}}
    if c["scale_attn_by_inverse_layer_idx"] or not c["scale_attn_weights"]:
        raise InterpError(f"{where}: non-standard attention scaling is not supported")
    if c["add_cross_attention"]:
        raise InterpError(f"{where}: cross-attention (add_cross_attention) is not supported")
    for key in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"):
        if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < 1:
            raise InterpError(f"{where}: {key} must be a positive integer, not {c[key]!r}")
    if c["n_embd"] % c["n_head"]:
        raise InterpError(f"{where}: n_embd {c['n_embd']} is not a multiple of n_head {c['n_head']}")
    d_mlp = c["n_inner"] if c["n_inner"] is not None else 4 * c["n_embd"]
    if isinstance(d_mlp, bool) or not isinstance(d_mlp, int) or d_mlp < 1:
        raise InterpError(f"{where}: n_inner must be a positive integer or null, not {c['n_inner']!r}")
    return GPT2Shape(
        n_layers=c["n_layer"], n_heads=c["n_head"], d_model=c["n_embd"], d_mlp=d_mlp, d_vocab=c["vocab_size"],
        n_ctx=c["n_positions"], eps=float(c["layer_norm_epsilon"]), act_fn=str(c["activation_function"]),
        tied=bool(c["tie_word_embeddings"]),
    )


def read_config(path: Path) -> GPT2Shape:
    """``path/config.json`` as a :class:`GPT2Shape` (errors name the file)."""
    f = path / "config.json"
    if not f.is_file():
        raise InterpError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        with open(f, encoding="utf-8") as fh:
            values = json.load(fh)
    except (OSError, ValueError) as e:
        raise InterpError(f"cannot read {f}: {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(values, dict):
        raise InterpError(f"cannot read {f}: not a JSON object")
    return parse_config(values, str(path))


# ---------------------------------------------------------------------------- the layout
def weight_shapes(s: GPT2Shape) -> dict[str, tuple[int, ...]]:
    """The stacked weights :func:`read_weights` fills, and their shapes.

    Queries, keys and values stay fused as GPT-2 stores them: ``W_qkv[layer]`` is ``c_attn``'s
    ``[d_model, 3·n_heads·d_head]`` (the model's one fused matmul); :func:`attention_views` gives
    ``W_Q``, ``W_K``, ``W_V`` and their biases as views of it, in TransformerLens's layout.
    """
    L, H, M, D, F, V, N = s.n_layers, s.n_heads, s.d_model, s.d_head, s.d_mlp, s.d_vocab, s.n_ctx
    return {
        "W_E": (V, M), "W_pos": (N, M), "W_qkv": (L, M, 3 * H * D), "b_qkv": (L, 3 * H * D),
        "W_O": (L, H, D, M), "b_O": (L, M), "W_in": (L, M, F), "b_in": (L, F), "W_out": (L, F, M), "b_out": (L, M),
        "ln1_w": (L, M), "ln1_b": (L, M), "ln2_w": (L, M), "ln2_b": (L, M), "lnf_w": (M,), "lnf_b": (M,),
        "W_U": (M, V), "b_U": (V,),
    }


def attention_views(w: dict[str, Tensor], n_heads: int) -> dict[str, Tensor]:
    """Add ``W_Q, W_K, W_V`` ``[n_layers, n_heads, d_model, d_head]`` and ``b_Q, b_K, b_V`` as views of ``W_qkv``/``b_qkv``."""
    L, M, three_hd = w["W_qkv"].shape
    D = three_hd // 3 // n_heads
    qkv = w["W_qkv"].view(L, M, 3, n_heads, D)
    b = w["b_qkv"].view(L, 3, n_heads, D)
    for j, key in enumerate("QKV"):
        w[f"W_{key}"] = qkv[:, :, j].permute(0, 2, 1, 3)
        w[f"b_{key}"] = b[:, j]
    return w


def empty_weights(s: GPT2Shape, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    """Uninitialised stacked weights; ``W_U`` is left out (it is ``W_E.T`` or ``lm_head.weight.T``, a view)."""
    return {k: torch.empty(shape, dtype=dtype, device=device) for k, shape in weight_shapes(s).items() if k != "W_U"}


def checkpoint_shapes(s: GPT2Shape, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Every tensor a GPT-2 checkpoint of this shape holds, with Hugging Face's names and shapes."""
    M, F, V = s.d_model, s.d_mlp, s.d_vocab
    out: dict[str, tuple[int, ...]] = {f"{prefix}wte.weight": (V, M), f"{prefix}wpe.weight": (s.n_ctx, M)}
    for i in range(s.n_layers):
        h = f"{prefix}h.{i}."
        out.update({
            h + "ln_1.weight": (M,), h + "ln_1.bias": (M,),
            h + "attn.c_attn.weight": (M, 3 * M), h + "attn.c_attn.bias": (3 * M,),
            h + "attn.c_proj.weight": (M, M), h + "attn.c_proj.bias": (M,),
            h + "ln_2.weight": (M,), h + "ln_2.bias": (M,),
            h + "mlp.c_fc.weight": (M, F), h + "mlp.c_fc.bias": (F,),
            h + "mlp.c_proj.weight": (F, M), h + "mlp.c_proj.bias": (M,),
        })
    out.update({f"{prefix}ln_f.weight": (M,), f"{prefix}ln_f.bias": (M,)})
    if not s.tied:
        out["lm_head.weight"] = (V, M)
    return out


# A source of named tensors: names -> (shape, read(out, write=None) that fills a tensor of that shape:
# a copy, or ``write(src, out)`` from the stored tensor ``src`` (a view of the file where it can be).
Reader = Callable[..., None]


def read_weights(source: Mapping[str, tuple[tuple[int, ...], Reader]], s: GPT2Shape, *, dtype: torch.dtype,
                 device: torch.device, where: str,
                 after_embeddings: Optional[Callable[[dict], None]] = None,
                 after_layer: Optional[Callable[[dict, int], None]] = None,
                 write: Optional[Callable[[str, dict, int, Tensor, Tensor], None]] = None) -> dict[str, Tensor]:
    """Fill the stacked layout from a checkpoint's tensors, refusing any missing or unexpected one.

    ``source`` maps each tensor name in the checkpoint to its shape and a function that writes
    the tensor into a given tensor of that shape (converting its dtype if needed).
    The embeddings, the final LayerNorm and the unembedding are read first, then
    ``after_embeddings(weights)`` runs; ``after_layer(weights, layer)`` runs as soon as a layer is
    read (folding LayerNorm, say). ``write(key, weights, layer, src, out)``, if given, writes each
    layer's ``W_qkv``, ``W_O``, ``W_in`` and ``W_out`` from the checkpoint's tensor ``src`` in place
    of a plain copy (folding on the way: one pass over the data instead of a copy and a fold); the
    layer's LayerNorm and biases are read before.
    """
    names = [n for n in source if not _IGNORED.match(n)]
    prefix = "transformer." if any(n.startswith("transformer.") for n in names) else ""
    expected = checkpoint_shapes(s, prefix)
    optional = {"lm_head.weight"} if s.tied else set()  # a tied checkpoint may still store the copy
    missing = [n for n in expected if n not in source]
    unexpected = [n for n in names if n not in expected and n not in optional]
    if missing or unexpected:
        what = []
        if missing:
            what.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''})")
        if unexpected:
            what.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', …' if len(unexpected) > 3 else ''})")
        raise InterpError(
            f"{where} does not match its config.json ({s.n_layers} layer{'s' * (s.n_layers != 1)}, {s.n_heads} heads, "
            f"d_model {s.d_model}, "
            f"vocab {s.d_vocab}): {' and '.join(what)} tensors"
        )
    for name, shape in expected.items():
        if tuple(source[name][0]) != shape:
            raise InterpError(
                f"{where}: tensor {name} has shape {list(source[name][0])}, config.json implies {list(shape)}"
            )

    w = empty_weights(s, dtype, device)

    def read(name: str, out: Tensor, key: Optional[str] = None, layer: int = 0) -> Tensor:
        fused = None if write is None or key is None else (lambda src, out: write(key, w, layer, src, out))
        source[prefix + name if not name.startswith("lm_head") else name][1](out, fused)
        return out

    read("wte.weight", w["W_E"])
    read("wpe.weight", w["W_pos"])
    read("ln_f.weight", w["lnf_w"])
    read("ln_f.bias", w["lnf_b"])
    if s.tied:
        w["W_U"] = w["W_E"].T  # a view, as in Hugging Face's tied model
    else:
        # lm_head.weight is [d_vocab, d_model]; W_U is its transpose (kept as a view: no copy).
        w["W_U"] = read("lm_head.weight", torch.empty(s.d_vocab, s.d_model, dtype=dtype, device=device)).T
    w["b_U"].zero_()  # GPT-2's unembedding has no bias
    if after_embeddings is not None:
        after_embeddings(w)
    for i in range(s.n_layers):
        h = f"h.{i}."
        read(h + "ln_1.weight", w["ln1_w"][i])
        read(h + "ln_1.bias", w["ln1_b"][i])
        read(h + "attn.c_attn.bias", w["b_qkv"][i])
        read(h + "attn.c_attn.weight", w["W_qkv"][i], "W_qkv", i)
        read(h + "attn.c_proj.bias", w["b_O"][i])
        read(h + "attn.c_proj.weight", w["W_O"][i].view(s.d_model, s.d_model), "W_O", i)  # [H·D, M]: heads' d_head rows
        read(h + "ln_2.weight", w["ln2_w"][i])
        read(h + "ln_2.bias", w["ln2_b"][i])
        read(h + "mlp.c_fc.bias", w["b_in"][i])
        read(h + "mlp.c_fc.weight", w["W_in"][i], "W_in", i)
        read(h + "mlp.c_proj.bias", w["b_out"][i])
        read(h + "mlp.c_proj.weight", w["W_out"][i], "W_out", i)
        if after_layer is not None:
            after_layer(w, i)
    return attention_views(w, s.n_heads)


# ---------------------------------------------------------------------------- sources
def _copy(src: Tensor, out: Tensor) -> None:
    out.copy_(src)


class SafetensorsFile:
    """One ``.safetensors`` file: its header, and each tensor copied from a memory map to where it is wanted.

    A private read-only use of the map: each tensor is copied (and converted, if its dtype differs)
    straight into its destination, then its pages are dropped from the process (``MADV_DONTNEED``),
    so loading never holds the file's pages and the model at once. Copying from the page cache this
    way is ~1.5× faster here than ``readinto``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file is shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n > 100_000_000 or n > os.path.getsize(self.path) - 8:
                raise ValueError(f"header length {n} is impossible for this file")
            header = json.loads(f.read(n))
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.tensors: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        size = os.path.getsize(self.path) - self.data_start
        for name, info in header.items():
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise ValueError(f"tensor {name} has dtype {info.get('dtype')!r}, which interp does not read")
            start, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            numel = 1
            for d in shape:
                numel *= d
            if not 0 <= start <= end <= size or end - start != numel * dtype.itemsize:
                raise ValueError(f"tensor {name}: byte range {start}..{end} does not fit its shape {list(shape)} "
                                 "or the file")
            self.tensors[name] = (dtype, shape, start, end)

    def reader(self, name: str) -> Reader:
        dtype, shape, start, end = self.tensors[name]

        def read(out: Tensor, write: Optional[Callable[[Tensor, Tensor], None]] = None) -> None:
            if end == start:
                return
            m = self._map()
            offset = self.data_start + start
            if offset + (end - start) > len(m):
                raise InterpError(f"{self.path}: tensor {name} is cut short (file truncated?)")
            src = torch.frombuffer(m, dtype=dtype, count=(end - start) // dtype.itemsize, offset=offset)
            (write or _copy)(src.view(out.shape), out)
            del src
            page = offset - offset % mmap.PAGESIZE
            if hasattr(m, "madvise"):
                m.madvise(mmap.MADV_DONTNEED, page, offset + (end - start) - page)

        return read

    def _map(self) -> mmap.mmap:
        if getattr(self, "_mm", None) is None:
            with open(self.path, "rb") as f:  # the map outlives the file object
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm


def safetensors_source(path: Path) -> dict[str, tuple[tuple[int, ...], Reader]]:
    """``model.safetensors`` (or the shards named in ``model.safetensors.index.json``) as a source."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    else:
        with open(index, encoding="utf-8") as fh:
            files = [path / f for f in dict.fromkeys(json.load(fh)["weight_map"].values())]
    source = {}
    for f in files:
        st = SafetensorsFile(f)
        for name, (_, shape, _, _) in st.tensors.items():
            source[name] = (shape, st.reader(name))
    return source


def tensors_source(tensors: Mapping[str, Tensor]) -> dict[str, tuple[tuple[int, ...], Reader]]:
    """A state dict (``torch.load``'s, or a model object's) as a source."""

    def reader(t: Tensor) -> Reader:
        return lambda out, write=None: (write or _copy)(t.detach().reshape(out.shape), out)

    return {name: (tuple(t.shape), reader(t)) for name, t in tensors.items()}


def iter_safetensors(path: Path) -> Iterator[tuple[str, Tensor]]:
    """Every tensor of a safetensors file, one at a time (for tools that convert or compare files)."""
    st = SafetensorsFile(path)
    for name, (dtype, shape, _, _) in st.tensors.items():
        t = torch.empty(shape, dtype=dtype)
        st.reader(name)(t)
        yield name, t


def write_safetensors(path: Path, tensors: Mapping[str, Any], metadata: Optional[dict] = None) -> None:
    """Write tensors in the safetensors format, one at a time (for building test checkpoints).

    ``tensors`` maps names to tensors, or to ``(shape, dtype, make)`` where ``make()`` returns the
    tensor when it is written: a multi-GB checkpoint never has to be in memory at once.
    """
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    specs = {k: (tuple(v.shape), v.dtype, (lambda v=v: v)) if isinstance(v, Tensor) else v for k, v in tensors.items()}
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (shape, dtype, _) in specs.items():
        n = dtype.itemsize
        for d in shape:
            n *= d
        header[name] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, (shape, dtype, make) in specs.items():
            t = make().detach().to(dtype).contiguous().cpu()
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: made a tensor of shape {tuple(t.shape)}, declared {shape}")
            if t.numel():
                f.write(memoryview(t.view(torch.uint8).numpy()).cast("B"))


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ""


__all__ = ["GPT2Shape", "parse_config", "read_config", "read_weights", "weight_shapes", "attention_views", "checkpoint_shapes",
           "SafetensorsFile", "safetensors_source", "tensors_source", "write_safetensors"]
