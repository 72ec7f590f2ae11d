"""The GPT-2 family: every member's exact shape, random weights, offline.

Each directory is written by ``interp.testing.write_random_gpt2_dir`` (config.json as the hub's,
random weights of that exact shape, random LayerNorm and biases) and loaded by interp and by
Hugging Face's ``from_pretrained``; logits must agree, heads must be counted and named right,
and ``interp heads`` / ``interp ov`` must run. GPT-2 large and XL (3 and 6 GB of float32) run
only with ``INTERP_TEST_BIG=1`` (see the README); the benchmark's ``family`` section measures
their memory.
"""

import os

import pytest
import torch

import interp
from interp.cli import main
from interp.testing import GPT2_FAMILY, write_random_gpt2_dir

BIG = pytest.mark.skipif(os.environ.get("INTERP_TEST_BIG") != "1",
                         reason="GPT-2 large/XL shapes: set INTERP_TEST_BIG=1 (needs ~20 GB of memory and disk)")
MEMBERS = [
    "distilgpt2", "gpt2", "gpt2-medium",
    pytest.param("gpt2-large", marks=BIG), pytest.param("gpt2-xl", marks=BIG),
]
PROMPT = "def f(x): return x + 1"


@pytest.fixture(scope="module", params=MEMBERS)
def member(request, tmp_path_factory):
    name = request.param
    d = write_random_gpt2_dir(tmp_path_factory.mktemp(name), seed=1, **GPT2_FAMILY[name])
    yield name, d
    for f in d.iterdir():  # GBs: free the disk before the next member
        f.unlink()


def test_member_matches_hugging_face(member):
    from transformers import GPT2LMHeadModel

    name, d = member
    n_layer, n_head, n_embd = (GPT2_FAMILY[name][k] for k in ("n_layer", "n_head", "n_embd"))
    raw = interp.load(d, fold_ln=False)
    cfg = raw.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == \
        (n_layer, n_head, n_embd, n_embd // n_head, 4 * n_embd, 50257, 1024)
    assert raw.W_Q.shape == (n_layer, n_head, n_embd, n_embd // n_head)
    assert f"blocks.{n_layer - 1}.attn.hook_pattern" in raw.hook_names
    assert f"blocks.{n_layer}.attn.hook_pattern" not in raw.hook_names
    tokens = raw.tokenize(PROMPT).tokens
    ours_raw = raw(tokens)
    del raw
    hf = GPT2LMHeadModel.from_pretrained(d, attn_implementation="eager").eval()
    ref = hf(tokens).logits
    del hf
    assert torch.allclose(ours_raw, ref, atol=1e-4), (ours_raw - ref).abs().max()
    folded = interp.load(d)
    assert torch.allclose(folded(tokens).log_softmax(-1), ref.log_softmax(-1), atol=1e-4)


def test_member_commands_run(member, capsys):
    name, d = member
    n_layer, n_head = GPT2_FAMILY[name]["n_layer"], GPT2_FAMILY[name]["n_head"]
    assert main(["heads", "--model", str(d), "--repeated", "2", "--half", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"heads of {d} (fold_ln=True): 2 prompts" in out
    counts = out.splitlines()[-1]  # "labels: …": one label per head of every layer
    assert sum(int(part.split()[-1]) for part in counts.removeprefix("labels: ").split(", ")) == n_layer * n_head
    assert main(["ov", "--model", str(d), "--layer", str(n_layer - 1), "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [str(n_layer - 1)]]
    assert [int(r[1]) for r in rows] == list(range(n_head))  # every head of the last layer, in order
