"""Task generators: shapes, pairing and one-token targets (GPT-2's tokenizer files are not on this machine:
a word-level tokenizer over the tasks' own words stands in for it), and the published circuits they quote."""

import pytest
import torch

import interp
from interp import InterpError, attribute, tasks
from interp.engine import paired_batches
from interp.testing import random_gpt2_hf, word_tokenizer


def task_words():
    words = set()
    for t in tasks._TEMPLATES:
        for p in tasks.PLACES:
            for o in tasks.OBJECTS:
                words |= set(t.format(A="", B="", PLACE=p, OBJECT=o).split())
    words |= set(tasks.NAMES) | set(tasks.NOUNS) | {"The", "lasted", "from", "the", "year", "to"}
    words |= {f"{y:02d}" for y in range(100)} | {f"{c}{y:02d}" for c in range(11, 18) for y in range(100)}
    return sorted(words)


@pytest.fixture(scope="module")
def model():
    words = task_words()
    hf, _ = random_gpt2_hf(seed=5, vocab_size=len(words) + 1, n_embd=32, n_layer=2)
    return interp.load(hf, tokenizer=word_tokenizer(words))


def test_ioi_prompts_pair_and_end_before_the_indirect_object(model):
    t = tasks.ioi(model, n_prompts=6, seed=2)
    cb, kb = paired_batches(model, t.clean, t.corrupted)  # every pair tokenizes to the same length
    assert len(t) == 6 and t.info["order"] == ["ABBA", "BABA"] * 3
    for clean, corrupted, io, s, order in zip(t.clean, t.corrupted, t.info["io"], t.info["s"], t.info["order"]):
        words = clean.split()
        assert words[-1] == "to" and io != s
        assert words.count(io.strip()) == 1 and words.count(s.strip()) == 2  # IO once, the subject twice
        first = [w.strip(",.") for w in words].index(io.strip()) < [w.strip(",.") for w in words].index(s.strip())
        assert first == (order == "ABBA")
        new = set(corrupted.split()) - set(words)
        assert len(new) == 3 and not new & {io.strip(), s.strip()}  # ABC: three other names in the three slots
        assert all(n.strip(",.") in tasks.NAMES for n in new)
    ids = t.metric.bind(model)._ids  # one token each, one per prompt
    assert ids[0].tolist() == [model.tokenizer.encode(n)[0] for n in t.info["io"]]


def test_greater_than_prompts_and_their_metric(model):
    t = tasks.greater_than(model, n_prompts=5, seed=1)
    paired_batches(model, t.clean, t.corrupted)
    for clean, corrupted, yy in zip(t.clean, t.corrupted, t.info["yy"]):
        century = clean.split()[-1]
        assert clean.split()[-5] == f"{century}{yy:02d}" and corrupted.split()[-5] == f"{century}01"
        assert 2 <= yy <= 98
    metric = t.metric.bind(model)
    years = torch.tensor([model.tokenizer.encode(f"{y:02d}")[0] for y in range(100)])
    logits = torch.full((5, model.cfg.d_vocab), -30.0)
    logits[:, years[99]] = 30.0  # every prompt sure of year 99: after each YY
    assert float(metric.value(logits, model.to_batch(t.clean))) == pytest.approx(1.0, abs=1e-6)
    logits[:, years[99]], logits[:, years[2]] = -30.0, 30.0  # sure of 02: never after YY (≥ 02)
    assert float(metric.value(logits, model.to_batch(t.clean))) == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("corrupt", ["half", "key"])
def test_induction_prompts(planted, corrupt):
    t = tasks.induction(planted, n_prompts=3, half=10, seed=4, corrupt=corrupt)
    clean, corrupted = t.clean, t.corrupted
    assert clean.shape == corrupted.shape == (3, 20) and bool((clean[:, 0] == 0).all())
    assert torch.equal(clean[:, 11:], clean[:, 1:10])  # [BOS] r r[:-1]
    changed = (clean != corrupted).any(0).nonzero().flatten().tolist()
    assert changed == (list(range(1, 11)) if corrupt == "half" else [9])
    for i in range(3):
        assert not set(corrupted[i, changed].tolist()) & set(clean[i].tolist())
    if corrupt == "key":  # the planted circuit is all there is to find
        df = attribute(planted, clean, corrupted, progress=False)
        assert set(df["edge"].head(3)) == {"embed->L0H0.v", "L0H0->L1H0.k", "L1H0->logits"}


def test_tasks_say_what_they_cannot_do_and_what_gpt2_small_does(planted):
    with pytest.raises(InterpError, match="needs first names that are one token"):
        tasks.ioi(planted)
    with pytest.raises(InterpError, match="00 … 99 to be one token each"):
        tasks.greater_than(planted)
    with pytest.raises(InterpError, match="n_prompts must be a positive int"):
        tasks.induction(planted, n_prompts=0)
    for heads in ("9.6, 9.9, 10.0", "7.3, 7.9, 8.6, 8.10", "0.1, 0.10, 3.0"):
        assert heads in tasks.PUBLISHED["ioi"]
    assert "5.5, 5.8, 5.9, 6.9" in tasks.PUBLISHED["induction"] and "2.2, 4.11" in tasks.PUBLISHED["induction"]
    assert set(tasks.TASKS) == {"induction", "induction-key", "ioi", "greater-than"}
