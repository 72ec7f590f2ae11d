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


# ---------------------------------------------------------------------------- GPT-2's real vocabulary
def test_ioi_on_gpt2s_vocabulary(gpt2_vocab, gpt2_tokenizer_files, node):
    from test_tokenizer import js_encode

    names = js_encode(node, gpt2_tokenizer_files, [" " + n for n in tasks.NAMES])
    assert all(len(ids) == 1 for ids in names)  # GPT-2's own encoder: each of the 99 is one token
    t = tasks.ioi(gpt2_vocab, n_prompts=8, seed=3)
    cb, kb = paired_batches(gpt2_vocab, t.clean, t.corrupted)
    diff = (cb.tokens != kb.tokens) & cb.attention_mask
    assert diff.sum(-1).tolist() == [3] * 8  # ABC: exactly the three name tokens differ, token for token
    by_name = dict(zip(tasks.NAMES, (ids[0] for ids in names)))
    io_ids = [by_name[n.strip()] for n in t.info["io"]]
    s_ids = [by_name[n.strip()] for n in t.info["s"]]
    for row, last, io, s in zip(cb.tokens.tolist(), cb.last_positions.tolist(), io_ids, s_ids):
        assert row.count(io) == 1 and row.count(s) == 2 and row[last] == 284  # " to" last: the IO comes next
    assert t.metric.bind(gpt2_vocab)._ids[0].tolist() == io_ids


def test_greater_than_on_gpt2s_vocabulary(gpt2_vocab, gpt2_tokenizer_files, node):
    from test_tokenizer import js_encode

    texts = [f" {c}{y:02d}" for c in tasks.CENTURIES for y in range(100)] + [f"{y:02d}" for y in range(100)]
    ids = dict(zip(texts, js_encode(node, gpt2_tokenizer_files, texts)))
    assert all(len(ids[f"{y:02d}"]) == 1 for y in range(100))  # every two-digit year is one token
    # Hanna et al.'s usable start years by GPT-2's own encoder: " XX" then "YY", as " XX01" is.
    split = {(c, y) for c in tasks.CENTURIES for y in range(2, 99)
             if ids[f" {c}{y:02d}"] == ids[f" {c}01"][:1] + ids[f"{y:02d}"] and len(ids[f" {c}01"]) == 2}
    assert tasks.year_split(gpt2_vocab) == split and len(split) == 618
    assert len(ids[" 1700"]) == 1 and (11, 2) not in split and (17, 32) in split  # " 1700" one token; " 1102" not 11+02
    t = tasks.greater_than(gpt2_vocab, n_prompts=40, seed=0)
    assert t.info["yy"][:3] == [2, 3, 4]  # YY still balanced from 02 on
    cb, kb = paired_batches(gpt2_vocab, t.clean, t.corrupted)
    diff = (cb.tokens != kb.tokens) & cb.attention_mask
    assert diff.sum(-1).tolist() == [1] * 40  # the start year's two digits, and nothing else
    for clean, row, last, yy in zip(t.clean, cb.tokens.tolist(), cb.last_positions.tolist(), t.info["yy"]):
        century = int(clean.split()[-1])
        assert (century, yy) in split and row[last] == ids[f" {century}01"][0]  # the prompt ends with " 17"
        assert row[last - 4] == ids[f"{yy:02d}"][0]  # "… year 17|32 to the year 17"


def test_induction_on_gpt2s_vocabulary(gpt2_vocab):
    t = tasks.induction(gpt2_vocab, n_prompts=4, half=12, seed=1)
    assert t.clean.shape == t.corrupted.shape == (4, 24)
    assert (t.clean[:, 0] == 50256).all() and not (t.clean[:, 1:] == 50256).any()  # BOS first, never inside
    assert torch.equal(t.clean[:, 13:], t.clean[:, 1:12]) and int(t.clean[:, 1:].max()) < 50256


def test_tasks_refuse_bad_requests_with_gpt2s_vocabulary(gpt2_vocab):
    with pytest.raises(InterpError, match="order must be 'both', 'ABBA' or 'BABA', not 'AB'"):
        tasks.ioi(gpt2_vocab, order="AB")
    with pytest.raises(InterpError, match="n_prompts must be a positive int, not 0"):
        tasks.greater_than(gpt2_vocab, n_prompts=0)
    with pytest.raises(InterpError, match="half 64 too long: .* exceeds the context window of 128"):
        tasks.induction(gpt2_vocab, half=64)
    with pytest.raises(InterpError, match="corrupt must be 'half' or 'key'"):
        tasks.induction(gpt2_vocab, corrupt="all")


def test_the_gpt2_circuits_of_the_docs_run_on_gpt2s_vocabulary(gpt2_tokenizer_files, tmp_path, monkeypatch, capsys):
    """`interp circuit --task ioi|greater-than` exactly as docs/discovery.md writes them, on a one-layer random model
    with GPT-2's real tokenizer in place of GPT-2's weights (the docs give the GPT-2-small-shaped run's time)."""
    import json
    import re
    import shlex
    from pathlib import Path

    from interp.cli import main
    from interp.testing import write_random_gpt2_dir

    gpt2_vocab_dir = write_random_gpt2_dir(tmp_path / "model", seed=6, tokenizer="gpt2", n_layer=1, n_head=2, n_embd=16,
                                           n_positions=32)

    page = (Path(__file__).resolve().parent.parent / "docs" / "discovery.md").read_text(encoding="utf-8")
    lines = re.findall(r"^interp circuit --task (?:ioi|greater-than) .*$", page, re.M)
    assert len(lines) == 2, lines
    monkeypatch.chdir(tmp_path)
    for line in lines:
        argv = [str(gpt2_vocab_dir) if w == "./gpt2-local" else w for w in shlex.split(line)[1:]]
        assert main([*argv, "--quiet"]) == 0
        out = capsys.readouterr().out
        task = argv[argv.index("--task") + 1]
        assert f"task {task} (8 pairs)" in out and "faithfulness" in out
        data = json.loads(Path(argv[argv.index("--out") + 1]).read_text())
        assert data["edges"] and all(e["sender"] and e["receiver"] for e in data["edges"])
        assert Path(argv[argv.index("--svg") + 1]).read_text().startswith("<svg")
