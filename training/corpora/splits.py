"""Train/test splits that hold out whole units, never random verses.

* **Bible**: train on the Old Testament (books 1–39), test on the New (books 40–66).
* **Quran**: test on the surahs :data:`QURAN_TEST_SURAHS`, train on the other 91. They are drawn
  once, reproducibly: the 114 surah numbers shuffled by ``random.Random(QURAN_SEED)`` (seed 14,
  the issue's number), then taken in that order until they hold ≥ :data:`QURAN_MIN_TEST_VERSES`
  verses (by the standard verse counts :data:`SURAH_VERSES`): 23 surahs, 1,049 verses.
* **LibreOffice help**: test on the Writer module (``swriter``), train on the other eight.

A held-out unit leaves nothing in the train split, in either language: a train pair whose English
or other-language text is also the text of a test pair (a refrain, a stock help sentence) is
dropped from the train split and counted (``"train pairs sharing a text with the test split"``).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from .aligned import AlignedPair, ParallelCorpus
from .bible import NEW_TESTAMENT_FIRST_BOOK

# Verses per surah, surahs 1-114 (the Hafs count of the quran-json files).
SURAH_VERSES = (
    7, 286, 200, 176, 120, 165, 206, 75, 129, 109, 123, 111, 43, 52, 99, 128, 111, 110, 98, 135,
    112, 78, 118, 64, 77, 227, 93, 88, 69, 60, 34, 30, 73, 54, 45, 83, 182, 88, 75, 85, 54, 53,
    89, 59, 37, 35, 38, 29, 18, 45, 60, 49, 62, 55, 78, 96, 29, 22, 24, 13, 14, 11, 11, 18, 12,
    12, 30, 52, 52, 44, 28, 28, 20, 56, 40, 31, 50, 40, 46, 42, 29, 19, 36, 25, 22, 17, 19, 26,
    30, 20, 15, 21, 11, 8, 8, 19, 5, 8, 8, 11, 11, 8, 3, 9, 5, 4, 7, 3, 6, 3, 5, 4, 5, 6,
)  # fmt: skip
QURAN_SEED = 14
QURAN_MIN_TEST_VERSES = 1_000
BIBLE_TEST_BOOKS = frozenset(str(book) for book in range(NEW_TESTAMENT_FIRST_BOOK, 67))
LIBREOFFICE_TEST_MODULES = frozenset({"swriter"})
OVERLAP = "train pairs sharing a text with the test split"


def held_out_surahs(
    verses: Sequence[int] = SURAH_VERSES,
    seed: int = QURAN_SEED,
    min_verses: int = QURAN_MIN_TEST_VERSES,
) -> tuple[int, ...]:
    """The surahs (numbers from 1, sorted) first in a seeded shuffle that hold ``min_verses``."""
    order = random.Random(seed).sample(range(1, len(verses) + 1), len(verses))
    chosen, total = [], 0
    for surah in order:
        if total >= min_verses:
            break
        chosen.append(surah)
        total += verses[surah - 1]
    return tuple(sorted(chosen))


QURAN_TEST_SURAHS = held_out_surahs()
TEST_GROUPS = {
    "bible": BIBLE_TEST_BOOKS,
    "quran": frozenset(str(surah) for surah in QURAN_TEST_SURAHS),
    "libreoffice": LIBREOFFICE_TEST_MODULES,
}


@dataclass(frozen=True)
class Split:
    """The train and test pairs of one corpus and language, and ``{what: count}`` dropped."""

    train: list[AlignedPair]
    test: list[AlignedPair]
    notes: dict[str, int] = field(default_factory=dict)


def split_pairs(pairs: Sequence[AlignedPair], test_groups: Collection[str]) -> Split:
    """Test: the pairs whose group is in ``test_groups``; train: the others, less those sharing
    a text (on either side) with a test pair."""
    test = [pair for pair in pairs if pair.group in test_groups]
    test_texts = {pair.english for pair in test} | {pair.other for pair in test}
    rest = [pair for pair in pairs if pair.group not in test_groups]
    train = [
        pair for pair in rest if pair.english not in test_texts and pair.other not in test_texts
    ]
    return Split(train, test, {OVERLAP: len(rest) - len(train)})


def split_corpus(corpus: ParallelCorpus) -> Split:
    """The fixed split of :data:`TEST_GROUPS` for ``corpus.name``."""
    if corpus.name not in TEST_GROUPS:
        raise ValueError(f"no split for corpus {corpus.name!r}; known: {sorted(TEST_GROUPS)}")
    return split_pairs(corpus.pairs, TEST_GROUPS[corpus.name])
