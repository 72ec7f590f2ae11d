"""The bundled interp-tiny model: identity pinned, real learned heads, loads offline by name.

A retrain that changes the weights must update the hash on purpose, and one that loses
the heads, the copying behaviour or the text loss fails here. (Issue 17's bar for a
duplicate-token head, 0.6, was not met: L0H2 matches tokens but attends to itself as much
as to the earlier copy. Its MODEL_CARD.md says what was tried.)
"""

import hashlib
import json

import pytest
import torch

import interp
from analyses.heads import classify
from interp.loading import BUNDLED_DIR
from interp.prompts import repeated_tokens, repeated_words

DIR = BUNDLED_DIR / "interp-tiny"
SHA256 = "b2b50ab87f3e258d1c8ec1b32007b9755579596e10e9cc3fc1c22bd730e1572c"


@pytest.fixture(scope="module")
def tiny():
    return interp.load("interp-tiny")


def test_identity_and_size():
    digest = hashlib.sha256((DIR / "model.safetensors").read_bytes()).hexdigest()
    assert digest == SHA256, "the bundled weights changed: retrain on purpose and update SHA256 and the card"
    total = sum(f.stat().st_size for f in DIR.iterdir() if f.is_file())
    assert total <= 15 * 2**20
    config = json.loads((DIR / "config.json").read_text())
    assert config["model_type"] == "gpt2"


def test_loads_offline_by_name_like_a_real_gpt2_directory(tiny):
    assert tiny.cfg.name == "interp-tiny" and tiny.cfg.n_ctx == 64
    assert "interp-tiny" in interp.loading.bundled_models()
    assert tiny.tokenizer.bos_token == "<|endoftext|>"


def test_learned_previous_token_self_and_induction_heads(tiny):
    df = classify(tiny, progress=False).set_index(["layer", "head"])
    assert df.loc[(0, 4), "label"] == "previous_token" and df.loc[(0, 4), "previous_token"] >= 0.9
    assert df.loc[(0, 6), "label"] == "self" and df.loc[(0, 6), "self"] >= 0.9
    induction = df[df["label"] == "induction"]
    assert len(induction) >= 5 and induction["induction"].min() >= 0.6 and induction["induction"].max() >= 0.9
    assert set(induction.index.get_level_values("layer")) == {1}  # induction needs a layer-0 head before it
    # The kinds are distinct: the previous-token head is not also an induction head, etc.
    assert (df.drop(index=[(0, 4)])["previous_token"] < 0.5).all()


def test_a_token_matching_head_that_attends_to_every_copy_of_its_token_itself_included(tiny):
    """L0H2 (re-initialised and trained with the layer-0 early exit, stage 3) is the one layer-0
    head that matches tokens: on [BOS] r r it attends to the earlier copy and to itself about
    equally, so it falls short of a duplicate-token head (0.6) and gets no label."""
    df = classify(tiny, progress=False).set_index(["layer", "head"])
    head = df.loc[(0, 2)]
    assert df["duplicate_token"].idxmax() == (0, 2) and head["duplicate_token"] >= 0.35
    assert head["self"] >= 0.35 and head["duplicate_token"] + head["self"] >= 0.75  # the same token, wherever it is
    assert head["label"] == "none"
    assert (df.drop(index=[(0, 2)])["duplicate_token"] < 0.1).all()
    # Of the attention it does not put on itself, about half goes to the earlier copy.
    apart = classify(tiny, progress=False, exclude_current_token=True, kinds=["duplicate_token"]).set_index(["layer", "head"])
    assert apart.loc[(0, 2), "duplicate_token"] >= 0.45


def test_repeated_half_is_predicted_far_better_than_the_first(tiny):
    tokens = repeated_tokens(tiny, 16, 25, seed=3)
    logits = tiny(tokens)
    nll = -logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    first, second = nll[:, :25].mean(), nll[:, 26:].mean()
    assert second < 0.05 * first, (first, second)


def test_heldout_text_loss_is_far_below_any_unigram_model(tiny):
    """Held-out pydoc topics (the training script's split) against their own unigram entropy.

    A text's own unigram entropy is the lowest loss any context-free model can reach on it,
    so beating it by a wide margin means the model uses context.
    """
    import pydoc_data.topics

    from tools.train_tiny.corpus import split_corpus

    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    _, held = split_corpus(topics, 20)
    ids = torch.tensor([i for doc in held for i in tiny.tokenizer(doc)["input_ids"] + [0]])
    n = len(ids) // 63
    assert n >= 30
    tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), ids[: n * 63].view(n, 63)], 1)
    loss = -tiny(tokens).log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None]).mean()
    p = torch.bincount(tokens[:, 1:].flatten()).double()
    p = p[p > 0] / p.sum()
    unigram_entropy = -(p * p.log()).sum()
    assert loss < unigram_entropy - 1.5, (float(loss), float(unigram_entropy))
    assert loss <= 4.1, float(loss)  # issue 17: no regression (the stage-2 model scored 4.10 here, this one 4.06)


def test_transformerlens_detect_head_sees_the_same_heads(tiny):
    from transformer_lens.head_detector import detect_head

    (prompt,) = repeated_words(tiny, 1, 25, seed=5)  # text that tokenizes back to the same tokens
    with torch.no_grad():
        prev = detect_head(tiny.bridge, prompt, "previous_token_head")
        ind = detect_head(tiny.bridge, prompt, "induction_head")
        dup = detect_head(tiny.bridge, prompt, "duplicate_token_head")
    assert prev.argmax().item() == 0 * 8 + 4 and prev[0, 4] >= 0.6
    # detect_head averages over all query positions: on a once-repeated sequence its ceiling is ~0.5.
    assert ind[1].max() >= 0.4 and ind[0].max() < 0.1
    assert dup.argmax().item() == 0 * 8 + 2 and 0.15 <= dup[0, 2] < 0.4  # L0H2: half on itself (issue 17's bar: 0.4)
