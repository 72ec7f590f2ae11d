"""A data-parallel training run for tests/test_sae_training.py, launched with torchrun (two processes, gloo)."""

import sys


def data():
    import torch

    g = torch.Generator().manual_seed(5)
    return torch.randn(2048, 16, generator=g) * torch.linspace(0.5, 2.0, 16)


ARCHITECTURES = ("topk", "batchtopk")
OPTIONS = dict(d_sae=64, k=4, tokens=64 * 12, batch_size=64, lr=3e-3, dead_window=128, progress=False)


if __name__ == "__main__":
    from interp.features.training import train

    out = sys.argv[1]
    for arch in ARCHITECTURES:  # one launch for both: starting processes is most of the cost
        train(data(), "x", architecture=arch, out=f"{out}/{arch}", checkpoint_every=5, **OPTIONS)
