"""Training SAEs and transcoders: on a model's activations, or on tensors; resumable, seeded, data-parallel.

:func:`train` takes a model and hook names (the activations come from an
:class:`~interp.features.store.ActivationStore`, one forward pass for every SAE), or activations
you already have (a tensor, a dict of tensors, an iterable of batches), and returns the trained
:class:`~interp.features.sae.SAE` (a list for several hook points).

What a step does (:mod:`interp.features.steps` has the arithmetic):

* inputs are scaled so that their mean norm is ``√d_in`` (SAELens's ``expected_average_only_in``)
  and the scale is folded back into the weights at the end, so hyperparameters carry over between
  hook points and the saved SAE reads raw activations;
* decoder rows are kept at unit norm: the gradient's component along each row is removed before
  the step and the rows renormalised after it (OpenAI's TopK recipe);
* dead latents (no activation in the last ``dead_window`` tokens) are tracked; TopK and BatchTopK
  train them with the AuxK loss (the top dead latents reconstruct the live ones' error);
* Adam, gradients clipped to norm 1 (as SAELens), the learning rate warmed up linearly and decayed
  linearly to 0 over the last ``decay_fraction`` of the steps; the L1 coefficient warmed up.

The batches' order is a function of ``(seed, step)``, so a run is deterministic given its seed,
and a checkpoint (written every ``checkpoint_every`` steps into ``out/checkpoint``, atomically: a
directory renamed into place) holds everything needed to continue it exactly: parameters, Adam's
moments, the dead-latent counters, the scales, the step.

Data-parallel: launched with ``torchrun --nproc_per_node N``, each process computes the gradient of
its slice of every global batch (``batch_size`` rows in all) with every loss divided by the global
batch size, gradients are summed (gloo on CPU, NCCL on GPUs), and every process takes the same
step: the same SAE as one process on the same global batches, up to float rounding. With a model
as the source every process harvests the whole global batch and keeps its slice (the model's
forward pass is not split between processes; a ``cache_dir`` makes later runs read it instead);
only the first process writes checkpoints and the result.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import InterpError
from ..threads import one_thread
from . import steps as st
from .sae import ARCHITECTURES, SAE, SAEConfig

__all__ = ["train", "TrainConfig", "Trainer"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run (the defaults suit interp-tiny's and GPT-2's residual stream).

    ``d_sae`` defaults to 8 × d_in; ``lr`` to ``4e-4·√(8192 / d_sae)`` (at most 2e-3: the learning rate
    shrinks as 1/√latents, as in OpenAI's TopK scaling study); ``tokens`` is the number of activations each SAE sees;
    ``dead_window`` (activations without firing before a latent counts as dead) defaults to
    ``min(10M, tokens / 4)``; ``warmup_steps`` to 5 % of the steps (at most 1000).
    """

    architecture: str = "topk"
    d_sae: Optional[int] = None
    k: int = 32
    tokens: int = 2_000_000
    batch_size: int = 4096
    lr: Optional[float] = None
    warmup_steps: Optional[int] = None
    decay_fraction: float = 0.2
    l1_coefficient: float = 5.0
    l1_warmup_fraction: float = 0.05
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    aux_coefficient: float = 1.0
    dead_window: Optional[int] = None
    normalize: bool = True
    apply_b_dec_to_input: bool = True
    skip: bool = False
    grad_clip: float = 1.0
    batchtopk_threshold_lr: float = 0.01
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise InterpError(f"architecture {self.architecture!r} unknown: choose from {', '.join(ARCHITECTURES)}")
        for name in ("k", "tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InterpError(f"{name} must be a whole number ≥ 1, not {v!r}")
        if self.d_sae is not None and (isinstance(self.d_sae, bool) or not isinstance(self.d_sae, int) or self.d_sae < 1):
            raise InterpError(f"d_sae must be a whole number ≥ 1, not {self.d_sae!r}")
        if self.d_sae is not None and self.architecture in ("topk", "batchtopk") and self.k > self.d_sae:
            raise InterpError(f"k={self.k} is larger than d_sae={self.d_sae}")
        for name in ("lr", "l1_coefficient", "l0_coefficient", "aux_coefficient", "jumprelu_bandwidth"):
            v = getattr(self, name)
            if name == "lr" and v is None:
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise InterpError(f"{name} must be a number ≥ 0, not {v!r}")
        if self.lr is not None and self.lr <= 0:
            raise InterpError(f"lr must be > 0, not {self.lr!r}")
        if not 0 <= self.decay_fraction <= 1:
            raise InterpError(f"decay_fraction must be in [0, 1], not {self.decay_fraction!r}")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise InterpError(f"unknown training options: {sorted(unknown)}")
        return cls(**values)


# ============================================================================ processes
class _Dist:
    """This process's place in a data-parallel run (one process: rank 0 of 1, every collective a no-op)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        if not dist.is_available():
            self.rank, self.world = 0, 1
            return
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.on = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        if self.world > 1:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM if op == "sum" else self.dist.ReduceOp.MAX)
        return t

    def all_gather_cat(self, t: Tensor) -> Tensor:
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()


# ============================================================================ one SAE's trainer
class Trainer:
    """One SAE (or transcoder) being trained: its parameters, Adam, dead-latent counters, scales.

    ``step(x, y)`` takes this process's rows of one global batch, unscaled (``y`` is ``x`` for an
    SAE) and returns the step's statistics (summed over processes).
    """

    def __init__(self, cfg: TrainConfig, d_in: int, d_out: int, *, hook_name: str = "", hook_name_out: Optional[str] = None,
                 model_name: Optional[str] = None, fold_ln: Optional[bool] = None, seed_offset: int = 0, dist=None):
        self.cfg = cfg
        self.d_in, self.d_out = d_in, d_out
        self.d_sae = cfg.d_sae or 8 * d_in
        if cfg.architecture in ("topk", "batchtopk") and cfg.k > self.d_sae:
            raise InterpError(f"k={cfg.k} is larger than d_sae={self.d_sae}")
        self.hook_name, self.hook_name_out = hook_name, hook_name_out
        self.model_name, self.fold_ln = model_name, fold_ln
        self.transcoder = hook_name_out is not None
        if cfg.skip and not self.transcoder:
            raise InterpError("a skip connection is for transcoders: give an output hook")
        self.dist = dist or _Dist()
        self.apply_b_dec = cfg.apply_b_dec_to_input and not self.transcoder
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(cfg.dtype)
        if dtype is None:
            raise InterpError(f"training dtype must be float32 or float64, not {cfg.dtype!r}")
        self.P = st.init_params(d_in, self.d_sae, d_out, cfg.architecture, cfg.skip, cfg.seed + seed_offset, dtype,
                                cfg.jumprelu_init_threshold)
        self.trainable = [n for n, _ in self.P.items() if not (n == "threshold" and cfg.architecture == "batchtopk")]
        self.opt = _Adam([self.P.tensors[n] for n in self.trainable])
        self.since_fired = torch.zeros(self.d_sae, dtype=torch.long)
        self.scale_in: Optional[float] = None
        self.scale_out: Optional[float] = None
        self.initialised = False
        self.steps_done = 0
        self.history: list[dict] = []

    @property
    def lr(self) -> float:
        return self.cfg.lr if self.cfg.lr is not None else min(2e-3, 4e-4 * math.sqrt(8192 / self.d_sae))

    @property
    def dead_window(self) -> int:
        return self.cfg.dead_window or min(10_000_000, max(1, self.cfg.tokens // 4))

    def settings(self, n_global: int) -> st.StepSettings:
        c = self.cfg
        warm = max(1, int(c.l1_warmup_fraction * c.steps))
        l1 = c.l1_coefficient * min(1.0, (self.steps_done + 1) / warm)
        return st.StepSettings(c.architecture, c.k, self.apply_b_dec, l1_coefficient=l1, l0_coefficient=c.l0_coefficient,
                               bandwidth=c.jumprelu_bandwidth, aux_coefficient=c.aux_coefficient, n_global=n_global)

    def estimate_scales(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        """The input (and output) scale making the mean norm ``√d`` (SAELens's norm estimate), over these batches."""
        if not self.cfg.normalize:
            self.scale_in = self.scale_out = 1.0
            return
        sums = torch.zeros(3, dtype=torch.float64)
        for x, y in batches:
            sums += torch.tensor([x.norm(dim=-1).double().sum(), y.norm(dim=-1).double().sum(), len(x)])
        self.dist.all_reduce(sums)
        if sums[2] == 0 or sums[0] == 0 or sums[1] == 0:
            raise InterpError(f"activations at {self.hook_name or 'the input'} are all zero: nothing to train on")
        self.scale_in = math.sqrt(self.d_in) / float(sums[0] / sums[2])
        self.scale_out = self.scale_in if not self.transcoder else math.sqrt(self.d_out) / float(sums[1] / sums[2])

    def _init_b_dec(self, y: Tensor, n_global: int) -> None:
        # b_dec starts at the targets' mean (the global batch's): the residual stream's mean is large.
        total = self.dist.all_reduce(y.double().sum(0))
        self.P.b_dec.copy_((total / n_global).to(self.P.b_dec.dtype))
        self.initialised = True

    def step(self, x: Tensor, y: Tensor, n_global: int) -> dict:
        c = self.cfg
        x = x.to(self.P.W_dec.dtype) * self.scale_in
        y = y.to(self.P.W_dec.dtype) * self.scale_out
        if not self.initialised:
            self._init_b_dec(y, n_global)
        dead = self.since_fired > self.dead_window
        # A small step is many small operations: on a machine whose cores are shared, threads cost more
        # than they give (see interp.threads); a GPT-2-sized step keeps every thread for its matmuls.
        small = len(x) * self.d_sae < (1 << 23)
        with torch.no_grad(), (one_thread() if small else contextlib.nullcontext()):
            grads, stats = st.step(self.P, x, y, self.settings(n_global), dead if dead.any() else None, self.dist)
            names = [n for n, _ in self.P.items() if n in grads]
            for n in names:
                self.dist.all_reduce(grads[n])
            # Unit-norm decoder rows: no gradient along a row (its norm is fixed), rows renormalised after.
            W_dec = self.P.W_dec
            grads["W_dec"] -= (grads["W_dec"] * W_dec).sum(-1, keepdim=True) * W_dec
            norm = torch.sqrt(sum((grads[n].double() ** 2).sum() for n in names))
            if c.grad_clip and float(norm) > c.grad_clip:
                for n in names:
                    grads[n].mul_(c.grad_clip / (float(norm) + 1e-6))
            warmup = c.warmup_steps if c.warmup_steps is not None else min(1000, max(1, c.steps // 20))
            lr = st.lr_at(self.steps_done, c.steps, self.lr, warmup, int(c.decay_fraction * c.steps))
            self.opt.step([grads[n] for n in self.trainable], lr)
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-12))
            if c.architecture == "jumprelu":
                self.P.threshold.clamp_(min=0.0)
            if c.architecture == "batchtopk":
                thr = self.P.threshold
                thr.mul_(1 - c.batchtopk_threshold_lr).add_(c.batchtopk_threshold_lr * stats["batch_threshold"])
            # statistics over the global batch
            fired = stats.pop("fired").to(torch.int32)
            self.dist.all_reduce(fired, op="max")
            self.since_fired += n_global
            self.since_fired[fired.bool()] = 0
            y_sum = y.double().sum(0)
            nums = torch.tensor([stats["sse"], stats["l0_sum"], float((y.double() ** 2).sum())], dtype=torch.float64)
            nums = self.dist.all_reduce(torch.cat([nums, y_sum]))
            sse, l0_sum, y_sq = float(nums[0]), float(nums[1]), float(nums[2])
            total_var = y_sq - float((nums[3:] ** 2).sum()) / n_global
        self.steps_done += 1
        return {
            "step": self.steps_done, "lr": lr, "mse": sse / n_global, "l0": l0_sum / n_global,
            "explained_variance": 1.0 - sse / total_var if total_var > 0 else float("nan"),
            "dead_fraction": float((self.since_fired > self.dead_window).float().mean()),
        }

    # ------------------------------------------------------------------ the result
    def to_sae(self) -> SAE:
        """The trained SAE, reading and writing raw activations (the training scales folded in)."""
        c = self.cfg
        s_in, s_out = self.scale_in or 1.0, self.scale_out or 1.0
        meta = {"training": {
            "tokens": self.steps_done * c.batch_size, "steps": self.steps_done, "config": asdict(c),
            "lr": self.lr, "scale_in": s_in, "scale_out": s_out, "dead_fraction": float((self.since_fired > self.dead_window).float().mean()),
        }}
        cfg = SAEConfig(c.architecture, d_in=self.d_in, d_sae=self.d_sae, d_out=self.d_out, hook_name=self.hook_name,
                        hook_name_out=self.hook_name_out, k=c.k if c.architecture in ("topk", "batchtopk") else None,
                        apply_b_dec_to_input=self.apply_b_dec, skip=c.skip, dtype=c.dtype, model_name=self.model_name,
                        fold_ln=self.fold_ln, metadata=meta)
        sae = SAE(cfg, device="meta")
        P = self.P
        # The SAE saw x·s_in and reconstructed y·s_out: with pre-activations divided by s_out its
        # features are in the output's own units, the decoder keeps unit-norm rows, and
        # topk's ranking, ReLU and the JumpReLU gate are unchanged (all positively homogeneous).
        ratio = s_in / s_out
        values = {"W_enc": P.W_encT.t() * ratio, "b_enc": P.b_enc / s_out, "W_dec": P.W_dec, "b_dec": P.b_dec / s_out}
        if P.threshold is not None:
            values["threshold"] = P.threshold / s_out
        if P.W_skip is not None:
            values["W_skip"] = P.W_skip * ratio
        for name, v in values.items():
            setattr(sae, name, nn.Parameter(v.detach().clone().contiguous()))
        return sae

    def state(self) -> dict[str, Tensor]:
        """Every tensor a checkpoint needs (parameters, Adam's moments, counters)."""
        out = {f"param.{n}": t for n, t in self.P.items()}
        for n, m, v in zip(self.trainable, self.opt.m, self.opt.v):
            out[f"adam.m.{n}"], out[f"adam.v.{n}"] = m, v
        out["adam.step"] = self.opt.t
        out["since_fired"] = self.since_fired
        return {k: v.detach().contiguous().clone() for k, v in out.items()}

    def load_state(self, tensors: dict[str, Tensor], info: dict) -> None:
        for n, t in self.P.items():
            t.copy_(tensors[f"param.{n}"])
        for n, m, v in zip(self.trainable, self.opt.m, self.opt.v):
            m.copy_(tensors[f"adam.m.{n}"])
            v.copy_(tensors[f"adam.v.{n}"])
        self.opt.t.copy_(tensors["adam.step"])
        self.since_fired.copy_(tensors["since_fired"])
        self.scale_in, self.scale_out = info["scale_in"], info["scale_out"]
        self.steps_done = info["steps_done"]
        self.initialised = True
        self.history = info.get("history", [])


class _Adam:
    """Adam (β = 0.9, 0.999; ε = 1e-8), torch's fused kernel called directly: equal to ``torch.optim.Adam(fused=True)``.

    ``torch.optim`` imports TorchDynamo on first use (seconds, for nothing a training step needs).
    """

    def __init__(self, params: list[Tensor]):
        self.params = params
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = torch.zeros((), dtype=torch.float32)

    def step(self, grads: list[Tensor], lr: float) -> None:
        self.t += 1
        torch._fused_adam_(self.params, grads, self.m, self.v, [], [self.t] * len(self.params), lr=lr, beta1=0.9,
                           beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)


# ============================================================================ sources of activations
class _TensorSource:
    """Batches from tensors in memory: each epoch a fresh permutation (a function of the seed and the epoch)."""

    def __init__(self, tensors: dict[str, Tensor], batch_size: int, seed: int):
        n = {len(t) for t in tensors.values()}
        if len(n) != 1:
            raise InterpError(f"activation tensors have different numbers of rows: {sorted(n)}")
        self.tensors, self.n, self.batch_size, self.seed = tensors, n.pop(), batch_size, seed
        if self.n < batch_size:
            raise InterpError(f"{self.n} activations are fewer than one batch of {batch_size}")

    def batches(self, start: int = 0) -> Iterator[dict[str, Tensor]]:
        per_epoch = self.n // self.batch_size  # a partial last batch is dropped
        i = start
        while True:
            epoch, j = divmod(i, per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            while j < per_epoch:
                idx = perm[j * self.batch_size:(j + 1) * self.batch_size]
                yield {h: t[idx] for h, t in self.tensors.items()}
                j += 1
                i += 1


class _IterSource:
    """Batches from the caller's iterable, in its order (resuming skips the batches already used)."""

    def __init__(self, iterable, names: list[str]):
        self.iterable, self.names = iterable, names

    def batches(self, start: int = 0) -> Iterator[dict[str, Tensor]]:
        for i, b in enumerate(self.iterable):
            if i < start:
                continue
            if isinstance(b, Tensor):
                if len(self.names) != 1:
                    raise InterpError("batches of one tensor train one SAE: give dicts {hook_name: tensor} for several")
                b = {self.names[0]: b}
            yield b


# ============================================================================ train()
Spec = Union[str, tuple]


def train(source: Any, hooks: Union[Spec, Sequence[Spec], None] = None, *, texts: Any = None, split: str = "train",
          column: Optional[str] = None, n_ctx: Optional[int] = None, shuffle_buffer: int = 1 << 16,
          cache_dir: Union[str, os.PathLike, None] = None, out: Union[str, os.PathLike, None] = None,
          resume: bool = False, checkpoint_every: Optional[int] = None, progress: Optional[bool] = None,
          model_name: Optional[str] = None, fold_ln: Optional[bool] = None, config: Optional[TrainConfig] = None,
          **options) -> Union[SAE, list[SAE]]:
    """Train an SAE (or several, or transcoders) on a model's activations or on activations you have.

    Args:
        source: a :class:`~interp.model.HookedGPT2` (its activations over ``texts`` are harvested by an
            :class:`~interp.features.store.ActivationStore`), a tensor ``[n, d]``, a dict
            ``{hook_name: [n, d]}``, or an iterable of such batches.
        hooks: a hook name, a ``(hook_in, hook_out)`` pair for a transcoder, or a list of them (one
            SAE each; all trained from the same batches). With a tensor source, an optional name.
        texts, split, column, n_ctx, shuffle_buffer, cache_dir: the store's (model sources).
        out: a directory: the trained SAE is written there in SAELens's format (several: one
            sub-directory per hook), with ``training.json``; checkpoints go to ``out/checkpoint``.
        resume: continue from ``out/checkpoint`` (same options required).
        checkpoint_every: steps between checkpoints (default: 20 per run).
        progress: a bar with the live loss, L0 and explained variance (None: only on a terminal).
        model_name, fold_ln: recorded in the SAE's config (taken from a model source).
        config / **options: a :class:`TrainConfig` or its fields (``architecture``, ``d_sae``, ``k``,
            ``tokens``, ``batch_size``, ``lr``, ``l1_coefficient``, ``seed``, …).

    Returns:
        The trained :class:`~interp.features.sae.SAE`, or a list of them for a list of hooks.

    >>> import torch
    >>> x = torch.randn(2048, 8)
    >>> sae = train(x, architecture="topk", d_sae=32, k=4, tokens=4096, batch_size=256, progress=False)
    >>> sae.architecture, sae.d_sae, sae.cfg.metadata["training"]["steps"]
    ('topk', 32, 16)
    """
    cfg = config if config is not None else TrainConfig.from_dict(options)
    if config is not None and options:
        raise InterpError("give either config= or training options, not both")
    if isinstance(resume, bool) is False:
        raise InterpError(f"resume must be True or False, not {resume!r}")
    dist = _Dist()
    if cfg.batch_size % dist.world:
        raise InterpError(f"batch_size {cfg.batch_size} is not divisible by the {dist.world} processes")
    single = hooks is None or isinstance(hooks, (str, tuple))
    specs = [] if hooks is None else ([hooks] if single else list(hooks))
    pairs = [_pair(h) for h in specs]
    is_model = hasattr(source, "hook_names") and hasattr(source, "forward")
    if is_model:
        if not pairs:
            raise InterpError("training on a model needs hook names, e.g. 'blocks.0.hook_resid_post'")
        needed = list(dict.fromkeys(h for p in pairs for h in p if h is not None))
        from .store import ActivationStore

        store = ActivationStore(source, needed, texts, n_ctx=n_ctx, batch_size=cfg.batch_size, shuffle_buffer=shuffle_buffer,
                                seed=cfg.seed, split=split, column=column, cache_dir=cache_dir)
        pairs = [tuple(store.hook_names[needed.index(h)] if h is not None else None for h in p) for p in pairs]
        dims = store.dims
        model_name = model_name or source.cfg.name
        fold_ln = bool(source.cfg.fold_ln) if fold_ln is None else fold_ln
        src = store
    else:
        if isinstance(source, Tensor):
            name = pairs[0][0] if pairs else ""
            if len(pairs) > 1:
                raise InterpError("one tensor trains one SAE: give a dict {hook_name: tensor} for several")
            tensors = {name: source}
            pairs = [(name, None)]
        elif isinstance(source, dict):
            tensors = dict(source)
            if not pairs:
                pairs = [(h, None) for h in tensors]
        else:
            tensors = None
        if tensors is not None:
            for h, t in tensors.items():
                if not isinstance(t, Tensor) or t.dim() != 2:
                    raise InterpError(f"activations for {h!r} must be a tensor [n, d], not {getattr(t, 'shape', type(t).__name__)}")
            for p in pairs:
                for h in p:
                    if h is not None and h not in tensors:
                        raise InterpError(f"no activations for {h!r}: have {sorted(tensors)}")
            dims = {h: t.shape[1] for h, t in tensors.items()}
            src = _TensorSource(tensors, cfg.batch_size, cfg.seed)
        else:
            if not pairs:
                raise InterpError("an iterable of batches needs hook names (the keys of its dicts)")
            src = _IterSource(source, [p[0] for p in pairs])
            dims = None
    if len({p[0] for p in pairs}) != len(pairs):
        raise InterpError(f"two SAEs on the same input hook: {[p[0] for p in pairs]}")
    out_dir = Path(out) if out is not None else None
    ckpt = out_dir / "checkpoint" if out_dir is not None else None
    if out_dir is not None and dist.rank == 0:
        _check_out(out_dir, resume)
    trainers: list[Trainer] = []
    first = None
    if dims is None:
        first = next(iter(src.batches(0)))
        dims = {h: t.shape[-1] for h, t in first.items()}
    for i, (h_in, h_out) in enumerate(pairs):
        trainers.append(Trainer(cfg, dims[h_in], dims[h_out] if h_out else dims[h_in], hook_name=h_in, hook_name_out=h_out,
                                model_name=model_name, fold_ln=fold_ln, seed_offset=i, dist=dist))
    start = 0
    if resume and ckpt is not None:
        start = _load_checkpoint(ckpt, trainers, cfg, pairs)
    if start == 0:
        n_est = max(1, min(32, cfg.steps, (1 << 17) // cfg.batch_size))
        batches = [b for _, b in zip(range(n_est), src.batches(0))]
        for t, (h_in, h_out) in zip(trainers, pairs):
            t.estimate_scales([(_local(b[h_in], dist), _local(b[h_out or h_in], dist)) for b in batches])
    every = checkpoint_every or max(1, cfg.steps // 20)
    from tqdm.auto import tqdm

    disable = True if (progress is False or dist.rank != 0) else (None if progress is None else False)
    bar = tqdm(total=cfg.steps, initial=start, desc="sae train", unit="step", leave=False, disable=disable)
    t0 = time.perf_counter()
    step = start
    try:
        for batch in src.batches(start):
            if step >= cfg.steps:
                break
            logs = []
            for t, (h_in, h_out) in zip(trainers, pairs):
                x = _local(batch[h_in], dist)
                y = x if h_out is None else _local(batch[h_out], dist)
                logs.append(t.step(x, y, cfg.batch_size))
            step += 1
            if step % max(1, cfg.steps // 200) == 0 or step == cfg.steps:
                for t, log in zip(trainers, logs):
                    t.history.append({**log, "seconds": round(time.perf_counter() - t0, 3)})
            main = logs[0]
            bar.set_postfix(mse=f"{main['mse']:.3g}", L0=f"{main['l0']:.1f}", ev=f"{main['explained_variance']:.3f}",
                            dead=f"{main['dead_fraction']:.2f}", refresh=step == start + 1)  # first numbers at once
            bar.update(1)
            if ckpt is not None and step % every == 0 and step < cfg.steps:
                if dist.rank == 0:
                    _save_checkpoint(ckpt, trainers, cfg, pairs, step)
                dist.barrier()
    finally:
        bar.close()
    if step < cfg.steps:
        raise InterpError(f"the activations ran out after {step} of {cfg.steps} steps")
    saes = [t.to_sae() for t in trainers]
    if out_dir is not None and dist.rank == 0:
        for sae, t, (h_in, _) in zip(saes, trainers, pairs):
            target = out_dir if len(trainers) == 1 else out_dir / _dir_name(h_in)
            sae.save(target)
            log = {"hook_name": sae.hook_name, "hook_name_out": sae.hook_name_out, "config": asdict(cfg),
                   "seconds": round(time.perf_counter() - t0, 2), "history": t.history}
            (target / "training.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
        if ckpt is not None and ckpt.exists():
            shutil.rmtree(ckpt)
    dist.barrier()
    return saes[0] if single else saes


def _pair(spec) -> tuple[str, Optional[str]]:
    if isinstance(spec, str):
        return spec, None
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, str) for s in spec):
        return spec[0], spec[1]
    raise InterpError(f"a hook is a name or a (hook_in, hook_out) pair for a transcoder, not {spec!r}")


def _local(t: Tensor, dist: _Dist) -> Tensor:
    """This process's rows of a global batch."""
    if dist.world == 1:
        return t
    n = len(t) // dist.world
    return t[dist.rank * n:(dist.rank + 1) * n]


def _dir_name(hook: str) -> str:
    return hook.replace("/", "_") or "sae"


def _check_out(out_dir: Path, resume: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InterpError(f"--out {out_dir}: it is a file, not a directory")
    if (out_dir / "checkpoint").exists() and not resume:
        raise InterpError(f"--out {out_dir} holds the checkpoint of an unfinished run: resume it (--resume) or choose "
                          "another directory")
    if (out_dir / "cfg.json").exists() and not resume:
        raise InterpError(f"--out {out_dir} already holds an SAE: choose another directory")
    if resume and not (out_dir / "checkpoint").exists() and not (out_dir / ".checkpoint.old").exists():
        raise InterpError(f"--resume: {out_dir} has no checkpoint to resume")


def _save_checkpoint(ckpt: Path, trainers: list[Trainer], cfg: TrainConfig, pairs, step: int) -> None:
    """Write the checkpoint beside the old one and swap directories: the old one stands until the new is whole."""
    from safetensors.torch import save_file

    parent = ckpt.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".checkpoint.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    info = {"step": step, "config": asdict(cfg), "pairs": [list(p) for p in pairs], "trainers": []}
    for i, t in enumerate(trainers):
        save_file(t.state(), str(tmp / f"trainer-{i}.safetensors"))
        info["trainers"].append({"scale_in": t.scale_in, "scale_out": t.scale_out, "steps_done": t.steps_done,
                                 "history": t.history})
    (tmp / "state.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    old = parent / ".checkpoint.old"
    if old.exists():
        shutil.rmtree(old)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    if old.exists():
        shutil.rmtree(old)


def _load_checkpoint(ckpt: Path, trainers: list[Trainer], cfg: TrainConfig, pairs) -> int:
    from safetensors.torch import load_file

    if not ckpt.exists() and (ckpt.parent / ".checkpoint.old").exists():
        ckpt = ckpt.parent / ".checkpoint.old"  # killed between the two renames of a save
    try:
        info = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InterpError(f"--resume: cannot read {ckpt / 'state.json'} ({e})") from None
    saved = info["config"]
    for key, value in asdict(cfg).items():
        if saved.get(key) != value:
            raise InterpError(f"--resume: the checkpoint was made with {key}={saved.get(key)!r}, not {value!r}")
    if [tuple(p) for p in info["pairs"]] != [tuple(p) for p in pairs]:
        raise InterpError(f"--resume: the checkpoint trains {info['pairs']}, not {[list(p) for p in pairs]}")
    for i, t in enumerate(trainers):
        t.load_state(load_file(str(ckpt / f"trainer-{i}.safetensors")), info["trainers"][i])
    return int(info["step"])
