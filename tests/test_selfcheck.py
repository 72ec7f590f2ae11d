"""interp check-gpt2's logic on models we have: expectations computed independently (Hugging Face's forward pass,
planted heads), then each kind of check made to fail once."""

import dataclasses

import pytest
import torch

import interp
from analyses import selfcheck
from interp.cli import main
from analyses.selfcheck import Expected, NextTokens, Pattern, check_gpt2, format_checks
from interp.testing import PLANTED_HEADS, planted_hf_model


@torch.no_grad()
def hf_expectations(hf, tok, loss_prompt, next_prompts, pattern, heads=(), n_top=5, logit_ids=()):
    """What a published table would say about ``hf``, computed with Hugging Face's own forward pass."""
    def ids(text, bos):
        return torch.tensor([([tok.bos_token_id] if bos else []) + tok(text, add_special_tokens=False)["input_ids"]])

    t = ids(loss_prompt, True)
    logits = hf(t).logits[0].detach().double()
    loss = float(torch.nn.functional.cross_entropy(logits[:-1], t[0, 1:]))
    nexts = []
    for prompt in next_prompts:
        last = hf(ids(prompt, False)).logits[0, -1].double()
        p = last.softmax(-1)
        top = p.topk(n_top)
        nexts.append(NextTokens(prompt, tuple((i, tok.decode([i]), round(v, 6)) for i, v in
                                              zip(top.indices.tolist(), top.values.tolist())),
                                {i: float(last[i]) for i in logit_ids}))
    layer, head, prompt = pattern
    att = hf(ids(prompt, False), output_attentions=True).attentions[layer][0, head].double()
    return Expected(loss_prompt=loss_prompt, loss=loss, next_tokens=tuple(nexts),
                    pattern=Pattern(layer, head, prompt, tuple(tuple(r) for r in att.tolist())), heads=tuple(heads),
                    heads_top=1)


@pytest.fixture(scope="module")
def random_case(small_hf):
    hf, tok = small_hf
    expected = hf_expectations(hf, tok, "Hello world!", ["The cat sat on the", "def f(x):"], (1, 2, "The dog is black"),
                               logit_ids=(0, 1, 1998, 1999))
    return interp.load(hf, tokenizer=tok, fold_ln=False), expected


@pytest.fixture(scope="module")
def planted_case():
    hf, tok = planted_hf_model()
    heads = [(layer, head, kind, "planted") for (layer, head), kind in PLANTED_HEADS.items()]
    expected = hf_expectations(hf, tok, "a b c d a b c d", ["e f g h e f g"], (0, 0, "a b c d"), heads=heads, n_top=1,
                               logit_ids=(0, 31))
    return interp.load(hf, tokenizer=tok, fold_ln=False), expected


def test_everything_passes_when_the_numbers_are_right(random_case, planted_case):
    for model, expected in (random_case, planted_case):
        checks = check_gpt2(model, expected, progress=False)
        assert all(c.ok for c in checks), format_checks(checks)
    # 1 loss + 2 × (5 tokens + 4 logits) + one per pattern row on the random model
    model, expected = random_case
    assert len(check_gpt2(model, expected, progress=False)) == 1 + 2 * 9 + len(expected.pattern.rows)


@pytest.mark.parametrize("mutation, failing", [
    (lambda e: dataclasses.replace(e, loss=e.loss + 5e-5), ["loss of 'Hello world!' (with BOS)"]),
    (lambda e: _swap_tokens(e), ["'The cat sat on the' → #1", "'The cat sat on the' → #2"]),
    (lambda e: _bump_prob(e), ["'def f(x):' → #3"]),
    (lambda e: _bump_logit(e), ["'The cat sat on the' → raw logit of id 1999"]),
    (lambda e: _bump_pattern(e), ["L1H2 on 'The dog is black', query 2"]),
])
def test_each_check_fails_when_its_number_is_off(random_case, mutation, failing):
    model, expected = random_case
    checks = check_gpt2(model, mutation(expected), progress=False)
    assert [c.what for c in checks if not c.ok] == failing


def _swap_tokens(e):
    nt = e.next_tokens[0]
    top = (nt.top[1][:2] + nt.top[0][2:], nt.top[0][:2] + nt.top[1][2:], *nt.top[2:])  # same probs, ids swapped
    return dataclasses.replace(e, next_tokens=(dataclasses.replace(nt, top=top), *e.next_tokens[1:]))


def _bump_prob(e):
    nt = e.next_tokens[1]
    top = list(nt.top)
    i, text, p = top[2]
    top[2] = (i, text, p + 7e-5)
    return dataclasses.replace(e, next_tokens=(e.next_tokens[0], dataclasses.replace(nt, top=tuple(top))))


def _bump_logit(e):
    nt = e.next_tokens[0]
    logits = dict(nt.logits)
    logits[1999] += 6e-4
    return dataclasses.replace(e, next_tokens=(dataclasses.replace(nt, logits=logits), *e.next_tokens[1:]))


def _bump_pattern(e):
    rows = [list(r) for r in e.pattern.rows]
    rows[2][1] *= 1.003
    return dataclasses.replace(e, pattern=dataclasses.replace(e.pattern, rows=tuple(map(tuple, rows))))


def test_a_wrong_head_claim_fails(planted_case):
    model, expected = planted_case
    wrong = dataclasses.replace(expected, heads=expected.heads + ((0, 3, "previous_token", "wrong"),))
    failed = [c for c in check_gpt2(model, wrong, progress=False) if not c.ok]
    assert [c.what for c in failed] == ["L0H3 is a known previous_token head"]
    assert failed[0].got.startswith("#") and failed[0].got.split()[0] != "#1"


def test_the_published_table_is_what_the_issue_quotes():
    e = selfcheck.GPT2_SMALL
    assert e.loss == 5.331855773925781 and e.loss_tol == 4e-5 and e.loss_prompt == "Hello world!"
    cat = e.next_tokens[0]
    assert [i for i, _, _ in cat.top] == [4314, 3996, 18507, 2323, 5743]
    assert cat.logits == {0: -94.1504, 1: -91.7648, 50255: -95.7328, 50256: -93.9105}
    assert [t for _, t, _ in e.next_tokens[1].top] == [" bed", " floor", " couch", " sofa", " ground"]
    assert (e.pattern.layer, e.pattern.head, e.pattern.rows[3][2]) == (4, 11, 1.0)
    by_kind = {}
    for layer, head, kind, _ in e.heads:
        by_kind.setdefault(kind, []).append(f"{layer}.{head}")
    assert by_kind == {"previous_token": ["2.2", "4.11"], "duplicate_token": ["0.1", "0.10", "3.0", "0.5"],
                       "induction": ["5.5", "5.8", "5.9", "6.9"], "self": ["0.3"], "spread": ["0.9"]}


def test_folded_models_are_refused(small_folded):
    with pytest.raises(interp.InterpError, match="load the model with fold_ln=False"):
        check_gpt2(small_folded)


def test_command_prints_the_table_and_exits_1_on_a_failure(planted_case, planted_dir, monkeypatch, capsys):
    _, expected = planted_case
    monkeypatch.setattr(selfcheck, "GPT2_SMALL", expected)
    assert main(["check-gpt2", "--model", planted_dir, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"self-check of --model {planted_dir} (Hugging Face's weights, fold_ln=False)\ncheck")
    assert "L1H0 is a known induction head" in out and out.rstrip().endswith("checks passed")
    monkeypatch.setattr(selfcheck, "GPT2_SMALL", dataclasses.replace(expected, loss=expected.loss + 1.0))
    assert main(["check-gpt2", "--model", planted_dir, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and out.rstrip().endswith("1 FAILED")


# ---------------------------------------------------------------------------- GPT-2's tokenizer, random weights
@pytest.fixture(scope="module")
def gpt2_grid_dir(gpt2_tokenizer_files, tmp_path_factory):
    """GPT-2 small's grid of heads (12 layers × 12 heads) at width 48, random weights, GPT-2's real tokenizer."""
    from interp.testing import write_random_gpt2_dir

    return write_random_gpt2_dir(tmp_path_factory.mktemp("gpt2_grid"), seed=4, tokenizer="gpt2", n_layer=12,
                                 n_head=12, n_embd=48, n_positions=128)


def test_gpt2s_tokenizer_passes_and_random_weights_fail(gpt2_grid_dir, monkeypatch, capsys):
    """The tokenization rows need only GPT-2's tokenizer files: they pass; every number row fails but one
    (query 0 of a pattern is 1 for any model)."""
    grid = (12, 12, 48, 50257, 128)  # GPT-2 small's shape but for its width and context: the numbers are the same checks
    monkeypatch.setattr(selfcheck, "GPT2_SMALL", dataclasses.replace(selfcheck.GPT2_SMALL, shape=grid))
    assert main(["check-gpt2", "--model", str(gpt2_grid_dir), "--quiet"]) == 1
    out = capsys.readouterr().out.splitlines()
    tokenizer = out[out.index("-- tokenization: GPT-2's tokenizer files, no weights involved") + 1:
                    out.index("-- numbers: GPT-2 small's own weights")]
    assert len(tokenizer) == 11 and all(line.split()[-1] != "FAILED" and " ok " in line for line in tokenizer)
    assert "tokens of 'The cat sat on the floor'" in tokenizer[1] and "[464, 3797, 3332, 319, 262, 4314]" in tokenizer[1]
    assert out[-3:] == ["tokenization: 11 of 11 checks passed", "numbers: 1 of 31 checks passed; 30 FAILED",
                        "the tokenizer is GPT-2's; the numbers are not GPT-2 small's: are these its own weights? "
                        f"(--model {gpt2_grid_dir}; docs/models.md, 'Self-check on real GPT-2')"]
    assert out[0] == f"self-check of --model {gpt2_grid_dir} (Hugging Face's weights, fold_ln=False)"


def test_a_tokenizer_that_is_not_gpt2s_fails_its_rows(gpt2_grid_dir, tmp_path, monkeypatch):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(gpt2_grid_dir, other)
    merges = (other / "merges.txt").read_text().splitlines()
    (other / "merges.txt").write_text("\n".join(merges[:1] + merges[2:]) + "\n")  # one merge (Ġ a) left out
    model = interp.load(other, fold_ln=False)
    e = dataclasses.replace(selfcheck.GPT2_SMALL, shape=None, heads=())
    failed = [c.what for c in check_gpt2(model, e, progress=False) if c.group == "tokenizer" and not c.ok]
    assert failed == ["tokens of 'The cat sat on the floor'", "tokens of 'The child sat on the'"]  # " sat on the": " a"


def test_check_gpt2_needs_gpt2_small_and_says_how_to_get_it(monkeypatch, capsys):
    import interp.cli.common

    def no_load(args):
        raise AssertionError("loaded a model the check cannot use")

    monkeypatch.setattr(interp.cli.common, "load_model", no_load)
    assert main(["check-gpt2", "--model", "interp-tiny"]) == 2
    err = capsys.readouterr().err
    assert err == ("interp check-gpt2: error: --model interp-tiny: the self-check compares with GPT-2 small's "
                   "published numbers: it needs GPT-2 small (12 layers × 12 heads, d_model 768, vocab 50257, context "
                   "1024), not a model of 2 layers × 8 heads, d_model 128, vocab 4096, context 64 (docs/models.md "
                   "says how to get GPT-2 small offline)\n")
    monkeypatch.undo()
    assert main(["check-gpt2"]) == 2  # --model gpt2, offline: the command-line way to give a directory
    err = capsys.readouterr().err
    assert err.startswith("interp check-gpt2: error: --model gpt2: 'gpt2' is not in the local Hugging Face cache")
    assert err.endswith("pass its directory: --model ./gpt2-local (docs/models.md)\n") and "interp.load" not in err
