"""The standard GPT-2 circuit tasks as prompt pairs and metrics, ready for :func:`interp.circuit`.

Each generator takes the model (for its tokenizer) and returns a :class:`Task`: clean and
corrupted prompts paired by row (each pair tokenizes to the same length, checked), the task's
metric, and the circuit the literature found in GPT-2 small (:data:`PUBLISHED`). GPT-2's weights
cannot be downloaded where interp is built, so these circuits are quoted, not reproduced here;
with a local copy of GPT-2 (docs/models.md, "Loading GPT-2") run for example
``interp circuit --task ioi --model ./gpt2-local --out ioi.json --svg ioi.svg``.

``induction``
    ``[BOS] r r[:-1]`` with ``r`` random tokens; corrupted: the first half replaced by other random
    tokens, so the second half has no earlier copy to look back on. Metric: the logit of the
    answer ``r[-1]`` minus the mean logit (the same in both weight modes; linear in the logits, so
    attribution is not fooled by a saturated probability).
``induction-key``
    the same clean prompts; corrupted: only the earlier copy of the last token replaced, so the
    induction heads lose their match (keys) but not what they would copy (values).
``ioi`` (Wang et al. 2022)
    their 15 templates in both orders (ABBA: "Then, Mary and John went to the store. John gave a
    drink to"; BABA: "Then, John and Mary …"), the 99 first names of their code (only those the
    tokenizer writes as one token with a leading space: all 99 in GPT-2's) and places and objects;
    corrupted: the "ABC"
    distribution, the same sentence with the three name slots filled by three other names.
    Metric: ``logit(IO) − logit(S)`` (" Mary" − " John").
``greater-than`` (Hanna et al. 2023)
    "The war lasted from the year 1732 to the year 17"; corrupted: the start year ``XX01``; start
    years 1102 … 1798 that the tokenizer writes as the century's token and two digits, as ``XX01``
    (:func:`year_split`; GPT-2: 618 of 679). Metric: the probability of the years after ``YY`` minus
    those up to it, summed over the two-digit year tokens ``00`` … ``99`` (which must each be one token).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .errors import InterpError
from .metrics import Custom, LogitDiff, Metric

__all__ = ["Task", "induction", "ioi", "greater_than", "year_split", "TASKS", "PUBLISHED"]

#: The circuits found in GPT-2 small (layer.head), quoted from the papers; not reproduced here.
PUBLISHED: dict[str, str] = {
    "induction": "previous-token heads 2.2, 4.11 feed induction heads 5.5, 5.8, 5.9, 6.9 through their keys "
                 "(Olsson et al. 2022; as listed by Wang et al. 2022)",
    "ioi": "duplicate-token heads 0.1, 0.10, 3.0 and induction heads 5.5, 6.9 → S-inhibition heads 7.3, 7.9, 8.6, 8.10 "
           "(through queries/keys of) → name-mover heads 9.6, 9.9, 10.0 → logits (Wang et al. 2022)",
    "greater-than": "attention heads 5.1, 5.5, 6.1, 6.9, 7.10, 8.8, 8.11, 9.1 attend to the start year; MLPs 8–11 "
                    "compute 'greater than' and write the years after YY (Hanna et al. 2023)",
}

# Wang et al. (2022)'s IOI templates (BABA order; ABBA swaps the first two names), names, places, objects.
_TEMPLATES = [
    "Then, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} had a lot of fun at the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} were working at the {PLACE}. {B} decided to give a {OBJECT} to",
    "Then, {B} and {A} were thinking about going to the {PLACE}. {B} wanted to give a {OBJECT} to",
    "Then, {B} and {A} had a long argument, and afterwards {B} said to",
    "After {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
    "When {B} and {A} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "When {B} and {A} got a {OBJECT} at the {PLACE}, {B} decided to give the {OBJECT} to",
    "While {B} and {A} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "While {B} and {A} were commuting to the {PLACE}, {B} gave a {OBJECT} to",
    "After the lunch, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Afterwards, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "Then, {B} and {A} had a long argument. Afterwards {B} said to",
    "The {PLACE} {B} and {A} went to had a {OBJECT}. {B} gave it to",
    "Friends {B} and {A} found a {OBJECT} at the {PLACE}. {B} gave it to",
]
NAMES = """Michael Christopher Jessica Matthew Ashley Jennifer Joshua Amanda Daniel David James Robert John Joseph
Andrew Ryan Brandon Jason Justin Sarah William Jonathan Stephanie Brian Nicole Nicholas Anthony Heather Eric Elizabeth
Adam Megan Melissa Kevin Steven Thomas Timothy Christina Kyle Rachel Laura Lauren Amber Brittany Danielle Richard
Kimberly Jeffrey Amy Crystal Michelle Tiffany Jeremy Benjamin Mark Emily Aaron Charles Rebecca Jacob Stephen Patrick
Sean Erin Jamie Kelly Samantha Nathan Sara Dustin Paul Angela Tyler Scott Katherine Andrea Gregory Erica Mary Travis
Lisa Kenneth Bryan Lindsey Kristen Jose Alexander Jesse Katie Lindsay Shannon Vanessa Courtney Christine Alicia Cody
Allison Bradley Samuel""".split()
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
# Event nouns in the style of Hanna et al. (2023)'s list.
NOUNS = """war abduction accord affair agreement assessment attack campaign captivity case challenge clash coma
competition conflict confrontation conspiracy construction contract convention cooperation crisis custody deal decline
development dispute dynasty effort embargo engagement epidemic exchange expansion expedition famine friendship growth
hostility illness investigation journey marriage negotiation occupation operation outbreak pilgrimage plague project
quest rebellion reform reign relationship riot rivalry romance rule siege strike study tour treaty trial trip voyage
warfare""".split()


@dataclass(frozen=True)
class Task:
    """Clean and corrupted prompts (paired by row, equal token lengths), the metric and what to expect.

    ``clean`` and ``corrupted`` are lists of prompts, or token ids ``[batch, pos]`` (induction).
    """

    name: str
    clean: Any
    corrupted: Any
    metric: Optional[Metric]
    description: str
    published: str
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clean)


def _check_pairs(model, name: str, clean: list, corrupted: list) -> None:
    from .engine import paired_batches

    try:
        paired_batches(model, clean, corrupted)
    except InterpError as e:
        raise InterpError(f"task {name}: this tokenizer breaks the pairing ({e})") from None


def _one_token(model, text: str) -> Optional[int]:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    # The round trip refuses an unknown word that a word-level tokenizer maps to its one <unk> id.
    if len(ids) != 1 or model.tokenizer.decode(ids).strip() != text.strip():
        return None
    return ids[0]


def _count(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InterpError(f"{what} must be a positive int, not {n!r}")
    return n


def induction(model, n_prompts: int = 8, half: Optional[int] = None, seed: int = 0, corrupt: str = "half") -> Task:
    """Repeated random tokens ``[BOS] r r[:-1]`` (see the module docs); ``half`` = len(r), default
    20 (or what the context window allows).

    ``corrupt="half"``: another first half (nothing to look back on: keys *and* values change);
    ``corrupt="key"``: only the earlier copy of the last token replaced, so the induction heads lose
    their match (their keys) while what they would copy (their values) stays: the previous-token →
    induction-head K-composition alone (:data:`TASKS` ``"induction-key"``; the pairs are
    :func:`interp.prompts.induction_pair`'s).
    """
    from .prompts import induction_pair, repeated_tokens, vocabulary

    _count(n_prompts, "n_prompts")
    half = min(20, (model.cfg.n_ctx - 1) // 2) if half is None else _count(half, "half")
    if corrupt not in ("half", "key"):
        raise InterpError(f"corrupt must be 'half' or 'key', not {corrupt!r}")
    if corrupt == "key":
        clean, corrupted = induction_pair(model, n_prompts, half, seed=seed)
    else:
        clean = repeated_tokens(model, n_prompts, half, seed=seed)[:, : 2 * half]
        vocab = vocabulary(model)
        g = torch.Generator().manual_seed(seed + 1)
        corrupted = clean.clone()
        for i in range(n_prompts):  # a new first half sharing no token with the clean sequence
            pool = vocab[~torch.isin(vocab, clean[i])]
            if len(pool) < half:
                raise InterpError(f"the vocabulary has too few tokens for half={half}")
            corrupted[i, 1 : half + 1] = pool[torch.randperm(len(pool), generator=g)[:half]]
    what = "another first half" if corrupt == "half" else "the earlier copy of the last token replaced"
    answer = clean[:, half].to(model.cfg.device)  # r[-1], what induction predicts after r[:-1]

    def centred_logit(logits: Tensor) -> Tensor:  # [batch, d_vocab] at the last position
        return logits[torch.arange(len(logits)), answer] - logits.mean(-1)

    metric = Custom(centred_logit, position=-1, name="logit(r[-1]) - mean logit")
    return Task("induction" if corrupt == "half" else "induction-key", clean, corrupted, metric,
                f"[BOS] r r[:-1] with {half} random tokens r; corrupted: {what}", PUBLISHED["induction"],
                {"half": half, "corrupt": corrupt})


def ioi(model, n_prompts: int = 8, seed: int = 0, order: str = "both") -> Task:
    """Indirect object identification (Wang et al. 2022): ABBA/BABA prompts, ABC corruption."""
    _count(n_prompts, "n_prompts")
    if order not in ("both", "ABBA", "BABA"):
        raise InterpError(f"order must be 'both', 'ABBA' or 'BABA', not {order!r}")
    names = [n for n in NAMES if _one_token(model, " " + n) is not None]
    if len(names) < 5:
        raise InterpError(f"task ioi needs first names that are one token with a leading space (' Mary'): this "
                          f"tokenizer has {len(names)} of Wang et al.'s {len(NAMES)} (GPT-2's has all of them)")
    rng = random.Random(seed)
    clean, corrupted, io, s, kinds = [], [], [], [], []
    for i in range(n_prompts):
        template = rng.choice(_TEMPLATES)
        kind = order if order != "both" else ("ABBA", "BABA")[i % 2]
        if kind == "ABBA":  # the first two names swap places: IO first
            template = template.replace("{B} and {A}", "{A} and {B}", 1)
        a, b, c1, c2, c3 = rng.sample(names, 5)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        clean.append(template.format(A=a, B=b, PLACE=place, OBJECT=obj))
        # ABC: the three name slots (IO, S1, S2) get three other names.
        slots = iter([c1, c2, c3] if kind == "BABA" else [c2, c1, c3])
        corrupted.append(_fill_names(template, slots, place, obj))
        io.append(" " + a), s.append(" " + b), kinds.append(kind)
    _check_pairs(model, "ioi", clean, corrupted)
    metric = LogitDiff(io, s)
    return Task("ioi", clean, corrupted, metric, "IOI (Wang et al. 2022): logit(IO) − logit(S); corrupted: ABC names",
                PUBLISHED["ioi"], {"io": io, "s": s, "order": kinds})


def _fill_names(template: str, names, place: str, obj: str) -> str:
    out, rest = [], template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        key, _, rest = tail.partition("}")
        out += [head, next(names) if key in ("A", "B") else place if key == "PLACE" else obj]
    return "".join(out + [rest])


def greater_than(model, n_prompts: int = 8, seed: int = 0) -> Task:
    """Greater-than (Hanna et al. 2023): "… from the year 1732 to the year 17"; corrupted start year XX01.

    Only the years whose start year the tokenizer writes as the century's token then the two digits
    (GPT-2: " 17" + "32"), and whose ``XX01`` it writes the same way, are used: the clean and
    corrupted prompts then differ in one token, the one the metric is about. With GPT-2's tokenizer
    that leaves out, e.g., 1700 (" 1700" is one token) and most of 1102 … 1129 (:func:`year_split`).
    """
    _count(n_prompts, "n_prompts")
    years = [_one_token(model, f"{y:02d}") for y in range(100)]
    missing = [f"{y:02d}" for y, t in enumerate(years) if t is None]
    if missing:
        raise InterpError(f"task greater-than needs the two-digit year tokens 00 … 99 to be one token each: "
                          f"this tokenizer splits {len(missing)} of them (e.g. {missing[0]!r}; GPT-2's does not)")
    usable = year_split(model)
    rng = random.Random(seed)
    clean, corrupted, yy = [], [], []
    y = 1
    for i in range(n_prompts):
        for _ in range(97):  # YY balanced over 02 … 98, skipping a YY that no century writes as two tokens
            y = 2 + (y - 1) % 97
            centuries = [c for c in CENTURIES if (c, y) in usable]
            if centuries:
                break
        else:
            raise InterpError("task greater-than: this tokenizer writes no start year 1102 … 1798 as its century "
                              "and two digits")
        noun, century = rng.choice(NOUNS), rng.choice(centuries)
        clean.append(f"The {noun} lasted from the year {century}{y:02d} to the year {century}")
        corrupted.append(f"The {noun} lasted from the year {century}01 to the year {century}")
        yy.append(y)
    _check_pairs(model, "greater-than", clean, corrupted)
    ids = torch.tensor(years, device=model.cfg.device)
    later = torch.arange(100, device=model.cfg.device)[None, :] > torch.tensor(yy, device=model.cfg.device)[:, None]

    def prob_diff(logits: Tensor) -> Tensor:  # [batch, d_vocab] at the last position
        p = logits.softmax(-1)[:, ids]
        return (p * later).sum(-1) - (p * ~later).sum(-1)

    metric = Custom(prob_diff, position=-1, name="prob(year > YY) - prob(year <= YY)")
    return Task("greater-than", clean, corrupted, metric,
                "greater-than (Hanna et al. 2023): P(year > YY) − P(year ≤ YY); corrupted: start year XX01",
                PUBLISHED["greater-than"], {"yy": yy})


#: The centuries of greater-than's start years (Hanna et al. 2023: 1100 … 1799).
CENTURIES = tuple(range(11, 18))


def year_split(model) -> set[tuple[int, int]]:
    """``(century, YY)`` pairs (YY in 02 … 98) whose start year " XXYY" tokenizes as " XX01" does but for one token.

    The clean prompt "… the year 1732 …" and the corrupted "… the year 1701 …" then have equal
    lengths and differ only where the metric looks (with GPT-2's tokenizer: " 17" "32" vs " 17" "01").
    """
    encode = functools.partial(model.tokenizer.encode, add_special_tokens=False)
    usable = set()
    for c in CENTURIES:
        base = encode(f" {c}01")
        for y in range(2, 99):
            ids = encode(f" {c}{y:02d}")
            if len(ids) == len(base) and sum(a != b for a, b in zip(ids, base)) == 1:
                usable.add((c, y))
    return usable


#: name -> generator(model, n_prompts, seed) (the induction tasks also take ``half``).
TASKS = {"induction": induction, "induction-key": functools.partial(induction, corrupt="key"), "ioi": ioi,
         "greater-than": greater_than}
