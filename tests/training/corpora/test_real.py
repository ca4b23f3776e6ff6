"""The measured counts of the real corpora; runs only where all three were fetched into the
default cache (``python -m optical_ops.training.corpora fetch``)."""

from __future__ import annotations

import pytest

from optical_ops.training.corpora import CorpusNotFoundError, build_benchmarks, load_corpora
from optical_ops.training.corpora.cache import (
    chichewa_bible_dir,
    english_bible_module,
    libreoffice_help_dir,
    quran_dist_dir,
)
from optical_ops.training.corpora.quran import LANGUAGES


def fetched() -> bool:
    try:
        for find in (chichewa_bible_dir, english_bible_module, quran_dist_dir,
                     libreoffice_help_dir):  # fmt: skip
            find()
    except CorpusNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not fetched(), reason="the corpora are not in the cache")


@pytest.fixture(scope="module")
def counts():
    return build_benchmarks(load_corpora())


def test_bible_counts(counts):
    assert counts["bible"]["ny"] == {
        "aligned pairs": 31102,
        "train pairs": 23145,
        "test pairs": 7957,
        "train groups": 39,
        "test groups": 27,
        "test queries": 7953,
        "distinct query texts": 7950,
        "english candidates": 7957,
        "distinct english candidates": 7939,
        "queries with several relevant": 27,
        "english verses renumbered": 3,
        "other verses without an english verse": 2,
        "english verses without an other verse": 0,
        "train pairs sharing a text with the test split": 0,
    }


def test_quran_counts(counts):
    assert sorted(counts["quran"]) == sorted(LANGUAGES)
    for language, language_counts in counts["quran"].items():
        assert language_counts["aligned pairs"] == 6236, language
        assert language_counts["test pairs"] == 1049, language
        assert language_counts["english candidates"] == 1049, language
        assert language_counts["distinct english candidates"] == 1047, language
        assert language_counts["test groups"] == 23, language
        overlap = language_counts["train pairs sharing a text with the test split"]
        assert language_counts["train pairs"] == 6236 - 1049 - overlap, language
        assert 20 <= overlap <= 35, language


def test_libreoffice_counts(counts):
    km = counts["libreoffice"]["km"]
    # The Debian packages are not pinned: a new upload moves these a little.
    assert km["aligned pairs"] == pytest.approx(27992, rel=0.05)
    assert km["test pairs"] == pytest.approx(5390, rel=0.05)
    assert km["test queries"] == pytest.approx(3845, rel=0.05)
    assert km["distinct english candidates"] == pytest.approx(3743, rel=0.05)
    assert km["train pairs"] == pytest.approx(18785, rel=0.05)
    assert km["test groups"] == 1 and km["train groups"] == 8
