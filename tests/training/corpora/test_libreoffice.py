"""The Khmer–English LibreOffice help reader on synthetic help pages."""

from __future__ import annotations

import pytest
from corpora_fixtures import KHMER, build_libreoffice

from optical_ops.training.corpora import CorpusNotFoundError
from optical_ops.training.corpora.cache import libreoffice_help_dir
from optical_ops.training.corpora.libreoffice import load_libreoffice, read_units


@pytest.fixture
def cache(tmp_path):
    build_libreoffice(tmp_path)
    return tmp_path


def test_units_are_paragraph_and_heading_ids_with_all_their_text(cache):
    page = libreoffice_help_dir(cache) / "en-US" / "text" / "swriter" / "main0110.html"
    units, repeated = read_units(page)
    assert units == {
        "hd_id1": "Heading",
        "par_id1": "Paragraph one link",
        "par_id2": "Paragraph two",
        "par_id3": "Left in English.",
        "par_id4": "",
    }
    assert repeated == 1


def test_pairs_by_page_and_id_grouped_by_module(cache):
    corpus = load_libreoffice(cache)
    assert (corpus.name, corpus.language) == ("libreoffice", "km")
    pairs = {pair.id: pair for pair in corpus.pairs}
    assert list(pairs) == [
        "scalc/main#par_id1",
        "scalc/main#par_id9",
        "swriter/01/page#par_id7",
        "swriter/main0110#hd_id1",
        "swriter/main0110#par_id1",
        "swriter/main0110#par_id2",
    ]
    assert pairs["swriter/main0110#par_id1"].other == f"{KHMER} one link"  # zero-width space kept
    assert pairs["swriter/main0110#par_id2"].english == "Paragraph two"  # the first of the id
    assert {pair.group for pair in corpus.pairs} == {"scalc", "swriter"}
    assert corpus.notes == {
        "repeated ids on a page": 1,
        "untranslated units": 1,
        "empty units": 1,
        "units without an english unit": 1,
    }


def test_a_page_missing_in_english_is_counted(cache):
    (libreoffice_help_dir(cache) / "en-US" / "text" / "scalc" / "main.html").unlink()
    corpus = load_libreoffice(cache)
    assert corpus.notes["pages without an english page"] == 1
    assert not any(pair.group == "scalc" for pair in corpus.pairs)


def test_missing_help_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "optical_ops.training.corpora.cache.SYSTEM_LIBREOFFICE_HELP", tmp_path / "none"
    )
    with pytest.raises(CorpusNotFoundError, match="fetch --corpus libreoffice --cache"):
        load_libreoffice(tmp_path)
