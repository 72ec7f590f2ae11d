"""``interp bench`` and ``interp info``: the printed figures, the measuring helpers, bad sections."""

import re
import time

import pytest
import torch

from interp import InterpError, bench
from interp.cli import main


def test_rows_print_the_ratio_target_and_verdict():
    ok = bench.Row("heads", "classify / forward", 0.5, target="≤ 0.75", ok=True, detail="1s vs 2s")
    missed = bench.Row("heads", "classify / forward", 0.9, target="≤ 0.75", ok=False)
    assert re.fullmatch(r"heads\s+classify / forward\s+0\.500×  \(target ≤ 0\.75\)  ok   \[1s vs 2s\]", ok.line())
    assert missed.line().endswith("0.900×  (target ≤ 0.75)  MISSED")


def test_timed_keeps_the_best_of_its_repeats_and_the_result():
    delays = iter([0.05, 0.01, 0.03])
    result, best = bench.timed(lambda: time.sleep(next(delays)) or "done", repeat=3)
    assert result == "done" and 0.01 <= best < 0.03


def test_peak_memory_sees_an_allocation():
    _, mb = bench.peak_memory(lambda: torch.ones(64 * 2**20 // 4).add_(1).sum())  # 64 MB
    assert 50 < mb < 200


def test_a_section_runs_and_prints_its_ratio(capsys, monkeypatch):
    from interp import testing

    # The forward section on a small random model instead of GPT-2 small (same code path, less time).
    monkeypatch.setattr(testing, "random_gpt2_small_hf", lambda seed=0: testing.random_gpt2_hf(seed, vocab_size=50257))
    rows = bench.run(["forward"], n_prompts=2, n_pos=16)
    out = capsys.readouterr().out
    assert out.startswith("interp bench: random GPT-2 small shape, torch")
    (row,) = rows
    assert row.section == "forward" and row.value > 0 and row.line() in out
    assert re.search(r"our forward / HF eager forward \(2×16\)\s+\d+\.\d{3}×   \[median of 3 interleaved pairs, "
                     r"spread \d+\.\d\d–\d+\.\d\d; \d+\.\d\ds vs \d+\.\d\ds\]", out)


def test_the_lens_section_runs_on_the_shortest_prompts(capsys, monkeypatch):
    """--pos 3 (BOS + r + r, the shortest every section takes); the lens section imports DLA from analyses.dla."""
    from interp import testing

    monkeypatch.setattr(testing, "random_gpt2_small_hf", lambda seed=0: testing.random_gpt2_hf(seed, vocab_size=50257))
    rows = bench.run(["lens"], n_prompts=1, n_pos=3, progress=False)
    out = capsys.readouterr().out
    assert rows and [r.section for r in rows] == ["lens"] * len(rows) and all(r.line() in out for r in rows)
    with pytest.raises(InterpError, match="n_pos 2: give 3 to 1024 tokens"):
        bench.run(["lens"], n_pos=2)


def test_unknown_sections_are_refused():
    with pytest.raises(InterpError, match=r"unknown benchmark section\(s\) \['nope'\]: choose from .*forward"):
        bench.run(["nope"])
    assert main(["bench", "--only", "forward,nope"]) == 2


def test_info_prints_the_shape_and_hook_points(planted_dir, capsys):
    assert main(["info", "--model", planted_dir]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "2 layers × 4 heads, d_model 256, vocab 32, context 32, fold_ln=True" in out[0]
    assert out[1] == "48 hook points: every layer L of 0–1 has 22 ('blocks.L.' + each of these)"
    assert main(["info", "--model", planted_dir, "--no-fold-ln"]) == 0
    assert "fold_ln=False" in capsys.readouterr().out


def test_the_graph_section_scales_circuit_tracers_run_and_finds_the_longest_prompts():
    """circuit-tracer's memory grows as n_nodes² and its time as rows × positions; the longest prompts in 24 GiB
    follow from those models (its 16-token run: 7,865 MB for 13,712 nodes, 843 features a token)."""
    from interp.bench.graph import _extrapolate, _longest

    ref = {"seconds": 268.0, "peak_mb": 7865.0, "n_features": 13494}
    at32 = _extrapolate(ref, 13712, 16, 2 * 13712, 32)
    assert at32 == {"peak_mb": 4 * 7865.0, "seconds": 268.0 * 2 * 2, "measured": False}
    mine = {32: {"peak_mb": 2100.0, "n_features": 27000, "n_kept_features": 2300},
            128: {"peak_mb": 6000.0, "n_features": 108000, "n_kept_features": 9000}}
    rows = _longest({n: (m, None) for n, m in mine.items()}, 12, (ref, 13712, 16))
    interp_tok, ct_tok = (int(r.value) for r in rows)
    # circuit-tracer: √(24 GiB / 7,865 MB) × 13,712 nodes = 24,240 nodes, at 857 nodes a token (844 + 13)
    assert ct_tok == 28
    # interp: 40.6 MB a token above 800 MB, less the kept rows' quadratic growth: under 585 tokens
    assert 450 < interp_tok < 585
    assert "circuit-tracer" in rows[1].what and rows[0].unit == " tok"


def test_the_graph_section_measures_interp_in_a_process_of_its_own():
    """The child process loads the model and transcoders from their files and gives the graph circuit-tracer gave."""
    import json
    from pathlib import Path

    from interp.bench.graph import _interp

    fixtures = Path(__file__).parent / "fixtures" / "circuit_tracer"
    info = json.loads((fixtures / "graphs" / "relu-induction.json").read_text())
    run = _interp(fixtures / "model", fixtures / "transcoders-relu", torch.tensor(info["tokens"]))
    assert run["n_features"] == info["n_features"] and run["n_logits"] == info["n_logits"]
    assert run["replacement_score"] == pytest.approx(info["replacement_score"], abs=1e-5)  # float32 against float64
    assert run["seconds"] > 0 and run["peak_mb"] > 0
