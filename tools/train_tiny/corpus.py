"""The corpus: documents every Python 3 installation has offline, their split, the tokenizer.

* ``pydoc_data.topics.topics`` -- the text of ``help("topic")``;
* every docstring in the standard library, read by ``ast``-parsing the ``.py``
  files under ``sysconfig.get_paths()["stdlib"]`` in sorted order
  (``site-packages`` excluded, exact duplicates dropped). Nothing is imported or executed.

About 1 document in 20 (chosen by a CRC of its text) is held out.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

# The corpus and its split live in the library (interp.corpus), which ships the text itself.
from interp.corpus import collect_corpus, split_corpus  # noqa: F401  (re-exported for train.py)

BOS = "<|endoftext|>"


def train_tokenizer(docs: list[str], vocab_size: int):
    """Train a byte-level BPE tokenizer (GPT-2 style) with ``<|endoftext|>`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def wrap_tokenizer(tok, n_ctx: int):
    """Wrap a ``tokenizers.Tokenizer`` as a ``PreTrainedTokenizerFast`` configured like GPT-2's."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        unk_token=BOS,
        model_max_length=n_ctx,
    )


def encode_stream(tok, docs: list[str], bos_id: int) -> Int[Tensor, " n_tokens"]:
    """Tokenize documents into one stream, each document followed by ``<|endoftext|>``."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(bos_id)
    return torch.tensor(ids, dtype=torch.long)



#: The bytes whose tokens serve as markers: "new", "seen", the eight *where* positions, the filler.
MARKER_BYTES = (0x01, 0x02, *range(0x10, 0x18), 0x03)


def marker_ids(tok) -> tuple[int, ...]:
    """Ids of the byte tokens of :data:`MARKER_BYTES`: control bytes no document contains."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    ids = []
    for b in MARKER_BYTES:
        (piece, _), = byte_level.pre_tokenize_str(chr(b))
        ids.append(tok.token_to_id(piece))
    return tuple(ids)


def unigram_losses(train: Int[Tensor, " n"], held: Int[Tensor, " m"], vocab: int) -> dict:
    """Cross-entropy (nats/token) of add-one unigram models on the held-out tokens.

    ``unigram_train``: fitted on the training split (the honest baseline);
    ``unigram_heldout_entropy``: the held-out split's own unigram entropy (a floor
    for any model that ignores context).
    """
    counts = torch.bincount(train, minlength=vocab).double() + 1
    logp = (counts / counts.sum()).log()
    hc = torch.bincount(held, minlength=vocab).double()
    hp = hc / hc.sum()
    ent = float(-(hp[hc > 0] * hp[hc > 0].log()).sum())
    return {"unigram_train_xent": float(-logp[held].mean()), "unigram_heldout_entropy": ent}

