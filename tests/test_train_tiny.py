"""The interp-tiny training tool (tools/train_tiny): its synthetic rows, its determinism and exact resume.

The full run is a manual step (CI never retrains); these tests run the same code on a
model and corpus small enough to take a second.
"""

import dataclasses

import pytest
import torch

from tools.train_tiny.model import build_model, losses, lr_at, make_optimizer, train_step
from tools.train_tiny.recipe import Recipe
from tools.train_tiny.rows import make_batch, mark_row, marker_positions, marker_targets, row_kinds, skip_row, where_row
from tools.train_tiny.train import load_checkpoint, save_checkpoint

MARKERS = (190, 191)
WHERE_MARKERS = (190, 191, *range(205, 213), 192)
EXIT_MARKERS = (290, 291, *range(292, 300), 289)
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


def test_where_rows_say_where_the_one_earlier_copy_is():
    g = torch.Generator().manual_seed(0)
    n_rep = n_items = 0
    parity = [0, 0]
    for vocab in (256, 4096):
        for _ in range(50):
            row = where_row(g, 64, vocab, WHERE_MARKERS)
            assert row.shape == (64,) and row[0] == 0
            at = marker_positions(row, WHERE_MARKERS, "where")
            assert not torch.isin(row[1:][at], torch.tensor(WHERE_MARKERS[-1:])).any()  # the filler is no marker
            for t in at.nonzero().flatten().tolist():
                item, mark = int(row[t]), int(row[t + 1])
                assert item not in WHERE_MARKERS
                earlier = (row[:t] == item).nonzero().flatten().tolist()
                assert len(earlier) <= 1  # a repeat has exactly one earlier copy
                assert mark == (WHERE_MARKERS[2 + 8 * earlier[0] // 64] if earlier else WHERE_MARKERS[0])
                if earlier:
                    parity[(t - earlier[0]) % 2] += 1
                n_rep += bool(earlier)
                n_items += 1
    assert 0.2 < n_rep / n_items < 0.5
    assert min(parity) > 0.4 * sum(parity)  # copies an odd number of positions back as often as even


def test_the_batch_has_its_rows_in_the_recipes_shares_and_markers_where_they_are():
    r = dataclasses.replace(TINY, n_layer=2, batch_size=8, mark_frac=0.25, where_frac=0.25, reverse_frac=0.25, skip_frac=0)
    kinds = row_kinds(r, 0)  # synthetic only
    assert kinds == ["mark"] * 2 + ["where"] * 2 + ["reverse"] * 2 + ["repeat"] * 2
    tokens = make_batch(r, 0, stream(), WHERE_MARKERS)
    at = marker_targets(r, 0, tokens, WHERE_MARKERS)
    targets = tokens[:, 1:]
    assert torch.isin(targets[at], torch.tensor(WHERE_MARKERS[:-1])).all()
    assert not torch.isin(targets[:4][~at[:4]], torch.tensor(MARKERS)).any()  # the items of mark/where rows
    assert at[:2].all(dim=0).tolist() == [False, True] * 7 + [False] and at[2:4].any(1).all() and not at[4:].any()
    # Without mark or where rows the batch is drawn exactly as before they existed.
    assert row_kinds(TINY, 5) == ["reverse", "skip", "repeat"] + ["text"] * 3


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


def test_without_an_early_exit_a_step_is_plain_next_token_training():
    r = dataclasses.replace(TINY, mark_frac=0.5)
    s = stream()
    model, ref = build_model(r), build_model(r)
    opt, ref_opt = make_optimizer(model, r), make_optimizer(ref, r)
    for step in range(4):
        train_step(model, opt, r, step, s, MARKERS)
        for grp in ref_opt.param_groups:
            grp["lr"] = lr_at(r, step)
        tokens = make_batch(r, step, s, MARKERS)
        logits = ref(tokens).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        ref_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), r.grad_clip)
        ref_opt.step()
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_early_exit_is_the_logit_lens_loss_on_the_markers():
    r = dataclasses.replace(TINY, n_layer=2, mark_frac=0.5, where_frac=0.5, exit_weight=0.5)
    # Markers above every item id at step 0 (ids < syn_vocab_start), so the tokens alone say where they are.
    assert min(EXIT_MARKERS) >= r.syn_vocab_start
    model = build_model(r)
    tokens = make_batch(r, 0, stream(), EXIT_MARKERS)
    at = marker_targets(r, 0, tokens, EXIT_MARKERS)
    loss, exit_loss = losses(model, r, tokens, at)
    # Independently: block 0's output by a torch hook, then ln_f and the tied unembedding by hand.
    seen = {}
    handle = model.transformer.h[0].register_forward_hook(lambda m, i, o: seen.update(out=o[0] if isinstance(o, tuple) else o))
    try:
        model(tokens)
    finally:
        handle.remove()
    ln = model.transformer.ln_f
    h = torch.nn.functional.layer_norm(seen["out"], (r.d_model,), ln.weight, ln.bias, ln.eps)
    logp = (h @ model.transformer.wte.weight.T).log_softmax(-1)[:, :-1]
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    marker_set = torch.tensor(EXIT_MARKERS[:-1])
    rows = torch.tensor([k in ("mark", "where") for k in row_kinds(r, 0)])
    picked = rows[:, None] & torch.isin(tokens[:, 1:], marker_set)  # by the tokens, not the batch's layout
    assert picked.any() and torch.equal(picked, at)
    assert torch.allclose(exit_loss, nll[picked].mean(), atol=1e-5)
    assert abs(exit_loss.item() - loss.item()) > 1e-3  # not the model's own loss


def test_the_early_exit_moves_the_weights_and_needs_a_block_after_it():
    r = dataclasses.replace(TINY, n_layer=2, mark_frac=0.5)
    s = stream()
    plain, exiting = build_model(r), build_model(r)
    with_exit = dataclasses.replace(r, exit_weight=1.0)
    train_step(plain, make_optimizer(plain, r), r, 0, s, MARKERS)
    train_step(exiting, make_optimizer(exiting, with_exit), with_exit, 0, s, MARKERS)
    w = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(plain.state_dict()[w], exiting.state_dict()[w])
    with pytest.raises(ValueError, match="exit_layer 1 out of range"):
        dataclasses.replace(r, exit_weight=1.0, exit_layer=1)
