"""Fixtures from SAELens 6.54.12 for tests/test_sae_saelens.py: its files and its outputs, both ways.

SAELens pins TransformerLens 3 and cannot share interp's environment, so this script runs in a venv
of its own and writes small fixtures (a few KB each) that the tests read:

* ``tests/fixtures/saelens/saelens/NAME/`` — an SAE or transcoder made and saved by SAELens (one per
  architecture, a transcoder with skip, normalisations, and two files in the pre-6.0 layout), plus
  ``outputs.safetensors``: SAELens's ``hidden_pre``, ``feature_acts``, ``decoded`` and ``out`` on the
  fixed inputs ``x`` (stored beside them).
* ``tests/fixtures/saelens/interp/NAME/`` — SAEs saved by interp (step 1 below), plus
  ``saelens_outputs.safetensors``: what SAELens computes after loading them.

Rebuild (from the repository root):

1. in interp's environment, write interp's SAEs::

       python tools/saelens_fixtures.py interp

2. in SAELens's venv (``python3 -m venv /work/venvs/saelens && . /work/venvs/saelens/bin/activate &&
   pip install torch==2.13.0 && pip install sae-lens==6.54.12``), write SAELens's SAEs and its
   outputs on both sets::

       /work/venvs/saelens/bin/python tools/saelens_fixtures.py saelens
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "saelens"
D_IN, D_SAE, D_OUT, N = 16, 48, 12, 6


def inputs(d: int = D_IN, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, d, generator=g) * 2 + 0.5).float()


def _randomise(module, seed: int, threshold: float = 0.3) -> None:
    """Every parameter random (biases too, decoder rows of unequal norm), thresholds positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "threshold":
                p.copy_(threshold + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.4 * torch.randn(p.shape, generator=g))


# ============================================================================ interp's side
def write_interp() -> None:
    from interp.features.sae import SAE, SAEConfig

    out = ROOT / "interp"
    if out.exists():
        shutil.rmtree(out)
    specs = {
        "standard": dict(architecture="standard"),
        "standard_cnr": dict(architecture="standard", normalize_activations="constant_norm_rescale"),
        "topk": dict(architecture="topk", k=40, apply_b_dec_to_input=False),  # k large: some top-k values negative
        "topk_rescale": dict(architecture="topk", k=5, rescale_acts_by_decoder_norm=True),
        "batchtopk": dict(architecture="batchtopk", k=4),
        "jumprelu": dict(architecture="jumprelu"),
        "skip_transcoder": dict(architecture="standard", d_out=D_OUT, skip=True, apply_b_dec_to_input=False,
                                hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"),
        "jumprelu_skip_transcoder": dict(architecture="jumprelu", d_out=D_OUT, skip=True, apply_b_dec_to_input=False,
                                         hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"),
    }
    x = inputs()
    for i, (name, spec) in enumerate(specs.items()):
        spec = {"hook_name": "blocks.0.hook_resid_post", **spec}
        sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, model_name="interp-tiny", fold_ln=True, **spec), seed=i)
        _randomise(sae, 100 + i)
        sae.save(out / name)
        from safetensors.torch import save_file

        save_file({"x": x}, str(out / name / "inputs.safetensors"))
        print("wrote", out / name)


# ============================================================================ SAELens's side
def _saelens_outputs(sae, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        _, cache = sae.run_with_cache(x, names_filter=lambda n: n == "hook_sae_acts_pre")
        f = sae.encode(x)
        decoded = sae.decode(f)  # after encode: SAELens keeps the input's norm on the module for decode
        out = sae(x)
    return {"x": x, "hidden_pre": cache["hook_sae_acts_pre"], "feature_acts": f, "decoded": decoded, "out": out}


def write_saelens() -> None:
    from safetensors.torch import save_file
    from sae_lens import SAE
    from sae_lens.saes import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUSAE, JumpReLUSAEConfig,
                               JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, SkipTranscoder,
                               SkipTranscoderConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig,
                               Transcoder, TranscoderConfig)
    from sae_lens.saes.sae import SAEMetadata

    out = ROOT / "saelens"
    if out.exists():
        shutil.rmtree(out)
    x = inputs()

    def meta(hook="blocks.0.hook_resid_post", hook_out=None, **kw):
        m = SAEMetadata(model_name="interp-tiny", hook_name=hook, **kw)
        if hook_out:
            m.hook_name_out = hook_out
        return m

    tc = dict(hook="blocks.0.ln2.hook_normalized", hook_out="blocks.0.hook_mlp_out")
    made = {
        "standard": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(
            model_from_pretrained_kwargs={"center_writing_weights": False}))),
        "standard_cnr": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="constant_norm_rescale",
                                                      metadata=meta())),
        "standard_layer_norm": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="layer_norm",
                                                             metadata=meta())),
        "topk": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=40, apply_b_dec_to_input=False, metadata=meta())),
        "topk_rescale": TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True,
                                              metadata=meta())),
        "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(
            model_from_pretrained_kwargs={"fold_ln": True, "center_writing_weights": True}))),
        "hook_z": StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, reshape_activations="hook_z",
                                                metadata=meta(hook="blocks.1.attn.hook_z"))),
        "transcoder": Transcoder(TranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False,
                                                  metadata=meta(**tc))),
        "transcoder_cnr": Transcoder(TranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False,
                                                      normalize_activations="constant_norm_rescale", metadata=meta(**tc))),
        "skip_transcoder": SkipTranscoder(SkipTranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT,
                                                               apply_b_dec_to_input=False, metadata=meta(**tc))),
        "jumprelu_skip_transcoder": JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(
            d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta(**tc))),
    }
    for i, (name, sae) in enumerate(made.items()):
        _randomise(sae, 200 + i)
        sae.save_model(out / name)
    # A BatchTopK SAE as SAELens's trainer saves it: a JumpReLU whose threshold is the learned one.
    bt = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, rescale_acts_by_decoder_norm=False,
                                                         metadata=meta()))
    _randomise(bt, 250)
    bt.topk_threshold = torch.tensor(0.45, dtype=torch.double)
    bt.save_inference_model(out / "batchtopk")
    made["batchtopk"] = None
    # Two files in the pre-6.0 layout (the names SAELens still reads), weights written by hand.
    g = torch.Generator().manual_seed(300)
    for name, extra in (("pre6_standard", {"activation_fn_str": "relu", "normalize_activations": False}),
                        ("pre6_topk", {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
                                       "normalize_activations": None})):
        d = out / name
        d.mkdir(parents=True)
        cfg = {"model_name": "interp-tiny", "hook_point": "blocks.0.hook_resid_pre", "hook_point_layer": 0,
               "hook_point_head_index": None, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
               "context_size": 64, "prepend_bos": True, "sae_lens_training_version": "3.13.0",
               "l1_coefficient": 5.0, "lr": 4e-4, **extra}
        (d / "cfg.json").write_text(json.dumps(cfg))
        w = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.4, "b_enc": torch.randn(D_SAE, generator=g) * 0.4,
             "W_dec": torch.randn(D_SAE, D_IN, generator=g) * 0.4, "b_dec": torch.randn(D_IN, generator=g) * 0.4}
        save_file(w, str(d / "sae_weights.safetensors"))
        made[name] = None
    for name in made:
        loaded = SAE.load_from_disk(out / name)
        xin = x.view(N, 4, 4) if loaded.cfg.reshape_activations == "hook_z" else x
        outs = _saelens_outputs(loaded, xin)
        save_file({k: v.reshape(N, -1).contiguous() for k, v in outs.items()}, str(out / name / "outputs.safetensors"))
        print("wrote", out / name, type(loaded).__name__)
    # SAELens reading what interp saved.
    for d in sorted((ROOT / "interp").iterdir()):
        loaded = SAE.load_from_disk(d)
        outs = _saelens_outputs(loaded, x)
        save_file({k: v.contiguous() for k, v in outs.items()}, str(d / "saelens_outputs.safetensors"))
        print("SAELens read", d, type(loaded).__name__)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which == "interp":
        write_interp()
    elif which == "saelens":
        write_saelens()
    else:
        sys.exit("usage: python tools/saelens_fixtures.py interp|saelens (see the docstring)")
