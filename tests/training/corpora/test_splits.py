"""Whole-unit splits: the seeded surah choice, the fixed books and modules, no shared text."""

from __future__ import annotations

import random

import pytest

from optical_ops.training.corpora.aligned import AlignedPair, ParallelCorpus
from optical_ops.training.corpora.splits import (
    BIBLE_TEST_BOOKS,
    OVERLAP,
    QURAN_MIN_TEST_VERSES,
    QURAN_SEED,
    QURAN_TEST_SURAHS,
    SURAH_VERSES,
    held_out_surahs,
    split_corpus,
    split_pairs,
)


def test_surah_verse_counts_are_the_6236_verses():
    assert len(SURAH_VERSES) == 114 and sum(SURAH_VERSES) == 6236


def test_held_out_surahs_are_the_documented_seeded_choice():
    assert QURAN_TEST_SURAHS == held_out_surahs(SURAH_VERSES, QURAN_SEED, QURAN_MIN_TEST_VERSES)
    assert QURAN_TEST_SURAHS == (10, 14, 16, 29, 32, 33, 34, 35, 38, 39, 51, 58, 60, 68, 79,
                                 84, 85, 88, 90, 94, 95, 96, 97)  # fmt: skip
    verses = sum(SURAH_VERSES[surah - 1] for surah in QURAN_TEST_SURAHS)
    assert verses == 1049
    assert held_out_surahs(SURAH_VERSES, seed=QURAN_SEED + 1) != QURAN_TEST_SURAHS


@pytest.mark.parametrize("minimum", [1, 300, 1000, 3000])
def test_held_out_surahs_are_the_shortest_prefix_of_the_shuffle_reaching_the_minimum(minimum):
    chosen = held_out_surahs(SURAH_VERSES, seed=3, min_verses=minimum)
    order = random.Random(3).sample(range(1, 115), 114)
    assert list(chosen) == sorted(order[: len(chosen)])
    verses = [SURAH_VERSES[surah - 1] for surah in order[: len(chosen)]]
    assert sum(verses[:-1]) < minimum <= sum(verses)


def test_bible_holds_out_the_new_testament():
    assert BIBLE_TEST_BOOKS == {str(book) for book in range(40, 67)}


def pair(group, identifier, english, other):
    return AlignedPair(group, identifier, english, other)


def test_split_keeps_whole_groups_and_drops_train_pairs_sharing_a_test_text():
    pairs = [
        pair("a", "1", "shared english", "x1"),
        pair("a", "2", "only train", "shared other"),
        pair("a", "3", "train", "train"),
        pair("b", "4", "shared english", "y"),
        pair("b", "5", "z", "shared other"),
    ]
    split = split_pairs(pairs, {"b"})
    assert [p.id for p in split.test] == ["4", "5"]
    assert [p.id for p in split.train] == ["3"]
    assert split.notes == {OVERLAP: 2}


def test_split_corpus_picks_the_corpus_rule():
    quran = [pair(str(s), f"s{s}", f"e{s}", f"o{s}") for s in range(1, 115)]
    split = split_corpus(ParallelCorpus("quran", "bn", quran))
    assert {int(p.group) for p in split.test} == set(QURAN_TEST_SURAHS)
    assert len(split.train) == 114 - len(QURAN_TEST_SURAHS)
    help_pairs = [pair("swriter", "w", "a", "b"), pair("scalc", "c", "d", "e")]
    split = split_corpus(ParallelCorpus("libreoffice", "km", help_pairs))
    assert ([p.id for p in split.train], [p.id for p in split.test]) == (["c"], ["w"])
    with pytest.raises(ValueError, match="no split for corpus 'udhr'"):
        split_corpus(ParallelCorpus("udhr", "sw", help_pairs))
