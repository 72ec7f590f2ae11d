"""Run circuit-tracer 0.5's attribution on a GPT-2 directory and a transcoder directory; print time and memory as JSON.

Not part of interp's import graph: ``interp bench --only graph --against DIR`` runs this file with
``DIR/bin/python`` (a venv with ``circuit-tracer==0.5.0``, which pins TransformerLens 3.2 and
cannot share interp's environment), and ``tools/circuit_tracer_fixtures.py`` imports
:func:`replacement_model` from it by path. It imports only torch, transformers and circuit-tracer.

    DIR/bin/python circuit_tracer_run.py MODEL_DIR TRANSCODER_DIR --tokens 0,5,9,... [--batch-size 512]

prints ``{"seconds": …, "attribute_seconds": …, "peak_mb": …, "n_features": …, …}`` on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def replacement_model(model_dir, tc_dir, dtype=None):
    """circuit-tracer's ReplacementModel over a Hugging Face GPT-2 directory (raw weights) and its transcoder set.

    Built as circuit-tracer does for a model it cannot download: a HookedTransformerConfig of
    GPT-2's shape, the weights converted with TransformerLens's ``convert_gpt2_weights`` and re-keyed
    to the replacement's wrapped MLPs and unembedding.
    """
    import torch
    import yaml
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from circuit_tracer import ReplacementModel
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    dtype = dtype or torch.float32
    model_dir, tc_dir = Path(model_dir), Path(tc_dir)
    hf = GPT2LMHeadModel.from_pretrained(str(model_dir), torch_dtype=torch.float32).to(dtype).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN",
        positional_embedding_type="standard", default_prepend_bos=False, dtype=dtype, eps=c.layer_norm_epsilon,
        tokenizer_name=str(model_dir), model_name="interp-bench", original_architecture="GPT2LMHeadModel",
    )
    conf = yaml.safe_load((tc_dir / "config.yaml").read_text())
    transcoders = load_transcoder_set(
        {i: str(tc_dir / p) for i, p in enumerate(conf["transcoders"])}, scan=conf["scan"],
        feature_input_hook=conf["feature_input_hook"], feature_output_hook=conf["feature_output_hook"],
        device=torch.device("cpu"), dtype=dtype, lazy_encoder=False, lazy_decoder=False,
    )
    model = ReplacementModel.from_config(cfg, transcoders, backend="transformerlens")
    state = convert_gpt2_weights(hf, cfg)
    state["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=dtype)
    renamed = {}
    for k, v in state.items():  # the replacement wraps the MLPs and the unembedding
        if ".mlp." in k:
            k = k.replace(".mlp.", ".mlp.old_mlp.")
        elif k.startswith("unembed."):
            k = k.replace("unembed.", "unembed.old_unembed.")
        renamed[k] = v
    _, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected, unexpected
    model.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, hf


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("transcoder_dir")
    p.add_argument("--tokens", required=True, help="comma-separated token ids, a special token first")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-prune", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph

    model, _ = replacement_model(args.model_dir, args.transcoder_dir)
    tokens = torch.tensor([int(t) for t in args.tokens.split(",")])
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _hwm_mb()
    t0 = time.perf_counter()
    graph = attribute(tokens, model, max_n_logits=10, desired_logit_prob=0.95, batch_size=args.batch_size)
    t1 = time.perf_counter()
    out = {"attribute_seconds": t1 - t0, "n_features": int(len(graph.selected_features)),
           "n_logits": len(graph.logit_targets)}
    if not args.no_prune:
        node_mask, edge_mask, _ = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
        replacement, completeness = compute_graph_scores(graph)
        out.update(n_kept_features=int(node_mask[: out["n_features"]].sum()), n_edges=int(edge_mask.sum()),
                   replacement_score=replacement, completeness_score=completeness)
    out["seconds"] = time.perf_counter() - t0
    out["peak_mb"] = _hwm_mb() - base
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
