"""``interp sae train|eval|info``: end to end on interp-tiny, and the command-line contract."""

import json

import pytest

import interp
from interp.cli import main
from interp.features.evaluation import evaluate
from interp.features.sae import SAE

SMALL = ["--tokens", "2048", "--batch-size", "512", "--d-sae", "64", "--k", "4", "--n-ctx", "32", "--shuffle-buffer", "1024",
         "--quiet"]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the options must be refused before."""
    import interp.loading

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(interp.loading, "load", refuse)


def one_line_error(capsys, code, match):
    out = capsys.readouterr()
    assert code == 2, out
    assert out.out == "" and out.err.count("\n") == 1 and "Traceback" not in out.err, out.err
    assert match in out.err, out.err


def test_train_info_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "resid0"
    assert main(["sae", "train", "--hook", "blocks.0.hook_resid_post", "--out", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "blocks.0.hook_resid_post: topk d_sae=64" in printed and f"-> {out}" in printed
    sae = SAE.load(out)
    assert (sae.cfg.model_name, sae.cfg.fold_ln, sae.d_sae, sae.cfg.k) == ("interp-tiny", True, 64, 4)
    assert not (out / "checkpoint").exists() and json.loads((out / "training.json").read_text())["history"]
    assert main(["sae", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "topk (k=4)" in info and "d_in 128, d_sae 64" in info and "fold_ln=True" in info
    table = tmp_path / "eval.json"
    assert main(["sae", "eval", str(out), "--windows", "4", "--out", str(table), "--quiet"]) == 0
    assert "ce_loss_recovered" in capsys.readouterr().out
    (row,) = json.loads(table.read_text())
    want = evaluate(interp.load("interp-tiny"), sae, max_windows=4, progress=False).iloc[0]
    for key in ("explained_variance", "l0", "ce_loss_recovered", "kl_div"):
        assert row[key] == pytest.approx(float(want[key]), rel=1e-6), key
    # a second run into the same directory is refused, nothing overwritten
    before = (out / "sae_weights.safetensors").read_bytes()
    code = main(["sae", "train", "--hook", "blocks.0.hook_resid_post", "--out", str(out), *SMALL])
    one_line_error(capsys, code, "already holds an SAE")
    assert (out / "sae_weights.safetensors").read_bytes() == before


def test_several_hooks_and_a_transcoder(tmp_path, capsys):
    out = tmp_path / "many"
    code = main(["sae", "train", "--hook", "blocks.0.ln2.hook_normalized", "--hook-out", "blocks.0.hook_mlp_out", "--skip",
                 "--hook", "blocks.1.attn.hook_z", "--hook-out", "blocks.1.attn.hook_z", "--out", str(out), *SMALL])
    assert code == 0, capsys.readouterr().err
    tc = SAE.load(out / "blocks.0.ln2.hook_normalized")
    assert tc.is_transcoder and tc.W_skip is not None and tc.hook_name_out == "blocks.0.hook_mlp_out"
    assert SAE.load(out / "blocks.1.attn.hook_z").d_in == 128


@pytest.mark.parametrize("argv,match", [
    (["sae", "train", "--hook", "blocks.0.hook_resid_post", "--out", "/nonexistent/x"], "directory /nonexistent does not exist"),
    (["sae", "train", "--hook", "blocks.0.hook_resid_post", "--out", "OUT", "--tokens", "2x"], "'2x' is not a number of tokens"),
    (["sae", "train", "--hook", "a", "--hook", "b", "--hook-out", "c", "--out", "OUT"], "--hook-out: give one per --hook (2), not 1"),
    (["sae", "train", "--hook", "a", "--skip", "--out", "OUT"], "--skip is for transcoders"),
    (["sae", "train", "--hook", "a", "--resume", "--out", "OUT"], "has no checkpoint to resume"),
    (["sae", "train", "--hook", "a", "--arch", "gated", "--out", "OUT"], "invalid choice: 'gated'"),
    (["sae", "train", "--hook", "a", "--k", "99", "--d-sae", "8", "--out", "OUT"], "k=99 is larger than d_sae=8"),
    (["sae", "train", "--hook", "a", "--text", "/nonexistent.txt", "--out", "OUT"], "--text /nonexistent.txt: no such file"),
    (["sae", "eval", "/nonexistent"], "no SAE at /nonexistent"),
    (["sae", "eval", "SAE", "--out", "table.txt"], "unknown table format"),
    (["sae", "info", "/nonexistent"], "no SAE at /nonexistent"),
])
def test_bad_options_are_one_line_before_the_model_loads(argv, match, tmp_path, capsys, no_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from interp.features.sae import SAEConfig

    SAE(SAEConfig("topk", d_in=128, d_sae=64, k=4, hook_name="blocks.0.hook_resid_post", fold_ln=True)).save(tmp_path / "SAE")
    one_line_error(capsys, main(argv), match)
    assert not (tmp_path / "OUT").exists() and not list(tmp_path.glob("table*"))


def test_bad_hook_is_refused_before_any_work(tmp_path, capsys):
    code = main(["sae", "train", "--hook", "blocks.7.hook_resid_post", "--out", str(tmp_path / "x"), *SMALL])
    one_line_error(capsys, code, "no hook point matches 'blocks.7.hook_resid_post'")
    assert not (tmp_path / "x").exists()
