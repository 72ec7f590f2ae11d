"""interp.load: every kind of spec, the offline path, and every way loading can go wrong."""

import copy
import pickle

import pytest
import torch

import interp
from interp import InterpError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, small_hf):
    model, tok = small_hf
    d = tmp_path_factory.mktemp("small_gpt2")
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


def test_load_local_directory_equals_object(hf_dir, small_hf, small_raw):
    model = interp.load(str(hf_dir), fold_ln=False)
    toks = small_raw.tokenize("the same prompt").tokens
    assert torch.allclose(model(toks), small_raw(toks), atol=1e-6)
    assert model.cfg.name == str(hf_dir)


def test_load_does_not_modify_the_callers_model(small_hf):
    hf_model, tok = small_hf
    before = {k: v.clone() for k, v in hf_model.state_dict().items()}
    toks = torch.tensor([[0, 5, 6, 7]])
    ref = hf_model(toks).logits
    interp.load(hf_model, tokenizer=tok, fold_ln=True)
    assert all(torch.equal(before[k], v) for k, v in hf_model.state_dict().items())
    assert torch.equal(hf_model(toks).logits, ref)
    assert type(hf_model.transformer.h[0].attn).__name__ == "GPT2Attention"


def test_pickle_weights_load_with_weights_only(tmp_path, small_hf, small_raw):
    model, tok = small_hf
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = interp.load(str(tmp_path), fold_ln=False)
    toks = small_raw.tokenize("a prompt").tokens
    assert torch.allclose(loaded(toks), small_raw(toks), atol=1e-6)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, small_hf, monkeypatch):
    model, tok = small_hf
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Evil()}, f)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InterpError, match="weights_only=True"):
        interp.load(str(tmp_path))
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_safetensors(tmp_path, hf_dir):
    for f in hf_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InterpError, match=r"cannot load weights from .*model\.safetensors"):
        interp.load(str(tmp_path))


def test_directory_problems(tmp_path, hf_dir):
    with pytest.raises(InterpError, match="does not exist"):
        interp.load(str(tmp_path / "missing"))
    with pytest.raises(InterpError, match="no config.json"):
        interp.load(str(tmp_path))
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(InterpError, match="has no weights"):
        interp.load(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(InterpError, match="no tokenizer files"):
        interp.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InterpError, match="cannot read"):
        interp.load(str(tmp_path))


def test_not_gpt2(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(InterpError, match="'llama' model; interp supports GPT-2"):
        interp.load(str(tmp_path))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InterpError, match="unknown model 'gtp2'.*gpt2, gpt2-medium"):
        interp.load("gtp2")


def test_offline_hub_name_says_how_to_use_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: gpt2 is certainly not in it
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(InterpError, match=r"not in the local Hugging Face cache.*interp\.load\('/path/to/gpt2'\)") as e:
        interp.load("gpt2")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="int8"), "dtype 'int8' not supported"),
        (dict(device="cuda:0"), "CUDA is not available"),
        (dict(device="toaster"), "not a torch device"),
    ],
)
def test_bad_dtype_and_device(small_hf, kwargs, message):
    if "cuda" in str(kwargs.get("device")) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model, tok = small_hf
    with pytest.raises(InterpError, match=message):
        interp.load(model, tokenizer=tok, **kwargs)


def test_model_object_without_tokenizer(small_hf):
    model, _ = small_hf
    with pytest.raises(InterpError, match="pass tokenizer="):
        interp.load(model)


def test_float64_runs_in_float64(small_hf):
    model, tok = small_hf
    m = interp.load(model, tokenizer=tok, dtype="float64", fold_ln=False)
    logits = m("a prompt")
    assert logits.dtype == torch.float64
    ref = copy.deepcopy(model).double()(m.tokenize("a prompt").tokens).logits
    assert torch.allclose(logits, ref, atol=1e-10)


# ---------------------------------------------------------------------------- issue #18: loading refuses what it cannot honour
def _copy_dir(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())


@pytest.mark.parametrize("n_layer, missing, unexpected", [(3, "h.2.", None), (1, None, "h.1.")])
def test_config_and_weights_disagree_on_layers(tmp_path, hf_dir, n_layer, missing, unexpected):
    """config.json says 3 (or 1) layers, the weights have 2: refused in one line naming the first tensors."""
    import json

    _copy_dir(hf_dir, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layer"] = n_layer
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InterpError) as e:
        interp.load(str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and f"does not match its config.json ({n_layer} layer" in message
    if missing:  # in the order of the model
        assert "12 missing (transformer.h.2.ln_1.weight, transformer.h.2.ln_1.bias, transformer.h.2.attn" in message
    if unexpected:  # in the order of the file
        assert "12 unexpected (transformer.h.1.attn.c_attn.bias, transformer.h.1.attn.c_attn.weight" in message


def test_a_tensor_of_the_wrong_shape_is_refused(tmp_path, hf_dir):
    import json

    _copy_dir(hf_dir, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_inner"] = 128  # the weights have 4 × 64 = 256
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(InterpError, match=r"tensor transformer\.h\.0\.mlp\.c_fc\.weight has shape \[64, 256\], "
                                          r"config\.json implies \[64, 128\]"):
        interp.load(str(tmp_path))


def test_truncated_safetensors_is_refused(tmp_path, hf_dir):
    _copy_dir(hf_dir, tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(InterpError, match=r"cannot load weights from .*model\.safetensors: ValueError: tensor .* "
                                          r"does not fit its shape"):
        interp.load(str(tmp_path))


@pytest.mark.parametrize("value", ["no", "False", 1, 0, None])
def test_fold_ln_must_be_a_bool(small_hf, value):
    model, tok = small_hf
    with pytest.raises(InterpError, match=f"fold_ln must be True or False, not {value!r}"):
        interp.load(model, tokenizer=tok, fold_ln=value)


def test_untied_checkpoint_and_old_attention_buffers(tmp_path, small_hf):
    """lm_head stored separately (tie_word_embeddings=false) is read; old checkpoints' attn.bias buffers are skipped."""
    from interp.checkpoint import write_safetensors

    hf, tok = small_hf
    untied = copy.deepcopy(hf)
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(torch.randn_like(untied.lm_head.weight))
    untied.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in untied.state_dict().items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))  # as the original GPT-2 checkpoints have
    write_safetensors(tmp_path / "model.safetensors", state)
    model = interp.load(str(tmp_path), fold_ln=False)
    assert torch.equal(model.W_U, untied.lm_head.weight.T)
    toks = model.tokenize("an untied prompt").tokens
    assert torch.allclose(model(toks), untied(toks).logits, atol=1e-5)


def test_loading_prints_nothing_and_imports_no_heavy_library(hf_dir):
    """No warning, log line or progress bar; transformers and TransformerLens are imported only for model.bridge."""
    import subprocess
    import sys

    code = (
        "import sys, interp\n"
        f"m = interp.load({str(hf_dir)!r})\n"
        "print(sorted(k for k in ('transformers', 'transformer_lens', 'matplotlib') if k in sys.modules))\n"
        "m.bridge\n"
        "print(sorted(k for k in ('transformers', 'transformer_lens') if k in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "['transformer_lens', 'transformers']"]
    assert out.stderr == ""


def test_hub_names_resolve_through_the_local_cache(tmp_path, monkeypatch, hf_dir):
    """A hub name reads the snapshot directory huggingface_hub returns (here a fake one), with interp's own reader."""
    import huggingface_hub

    calls = []

    def fake_snapshot(name, allow_patterns=None, **kw):
        calls.append((name, allow_patterns))
        return str(hf_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = interp.load("gpt2-medium", fold_ln=False)
    assert model.cfg.name == "gpt2-medium" and model.cfg.n_layers == 2
    assert calls[0][0] == "gpt2-medium" and "model.safetensors" in calls[0][1] and "tokenizer.json" in calls[0][1]


def test_gpt2s_tokenizer_in_either_layout(gpt2_vocab_dir, tmp_path):
    """GPT-2's original release (vocab.json + merges.txt) and the hub's layout (tokenizer.json) load the same model."""
    import shutil

    from test_tokenizer import VARIED

    hub = tmp_path / "hub"
    shutil.copytree(gpt2_vocab_dir, hub)
    old = interp.load(gpt2_vocab_dir)
    (hub / "vocab.json").unlink()
    (hub / "merges.txt").unlink()
    old.tokenizer.to_hf().save_pretrained(hub)  # writes tokenizer.json (and its config)
    assert (hub / "tokenizer.json").is_file() and not (hub / "merges.txt").exists()
    new = interp.load(hub)
    ids = old.tokenizer.encode(VARIED, add_special_tokens=False)
    assert new.tokenizer.encode(VARIED, add_special_tokens=False) == ids and len(ids) > 250
    assert old.tokenize("The cat sat on the floor").tokens.tolist() == [[50256, 464, 3797, 3332, 319, 262, 4314]]
    assert torch.equal(new(old.tokenize(VARIED[:200]).tokens), old(old.tokenize(VARIED[:200]).tokens))
    assert (old.cfg.d_vocab, old.tokenizer.bos_token_id, new.tokenizer.bos_token_id) == (50257, 50256, 50256)
