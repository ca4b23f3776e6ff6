"""The Chichewa–English Bible reader on a synthetic copy of both packages' layouts."""

from __future__ import annotations

import pytest
from corpora_fixtures import ROMANS, THIRD_JOHN, build_bible, chichewa_text, english_text

from optical_ops.training.corpora import CorpusNotFoundError
from optical_ops.training.corpora.bible import (
    align_bible,
    load_bible,
    read_chichewa,
    read_world_english,
    verse_id,
)
from optical_ops.training.corpora.cache import chichewa_bible_dir, english_bible_module


@pytest.fixture
def cache(tmp_path):
    build_bible(tmp_path)
    return tmp_path


def test_verse_ids_are_book_chapter_verse():
    assert verse_id(45, 16, 25) == 45016025
    assert f"{verse_id(1, 1, 1):08d}" == "01001001"


def test_world_english_text_without_verse_numbers(cache):
    english = read_world_english(english_bible_module(cache))
    assert english[verse_id(1, 1, 1)] == english_text(1, 1, 1)
    assert english[verse_id(1, 1, 2)] == '"God\'s Spirit"'  # "2." with no space, backtick
    assert english[verse_id(ROMANS, 14, 24)] == "doxology 1"


def test_chichewa_verse_n_is_element_n_minus_1(cache):
    chichewa = read_chichewa(chichewa_bible_dir(cache))
    assert chichewa[verse_id(1, 1, 1)] == "Pachiyambi Mulungu"
    assert chichewa[verse_id(THIRD_JOHN, 1, 15)] == chichewa_text(THIRD_JOHN, 1, 15)
    assert len(chichewa) == 63 * 2 + (14 + 23 + 27) + 15 + (2 + 10 + 18)  # others, Rom, 3Jn, Rev


def test_alignment_moves_the_doxology_and_drops_extra_chichewa_verses(cache):
    corpus = load_bible(cache)
    by_id = {pair.id: pair for pair in corpus.pairs}
    for verse in (25, 26, 27):
        pair = by_id[f"{verse_id(ROMANS, 16, verse):08d}"]
        assert pair.english == f"doxology {verse - 24}"
        assert pair.other == chichewa_text(ROMANS, 16, verse)
    assert f"{verse_id(ROMANS, 14, 24):08d}" not in by_id
    assert f"{verse_id(THIRD_JOHN, 1, 15):08d}" not in by_id
    assert f"{verse_id(66, 12, 18):08d}" not in by_id
    assert corpus.notes == {
        "english verses renumbered": 3,
        "other verses without an english verse": 2,
        "english verses without an other verse": 0,
    }
    assert len(corpus.pairs) == len(read_world_english(english_bible_module(cache)))
    assert (corpus.name, corpus.language) == ("bible", "ny")
    assert by_id["01001001"].group == "1" and by_id[f"{verse_id(66, 1, 1):08d}"].group == "66"
    assert [pair.id for pair in corpus.pairs] == sorted(by_id)


def test_an_english_verse_missing_in_chichewa_is_counted():
    english = {verse_id(1, 1, 1): "a", verse_id(1, 1, 2): "b"}
    corpus = align_bible(english, {verse_id(1, 1, 1): "x"})
    assert [pair.id for pair in corpus.pairs] == ["01001001"]
    assert corpus.notes["english verses without an other verse"] == 1


def test_a_book_without_chapters_is_an_error(cache):
    folder = chichewa_bible_dir(cache)
    for path in (folder / "resources" / "40").glob("*.json"):
        path.unlink()
    with pytest.raises(ValueError, match="40"):
        read_chichewa(folder)


def test_missing_bible_names_the_fetch_command(tmp_path):
    with pytest.raises(CorpusNotFoundError) as error:
        load_bible(tmp_path / "empty")
    message = str(error.value)
    assert "Bible (" in message and "not found" in message
    assert "python -m optical_ops.training.corpora fetch --corpus bible --cache" in message
