"""Fixtures from circuit-tracer 0.5.0: its attribution graphs on a tiny random GPT-2 and random transcoders.

``interp.features.graph`` is checked against these files (tests/test_graph_parity.py): the
same model and transcoders, loaded by interp, must give circuit-tracer's adjacency matrix,
node order, logit targets, pruning masks, replacement/completeness scores and frontend JSON.

circuit-tracer pins TransformerLens 3.2 and cannot share interp's environment, so this
script runs in a venv of its own (never in the repository)::

    python3 -m venv /work/venvs/ctracer
    /work/venvs/ctracer/bin/pip install torch==2.13.0
    /work/venvs/ctracer/bin/pip install circuit-tracer==0.5.0     # brings transformer-lens 3.2.1, transformers 4.57
    HF_HUB_OFFLINE=1 /work/venvs/ctracer/bin/python tools/circuit_tracer_fixtures.py

It writes ``tests/fixtures/circuit_tracer/`` (about 300 KB):

* ``model/`` -- a random GPT-2 (3 layers, 2 heads, d_model 16, a 40-word vocabulary) saved by
  Hugging Face's ``save_pretrained`` with a word-level tokenizer: random LayerNorm gains and
  biases, random biases everywhere, so folding and bias conventions matter;
* ``transcoders-relu/`` and ``transcoders-skip/`` -- per-layer transcoders in circuit-tracer's
  format (``config.yaml`` + ``layer_{i}.safetensors`` holding ``W_enc``/``W_dec``
  ``[d_transcoder, d_model]``, ``b_enc``, ``b_dec``; the second set adds ``W_skip`` and a JumpReLU
  ``activation_function.threshold``), reading ``mlp.hook_in`` (the MLP's input, after ln2)
  and writing ``mlp.hook_out``;
* ``graphs/{set}-{prompt}.safetensors`` -- circuit-tracer's ``Graph`` for each transcoder set
  and prompt (the 16-token one with the skip set only): its adjacency matrix (targets × sources) as ``adjacency_features``
  ``[n_features, n_nodes]`` and ``adjacency_logits`` ``[n_logits, n_nodes]`` (the rows of error and
  token nodes are zero: they have no inputs), ``active_features``
  (layer, pos, feature), ``activation_values``, ``input_tokens``, ``logit_ids``,
  ``logit_probabilities``, and ``prune_graph``'s ``node_mask``, ``edge_mask``,
  ``cumulative_scores`` at its defaults (0.8, 0.98) and at (0.6, 0.9);
  ``graphs/{set}-{prompt}.json`` -- ``compute_graph_scores`` of the graph and of the pruned graph
  (the adjacency times its node and edge masks at the defaults) and the run's settings;
* ``frontend/{set}-{prompt}.json`` -- ``create_graph_files``'s output on the same graph.

circuit-tracer runs in float64 here (``torch.set_default_dtype``: its ``attribute`` allocates
the adjacency with the default dtype), on weights rounded to float32 first, so the fixture is
the float64 answer for exactly the float32 weights that are saved.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "circuit_tracer"
WORDS = [f"w{i}" for i in range(39)]  # + <|endoftext|> = 40 tokens
PROMPTS = {  # token ids, BOS (0, a special token: circuit-tracer then prepends nothing) first
    "induction": [0, 5, 9, 3, 5, 9],
    "mixed": [0, 12, 7, 30, 2, 21],
    # the model's whole context: 251 active features, so interp's batches, row cache and pruning see many rows
    "long": [0, 5, 9, 3, 5, 9, 12, 7, 30, 2, 21, 5, 9, 17, 12, 7],
}
SETS_OF_PROMPT = {"long": ("skip",)}  # the others run with both transcoder sets
SHAPE = dict(n_layer=3, n_head=2, n_embd=16, n_inner=32, n_positions=16, vocab_size=len(WORDS) + 1)
D_TRANSCODER = 16


def build_model(path: Path):
    """A random GPT-2 written with save_pretrained, and its word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = GPT2Config(**SHAPE, bos_token_id=0, eos_token_id=0, activation_function="gelu_new")
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            else:  # attention and MLP matrices: large enough that every head and MLP matters
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
    model.save_pretrained(path)
    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(path)
    return model, tokenizer


def build_transcoders(path: Path, seed: int, skip: bool) -> None:
    """Random per-layer transcoders in circuit-tracer's format (weights rounded to float32)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    d, n = SHAPE["n_embd"], D_TRANSCODER
    path.mkdir(parents=True, exist_ok=True)
    files = []
    for layer in range(SHAPE["n_layer"]):
        tensors = {
            "W_enc": torch.randn(n, d, generator=g) / d**0.5,
            "W_dec": 0.5 * torch.randn(n, d, generator=g),
            "b_enc": -0.4 + 0.3 * torch.randn(n, generator=g),  # about a third of the features fire
            "b_dec": 0.3 * torch.randn(d, generator=g),
        }
        if skip:
            tensors["W_skip"] = 0.3 * torch.randn(d, d, generator=g) / d**0.5
            tensors["activation_function.threshold"] = 0.2 * torch.rand(n, generator=g)
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(path / f"layer_{layer}.safetensors"))
        files.append(f"layer_{layer}.safetensors")
    config = {
        "model_name": "circuit-tracer-fixture",
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out",
        "scan": f"fixture-{path.name}",
        "transcoders": files,  # relative to this file's directory
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def replacement_model(model_dir: Path, tc_dir: Path):
    """circuit-tracer's ReplacementModel over the saved model (raw, nothing folded) in float64: the bench's builder."""
    import importlib.util

    import torch

    path = Path(__file__).resolve().parent.parent / "interp" / "bench" / "circuit_tracer_run.py"
    spec = importlib.util.spec_from_file_location("circuit_tracer_run", path)
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)  # it imports only torch, transformers and circuit-tracer, never interp
    return runner.replacement_model(model_dir, tc_dir, torch.float64)[0]


def main() -> None:
    import torch

    torch.set_default_dtype(torch.float64)
    from safetensors.torch import save_file

    import circuit_tracer
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.utils.create_graph_files import create_graph_files

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    model_dir = OUT / "model"
    torch.set_default_dtype(torch.float32)  # the model and transcoders are made and saved in float32
    hf_model, tokenizer = build_model(model_dir)
    sets = {"relu": (OUT / "transcoders-relu", False), "skip": (OUT / "transcoders-skip", True)}
    for i, (tc_dir, skip) in enumerate(sets.values()):
        build_transcoders(tc_dir, seed=10 + i, skip=skip)
    torch.set_default_dtype(torch.float64)

    # The same weights through Hugging Face, for the fixture's own sanity check below.
    ids = torch.tensor([PROMPTS["induction"]])
    with torch.no_grad():
        hf_logits = hf_model.double()(ids).logits[0]

    (OUT / "graphs").mkdir()
    (OUT / "frontend").mkdir()
    manifest = {"circuit_tracer": circuit_tracer.__version__ if hasattr(circuit_tracer, "__version__") else "0.5.0",
                "torch": torch.__version__, "prompts": PROMPTS, "graphs": []}
    for set_name, (tc_dir, _) in sets.items():
        model = replacement_model(model_dir, tc_dir)
        with torch.no_grad():
            tl_logits = model(ids)[0]
        assert torch.allclose(tl_logits, hf_logits, atol=1e-10), (tl_logits - hf_logits).abs().max()
        for prompt_name, tokens in PROMPTS.items():
            if set_name not in SETS_OF_PROMPT.get(prompt_name, sets):
                continue
            slug = f"{set_name}-{prompt_name}"
            graph = attribute(torch.tensor(tokens), model, max_n_logits=10, desired_logit_prob=0.95, batch_size=64)
            assert graph.adjacency_matrix.dtype == torch.float64
            n_feat, n_logits = len(graph.selected_features), len(graph.logit_targets)
            adjacency = graph.adjacency_matrix
            # Only feature and logit rows can be nonzero (errors and tokens have no inputs): keep those.
            assert not adjacency[n_feat:-n_logits].any()
            tensors = {
                "adjacency_features": adjacency[:n_feat],
                "adjacency_logits": adjacency[-n_logits:],
                "active_features": graph.active_features.to(torch.int32),
                "selected_features": graph.selected_features.to(torch.int32),
                "activation_values": graph.activation_values,
                "input_tokens": graph.input_tokens.to(torch.int32),
                "logit_ids": graph.logit_token_ids.to(torch.int32),
                "logit_probabilities": graph.logit_probabilities,
            }
            for tag, (nt, et) in {"": (0.8, 0.98), "_0.6_0.9": (0.6, 0.9)}.items():
                node_mask, edge_mask, cumulative = prune_graph(graph, node_threshold=nt, edge_threshold=et)
                tensors[f"node_mask{tag}"] = node_mask.to(torch.uint8)
                tensors[f"edges{tag}"] = edge_mask.nonzero().to(torch.int16)  # (target, source) pairs
                tensors[f"cumulative_scores{tag}"] = cumulative
            replacement, completeness = compute_graph_scores(graph)
            # The same scores of the pruned graph: circuit-tracer's function on the adjacency its masks keep.
            node_mask, edge_mask, _ = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
            pruned = copy.copy(graph)
            pruned.adjacency_matrix = graph.adjacency_matrix * edge_mask * node_mask[:, None] * node_mask[None, :]
            pruned_replacement, pruned_completeness = compute_graph_scores(pruned)
            # float64 where circuit-tracer computed in float64; stored in float32 where 1e-7 is plenty
            save_file({k: (v.float() if k.startswith("adjacency") else v).contiguous()
                       for k, v in tensors.items()}, str(OUT / "graphs" / f"{slug}.safetensors"))
            info = {
                "slug": slug, "transcoders": tc_dir.name, "prompt": prompt_name, "tokens": tokens,
                "replacement_score": replacement, "completeness_score": completeness,
                "pruned_replacement_score": pruned_replacement, "pruned_completeness_score": pruned_completeness,
                "n_features": int(len(graph.selected_features)), "n_logits": len(graph.logit_targets),
                "logit_tokens": [t.token_str for t in graph.logit_targets],
                "max_n_logits": 10, "desired_logit_prob": 0.95, "adjacency_dtype": "float64 stored as float32",
            }
            (OUT / "graphs" / f"{slug}.json").write_text(json.dumps(info, indent=1) + "\n")
            tmp = OUT / "frontend" / "tmp"
            create_graph_files(graph, slug=slug, output_path=str(tmp), scan=f"fixture-{tc_dir.name}",
                               node_threshold=0.8, edge_threshold=0.98)
            data = json.loads((tmp / f"{slug}.json").read_text())
            (OUT / "frontend" / f"{slug}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")
            shutil.rmtree(tmp)
            manifest["graphs"].append(slug)
            print(f"{slug}: {info['n_features']} features, {info['n_logits']} logits, "
                  f"replacement {replacement:.4f}, completeness {completeness:.4f}", file=sys.stderr)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KB)", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
