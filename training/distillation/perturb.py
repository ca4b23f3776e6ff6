"""Input perturbations for adversarial training and robustness evaluation.

Text perturbations act on *words*: a letter (Unicode category L) and the letters and combining
marks (category M) that follow it, so Finnish ``pääkaupunki``, Amharic ``ሰላም`` or Hindi ``किताब``
are one word each, and everything else (spaces, digits, punctuation) is left as it is. Edits act
on a word's *letter units*: a letter together with the combining marks that follow it (Hindi
``ता`` = ``त`` + ``ा``; a decomposed ``a`` + ``◌̈``), so no mark is ever orphaned.

``rate`` ∈ [0, 1] is the fraction of the eligible words that are perturbed: of ``n`` eligible
words, ``k = ⌊rate·n⌋ + B`` distinct ones are picked uniformly, where ``B ~ Bernoulli(rate·n −
⌊rate·n⌋)``; so ``E[k] = rate·n`` exactly, ``k`` is never more than one word off ``rate·n``, and a
one-word query at rate 0.3 is perturbed 30 % of the time. ``rate = 0`` returns the text unchanged.
Each picked word receives exactly one edit, and every edit changes the word:

* ``noise`` (every word is eligible): one of *insert* a letter, *delete* a letter unit (words of
  two units or more), *substitute* a unit's letter by a different one (its marks kept), *swap* two
  adjacent different units. New letters are drawn from the text's own alphabet, restricted to the
  script of the letter replaced or next to the insertion (the first word of its Unicode name:
  LATIN, ETHIOPIC, CYRILLIC, ...), so noise in Finnish only uses letters of the text (``ä``, ``ö``
  included) and Amharic stays in Ethiopic.
* ``typo`` (every word is eligible): one of *keyboard slip* (a Latin letter ``a``–``z`` becomes one
  of its QWERTY neighbours, :data:`QWERTY_NEIGHBOURS`), *double* a letter unit, *drop* one (two
  units or more), *transpose* two adjacent different units.
* ``codeswitch`` (eligible: the words whose lower-case form is in the lexicon): the word is
  replaced by its first (primary) translation, in the word's case (``Watu`` → ``People``,
  ``NYUMBA`` → ``HOUSE``); the punctuation around it is kept.

The edit of a word is drawn uniformly among those that can change it (a one-letter word cannot
lose its letter; ``ä`` has no QWERTY neighbours). A new letter takes the case of the letter it
replaces, or of the letter after it (the last letter, at the end of the word). :func:`perturb`
seeds one ``random.Random`` per text from ``(kind, seed, text)``, so a text is perturbed the same
way whatever batch it comes in.

:func:`gradient_sign_attack` is the embedding-level attack (FGSM) used in adversarial training.
"""

from __future__ import annotations

import functools
import math
import random
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..bitext.dictionaries import DICTD_DIR, DictionaryNotFoundError, bilingual_lexicon
from ..bitext.formats import lookup_language

Lexicon = Mapping[str, Sequence[str]]
Edit = Callable[[list[str], random.Random], "list[str] | None"]

_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_QWERTY_ROW_OFFSETS = (0.0, 0.25, 0.75)  # stagger of each row, in key widths
_MISSING_POLICIES = ("error", "skip")


def _qwerty_neighbours() -> dict[str, str]:
    """Each key's neighbours: the keys left and right of it in its row, and the keys of the rows
    above and below whose centres are less than one key width across from its own (the rows
    staggered as on a keyboard, by :data:`_QWERTY_ROW_OFFSETS`)."""
    centres = {
        key: (row, column + offset)
        for row, (keys, offset) in enumerate(zip(_QWERTY_ROWS, _QWERTY_ROW_OFFSETS))
        for column, key in enumerate(keys)
    }
    return {
        key: "".join(
            other
            for other, (other_row, other_x) in centres.items()
            if other != key
            and (
                (other_row == row and abs(other_x - x) == 1)
                or (abs(other_row - row) == 1 and abs(other_x - x) < 1)
            )
        )
        for key, (row, x) in centres.items()
    }


QWERTY_NEIGHBOURS = _qwerty_neighbours()
"""Lower-case Latin letter -> its neighbouring letter keys on a US QWERTY keyboard (``"g"`` ->
``"tyfhvb"``)."""


# --- words, letters and picking -------------------------------------------------------------


def _is_letter(char: str) -> bool:
    return unicodedata.category(char).startswith("L")


def _word_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each word: a letter and the letters and marks that follow it."""
    spans, start = [], None
    for index, char in enumerate(text):
        if start is None and _is_letter(char):
            start = index
        elif start is not None and unicodedata.category(char)[0] not in "LM":
            spans.append((start, index))
            start = None
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _units(word: str) -> list[str]:
    """A word cut into its letters, each with the combining marks that follow it."""
    units: list[str] = []
    for char in word:
        if _is_letter(char):
            units.append(char)
        else:
            units[-1] += char
    return units


def _script(letter: str) -> str:
    return unicodedata.name(letter, "").split(" ")[0]


def _lower(letter: str) -> str:
    lower = letter.lower()
    return lower if len(lower) == 1 else letter


def _cased_like(letter: str, model: str) -> str:
    """``letter`` in upper case if ``model`` is an upper-case letter (and the upper case is a
    single character), else as given."""
    upper = letter.upper()
    return upper if model.isupper() and len(upper) == 1 else letter


def _alphabet(text: str) -> dict[str, list[str]]:
    """Script -> sorted lower-case letters of ``text`` in that script."""
    alphabet: dict[str, set[str]] = {}
    for char in text:
        if _is_letter(char):
            alphabet.setdefault(_script(char), set()).add(_lower(char))
    return {script: sorted(letters) for script, letters in alphabet.items()}


def check_rate(rate: float) -> None:
    """``ValueError`` unless ``0 <= rate <= 1``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a fraction in [0, 1], got {rate!r}")


def _pick(count: int, rate: float, rng: random.Random) -> list[int]:
    """Sorted indices of ``⌊rate·count⌋`` or ``⌈rate·count⌉`` of ``count`` items, expected
    number ``rate·count`` (see the module docstring)."""
    check_rate(rate)
    expected = rate * count
    picked = math.floor(expected)
    if rng.random() < expected - picked:
        picked += 1
    return sorted(rng.sample(range(count), picked))


def _rewrite(
    text: str,
    spans: Sequence[tuple[int, int]],
    rate: float,
    rng: random.Random,
    replace: Callable[[str], str],
) -> str:
    """``text`` with the picked spans' words replaced by ``replace(word)``."""
    pieces, end = [], 0
    for index in _pick(len(spans), rate, rng):
        start, stop = spans[index]
        pieces += [text[end:start], replace(text[start:stop])]
        end = stop
    pieces.append(text[end:])
    return "".join(pieces)


def _edit_word(word: str, edits: Sequence[Edit], rng: random.Random) -> str:
    """The result of an edit drawn uniformly among those that can change ``word`` (inserting
    and doubling always can)."""
    results = [edit(_units(word), rng) for edit in edits]
    return "".join(rng.choice([result for result in results if result is not None]))


# --- edits: (letter units, rng) -> edited units, or None where the edit cannot change them ----


def _delete_letter(units: list[str], rng: random.Random) -> list[str] | None:
    if len(units) < 2:
        return None
    index = rng.randrange(len(units))
    return units[:index] + units[index + 1 :]


def _swap_letters(units: list[str], rng: random.Random) -> list[str] | None:
    pairs = [index for index in range(len(units) - 1) if units[index] != units[index + 1]]
    if not pairs:
        return None
    index = rng.choice(pairs)
    return [*units[:index], units[index + 1], units[index], *units[index + 2 :]]


def _double_letter(units: list[str], rng: random.Random) -> list[str]:
    index = rng.randrange(len(units))
    return units[: index + 1] + units[index:]


def _insert_letter(
    units: list[str], rng: random.Random, alphabet: Mapping[str, Sequence[str]]
) -> list[str]:
    """A letter of the script and case of the letter after it (of the last letter, at the end
    of the word), inserted before any letter or after the last."""
    slot = rng.randrange(len(units) + 1)
    model = units[min(slot, len(units) - 1)][0]
    new = _cased_like(rng.choice(alphabet[_script(model)]), model)
    return [*units[:slot], new, *units[slot:]]


def _replace_letter(units: list[str], index: int, letter: str) -> list[str]:
    """``units`` with the letter of unit ``index`` replaced (in its case), its marks kept."""
    unit = units[index]
    return [*units[:index], _cased_like(letter, unit[0]) + unit[1:], *units[index + 1 :]]


def _substitute_letter(
    units: list[str], rng: random.Random, alphabet: Mapping[str, Sequence[str]]
) -> list[str] | None:
    others = [
        [letter for letter in alphabet[_script(unit[0])] if letter != _lower(unit[0])]
        for unit in units
    ]
    replaceable = [index for index, letters in enumerate(others) if letters]
    if not replaceable:
        return None
    index = rng.choice(replaceable)
    return _replace_letter(units, index, rng.choice(others[index]))


def _keyboard_slip(units: list[str], rng: random.Random) -> list[str] | None:
    keys = [index for index, unit in enumerate(units) if unit[0].lower() in QWERTY_NEIGHBOURS]
    if not keys:
        return None
    index = rng.choice(keys)
    return _replace_letter(units, index, rng.choice(QWERTY_NEIGHBOURS[units[index][0].lower()]))


# --- perturbations ----------------------------------------------------------------------------


def add_character_noise(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with a ``rate`` fraction of its words given one random letter insertion,
    deletion, substitution or swap, in the text's own alphabet (see the module docstring)."""
    alphabet = _alphabet(text)
    edits = (
        functools.partial(_insert_letter, alphabet=alphabet),
        _delete_letter,
        functools.partial(_substitute_letter, alphabet=alphabet),
        _swap_letters,
    )
    return _rewrite(text, _word_spans(text), rate, rng, lambda word: _edit_word(word, edits, rng))


def add_typos(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with a ``rate`` fraction of its words given one typo: a QWERTY-neighbour slip,
    a doubled or dropped letter, or two adjacent letters transposed."""
    edits = (_keyboard_slip, _double_letter, _delete_letter, _swap_letters)
    return _rewrite(text, _word_spans(text), rate, rng, lambda word: _edit_word(word, edits, rng))


def _translation_cased_like(translation: str, word: str) -> str:
    if len(word) > 1 and word.isupper():
        return translation.upper()
    if word[0].isupper():
        return translation[:1].upper() + translation[1:]
    return translation


def code_switch(text: str, rate: float, rng: random.Random, lexicon: Lexicon) -> str:
    """``text`` with a ``rate`` fraction of its translatable words (lower-case form a key of
    ``lexicon`` with at least one translation) replaced by their first translation, cased like
    the word. An empty lexicon leaves every text unchanged."""
    spans = [span for span in _word_spans(text) if lexicon.get(text[slice(*span)].lower())]
    return _rewrite(
        text, spans, rate, rng, lambda word: _translation_cased_like(lexicon[word.lower()][0], word)
    )


PERTURBATIONS: dict[str, Callable[..., str]] = {
    "noise": add_character_noise,
    "typo": add_typos,
    "codeswitch": code_switch,
}
"""Kind -> ``f(text, rate, rng)``; the kinds in :data:`LEXICON_KINDS` also take ``lexicon``."""

LEXICON_KINDS = frozenset({"codeswitch"})


def perturb(
    texts: Sequence[str], kind: str, rate: float, seed: int, lexicon: Lexicon | None = None
) -> list[str]:
    """Each text perturbed by ``PERTURBATIONS[kind]`` at ``rate``, with a generator seeded from
    ``(kind, seed, text)``: deterministic, and independent of the other texts.

    ``lexicon`` (word -> translations, e.g. :func:`codeswitch_lexicon`) is required by
    ``"codeswitch"`` and not used by the other kinds.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; known: {sorted(PERTURBATIONS)}")
    check_rate(rate)
    function = PERTURBATIONS[kind]
    if kind in LEXICON_KINDS:
        if lexicon is None:
            raise ValueError(f"perturbation {kind!r} needs a lexicon (see codeswitch_lexicon)")
        function = functools.partial(function, lexicon=lexicon)
    return [function(text, rate, random.Random(f"{kind}\0{seed}\0{text}")) for text in texts]


def codeswitch_lexicon(
    source: str, target: str, *, missing: str = "error", dictd_dir: Path = DICTD_DIR
) -> dict[str, list[str]]:
    """Source word -> target translations from the installed FreeDict dictionaries
    (:func:`~..bitext.dictionaries.bilingual_lexicon`), languages given by ISO 639-1 or 639-3 codes.

    Where no dictionary is installed (there is none for Somali), ``missing="error"`` raises
    :class:`~..bitext.dictionaries.DictionaryNotFoundError` and ``missing="skip"`` returns an empty
    lexicon, with which code-switching leaves texts unchanged.
    """
    if missing not in _MISSING_POLICIES:
        raise ValueError(f"missing must be one of {_MISSING_POLICIES}, got {missing!r}")
    codes = lookup_language(source).iso639_3, lookup_language(target).iso639_3
    try:
        return bilingual_lexicon(*codes, dictd_dir)
    except DictionaryNotFoundError:
        if missing == "error":
            raise
        return {}


# --- embedding level --------------------------------------------------------------------------


def gradient_sign_attack(
    embeddings: torch.Tensor,
    gradient: torch.Tensor,
    attention_mask: torch.Tensor,
    epsilon: float,
) -> torch.Tensor:
    """FGSM on input embeddings: ``x' = x + ε · sign(∇ₓL) · m``.

    ``embeddings`` x and ``gradient`` ∇ₓL (of the training loss with respect to x) are
    (B, T, d); ``attention_mask`` m is (B, T), 1 (or True) at real tokens and 0 at padding, so
    padding embeddings stay as they are. ``sign(0) = 0``. The gradient is treated as a constant
    (detached); the result keeps ``embeddings``' autograd graph, so a loss on the perturbed
    input still trains whatever produced x.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    if embeddings.dim() != 3 or gradient.shape != embeddings.shape:
        raise ValueError(
            f"embeddings and gradient must both be (B, T, d); got {tuple(embeddings.shape)} "
            f"and {tuple(gradient.shape)}"
        )
    if attention_mask.shape != embeddings.shape[:2]:
        raise ValueError(
            f"attention_mask must be (B, T) = {tuple(embeddings.shape[:2])}, "
            f"got {tuple(attention_mask.shape)}"
        )
    step = gradient.detach().sign() * attention_mask.unsqueeze(-1).to(gradient.dtype)
    return embeddings + epsilon * step.to(embeddings.dtype)
