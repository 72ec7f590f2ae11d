"""Benchmarks of attribution graphs (interp.features.graph) against circuit-tracer 0.5, side by side.

The model is the bench's random GPT-2 small (raw weights, as circuit-tracer runs it) with random
ReLU transcoders of 4,096 features per layer whose encoder bias makes about 1.5 % of them fire
(~60 per token per layer, as real transcoders of that width do), written once in circuit-tracer's
format; both tools read the same files and the same token ids (BOS first).

circuit-tracer cannot share interp's environment: ``--against DIR`` names a venv with
``circuit-tracer==0.5.0`` and its runs are subprocesses (``interp/bench/circuit_tracer_run.py``),
measured in their own process (time of ``attribute`` + ``prune_graph`` + ``compute_graph_scores``;
peak resident memory above what the process held before). interp's runs are measured the same way,
each in a fresh process of its own (``attribution_graph``, which prunes and scores). Runs alternate,
interp first; of interp's two runs the faster time and the larger memory are kept.

circuit-tracer holds dense ``n_nodes²`` matrices: the adjacency matrix while it attributes, then
the copies ``prune_graph`` and ``compute_graph_scores`` make of it (its peak at 16 tokens, 13,700
nodes, is 7.9 GB: ten such float32 matrices' worth). It is measured on the 16-token prompt; on a
longer one it runs only where that run's memory, scaled by n_nodes², fits in this machine's free
memory; elsewhere its figures are that estimate (time ∝ rows × positions) and the row says so.
The scaling overestimates its memory: at 24 tokens it predicts 18–19 GB where 14.6 GB was measured.
At 32 tokens the kernel killed circuit-tracer on a 23.5 GiB machine after ~20 minutes (at batch
sizes 512 and 128).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .core import Context, Row, peak_memory, section, timed

D_TRANSCODER = 4096
ACTIVE_FRACTION = 0.015


def _write_inputs(ctx: Context, root: Path) -> tuple[Path, Path]:
    """The bench's GPT-2 small saved raw, and random transcoders in circuit-tracer's format."""
    from ..features import SAE, SAEConfig
    from ..features.transcoders import save_circuit_tracer

    model_dir, tc_dir = root / "model", root / "transcoders"
    hf, tok = ctx.hf_and_tokenizer
    hf.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    # transformers 5 names its own tokenizer class, which circuit-tracer's transformers 4.57 cannot import
    conf_path = model_dir / "tokenizer_config.json"
    conf = json.loads(conf_path.read_text())
    conf["tokenizer_class"] = "PreTrainedTokenizerFast"
    conf_path.write_text(json.dumps(conf))
    d, g = hf.config.n_embd, torch.Generator().manual_seed(0)
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - ACTIVE_FRACTION)).item()
    saes = []
    for layer in range(hf.config.n_layer):
        cfg = SAEConfig("standard", d_in=d, d_sae=D_TRANSCODER, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                        hook_name_out=f"blocks.{layer}.hook_mlp_out", apply_b_dec_to_input=False, fold_ln=False)
        sae = SAE(cfg, device="meta")
        # ln2's output has norm ~√d: a unit-variance pre-activation, shifted so ~1.5 % of features fire
        values = {"W_enc": torch.randn(d, D_TRANSCODER, generator=g) / d**0.5,
                  "b_enc": torch.full((D_TRANSCODER,), -z), "W_dec": 0.05 * torch.randn(D_TRANSCODER, d, generator=g),
                  "b_dec": 0.02 * torch.randn(d, generator=g)}
        for k, v in values.items():
            setattr(sae, k, torch.nn.Parameter(v, requires_grad=False))
        saes.append(sae)
    save_circuit_tracer(saes, tc_dir, scan="interp-bench")
    return model_dir, tc_dir


def _mem_available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    return float("inf")


def _run(cmd: list[str], who: str, **env: str) -> dict:
    """Run one measured process; its last line of output is its figures (JSON)."""
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    if done.returncode in (-9, 137):
        raise RuntimeError(f"{who}'s run was killed (SIGKILL: out of memory)")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{who}'s run failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _circuit_tracer(against: str, model_dir: Path, tc_dir: Path, tokens: torch.Tensor) -> dict:
    python, runner = Path(against) / "bin" / "python", Path(__file__).with_name("circuit_tracer_run.py")
    return _run([str(python), str(runner), str(model_dir), str(tc_dir), "--tokens", ",".join(map(str, tokens.tolist())),
                 "--threads", str(torch.get_num_threads())], "circuit-tracer", TRANSFORMERS_OFFLINE="1")


def _interp(model_dir: Path, tc_dir: Path, tokens: torch.Tensor) -> dict:
    """interp's graph measured in a fresh process, as circuit-tracer's is: memory that an earlier run freed but
    the allocator kept would otherwise hide part of this run's peak."""
    import sys

    return _run([sys.executable, "-c", "from interp.bench.graph import _child; _child()", str(model_dir), str(tc_dir),
                 ",".join(map(str, tokens.tolist())), str(torch.get_num_threads())], "interp's graph")


def _child() -> None:
    """The body of :func:`_interp`'s process: load the raw model and the transcoders, time one graph, print JSON."""
    import sys

    from ..features.graph import attribution_graph
    from ..features.transcoders import load_transcoders
    from ..loading import load

    model_dir, tc_dir, tokens, threads = sys.argv[1:5]
    torch.set_num_threads(int(threads))
    model = load(model_dir, fold_ln=False)
    saes = load_transcoders(tc_dir)
    tokens = torch.tensor([int(t) for t in tokens.split(",")])
    (g, seconds), peak = peak_memory(lambda: timed(lambda: attribution_graph(model, saes, tokens, progress=False)))
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "n_features": g.n_features, "n_logits": g.n_logits,
                      "n_kept_features": int(g.node_mask[: g.n_features].sum()), "n_edges": g.n_edges,
                      "replacement_score": g.replacement_score, "rows_recomputed": g.info["rows_recomputed"]}), flush=True)


def _n_nodes(run: dict, n_layers: int, n_pos: int) -> int:
    """Nodes of the whole graph: features, an error node per layer and position, the tokens, the logits."""
    return run["n_features"] + (n_layers + 1) * n_pos + run.get("n_logits", 10)


def _extrapolate(ref: dict, ref_nodes: int, ref_pos: int, n_nodes: int, n_pos: int) -> dict:
    """circuit-tracer's figures on a longer prompt from a measured run: memory ∝ n_nodes² (its dense adjacency
    matrix and the copies prune_graph and compute_graph_scores make of it), time ∝ rows × positions (one
    backward pass over the prompt per feature row)."""
    return {"peak_mb": ref["peak_mb"] * (n_nodes / ref_nodes) ** 2,
            "seconds": ref["seconds"] * (n_nodes / ref_nodes) * (n_pos / ref_pos), "measured": False}


LENGTHS = (16, 32, 128)  # circuit-tracer is measured on the first; the others it fits if this machine's memory allows


@section("graph")
def bench_graph(ctx: Context) -> list[Row]:
    """Attribution graph of a 16-, 32- and 128-token prompt, interp against circuit-tracer (``--against DIR``)."""
    against: Optional[str] = getattr(ctx, "against", None)
    rows: list[Row] = []
    hf, tok = ctx.hf_and_tokenizer
    L = hf.config.n_layer
    with tempfile.TemporaryDirectory(prefix="interp-bench-graph-") as tmp:
        model_dir, tc_dir = _write_inputs(ctx, Path(tmp))
        runs: dict = {}
        ref = None  # circuit-tracer's first measured run: (figures, n_nodes, n_pos)
        for n_pos in LENGTHS:
            g = torch.Generator().manual_seed(n_pos)
            tokens = torch.randint(1, len(tok), (n_pos,), generator=g)
            tokens[0] = 0  # BOS, a special token: circuit-tracer prepends nothing
            mine = _interp(model_dir, tc_dir, tokens)
            n_nodes = _n_nodes(mine, L, n_pos)
            theirs = None
            if against:
                guess = None if ref is None else _extrapolate(ref[0], ref[1], ref[2], n_nodes, n_pos)
                if guess is None or guess["peak_mb"] * 2**20 < 0.8 * _mem_available():
                    theirs = _circuit_tracer(against, model_dir, tc_dir, tokens) | {"measured": True}
                    ref = ref or (theirs, _n_nodes(theirs, L, n_pos), n_pos)
                    mine_again = _interp(model_dir, tc_dir, tokens)  # interleaved: interp, circuit-tracer, interp
                    mine = min(mine, mine_again, key=lambda r: r["seconds"]) | {
                        "peak_mb": max(mine["peak_mb"], mine_again["peak_mb"])}
                else:
                    theirs = guess
            runs[n_pos] = (mine, theirs)
            size = f"{n_pos} tokens, {mine['n_features']:,} features"
            rows.append(Row("graph", f"interp attribution graph, GPT-2 small shape ({size})", mine["seconds"], unit="s",
                            detail=f"peak {mine['peak_mb']:.0f} MB, {mine['n_kept_features']} features and "
                            f"{mine['n_edges']} edges kept, {mine['rows_recomputed']} rows recomputed"))
            if theirs is None:
                continue
            if theirs["measured"]:
                how = "measured"
                if theirs.get("n_kept_features") is not None:
                    how += (f"; circuit-tracer kept {theirs['n_kept_features']} features and {theirs['n_edges']} edges, "
                            f"replacement score {theirs['replacement_score']:.5f} vs interp's {mine['replacement_score']:.5f}")
            else:
                how = (f"circuit-tracer ESTIMATED from its {ref[2]}-token run: it would need "
                       f"{theirs['peak_mb'] / 1024:.0f} GiB, more than this machine has")
            t_ratio, m_ratio = mine["seconds"] / theirs["seconds"], mine["peak_mb"] / theirs["peak_mb"]
            rows.append(Row("graph", f"time, interp / circuit-tracer ({n_pos} tokens)", t_ratio, target="≤ 0.5",
                            ok=t_ratio <= 0.5, detail=f"{mine['seconds']:.0f}s vs {theirs['seconds']:.0f}s, {how}"))
            rows.append(Row("graph", f"peak memory, interp / circuit-tracer ({n_pos} tokens)", m_ratio, target="≤ 0.5",
                            ok=m_ratio <= 0.5, detail=f"{mine['peak_mb']:.0f} MB vs {theirs['peak_mb']:.0f} MB"))
        rows += _longest(runs, L, ref)
    return rows


def _longest(runs: dict, n_layers: int, ref) -> list[Row]:
    """The longest prompt whose graph fits in 24 GiB, from the measured runs (a model of memory against length)."""
    (m32, _), (m128, _) = runs[32], runs[128]
    per_tok = m128["n_features"] / 128
    # interp: memory is affine in length between the two runs, plus the kept submatrix (quadratic in kept nodes)
    slope = (m128["peak_mb"] - m32["peak_mb"]) / 96
    base = m32["peak_mb"] - 32 * slope
    kept_frac = m128["n_kept_features"] / max(m128["n_features"], 1)

    def interp_mb(n):
        kept = kept_frac * per_tok * n + (n_layers + 1) * n
        kept128 = kept_frac * per_tok * 128 + (n_layers + 1) * 128
        return base + slope * n + 4 * (kept**2 - kept128**2 * n / 128) / 2**20 * (n > 128)

    def longest(fn):
        n = 1
        while fn(n * 2) < 24 * 1024 and n < 1 << 20:
            n *= 2
        lo, hi = n, n * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fn(mid) < 24 * 1024 else (lo, mid)
        return lo

    out = [Row("graph", "longest prompt in 24 GiB, interp (estimated from the 32- and 128-token runs)",
               float(longest(interp_mb)), unit=" tok",
               detail="memory: the copies of the prompt for the backward passes and the kept nodes' rows")]
    if ref is not None:
        figures, nodes, n_pos = ref

        def ct_mb(n):
            return _extrapolate(figures, nodes, n_pos, int(per_tok * n + (n_layers + 1) * n + 10), n)["peak_mb"]

        out.append(Row("graph", f"longest prompt in 24 GiB, circuit-tracer (estimated from its {n_pos}-token run)",
                       float(longest(ct_mb)), unit=" tok",
                       detail=f"{per_tok:.0f} active features per token; memory ∝ n_nodes²"))
    return out
