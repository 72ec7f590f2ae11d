"""Fixtures from tuned-lens 0.2.0 for ``tests/test_tuned_lens.py`` (a tool of the repository, not shipped).

interp reads and writes the tuned lens in tuned-lens's own format. The tests hold it against
tuned-lens's code, which cannot share interp's environment, so this script runs in a venv of its
own and writes small files that the tests read:

``tests/fixtures/tuned_lens/``
    ``model/``          a random GPT-2 (3 layers, d_model 16, vocabulary 64; random LayerNorm
                        gains and biases and random biases everywhere), ``save_pretrained``'s files
                        and a word-level tokenizer;
    ``lens_hf/``        ``TunedLens.from_model(model)`` with random, non-zero translators, saved by
                        ``lens.save`` (``config.json`` + ``params.pt``): a lens as tuned-lens trains
                        it, on Hugging Face's residual stream, whose translators read the stream's
                        mean over d_model;
    ``lens_centred/``   the same lens with every translator made blind to that mean (``A ← A C``,
                        C the centring matrix), the kind of lens interp trains;
    ``outputs.safetensors``  the inputs (``input_ids``) and tuned-lens's per-layer logits on them
                        for each lens: ``<lens>`` is ``[n_layers + 1, batch, pos, d_vocab]``,
                        ``lens(hidden_states[i], idx=i)`` for ``i < n_layers`` and the model's own
                        logits last (the final layer needs no translator); ``logit_lens`` is
                        tuned-lens's ``LogitLens`` on the same hidden states;
    ``interp_written/`` a lens trained and saved by interp (``--interp-side`` below), and
    ``outputs_interp_written.safetensors``  tuned-lens's logits from it, read by
                        ``TunedLens.from_model_and_pretrained`` (the other direction of the parity).

Rebuild the venv and the fixtures (from the repository root)::

    python3 -m venv /work/venvs/tunedlens
    /work/venvs/tunedlens/bin/pip install torch==2.13.0
    /work/venvs/tunedlens/bin/pip install tuned-lens==0.2.0
    /work/venvs/tunedlens/bin/python tools/tuned_lens_fixtures.py             # model, lenses, outputs
    python tools/tuned_lens_fixtures.py --interp-side                         # in interp's venv: interp_written/
    /work/venvs/tunedlens/bin/python tools/tuned_lens_fixtures.py --read-only # tuned-lens reads interp_written/

(tuned-lens 0.2.0 imports TransformerLens when it is installed and then fails; the script switches
that detection off before importing its lenses, as /work/shared/PEERS.md says.) Every run is
deterministic (fixed seeds); ``--interp-side`` trains with interp's ``train_tuned_lens`` on the
fixture model (folded, so its ``unembed_hash`` is null) on random token windows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tuned_lens"
SHAPE = dict(n_layer=3, n_head=2, n_embd=16, n_positions=16, vocab_size=64)
BATCH, POS = 3, 12


def _tuned_lens():
    import tuned_lens.model_surgery as surgery
    import tuned_lens.nn.unembed as unembed

    surgery._transformer_lens_available = False  # tuned-lens 0.2.0 fails with TransformerLens installed
    unembed._transformer_lens_available = False
    from tuned_lens.nn.lenses import LogitLens, TunedLens

    return LogitLens, TunedLens


def make_model(path: Path):
    """A random GPT-2 whose LayerNorms and biases are all non-trivial, saved with a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**SHAPE, bos_token_id=0, eos_token_id=0, attn_implementation="eager")).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.mul_(5)  # GPT-2's std 0.02 is for d_model 768: at 16 the layers would barely move the stream
    hf.save_pretrained(path)
    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, SHAPE["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(path)
    return hf


def _load(out: Path):
    """The fixture model as a user loads it, named by its path in the repository (not this machine's)."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(out / "model", attn_implementation="eager").eval()
    hf.config.name_or_path = "tests/fixtures/tuned_lens/model"  # base_model_name_or_path of the lenses
    return hf


def lens_logits(hf, lens, ids: torch.Tensor) -> torch.Tensor:
    """tuned-lens's logits at every layer ``[n_layers + 1, batch, pos, d_vocab]``, the model's own last."""
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
        per_layer = [lens(h, idx=i) for i, h in enumerate(out.hidden_states[:-1])]
        return torch.stack([*per_layer, out.logits]).contiguous()


def make(out: Path) -> None:
    from safetensors.torch import save_file

    LogitLens, TunedLens = _tuned_lens()
    out.mkdir(parents=True, exist_ok=True)
    make_model(out / "model")
    hf = _load(out)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, SHAPE["vocab_size"], (BATCH, POS), generator=g)
    ids[:, 0] = 0  # BOS
    d = SHAPE["n_embd"]
    centre = torch.eye(d) - torch.full((d, d), 1 / d)
    tensors = {"input_ids": ids, "logit_lens": lens_logits(hf, LogitLens.from_model(hf), ids)}
    lens = TunedLens.from_model(hf)
    with torch.no_grad():
        for t in lens:
            t.weight.copy_(0.4 * torch.randn(t.weight.shape, generator=g) / d**0.5)
            t.bias.copy_(0.3 * torch.randn(t.bias.shape, generator=g))
    lens.save(out / "lens_hf")
    tensors["lens_hf"] = lens_logits(hf, lens, ids)
    with torch.no_grad():
        for t in lens:
            t.weight.copy_(t.weight @ centre)  # blind to the stream's mean: A 1 = 0
    lens.save(out / "lens_centred")
    tensors["lens_centred"] = lens_logits(hf, lens, ids)
    save_file(tensors, out / "outputs.safetensors")
    print(f"wrote {out}: model, lens_hf, lens_centred, outputs.safetensors")


def read_interp_written(out: Path) -> None:
    """tuned-lens loads interp's lens (``from_model_and_pretrained``) and writes its logits."""
    from safetensors.torch import load_file, save_file

    _, TunedLens = _tuned_lens()
    hf = _load(out)
    ids = load_file(out / "outputs.safetensors")["input_ids"]
    lens = TunedLens.from_model_and_pretrained(hf, str(out / "interp_written"))
    config = json.loads((out / "interp_written" / "config.json").read_text())
    save_file({"input_ids": ids, "interp_written": lens_logits(hf, lens, ids)},
              out / "outputs_interp_written.safetensors", metadata={"config": json.dumps(config)})
    print(f"wrote {out / 'outputs_interp_written.safetensors'}")


def write_interp_lens(out: Path) -> None:
    """In interp's venv: train a lens with interp on the fixture model and save it (interp_written/)."""
    import interp
    from analyses.lens_training import train_tuned_lens

    import os

    model = interp.load(os.path.relpath(out / "model"), fold_ln=True)  # named by its path in the repository
    g = torch.Generator().manual_seed(3)
    windows = torch.randint(1, SHAPE["vocab_size"], (40 * 8, SHAPE["n_positions"]), generator=g)
    windows[:, 0] = 0
    lens = train_tuned_lens(model, windows, steps=40, tokens_per_step=8 * SHAPE["n_positions"], seed=0,
                            progress=False)
    lens.save(out / "interp_written")
    print(f"wrote {out / 'interp_written'}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--interp-side", action="store_true", help="in interp's venv: write interp_written/")
    mode.add_argument("--read-only", action="store_true", help="only let tuned-lens read interp_written/")
    args = p.parse_args(argv)
    if args.interp_side:
        write_interp_lens(args.out)
        return
    if not args.read_only:
        make(args.out)
    if (args.out / "interp_written" / "config.json").exists():
        read_interp_written(args.out)
    elif args.read_only:
        sys.exit(f"{args.out / 'interp_written'} does not exist: run with --interp-side in interp's venv first")


if __name__ == "__main__":
    main()
