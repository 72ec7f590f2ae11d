"""Benchmarks of interp.features: a TopK SAE's training step against SAELens's, harvesting against a bare forward.

* **Training step** — GPT-2 small's residual size: d_in 768, d_sae 24,576, k 32, one batch of 4,096
  activations; forward, backward (or interp's hand-written sparse gradients), gradient clipping and
  Adam, on the same activations and the same number of threads. SAELens 6.54 runs in a subprocess
  from its own venv (``interp bench --only features --against /work/venvs/saelens``: it cannot share
  an environment with TransformerLens 4); its step is ``SAETrainer._train_step``'s body with
  ``TopKTrainingSAE``'s defaults. Steps are interleaved (ours, theirs, ours, …) and the medians
  compared.
* **Harvesting** — an :class:`~interp.features.store.ActivationStore` yielding shuffled batches of
  ``blocks.6.hook_resid_pre`` against the bare forward pass stopped at layer 6 on the same windows:
  the throughput ratio. Both figures are medians of per-pair ratios, with their spread.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .core import Context, Ratio, Row, section

D_IN, D_SAE, K, N = 768, 24576, 32, 4096

#: Runs in SAELens's venv: one training step per line read on stdin, its seconds printed back.
_SAELENS_STEP = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

path, threads, sparse = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "sparse"
torch.set_num_threads(threads)
data = load_file(path)
x = data["x"]
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=data["W_dec"].shape[0], k=int(data["k"]),
                                            use_sparse_activations=sparse))
with torch.no_grad():
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        getattr(sae, name).copy_(data[name])
opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999))
dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
since = torch.zeros(sae.cfg.d_sae)

def step():  # the body of sae_lens.training.sae_trainer.SAETrainer._train_step
    global since
    sae.train()
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                   n_training_steps=0, is_logging_step=False))
    with torch.no_grad():
        firing = out.feature_acts.bool().float()
        did_fire = firing.sum(-2).bool()
        if did_fire.is_sparse:
            did_fire = did_fire.to_dense()
        since += 1
        since[did_fire] = 0
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return float(out.losses["mse_loss"])

print("ready", flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    mse = step()
    print(json.dumps({"seconds": time.perf_counter() - t0, "mse": mse}), flush=True)
"""


class _SAELens:
    """SAELens's training step in a subprocess of its venv, stepped on demand."""

    def __init__(self, venv: str, data: Path, threads: int, sparse: bool = False):
        python = Path(venv) / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"{python} does not exist")
        self.proc = subprocess.Popen([str(python), "-c", _SAELENS_STEP, str(data), str(threads), "sparse" if sparse else "dense"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"SAELens did not start: {self.proc.stderr.read()[-2000:]}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"SAELens's step failed: {self.proc.stderr.read()[-20000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@section("features")
def bench_features(ctx: Context) -> list[Row]:
    return [*_bench_step(ctx), *_bench_harvest(ctx)]


def _bench_step(ctx: Context, repeats: int = 3) -> list[Row]:
    from safetensors.torch import save_file

    from ..features.training import TrainConfig, Trainer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g) * (1 + torch.rand(D_IN, generator=g))
    trainer = Trainer(TrainConfig(architecture="topk", d_sae=D_SAE, k=K, batch_size=N, tokens=N * 100), D_IN, D_IN)
    trainer.scale_in = trainer.scale_out = 1.0
    trainer.initialised = True  # the same start as SAELens's below: our initial weights, b_dec 0
    P = trainer.P
    size = f"d_in {D_IN}, d_sae {D_SAE:,}, k {K}, {N:,} activations"
    ours = []
    venv = getattr(ctx, "against", None)
    if not venv:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            trainer.step(x, x, N)
            ours.append(time.perf_counter() - t0)
        s = statistics.median(ours[1:])
        return [Row("features", f"TopK step ({size})", s, unit="s",
                    detail="give --against VENV (sae-lens 6.54) for the ratio to SAELens's step")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "step.safetensors"
        save_file({"x": x, "W_enc": P.W_encT.t().contiguous(), "b_enc": P.b_enc, "W_dec": P.W_dec, "b_dec": P.b_dec,
                   "k": torch.tensor(K)}, str(data))
        theirs: list[float] = []
        sl = _SAELens(venv, data, torch.get_num_threads())
        try:
            for _ in range(repeats + 1):  # interleaved; the first of each is a warm-up
                t0 = time.perf_counter()
                trainer.step(x, x, N)
                ours.append(time.perf_counter() - t0)
                theirs.append(sl.step()["seconds"])
        finally:
            sl.close()
        r = _ratio(ours[1:], theirs[1:])
        o = r.subject_s
        rows.append(Row("features", "TopK training step / SAELens 6.54's (its defaults)", r.median, target="≤ 0.6",
                        ok=r.median <= 0.6, detail=f"{r.detail()}; {size}; {torch.get_num_threads()} threads"))
        # SAELens's sparse option (a COO decoder) is the obvious other comparison; on CPU its backward fails.
        sparse = _SAELens(venv, data, torch.get_num_threads(), sparse=True)
        try:
            s_t = sparse.step()["seconds"]
            rows.append(Row("features", "TopK training step / SAELens 6.54's (use_sparse_activations)", o / s_t,
                            detail=f"{o:.2f}s vs {s_t:.2f}s (one step)"))
        except RuntimeError as e:
            why = "NotImplementedError: aten::view on SparseCPU" if "SparseCPU" in str(e) else str(e).splitlines()[-1][:80]
            rows.append(Row("features", "SAELens 6.54 with use_sparse_activations=True", float("nan"), unit="",
                            detail=f"its backward fails on CPU ({why})"))
        finally:
            try:
                sparse.close()
            except Exception:  # noqa: BLE001 - the failed process may already be gone
                pass
    return rows


def _bench_harvest(ctx: Context, repeats: int = 3) -> list[Row]:
    from ..corpus import documents, token_windows
    from ..features.store import ActivationStore

    model = ctx.model
    layer, hook = 6, "blocks.6.hook_resid_pre"
    n_ctx = min(ctx.n_pos, model.cfg.n_ctx)
    per_batch = max(1, 4096 // (n_ctx - 1))  # windows per batch: batches of whole windows, ~4,096 activations
    windows = per_batch * max(2, (2 * ctx.n_prompts) // per_batch)
    docs = documents(split="train")[:2000]
    tokens = torch.stack(list(token_windows(model.tokenizer, docs, n_ctx, limit=windows)))
    # one shuffled block per batch, so every activation harvested is served within the timed loop
    store_kw = dict(n_ctx=n_ctx, batch_size=per_batch * (n_ctx - 1), shuffle_buffer=per_batch * (n_ctx - 1),
                    include_bos=False, prompts_per_forward=per_batch)
    n_acts = windows * (n_ctx - 1)

    def harvest() -> float:
        store = ActivationStore(model, hook, docs, **store_kw)
        t0 = time.perf_counter()
        got = 0
        for batch in store.batches():
            got += len(batch[hook])
            if got >= n_acts:
                break
        return (time.perf_counter() - t0) / got  # seconds per activation

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, windows, per_batch):
                model.forward(tokens[i:i + per_batch], stop_at_layer=layer)
        return (time.perf_counter() - t0) / (windows * (n_ctx - 1))

    h, b = [], []
    bare()  # warm-up
    for _ in range(repeats):  # interleaved pairs: (bare, harvest), …
        b.append(bare())
        h.append(harvest())
    r = _ratio(b, h)  # time per activation of the bare forward over the store's: its throughput ratio
    return [Row("features", f"harvest {hook} throughput / bare forward to layer {layer}", r.median, target="≥ 0.9",
                ok=r.median >= 0.9, detail=f"median of {r.pairs} interleaved pairs, spread {r.low:.2f}–{r.high:.2f}; "
                f"{1 / r.baseline_s:,.0f} vs {1 / r.subject_s:,.0f} activations/s; {windows}×{n_ctx} tokens, "
                f"shuffled batches of {per_batch * (n_ctx - 1):,}")]


def _ratio(subject: list[float], baseline: list[float]) -> Ratio:
    """The median and spread of per-pair ratios (as :func:`interp.bench.compare`, for pairs timed here)."""
    ratios = [s / b for s, b in zip(subject, baseline)]
    return Ratio(statistics.median(ratios), min(ratios), max(ratios), statistics.median(subject),
                 statistics.median(baseline), len(ratios))
