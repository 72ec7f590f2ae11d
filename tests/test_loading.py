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
