"""interp.features.train: planted ground truth, gradients against autograd, exact resumption, data parallel."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.errors import InterpError
from interp.features import steps as st
from interp.features.evaluation import mean_correlation_coefficient
from interp.features.sae import SAE
from interp.features.training import TrainConfig, train

HERE = Path(__file__).parent


def planted(n=60000, d=64, m=512, active=5, noise=0.01, seed=0):
    """``n`` points, each a sum of ~``active`` of ``m`` random unit directions (magnitudes 0.5–1.5) plus noise."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D /= D.norm(dim=-1, keepdim=True)
    on = torch.rand(n, m, generator=g) < active / m
    x = ((0.5 + torch.rand(n, m, generator=g)) * on) @ D + noise * torch.randn(n, d, generator=g)
    return x, D


@pytest.mark.parametrize("arch,options", [("topk", dict(k=5)), ("standard", dict(l1_coefficient=1.0))])
def test_planted_directions_are_recovered(arch, options):
    """512 sparse directions in 64 dimensions: the decoder's rows match them one-to-one (MCC ≥ 0.9)."""
    x, D = planted()
    sae = train(x, architecture=arch, d_sae=512, tokens=300_000, batch_size=256, lr=1e-2, progress=False, **options)
    mcc = mean_correlation_coefficient(sae.W_dec.detach(), D)
    assert mcc >= 0.9, (arch, mcc)
    # the saved scale is folded in: the SAE reconstructs the raw points
    err = ((sae(x[:4000]) - x[:4000]) ** 2).sum() / ((x[:4000] - x[:4000].mean(0)) ** 2).sum()
    assert err < 0.2, (arch, float(err))
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(512), atol=1e-5)


class _OneProcess:
    def all_gather_cat(self, t):
        return t


@pytest.mark.parametrize("arch,skip,dead", [("topk", False, False), ("topk", False, True), ("batchtopk", False, True),
                                            ("topk", True, True)])
def test_sparse_gradients_equal_autograd(arch, skip, dead):
    """The hand-written TopK/BatchTopK/AuxK gradients against autograd through the dense formulas."""
    torch.manual_seed(0)
    B, d, S, k = 64, 16, 48, 5
    d_out = 12 if skip else d
    P = st.init_params(d, S, d_out, arch, skip, 0, torch.float64, 0.0)
    for _, t in P.items():
        t.copy_(torch.randn_like(t) * 0.3)
    x = torch.randn(B, d, dtype=torch.float64)
    y = torch.randn(B, d_out, dtype=torch.float64) if skip else x
    apply = not skip
    mask = (torch.arange(S) % 3 == 0) if dead else None
    grads, _ = st.sparse_step(P, x, y, st.StepSettings(arch, k, apply, aux_coefficient=0.7, n_global=B), mask, _OneProcess())
    L = {n: t.clone().requires_grad_() for n, t in P.items()}
    with torch.enable_grad():
        pre = (x - L["b_dec"] if apply else x) @ L["W_encT"].T + L["b_enc"]
        if arch == "batchtopk":
            acts = pre.relu()
            f = acts * (acts >= acts.flatten().topk(k * B).values.min())
        else:
            vals, idx = pre.topk(k)
            f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        x_hat = f @ L["W_dec"] + L["b_dec"] + (x @ L["W_skip"] if skip else 0)
        loss = ((x_hat - y) ** 2).sum() / B
        if dead:
            k_aux = min(d_out // 2, int(mask.sum()))
            av, ai = pre.masked_fill(~mask, -float("inf")).topk(k_aux)
            e_hat = torch.zeros_like(pre).scatter(-1, ai, av) @ L["W_dec"]
            loss = loss + 0.7 * min(int(mask.sum()) / (d_out // 2), 1) * ((e_hat - (y - x_hat).detach()) ** 2).sum() / B
        loss.backward()
    for name, t in L.items():
        if name != "threshold":
            torch.testing.assert_close(grads[name], t.grad, rtol=1e-10, atol=1e-10, msg=name)


def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    from interp.features import training

    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(architecture="topk", d_sae=256, k=1, tokens=20 * 100, batch_size=100, lr=3e-3, dead_window=200,
              progress=False)
    whole = train(x, "acts", out=tmp_path / "whole", **kw)
    assert whole.cfg.metadata["training"]["dead_fraction"] > 0.1  # AuxK at work: the dead-latent counters matter
    assert not (tmp_path / "whole" / "checkpoint").exists() and (tmp_path / "whole" / "cfg.json").exists()
    real = training._TensorSource.batches
    calls = []

    def dies_after_13(self, start=0):
        calls.append(start)
        for i, b in enumerate(real(self, start)):
            if len(calls) > 1 and start + i == 13:  # (the first call: the scale estimate)
                raise KeyboardInterrupt  # a kill between steps 13 and 14
            yield b

    monkeypatch.setattr(training._TensorSource, "batches", dies_after_13)
    with pytest.raises(KeyboardInterrupt):
        train(x, "acts", out=tmp_path / "run", checkpoint_every=5, **kw)
    monkeypatch.undo()
    run = tmp_path / "run"
    assert (run / "checkpoint" / "state.json").exists() and not (run / "cfg.json").exists()
    assert '"step": 10' in (run / "checkpoint" / "state.json").read_text()
    with pytest.raises(InterpError, match="checkpoint of an unfinished run"):
        train(x, "acts", out=run, **kw)
    with pytest.raises(InterpError, match="made with lr=0.003, not 0.001"):
        train(x, "acts", out=run, resume=True, **{**kw, "lr": 1e-3})
    resumed = train(x, "acts", out=run, resume=True, **kw)
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(SAE.load(run).W_enc, whole.W_enc)


def test_two_processes_train_the_same_sae_as_one(tmp_path):
    """torchrun, 2 CPU processes (gloo), each half of every global batch: the same SAE as one process."""
    sys.path.insert(0, str(HERE))
    try:
        import sae_dp_worker as w
    finally:
        sys.path.pop(0)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(HERE / "sae_dp_worker.py"), str(tmp_path / "dp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for arch in w.ARCHITECTURES:  # topk, and batchtopk whose selection spans both processes' rows
        one = train(w.data(), "x", architecture=arch, **w.OPTIONS)
        two = SAE.load(tmp_path / "dp" / arch)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(two, name), getattr(one, name), rtol=1e-4, atol=2e-5, msg=f"{arch} {name}")
        assert not torch.equal(two.W_dec, SAE(two.cfg).W_dec)  # it trained
        if arch == "batchtopk":
            torch.testing.assert_close(two.threshold, one.threshold, rtol=1e-5, atol=1e-6)
            assert float(one.threshold[0]) > 0


def test_bad_options():
    with pytest.raises(InterpError, match="unknown training options"):
        train(torch.randn(100, 4), lr_typo=1)
    with pytest.raises(InterpError, match="architecture 'gated' unknown"):
        TrainConfig(architecture="gated")
    with pytest.raises(InterpError, match="k=40 is larger than d_sae=32"):
        TrainConfig(k=40, d_sae=32)
    with pytest.raises(InterpError, match="fewer than one batch"):
        train(torch.randn(100, 4), batch_size=256, progress=False)
