"""The recipe: every hyperparameter of a training run, and what each one means."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a run; a checkpoint is only resumed under the same recipe."""

    seed: int = 0
    steps: int = 7000
    # A model directory written by an earlier run: start from its weights and tokenizer
    # (a second stage) instead of a random initialisation and a new tokenizer.
    init_from: str = ""
    # Model shape: attention-heavy (many small heads, MLP only 2x d_model) because
    # the point of the model is its attention heads, not its text loss.
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 8
    mlp_mult: int = 2
    n_ctx: int = 64
    vocab_size: int = 4096
    init_std: float = 0.08
    tie_embeddings: bool = True
    # Optimisation.
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 200
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Curriculum: synthetic-only for `synthetic_only_steps`, then the text share
    # ramps linearly over `ramp_steps` until synthetic rows are `final_synthetic_frac`.
    synthetic_only_steps: int = 3500
    ramp_steps: int = 1000
    final_synthetic_frac: float = 0.5
    # Among synthetic rows, this share is *mark* (``x m x m ...``, m = "seen before?"; meant
    # to reward duplicate-token heads, but induction heads solve it: see the model card),
    mark_frac: float = 0.0
    # ... this share is *reverse* (``r reversed(r)``),
    reverse_frac: float = 0.2
    # ... this share is *skip* (``a b a c d c ...``), and the rest *repeat*.
    skip_frac: float = 0.2
    # Random span tokens are first drawn from ids [1, syn_vocab_start) and the range
    # grows linearly to the whole vocabulary over syn_vocab_ramp steps: with 4096
    # tokens each embedding is seen too rarely for copying to get started.
    syn_vocab_start: int = 256
    syn_vocab_ramp: int = 4500
    # Learned positional embeddings start as scaled sinusoids (then train freely), so
    # "attend to position q-1" is a simple rotation from step 0 instead of
    # something the position table must first discover.
    sinusoid_pos_init: bool = True
    min_span: int = 8
    max_span: int = 30
    # Monitoring.
    eval_every: int = 200
    ckpt_every: int = 500
    monitor_span: int = 25
    heldout_frac_mod: int = 20
    # Among synthetic rows, this share is *where* (``x w x w ...``, w = "new", or where in
    # the row the earlier copy of x was): at layer 0 only a head attending to that copy
    # can answer, since attending to x itself gives the wrong position.
    where_frac: float = 0.0
    # Early exit (deep supervision): add exit_weight times the next-token loss read from
    # block exit_layer's output through ln_f and the unembedding (the logit lens), on
    # the marker predictions of mark and where rows ("marks") or on every prediction
    # ("all"). Below the induction heads, "seen before?" needs a duplicate-token head.
    exit_weight: float = 0.0
    exit_layer: int = 0
    exit_rows: str = "marks"
    # For the first self_mask_steps steps, layer-0 heads may not attend from the items of
    # mark and where rows to themselves (every other row and the monitor are unmasked).
    self_mask_steps: int = 0
    # Heads ("L.H,L.H") whose weights are redrawn at random after loading init_from: spare
    # capacity, a head with diffuse attention inside a trained model.
    reinit_heads: str = ""

    def __post_init__(self):
        if self.exit_rows not in ("marks", "all"):
            raise ValueError(f"exit_rows {self.exit_rows!r}: use 'marks' or 'all'")
        if self.exit_weight and not 0 <= self.exit_layer < self.n_layer - 1:
            raise ValueError(
                f"exit_layer {self.exit_layer} out of range: an early exit reads a block before the last "
                f"(0–{self.n_layer - 2} for {self.n_layer} layers)"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """Build a recipe from a dict, rejecting keys that are not fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown recipe keys {unknown}; known keys: {sorted(names)}")
        return cls(**d)




#: One line per field: the ``--help`` text of its command-line flag.
RECIPE_HELP = {
    "seed": "seed for initialisation and every batch (a run is a pure function of it)",
    "steps": "total optimizer steps (also the length of the LR schedule)",
    "init_from": "start from this earlier run's output directory (weights + tokenizer); '' = from scratch",
    "n_layer": "transformer blocks",
    "d_model": "residual stream width",
    "n_head": "attention heads per layer",
    "mlp_mult": "MLP width as a multiple of d_model",
    "n_ctx": "training context = config n_positions",
    "vocab_size": "BPE vocabulary size, including <|endoftext|> (id 0)",
    "init_std": "GPT2Config.initializer_range (0.02 is for d_model 768; small models plateau with it)",
    "tie_embeddings": "tie input and output embeddings (GPT-2 does)",
    "batch_size": "sequences per step",
    "lr": "peak AdamW learning rate",
    "warmup_steps": "linear LR warmup steps",
    "min_lr_frac": "cosine decays the LR to this fraction of the peak",
    "weight_decay": "AdamW weight decay on weight matrices (not embeddings, biases, LayerNorm)",
    "grad_clip": "gradient-norm clip",
    "synthetic_only_steps": "curriculum: steps trained on synthetic copying sequences only",
    "ramp_steps": "curriculum: steps over which text is then mixed in",
    "final_synthetic_frac": "curriculum: share of synthetic rows after the ramp",
    "mark_frac": "share of synthetic rows x1 m1 x2 m2 ... with m = 'x seen before?' (duplicate-token reward)",
    "reverse_frac": "share of synthetic rows that are r + reversed(r)",
    "skip_frac": "share of synthetic rows with random x[t] = x[t-2] (previous-token reward)",
    "syn_vocab_start": "random tokens are first drawn from ids [1, this)",
    "syn_vocab_ramp": "steps over which that range grows to the whole vocabulary",
    "sinusoid_pos_init": "initialise the (learned) positional embeddings as sinusoids",
    "min_span": "shortest repeated random span",
    "max_span": "longest repeated random span",
    "eval_every": "steps between rows of curves.csv",
    "ckpt_every": "steps between checkpoints",
    "monitor_span": "span of the fixed [BOS] r r probe used for head scores",
    "heldout_frac_mod": "hold out documents with crc32(text) %% this == 0",
    "where_frac": "share of synthetic rows x1 w1 x2 w2 ... with w = 'new' or where the earlier copy of x is",
    "exit_weight": "weight of the early-exit (logit-lens) next-token loss at block EXIT_LAYER's output; 0 = off",
    "exit_layer": "block whose output the early exit reads (must be before the last)",
    "self_mask_steps": "for this many steps, layer 0 cannot attend from an item of a mark/where row to itself",
    "reinit_heads": "heads L.H,L.H given fresh random weights (from the seed) after loading --init-from",
    "exit_rows": "early exit on the marker predictions of mark/where rows ('marks') or on every prediction ('all')",
}
