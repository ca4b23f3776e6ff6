"""Text perturbations (noise, typos, code-switching) and the gradient-sign embedding attack."""

from __future__ import annotations

import math
import unicodedata

import pytest
import torch

from optical_ops.training.bitext.dictionaries import DICTD_DIR, DictionaryNotFoundError
from optical_ops.training.distillation.perturb import (
    PERTURBATIONS,
    QWERTY_NEIGHBOURS,
    codeswitch_lexicon,
    gradient_sign_attack,
    perturb,
)

FINNISH = "Mikä on Suomen pääkaupunki? Helsinki on suuri kaupunki meren rannalla, sanoi Äiti."
AMHARIC = "ሰላም ለዓለም ሁሉ ይሁን። ኢትዮጵያ ታላቅ ሀገር ናት።"
LONG_FINNISH = " ".join([FINNISH] * 30)  # 360 words
SWAHILI = "Watu wengi wanasoma kitabu, na NYUMBA."
LEXICON = {"watu": ["people"], "kitabu": ["book"], "na": ["and", "with"], "nyumba": ["house"],
           "wengi": []}  # fmt: skip


def words(text: str) -> list[str]:
    """Maximal runs of letters and marks (punctuation and spaces removed)."""
    cleaned = "".join(c if unicodedata.category(c)[0] in "LM" else " " for c in text)
    return cleaned.split()


def letters(text: str) -> set[str]:
    return {c for c in text if unicodedata.category(c).startswith("L")}


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def outcomes(text: str, kind: str, seeds: int = 300) -> set[str]:
    return {perturb([text], kind, 1.0, seed)[0] for seed in range(seeds)}


# --- rate, determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["noise", "typo", "codeswitch"])
def test_rate_zero_is_the_identity(kind):
    texts = [FINNISH, AMHARIC, SWAHILI, "", "  3.14 -- ?"]
    assert perturb(texts, kind, 0.0, seed=1, lexicon=LEXICON) == texts


@pytest.mark.parametrize("kind", ["noise", "typo"])
def test_same_seed_same_output_whatever_the_batch(kind):
    first = perturb([FINNISH, AMHARIC], kind, 0.5, seed=7)
    assert perturb([FINNISH, AMHARIC], kind, 0.5, seed=7) == first
    assert perturb([AMHARIC], kind, 0.5, seed=7) == first[1:]
    assert perturb([LONG_FINNISH], kind, 0.5, seed=8) != perturb([LONG_FINNISH], kind, 0.5, seed=7)


@pytest.mark.parametrize("kind", ["noise", "typo"])
@pytest.mark.parametrize("rate", [0.1, 0.37, 1.0])
def test_fraction_of_changed_words_is_the_rate_and_each_gets_one_edit(kind, rate):
    (perturbed,) = perturb([LONG_FINNISH], kind, rate, seed=3)
    before, after = words(LONG_FINNISH), words(perturbed)
    assert len(after) == len(before) == 360
    changed = [(old, new) for old, new in zip(before, after) if old != new]
    assert abs(len(changed) / len(before) - rate) <= 1 / len(before)
    assert all(edit_distance(old, new) == 1 for old, new in changed)


def test_short_texts_are_perturbed_at_the_rate_on_average():
    perturbed = perturb([f"sana{n}" for n in range(2000)], "typo", 0.3, seed=0)
    changed = sum(text != f"sana{n}" for n, text in enumerate(perturbed))
    assert abs(changed / 2000 - 0.3) < 0.04  # Binomial(2000, 0.3): sd ~ 0.010


# --- noise ------------------------------------------------------------------------------------


def test_noise_uses_the_texts_own_alphabet():
    (finnish,) = perturb([LONG_FINNISH], "noise", 1.0, seed=2)
    assert {c.lower() for c in letters(finnish)} <= {c.lower() for c in letters(FINNISH)}
    (amharic,) = perturb([AMHARIC], "noise", 1.0, seed=2)
    assert amharic != AMHARIC
    assert all(unicodedata.name(c).startswith("ETHIOPIC") for c in letters(amharic))
    assert letters(amharic) <= letters(AMHARIC)


def test_noise_edits_of_a_two_letter_word_are_exactly_the_four_kinds():
    inserted = {"aab", "bab", "abb", "aba"}
    assert outcomes("ab", "noise") == inserted | {"a", "b"} | {"bb", "aa"} | {"ba"}
    assert outcomes("ä", "noise") == {"ää"}  # a lone letter can only gain one


def test_noise_keeps_combining_marks_on_a_letter():
    # "ता" is the letter त with the vowel sign ा: deleting or swapping moves both together.
    for text in outcomes("ताम", "noise", seeds=100):
        assert not unicodedata.category(text[0]).startswith("M"), text
        assert "ा" not in text or text[text.index("ा") - 1] in "तम"


# --- typos ------------------------------------------------------------------------------------


def test_qwerty_neighbours():
    assert QWERTY_NEIGHBOURS["a"] == "qwsz"
    assert set(QWERTY_NEIGHBOURS["g"]) == set("tyfhvb")
    assert set(QWERTY_NEIGHBOURS["p"]) == set("ol")
    assert set(QWERTY_NEIGHBOURS) == set("abcdefghijklmnopqrstuvwxyz")
    assert all(
        key in QWERTY_NEIGHBOURS[other] for key in "gkmq" for other in QWERTY_NEIGHBOURS[key]
    )


def test_typos_of_one_letter_are_keyboard_slips_or_doubling_in_its_case():
    assert outcomes("g", "typo") == {"t", "y", "f", "h", "v", "b", "gg"}
    assert outcomes("G", "typo") == {"T", "Y", "F", "H", "V", "B", "GG"}
    assert outcomes("ö", "typo") == {"öö"}  # not on the QWERTY map


def test_typos_keep_non_latin_scripts():
    (amharic,) = perturb([AMHARIC], "typo", 1.0, seed=4)
    assert amharic != AMHARIC and letters(amharic) <= letters(AMHARIC)


# --- code-switching ---------------------------------------------------------------------------


def test_codeswitch_with_a_hand_made_lexicon():
    assert perturb([SWAHILI], "codeswitch", 1.0, seed=0, lexicon=LEXICON) == [
        "People wengi wanasoma book, and HOUSE."
    ]
    for seed in range(20):
        (half,) = perturb([SWAHILI], "codeswitch", 0.5, seed=seed, lexicon=LEXICON)
        switched = [w for w in words(half) if w.lower() in {"people", "book", "and", "house"}]
        assert len(switched) == 2, half  # 0.5 of the 4 translatable words, exactly
        assert half.count(",") == 1 and half.endswith(".")


@pytest.mark.skipif(
    not (DICTD_DIR / "freedict-swh-eng.index").is_file(),
    reason="apt-get install dict-freedict-swh-eng",
)
def test_codeswitch_with_freedict_swahili_english():
    lexicon = codeswitch_lexicon("sw", "en")
    assert perturb(["Mtoto anakunywa maji."], "codeswitch", 1.0, 0, lexicon) == [
        "Child anakunywa water."
    ]


def test_language_without_a_dictionary(tmp_path):
    with pytest.raises(DictionaryNotFoundError, match="dict-freedict-som-eng"):
        codeswitch_lexicon("so", "en", dictd_dir=tmp_path)
    lexicon = codeswitch_lexicon("som", "eng", missing="skip", dictd_dir=tmp_path)
    assert lexicon == {}
    text = "Magacaygu waa Cali."
    assert perturb([text], "codeswitch", 1.0, seed=0, lexicon=lexicon) == [text]
    with pytest.raises(ValueError, match="missing must be one of"):
        codeswitch_lexicon("so", "en", missing="ignore", dictd_dir=tmp_path)


# --- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan])
@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_rate_outside_zero_one_is_an_error(kind, rate):
    with pytest.raises(ValueError, match=r"rate must be a fraction in \[0, 1\]"):
        perturb([], kind, rate, seed=0, lexicon=LEXICON)


def test_bad_kind_lexicon_or_texts():
    with pytest.raises(ValueError, match=r"unknown perturbation 'swap'; known: \['codeswitch'"):
        perturb([FINNISH], "swap", 0.1, seed=0)
    with pytest.raises(ValueError, match="'codeswitch' needs a lexicon"):
        perturb([SWAHILI], "codeswitch", 0.1, seed=0)
    with pytest.raises(TypeError, match="not a single string"):
        perturb(FINNISH, "noise", 0.1, seed=0)


# --- gradient-sign attack ---------------------------------------------------------------------


def test_gradient_sign_attack_moves_real_tokens_only():
    embeddings = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], requires_grad=True)
    gradient = torch.tensor([[[0.3, -2.0], [0.0, 7.0], [1.0, 1.0]]], requires_grad=True)
    expected = torch.tensor([[[1.5, 1.5], [3.0, 4.5], [5.0, 6.0]]])
    for mask in (torch.tensor([[1, 1, 0]]), torch.tensor([[True, True, False]])):
        assert torch.equal(gradient_sign_attack(embeddings, gradient, mask, 0.5), expected)
    gradient_sign_attack(embeddings, gradient, mask, 0.5).sum().backward()
    assert torch.equal(embeddings.grad, torch.ones_like(embeddings))
    assert gradient.grad is None  # the gradient is a constant of the attack


def test_gradient_sign_attack_bad_arguments():
    embeddings, mask = torch.zeros(2, 3, 4), torch.ones(2, 3)
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        gradient_sign_attack(embeddings, embeddings, mask, -0.1)
    with pytest.raises(ValueError, match=r"both be \(B, T, d\)"):
        gradient_sign_attack(embeddings, torch.zeros(2, 3, 5), mask, 0.1)
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, T\) = \(2, 3\)"):
        gradient_sign_attack(embeddings, embeddings, torch.ones(2, 4), 0.1)
