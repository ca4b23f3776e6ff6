"""The dictd reader on hand-made dictionaries and, when installed, on Debian's FreeDict ones."""

from __future__ import annotations

import pytest
from dictd_files import encode_dictd_number, write_dictd

from optical_ops.training.bitext.dictionaries import (
    DICTD_DIR,
    ENGLISH_DICTIONARIES,
    DictionaryNotFoundError,
    bilingual_lexicon,
    clean_entry,
    decode_dictd_number,
    english_lexicon,
    read_dictionary,
    split_translations,
)

SWAHILI_STYLE = {  # older FreeDict layout: blank line after the headword line
    "00databaseshort": "Test dictionary ver. 0.1\n",
    "nyumba": "nyumba /ɲˈumba/ <n> [sg=pl]\n\nhouse\n",
    "na": "na /nˈa/ <conj>\n1.\nand\n2.\nwith\n",
    "si": "si /sˈi/ <cop, neg>\n\nam not\n; is not\n   See also: {wa}\n\n",
    "watu": "watu /wˈatu/ <n>\n\n Plural of {mtu}: person\n\n",
    "tupu": "tupu <adj>\n\n\n",
}
WIKDICT_STYLE = {  # newer FreeDict (WikDict) layout: "N. translations" then a source-language gloss
    "kieli": (
        "kieli /kˈielɪ/ <n>\n1. tongue, language\nsuussa oleva lihas\n"
        "2. language (computing), tongue 3.\nkommunikointijärjestelmä\n 3.\nohjelmointikieli\n"
    ),
    "talo": "talo /tˈalo/ <n>\nhouse, home\nasuinrakennus\n",
}
TWO_PARTS_OF_SPEECH = [
    ("kuusi", "kuusi /kˈuːsɪ/ <n>\nspruce\nkuusipuu\n"),
    ("kuusi", "kuusi /kˈuːsɪ/ <numeral>\nsix\nnumero 6\n"),
]
REVERSE = {"house": "house /hˈaʊs/ <n>\n\nnyumba\n", "home": "home /hˈəʊm/ <n>\n\nmaskani\n"}


@pytest.fixture
def dictd_dir(tmp_path):
    forward = [*SWAHILI_STYLE.items(), *WIKDICT_STYLE.items(), *TWO_PARTS_OF_SPEECH]
    write_dictd(tmp_path, "freedict-xxa-xxb", forward)
    write_dictd(tmp_path, "freedict-xxb-xxa", list(REVERSE.items()))
    return tmp_path


def test_decode_dictd_number():
    assert [decode_dictd_number(d) for d in ("A", "B", "/", "BA", "CAB")] == [0, 1, 63, 64, 8193]
    assert all(decode_dictd_number(encode_dictd_number(n)) == n for n in (0, 5, 64, 99999))
    with pytest.raises(ValueError, match="not a dictd base-64 digit"):
        decode_dictd_number("B=")


def test_split_translations_drops_notes_and_sense_numbers():
    assert split_translations("am (within, in there)") == ["am"]
    assert split_translations("olla ...[[-vuotias]], olla") == ["olla"]
    assert split_translations(" Plural of {mtazamo}: 1. viewpoint 2. attitude") == [
        "viewpoint",
        "attitude",
    ]
    assert split_translations("minibus. See also: , {matatu}") == ["minibus"]


def test_clean_entry_keeps_translation_lines_only():
    assert clean_entry(SWAHILI_STYLE["si"]) == ["am not", "is not"]
    assert clean_entry(WIKDICT_STYLE["kieli"]) == ["tongue", "language"]
    assert clean_entry(SWAHILI_STYLE["tupu"]) == []


def test_read_dictionary(dictd_dir):
    assert read_dictionary("freedict-xxa-xxb", dictd_dir) == {
        "nyumba": ["house"],
        "na": ["and", "with"],
        "si": ["am not", "is not"],
        "watu": ["person"],
        "kieli": ["tongue", "language"],
        "talo": ["house", "home"],
        "kuusi": ["spruce", "six"],
    }


def test_bilingual_lexicon_merges_both_directions(dictd_dir):
    lexicon = bilingual_lexicon("xxa", "xxb", dictd_dir)
    assert lexicon["nyumba"] == ["house"]
    assert lexicon["maskani"] == ["home"]
    assert len(lexicon) == 8
    assert bilingual_lexicon("xxb", "xxa", dictd_dir)["house"] == ["nyumba", "talo"]


def test_missing_dictionary_names_file_and_package(dictd_dir):
    with pytest.raises(DictionaryNotFoundError, match="apt-get install dict-freedict-xxa-xxc"):
        read_dictionary("freedict-xxa-xxc", dictd_dir)
    (dictd_dir / "freedict-xxb-xxa.dict.dz").unlink()
    with pytest.raises(DictionaryNotFoundError, match=r"freedict-xxb-xxa\.dict\.dz not found"):
        read_dictionary("freedict-xxb-xxa", dictd_dir)
    with pytest.raises(DictionaryNotFoundError, match="dict-freedict-xxa-xxc"):
        bilingual_lexicon("xxa", "xxc", dictd_dir)


def test_english_lexicon_reads_the_one_database_named_for_the_language(tmp_path):
    assert ENGLISH_DICTIONARIES["spa"] == "freedict-spa-eng"
    assert ENGLISH_DICTIONARIES["rus"] == "freedict-eng-rus"  # Debian has no rus-eng
    assert not {"nya", "khm", "zho", "ben", "urd"} & set(ENGLISH_DICTIONARIES)
    with pytest.raises(DictionaryNotFoundError, match="apt-get install dict-freedict-eng-rus"):
        english_lexicon("rus", tmp_path)
    with pytest.raises(ValueError, match="no dictionary between 'ben' and English"):
        english_lexicon("ben", tmp_path)
    house = [("house", "house <n>\n\nдом\n"), ("home", "home <n>\n\nДом, очаг\n")]
    write_dictd(tmp_path, "freedict-eng-rus", house)
    write_dictd(tmp_path, "freedict-rus-eng", [("кот", "кот <n>\n\ncat\n")])  # not read
    assert english_lexicon("rus", tmp_path) == {"дом": ["house", "home"], "очаг": ["home"]}
    write_dictd(tmp_path, "freedict-spa-eng", [("casa", "casa <n>\n\nhouse\n")])
    write_dictd(tmp_path, "freedict-eng-spa", [("home", "home <n>\n\nhogar\n")])  # not read
    assert english_lexicon("spa", tmp_path) == {"casa": ["house"]}


@pytest.mark.skipif(
    not (DICTD_DIR / "freedict-swh-eng.index").is_file(),
    reason="apt-get install dict-freedict-swh-eng dict-freedict-eng-swh",
)
def test_installed_swahili_english_dictionary():
    swahili_english = read_dictionary("freedict-swh-eng")
    assert swahili_english["na"] == ["and", "with", "by"]
    assert swahili_english["watu"] == ["people"]
    assert len(swahili_english) > 2000
    lexicon = bilingual_lexicon("eng", "swh")
    assert "nyumba" in lexicon["house"]
    assert all(translations for translations in lexicon.values())


@pytest.mark.skipif(
    not (DICTD_DIR / "freedict-fin-eng.index").is_file(),
    reason="apt-get install dict-freedict-fin-eng",
)
def test_installed_finnish_english_dictionary():
    finnish_english = read_dictionary("freedict-fin-eng")
    assert {"tongue", "language"} <= set(finnish_english["kieli"])
    assert "house" in finnish_english["talo"]
    assert len(finnish_english) > 30000
