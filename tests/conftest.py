"""Offline fixtures: every model here is built in code; nothing reaches for the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import interp  # noqa: E402
from interp import testing  # noqa: E402


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


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
