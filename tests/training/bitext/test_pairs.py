"""UDHR bitext by language, the split by article and the training pairs."""

import pytest

from optical_ops.training.bitext.formats import DataFormatError
from optical_ops.training.bitext.pairs import (
    TEST_ARTICLES,
    UDHR_DATA_DIR,
    load_udhr,
    split_by_article,
    tsv_training_pairs,
    udhr_file,
    udhr_files,
    udhr_training_pairs,
)
from optical_ops.training.bitext.udhr import BitextPair

REQUIRED = ("swh", "som", "fin")


@pytest.mark.parametrize(
    ("code", "file_code"),
    [("sw", "swh"), ("SWA", "swh"), ("so", "som"), ("fi", "fin"), ("ar", "arb"), ("ha", "hau")],
)
def test_languages_are_found_by_any_of_their_codes(code, file_code):
    assert udhr_file(code) == (file_code, UDHR_DATA_DIR / f"eng-{file_code}.tsv")


def test_every_shipped_file_names_a_known_language():
    assert len(udhr_files()) == 19


def test_unknown_and_missing_languages(tmp_path):
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        udhr_file("xx")
    with pytest.raises(FileNotFoundError, match="no UDHR bitext for German"):
        udhr_file("de")
    bad = tmp_path / "eng-qqq.tsv"
    bad.write_text("article\tparagraph\tenglish\tother\n")
    with pytest.raises(DataFormatError, match="unknown language code 'qqq'") as caught:
        udhr_files(tmp_path)
    assert caught.value.path == str(bad)


def test_a_language_is_requested_once():
    with pytest.raises(ValueError, match="requested twice"):
        load_udhr(["sw", "swh"])


def test_split_holds_out_whole_articles():
    for code, pairs in load_udhr(REQUIRED).items():
        train, test = split_by_article(pairs)
        assert len(train) + len(test) == len(pairs)
        train_articles = {pair.article for pair in train}
        test_articles = {pair.article for pair in test}
        assert not train_articles & test_articles, code
        assert test_articles <= TEST_ARTICLES and len(test_articles) >= 9
        assert len(train) >= 2 * len(test) - 5


def test_no_test_text_is_trained_on():
    bitext = load_udhr(REQUIRED)
    trained = {text for pair in udhr_training_pairs(bitext) for text in pair}
    for pairs in bitext.values():
        for pair in split_by_article(pairs)[1]:
            assert pair.english not in trained and pair.other not in trained


def test_training_pairs_are_english_then_other():
    pairs = [BitextPair(1, 1, "en one", "sw one"), BitextPair(3, 1, "en three", "sw three")]
    assert udhr_training_pairs({"swh": pairs}) == [("en one", "sw one")]


def test_tsv_training_pairs_with_and_without_header(tmp_path):
    plain = tmp_path / "plain.tsv"
    plain.write_text("Hello\tJambo\n")
    assert tsv_training_pairs(plain) == [("Hello", "Jambo")]
    named = tmp_path / "named.tsv"
    named.write_text("id\tsw\ten\n1\tJambo\tHello\n")
    assert tsv_training_pairs(named, "en", "sw") == [("Hello", "Jambo")]
