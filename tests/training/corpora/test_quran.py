"""The Quran reader on a synthetic copy of the quran-json package layout."""

from __future__ import annotations

import json

import pytest
from corpora_fixtures import build_quran, quran_text, quran_verses

from optical_ops.training.corpora import CorpusNotFoundError
from optical_ops.training.corpora.cache import quran_dist_dir
from optical_ops.training.corpora.quran import load_quran, read_quran

VERSES = sum(quran_verses(surah) for surah in range(1, 115))


def test_translation_and_arabic_are_aligned_by_surah_and_verse(tmp_path):
    build_quran(tmp_path)
    corpora = load_quran(("ar", "bn", "zh"), cache=tmp_path)
    assert list(corpora) == ["ar", "bn", "zh"]
    for language, corpus in corpora.items():
        assert (corpus.name, corpus.language) == ("quran", language)
        assert len(corpus.pairs) == VERSES
        pair = corpus.pairs[-1]
        assert (pair.group, pair.id) == ("114", f"s114v{quran_verses(114):03d}")
        assert pair.english == quran_text("en", 114, quran_verses(114))
        assert pair.other == quran_text(language, 114, quran_verses(114))
        assert sum(corpus.notes.values()) == 0


def test_a_missing_verse_is_dropped_and_counted(tmp_path):
    build_quran(tmp_path, missing=("bn", 2, 3))
    corpus = load_quran(("bn",), cache=tmp_path)["bn"]
    assert len(corpus.pairs) == VERSES - 1
    assert "s002v003" not in {pair.id for pair in corpus.pairs}
    assert corpus.notes["english verses without an other verse"] == 1


def test_a_file_without_114_surahs_is_an_error(tmp_path):
    build_quran(tmp_path)
    path = quran_dist_dir(tmp_path) / "quran_bn.json"
    path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8"))[:-1]), "utf-8")
    with pytest.raises(ValueError, match="114 surahs"):
        read_quran(quran_dist_dir(tmp_path), "bn")


def test_missing_quran_names_the_fetch_command(tmp_path):
    with pytest.raises(CorpusNotFoundError, match="fetch --corpus quran --cache"):
        load_quran(cache=tmp_path)
