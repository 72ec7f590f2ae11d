"""The interp-tiny training tool (tools/train_tiny): its synthetic rows, its determinism and exact resume.

The full run is a manual step (CI never retrains); these tests run the same code on a
model and corpus small enough to take a second.
"""

import dataclasses

import pytest
import torch

from tools.train_tiny.model import build_model, make_optimizer, train_step
from tools.train_tiny.recipe import Recipe
from tools.train_tiny.rows import make_batch, mark_row, skip_row
from tools.train_tiny.train import load_checkpoint, save_checkpoint

MARKERS = (190, 191)
TINY = Recipe(
    steps=8,
    n_layer=1,
    d_model=16,
    n_head=2,
    n_ctx=16,
    vocab_size=300,
    batch_size=6,
    warmup_steps=2,
    synthetic_only_steps=3,
    ramp_steps=2,
    syn_vocab_start=200,
    syn_vocab_ramp=4,
    min_span=3,
    max_span=6,
)


@pytest.fixture(autouse=True)
def _no_grad():
    """Overrides conftest's: these tests train."""
    with torch.enable_grad():
        yield


def stream():
    return torch.randint(1, TINY.vocab_size, (500,), generator=torch.Generator().manual_seed(1))


def test_mark_rows_say_whether_each_item_was_seen_before():
    g = torch.Generator().manual_seed(0)
    n_seen = n_new = 0
    for _ in range(50):
        row = mark_row(g, 64, 4096, MARKERS)
        assert row.shape == (64,) and row[0] == 0
        items, marks = row[1::2], row[2::2]
        assert not torch.isin(items, torch.tensor(MARKERS)).any()
        for t, m in enumerate(marks.tolist()):
            seen = bool((items[:t] == items[t]).any())
            assert m == MARKERS[1 if seen else 0]
            n_seen += seen
            n_new += not seen
    assert 0.3 < n_seen / (n_seen + n_new) < 0.7  # "about half are repeats"


def test_skip_rows_copy_the_token_two_back_at_random_positions():
    row = skip_row(torch.Generator().manual_seed(0), 64, 4096)
    x = row[1:]
    hits = (x[2:] == x[:-2]).nonzero().flatten() + 2
    assert row[0] == 0 and 8 <= len(hits) <= 40
    assert len(set((hits % 3).tolist())) == 3  # not a fixed phase


def test_batches_are_a_pure_function_of_seed_and_step():
    s = stream()
    assert torch.equal(make_batch(TINY, 5, s, MARKERS), make_batch(TINY, 5, s, MARKERS))
    assert not torch.equal(make_batch(TINY, 5, s, MARKERS), make_batch(TINY, 6, s, MARKERS))
    other_seed = dataclasses.replace(TINY, seed=1)
    assert not torch.equal(make_batch(TINY, 5, s, MARKERS), make_batch(other_seed, 5, s, MARKERS))


def test_resuming_from_a_checkpoint_gives_the_same_weights_as_not_stopping(tmp_path):
    s = stream()
    straight = build_model(TINY)
    opt = make_optimizer(straight, TINY)
    for step in range(TINY.steps):
        train_step(straight, opt, TINY, step, s, MARKERS)

    first = build_model(TINY)
    opt = make_optimizer(first, TINY)
    for step in range(3):
        train_step(first, opt, TINY, step, s, MARKERS)
    save_checkpoint(tmp_path / "last.pt", first, opt, 3, TINY, 1.0, 2.5, 1)
    resumed = build_model(TINY)
    opt = make_optimizer(resumed, TINY)
    ck = load_checkpoint(tmp_path / "last.pt", resumed, opt, TINY)
    assert ck == {"step": 3, "elapsed_s": 1.0, "loss_sum": 2.5, "loss_n": 1}
    for step in range(3, TINY.steps):
        train_step(resumed, opt, TINY, step, s, MARKERS)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.transformer.h[0].attn.c_attn.weight, first.transformer.h[0].attn.c_attn.weight)


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    model = build_model(TINY)
    opt = make_optimizer(model, TINY)
    save_checkpoint(tmp_path / "last.pt", model, opt, 0, TINY, 0.0, 0.0, 0)
    with pytest.raises(SystemExit, match="lr"):
        load_checkpoint(tmp_path / "last.pt", model, opt, dataclasses.replace(TINY, lr=1e-3))


def test_unknown_recipe_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown recipe keys \\['stepz'\\]"):
        Recipe.from_dict({"stepz": 3})
