"""The command-line contract, checked over bad inputs to every command.

Every command checks all of its arguments, input files and output targets before it loads the
model or computes anything, and then writes all of its outputs or none: bad input is exit code 2,
one line on stderr naming the option and the value, nothing on stdout, no file written.
"""

import io
import os
import subprocess
import sys

import pytest

from interp import cli
from interp.cli import main


class ModelLoaded(Exception):
    """Raised instead of loading a model: the command should have refused its input before."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(args):
        raise ModelLoaded(args.model)

    for module in (cli.heads, cli.lens, cli.ov, cli.ablate, cli.report, cli.patching, cli.compose, cli.misc):
        monkeypatch.setattr(module, "load_model", refuse)


# (argv, what the one line on stderr must say). None of these may load the model.
BEFORE_THE_MODEL = [
    (["heads", "--top", "0"], "argument --top: 0 is not a number of rows"),
    (["heads", "--top", "-1"], "argument --top: -1 is not a number of rows"),
    (["heads", "--repeated", "-1"], "argument --repeated: -1 is negative"),
    (["heads", "--half", "0"], "argument --half: 0 is not a length"),
    (["heads", "--batch-size", "0"], "argument --batch-size: 0 is not a batch size"),
    (["heads", "--prompts-file", "missing.txt"], "--prompts-file missing.txt: no such file"),
    (["heads", "--kinds", "copying"], "unknown head kind(s) ['copying']"),
    (["heads", "--positions", "all"], "--positions all: omit --positions"),
    (["heads", "--positions", "x"], "cannot read positions 'x'"),
    (["heads", "--out", "table.xlsx"], "--out table.xlsx: unknown table format"),
    (["heads", "--out", "good.csv", "--png", "nodir/x.png"], "--png nodir/x.png: directory nodir does not exist"),
    (["heads", "--png", "x.gif"], "--png x.gif: unknown image format"),
    (["heads", "--format", "csv"], "--format goes with --out FILE"),
    (["heads", "--repeated", "0", "--half", "5"], "--half sets the length of repeated random tokens"),
    (["lens", "a b", "--top", "0"], "argument --top/--k: 0 is not a number of tokens"),
    (["lens", "a b", "--dla"], "--dla needs --target"),
    (["lens", "a b", "--contrast", "x"], "--contrast needs --dla"),
    (["lens", " ", "--target", "a"], "the prompt is empty"),
    (["lens", "a b", "--target", "id:x"], "cannot read token 'id:x'"),
    (["lens", "a b", "--out", "lens.txt"], "--out lens.txt: unknown table format"),
    (["ov", "--head", "1"], "--head needs --layer"),
    (["ov", "--text", "t.txt"], "--text is the text --rank scores"),
    (["ov", "--rank", "x"], "cannot read ranks 'x'"),
    (["ov", "--directions", "0"], "argument --directions: 0 is not a number of directions"),
    (["ov", "--tokens", "0"], "argument --tokens: 0 is not a number of tokens"),
    (["ov", "--max-windows", "0", "--rank", "1"], "argument --max-windows: 0 is not a number of windows"),
    (["ov", "--rank", "1", "--text", "missing.txt"], "--text missing.txt: no such file"),
    (["ov", "--png", "copying.gif"], "--png copying.gif: unknown image format"),
    (["ablate"], "give --heads L.H[,L.H…] (those heads) or --scan"),
    (["ablate", "--scan", "--heads", "0.1"], "give --heads L.H[,L.H…] (those heads) or --scan"),
    (["ablate", "--heads", "0.1", "--top", "-1"], "argument --top: -1 is not a number of rows"),
    (["ablate", "--heads", "0.1", "--max-windows", "0"], "argument --max-windows: 0 is not a number of windows"),
    (["ablate", "--heads", "0.1", "--max-windows", "-1"], "argument --max-windows: -1 is not a number of windows"),
    (["ablate", "--heads", "0.1", "--window", "0"], "argument --window: 0 is not a window length"),
    (["ablate", "--heads", "0.1", "--window", "8"], "--window sets the windows of --text / --reference"),
    (["ablate", "--heads", "0.1", "--metric", "logit_diff"], "--metric logit_diff needs --target and --contrast"),
    (["ablate", "--heads", "0.1", "--metric", "prob"], "--metric prob needs --target"),
    (["ablate", "--heads", "0.1", "--target", "a"], "--target/--contrast go with --metric logit_diff or prob"),
    (["ablate", "--heads", "0.1", "--method", "mean"], "--method mean needs --reference: a text FILE"),
    (["ablate", "--heads", "0.1", "--method", "zero", "--reference", "r.txt"], "--reference goes with --method mean"),
    (["ablate", "--heads", "0.1", "--method", "pattern"], "--method pattern needs --keys"),
    (["ablate", "--heads", "0.1", "--keys", "previous"], "--keys belongs to --method pattern, not zero"),
    (["ablate", "--heads", "0.1", "--method", "pattern", "--keys", "next"], "unknown --keys 'next': use previous, self, bos"),
    (["ablate", "--heads", "0.1", "--method", "shuffle"], "argument --method: invalid choice: 'shuffle'"),
    (["ablate", "--heads", "0.1", "--text", "t.txt", "--prompt", "a b"], "give --text FILE or --prompt TEXT, not both"),
    (["ablate", "--scan", "--by", "layer", "--png", "x.png"], "--png draws a layers × heads heatmap"),
    (["ablate", "--heads", "0.1", "--text", "missing.txt"], "--text missing.txt: no such file"),
    (["report", "a b"], "nothing to write: give --out report.html"),
    (["report", "a b", "--out", "r.html", "--no-scores"], "--no-scores needs --heads"),
    (["report", "a b", "--out", "r.html", "--top", "0"], "argument --top: 0 is not a number of heads"),
    (["report", "a b", "--png-dir", "nodir/sub"], "directory nodir does not exist"),
    (["report", "--file", "missing.txt", "--out", "r.html"], "--file missing.txt: no such file"),
    (["report", "a b", "--file", "p.txt", "--out", "r.html"], "either as an argument or with --file, not both"),
    (["report", "a b", "--out", "r.html", "--line-min-weight", "2"], "--line-min-weight 2.0: give a weight between 0 and 1"),
    (["patch", "--clean", "a b"], "give clean and corrupted prompts together"),
    (["patch", "--clean", "a", "--corrupted", "b", "--by", "head_pos", "--site", "resid_pre"], "--by head_pos does not fit --site resid_pre"),
    (["patch", "--clean", "a", "--corrupted", "b", "--contrast", "x"], "--contrast needs --target"),
    (["patch", "--clean", "a", "--corrupted", "b", "--by", "head_pos", "--png", "p.png"], "--png draws layers × heads"),
    (["path-patch", "--clean", "a", "--corrupted", "b"], "the following arguments are required: --receivers"),
    (["compose", "--top", "0"], "argument --top: 0 is not a number of rows"),
    (["compose", "--kind", "x"], "argument --kind: invalid choice: 'x'"),
    (["compose", "--out", "x.xlsx"], "--out x.xlsx: unknown table format"),
    (["bench", "--only", "nope"], "unknown benchmark section(s) ['nope']"),
    (["bench", "--prompts", "0"], "argument --prompts: 0 is not a number of prompts"),
]


@pytest.mark.parametrize("argv, message", BEFORE_THE_MODEL, ids=[" ".join(a)[:60] for a, _ in BEFORE_THE_MODEL])
def test_bad_input_is_refused_before_the_model_loads(no_model, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text to read\n")
    (tmp_path / "r.txt").write_text("a reference text\n")
    (tmp_path / "p.txt").write_text("a prompt\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


# Checked once the model's shape is known, still before any work and before anything is written.
WITH_THE_MODEL = [
    (["heads", "--layers", "0-9"], "layer 2 out of range: model has 2 layers"),
    (["heads", "--heads", "1.1,1.1"], "head 1.1 given twice"),
    (["heads", "--heads", "0.9"], "head 9 out of range: model has 4 heads per layer"),
    (["lens", "a b", "--target", "a b"], "target 'a b' is 2 tokens"),
    (["lens", "a b", "--positions", "7"], "position 7 out of range for prompt 0"),
    (["ov", "--layer", "1", "--head", "0", "--rank", "999"], "--rank 999: out of range"),
    (["ov", "--layer", "5"], "layer 5 out of range"),
    (["ov", "--directions", "99"], "--directions 99: a head has only d_head = 64 directions"),
    (["ablate", "--heads", ""], "no heads given"),
    (["ablate", "--heads", "1.1,1.1"], "head 1.1 given twice"),
    (["ablate", "--heads", "0.1", "--text", "t.txt", "--window", "99"], "--window 99: out of range"),
    (["report", "a b", "--out", "r.html", "--heads", "7.0"], "layer 7 out of range"),
    (["patch", "--clean", "a b c", "--corrupted", "a b c d"], "differ in length"),
    (["patch", "--clean", "a b c", "--corrupted", "a b d", "--heads", "3.0"], "layer 3 out of range"),
    (["path-patch", "--clean", "a b", "--corrupted", "a c", "--receivers", "1.0.x"], "cannot read receiver '1.0.x'"),
]


@pytest.mark.parametrize("argv, message", WITH_THE_MODEL, ids=[" ".join(a)[:60] for a, _ in WITH_THE_MODEL])
def test_bad_input_known_with_the_model_writes_nothing(planted_dir, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("a b c d e f g h i j\n")
    target = "out.json"
    assert main([*argv, "--model", planted_dir, *(["--out", target] if argv[0] != "report" else [])]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]  # nothing written


def test_empty_stdin_is_an_error_not_the_default_probe(no_model, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n  \n"))
    assert main(["heads", "--prompts-file", "-"]) == 2
    assert "--prompts-file -: the text is empty" in capsys.readouterr().err


def test_unknown_flags_show_the_subcommands_usage(capsys):
    assert main(["heads", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: interp heads") and err.strip().endswith("interp heads: error: unrecognized arguments: --bogus")


def test_a_failing_figure_leaves_no_table(planted_dir, tmp_path, monkeypatch, capsys):
    """All outputs or none: the table is not written when the figure cannot be."""
    from interp.cli.common import Outputs

    def broken(self, fig, path=None):
        def fail(tmp):
            raise OSError(28, "No space left on device")

        self.add(path or self.image, fail)

    monkeypatch.setattr(Outputs, "add_figure", broken)
    old = tmp_path / "heads.csv"
    old.write_text("the old table\n")
    assert main(["heads", "--model", planted_dir, "--no-progress", "--out", str(old), "--png", str(tmp_path / "h.png")]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert old.read_text() == "the old table\n" and not (tmp_path / "h.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.csv"]  # no temporary left behind


# ---------------------------------------------------------------------------- streams: stdin, pipes, full disks
@pytest.mark.parametrize("argv, option", [
    (["heads", "--prompts-file", "-"], "--prompts-file"),
    (["heads", "--document", "-"], "--document"),
    (["report", "--file", "-", "--out", "r.html"], "--file"),
    (["ablate", "--heads", "0.1", "--text", "-"], "--text"),
    (["ov", "--rank", "1", "--text", "-"], "--text"),
    (["patch", "--clean-file", "-", "--corrupted-file", "t.txt"], "--clean-file"),
    (["circuit", "--clean-file", "t.txt", "--corrupted-file", "-", "--out", "c.json"], "--corrupted-file"),
])
def test_a_closed_stdin_is_one_line_before_the_model(no_model, tmp_path, monkeypatch, capsys, argv, option):
    monkeypatch.setattr(cli.discovery, "load_model", lambda args: (_ for _ in ()).throw(ModelLoaded(args.model)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("a b c\n")
    monkeypatch.setattr(sys, "stdin", None)  # what Python makes of `<&-`
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"interp {argv[0]}: error: {option} -: stdin is closed; pipe the text in or give a file"


def test_stdin_is_read_once_for_two_options(planted_dir, tmp_path, monkeypatch, capsys):
    """ablate --text - --reference -: both are the piped text (a second read would find it empty)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("a b c d e f g h a b c d e f g h\n"))
    assert main(["ablate", "--model", planted_dir, "--heads", "0.0", "--method", "mean", "--text", "-",
                 "--reference", "-", "--no-progress"]) == 0
    assert "L0H0" in capsys.readouterr().out


class _Stream(io.StringIO):
    """A standard output whose reader has gone (EPIPE) or whose disk is full (ENOSPC)."""

    def __init__(self, errno_):
        super().__init__()
        self.errno_ = errno_

    def write(self, text):
        raise OSError(self.errno_, os.strerror(self.errno_))

    def flush(self):
        raise OSError(self.errno_, os.strerror(self.errno_))


def test_a_closed_pipe_ends_the_printout_not_the_command(planted_dir, tmp_path, monkeypatch, capsys):
    """`interp patch --out p.csv | head -1`: the files are written all the same, no traceback, exit 0."""
    import errno

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdout", _Stream(errno.EPIPE))
    assert main(["patch", "--model", planted_dir, "--clean", "a b c d", "--corrupted", "a b d d", "--out", "p.csv",
                 "--png", "p.png", "--no-progress"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("interp patch: warning:")]
    assert err == ["wrote p.csv", "wrote p.png"]
    assert (tmp_path / "p.csv").read_text().startswith("layer,head")


def test_a_full_disk_on_stdout_is_one_line_and_writes_no_file(planted_dir, tmp_path, monkeypatch, capsys):
    import errno

    monkeypatch.chdir(tmp_path)
    (tmp_path / "h.csv").write_text("the old table\n")
    monkeypatch.setattr(sys, "stdout", _Stream(errno.ENOSPC))
    assert main(["heads", "--model", planted_dir, "--out", "h.csv", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "interp heads: error: cannot write to standard output: No space left on device\n"
    assert (tmp_path / "h.csv").read_text() == "the old table\n" and os.listdir(tmp_path) == ["h.csv"]


def test_a_closed_pipe_in_a_real_process(planted_dir, tmp_path):
    """What only a process shows: Python's own flush at exit (no "Exception ignored … BrokenPipeError")."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The reader is gone before anything is printed: every write fails with EPIPE.
    p = subprocess.Popen([sys.executable, "-m", "interp.cli", "heads", "--model", planted_dir, "--out", "h.csv"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and err == "wrote h.csv\n", err
    assert (tmp_path / "h.csv").read_text().startswith("layer,head")


# ---------------------------------------------------------------------------- outputs: all or nothing, distinct
@pytest.mark.parametrize("argv, message", [
    (["report", "a b", "--out", "r.html", "--csv", "r.html"], "--csv and --out name the same file r.html"),
    (["report", "a b", "--out", "figs", "--png-dir", "figs"], "--out and --png-dir name the same file figs"),
    (["circuit", "--task", "induction", "--out", "c.json", "--html", "c.json"], "--html c.json: give a .html file name"),
    (["bench", "--only", "forward", "--pos", "100000"], "--pos 100000: give 3 to 1024 tokens"),
])
def test_more_bad_outputs_and_sizes_are_refused_first(no_model, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.discovery, "load_model", lambda args: (_ for _ in ()).throw(ModelLoaded(args.model)))
    import interp.bench

    monkeypatch.setattr(interp.bench, "Context", None)  # the bench builds no model either
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def test_an_unwritable_figure_directory_is_refused_by_name(no_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figs").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == "figs" else real(p, mode))
    assert main(["report", "a b", "--png-dir", "figs"]) == 2  # as root nothing is unwritable: say it is
    assert capsys.readouterr().err.strip() == "interp report: error: --png-dir figs: directory figs is not writable"


def test_a_report_that_fails_late_leaves_every_file_as_it_was(planted_dir, tmp_path, monkeypatch, capsys):
    """The figure directory refuses the rename after the page and the CSV are ready: nothing changes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.html").write_text("the old report")
    (tmp_path / "p.csv").write_text("the old patterns")
    real = os.replace

    def refuse(src, dst):
        if "figs" in str(dst):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    argv = ["report", "a b c a b c", "--model", planted_dir, "--heads", "0.0", "--no-scores", "--no-progress",
            "--out", "r.html", "--csv", "p.csv", "--svg-dir", "figs"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "interp report: error: cannot write figs/L0H0.pattern.svg: Permission denied\n"
    assert sorted(os.listdir(tmp_path)) == ["p.csv", "r.html"]  # no new directory, no temporary file
    assert (tmp_path / "r.html").read_text() == "the old report" and (tmp_path / "p.csv").read_text() == "the old patterns"
    monkeypatch.setattr(os, "replace", real)
    assert main(argv) == 0  # and when the renames work, everything is there
    assert sorted(os.listdir(tmp_path / "figs")) == ["L0H0.lines.svg", "L0H0.pattern.svg"]
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


# ---------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_in_the_usage_is_in_the_help(command, capsys):
    _, subparsers = cli.build_parser()
    p = subparsers[command]
    usage, text = p.format_usage(), p.format_help()
    body = text[len(p.format_usage()):]
    for option in {o for a in p._actions for o in a.option_strings}:
        if option in usage:
            assert f"  {option}" in body or f", {option}" in body, f"interp {command} --help leaves out {option}"


def test_info_lists_every_hook_point(planted_dir, capsys):
    import interp

    assert main(["info", "--model", planted_dir]) == 0
    out = capsys.readouterr().out
    model = interp.load(planted_dir)
    for name in model.hook_names:
        suffix = name.split(".", 2)[2] if name.startswith("blocks.") else name
        assert f"\n  {suffix}\n" in out, name
    assert f"{len(model.hook_names)} hook points" in out and "…" not in out
