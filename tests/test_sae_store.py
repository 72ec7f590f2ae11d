"""interp.features.store: activations from one forward pass, shuffled by blocks, cached on disk."""

import pytest
import torch

import interp
from interp.corpus import documents, token_windows
from interp.errors import InterpError
from interp.features.store import ActivationStore

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.0.ln2.hook_normalized"]


@pytest.fixture(scope="module")
def tiny():
    return interp.load("interp-tiny")


@pytest.fixture(scope="module")
def docs():
    return documents(split="heldout")[:40]


def reference_rows(model, docs, n_ctx, windows):
    """Every window's activations (BOS dropped) from model.run, in text order."""
    toks = torch.stack(list(token_windows(model.tokenizer, docs, n_ctx)))[:windows]
    _, cache = model.run(toks, names=HOOKS, logits=False)
    out = {}
    for h in HOOKS:
        a = cache[h]
        a = a.flatten(2) if a.dim() > 3 else a
        out[h] = a[:, 1:].reshape(-1, a.shape[-1])
    return toks, out


def sort_rows(x):
    # a canonical order for a set of rows: lexicographic by rounded values
    keys = torch.round(x * 1e4).double()
    order = torch.arange(len(x))
    for col in reversed(range(min(6, x.shape[1]))):
        order = order[torch.sort(keys[order, col], stable=True).indices]
    return x[order]


def test_one_epoch_is_every_activation_once(tiny, docs):
    store = ActivationStore(tiny, HOOKS, docs, n_ctx=16, batch_size=50, shuffle_buffer=200, seed=3)
    n = store.n_activations_per_epoch()
    toks, ref = reference_rows(tiny, docs, 16, n // 15)
    assert n == len(ref[HOOKS[0]]) and n % 50 != 0
    got = {h: [] for h in HOOKS}
    it = store.batches()
    for _ in range(n // 50 + 1):  # the last batch: the epoch's 35 last rows, then the next epoch's first
        b = next(it)
        assert set(b) == set(HOOKS)
        for h in HOOKS:
            got[h].append(b[h])
    got = {h: torch.cat(v)[:n] for h, v in got.items()}
    # The same multiset of rows, with each token's rows at every hook kept together (rows are compared
    # whole: hook after hook side by side), in a canonical order.
    both = lambda acts: sort_rows(torch.cat([acts[h] for h in HOOKS], dim=1))  # noqa: E731
    torch.testing.assert_close(both(got), both(ref), atol=1e-5, rtol=1e-5)
    # shuffled: the batches do not come in text order
    assert not torch.allclose(got[HOOKS[0]][:50], ref[HOOKS[0]][:50])


def test_order_is_a_function_of_seed_and_index(tiny, docs):
    a = ActivationStore(tiny, HOOKS[:1], docs, n_ctx=16, batch_size=64, shuffle_buffer=150, seed=1)
    first = [b[HOOKS[0]] for _, b in zip(range(12), a.batches())]  # crosses blocks and the epoch's end
    b = ActivationStore(tiny, HOOKS[:1], docs, n_ctx=16, batch_size=64, shuffle_buffer=150, seed=1)
    again = next(b.batches(start=7))[HOOKS[0]]
    assert torch.equal(again, first[7])
    c = ActivationStore(tiny, HOOKS[:1], docs, n_ctx=16, batch_size=64, shuffle_buffer=150, seed=2)
    assert not torch.equal(next(iter(c))[HOOKS[0]], first[0])


def test_disk_cache_resumes_and_replays(tiny, docs, tmp_path, monkeypatch):
    cache = tmp_path / "acts"
    docs = docs[:10]
    kw = dict(n_ctx=16, batch_size=64, shuffle_buffer=150, seed=1, cache_dir=cache)
    plain = ActivationStore(tiny, HOOKS[:2], docs, **{**kw, "cache_dir": None})
    n = plain.n_activations_per_epoch() // 64 + 5  # past one epoch
    want = [b for _, b in zip(range(n), plain.batches())]
    killed = ActivationStore(tiny, HOOKS[:2], docs, **kw)
    for _, b in zip(range(3), killed.batches()):  # a run stopped after a few batches
        pass
    shards = sorted(cache.glob("shard-*.safetensors"))
    assert 0 < len(shards) < 10 and not list(cache.glob(".*part"))
    resumed = ActivationStore(tiny, HOOKS[:2], docs, **kw)
    got = [b for _, b in zip(range(n), resumed.batches())]  # past one epoch: the cache is complete
    for w, g in zip(want, got):
        for h in HOOKS[:2]:
            assert torch.equal(w[h], g[h])
    assert resumed._cached_blocks() == len(list(cache.glob("shard-*.safetensors")))
    # a complete cache replays without running the model
    monkeypatch.setattr(tiny, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("forward ran")))
    replay = ActivationStore(tiny, HOOKS[:2], docs, **kw)
    assert torch.equal(next(replay.batches(start=n - 2))[HOOKS[1]], want[n - 2][HOOKS[1]])
    monkeypatch.undo()
    with pytest.raises(InterpError, match="was made with hooks"):
        ActivationStore(tiny, HOOKS[:1], docs, **kw)
    with pytest.raises(InterpError, match="was made with text"):
        ActivationStore(tiny, HOOKS[:2], docs[:5], **kw)


def test_contexts_mode(tiny, docs):
    store = ActivationStore(tiny, HOOKS, docs, n_ctx=16)
    toks, acts = next(store.contexts(batch_size=5))
    ref_toks, _ = reference_rows(tiny, docs, 16, 5)
    assert torch.equal(toks, ref_toks)
    _, cache = tiny.run(toks, names=HOOKS, logits=False)
    torch.testing.assert_close(acts[HOOKS[1]], cache[HOOKS[1]].flatten(2))
    torch.testing.assert_close(acts[HOOKS[0]], cache[HOOKS[0]])
    assert sum(len(t) for t, _ in store.contexts(batch_size=4, limit=10)) == 10


def test_bad_arguments(tiny):
    with pytest.raises(InterpError, match="no fixed width"):
        ActivationStore(tiny, "blocks.0.attn.hook_pattern")
    with pytest.raises(InterpError, match="no hook point matches"):
        ActivationStore(tiny, "blocks.0.hook_nothing")
    with pytest.raises(InterpError, match="batch_size must be"):
        ActivationStore(tiny, HOOKS[0], batch_size=0)
    with pytest.raises(InterpError, match="longer than the model's context"):
        ActivationStore(tiny, HOOKS[0], n_ctx=1000)
