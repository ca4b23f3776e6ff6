"""Bilingual word lists from FreeDict dictionaries in dictd format, as installed by Debian.

``apt-get install dict-freedict-swh-eng`` installs the database ``freedict-swh-eng`` as::

    /usr/share/dictd/freedict-swh-eng.index     one line per headword:
                                                headword <TAB> offset <TAB> length
    /usr/share/dictd/freedict-swh-eng.dict.dz   all entries, dictzip (= gzip) compressed

``offset`` and ``length`` index the uncompressed ``.dict`` text in bytes, written in dictd's
base-64 numerals: most significant digit first, digits ``A-Z a-z 0-9 + /`` worth 0..63, no
padding (``"B"`` = 1, ``"BA"`` = 64). Headwords starting with ``00database`` are metadata.

An entry is plain text: a headword line (headword, /pronunciation/, <part of speech>, plural forms,
notes), then one sense per ``N.`` line, or a single unnumbered sense. :func:`clean_entry` keeps each
sense's translation line (the text after ``N.``, else the sense's first non-empty line, plus
continuation lines starting with ``;``) and drops the rest of the sense (glosses written in the
source language, "See also", "Synonym", usage notes). A ``Plural of {x}: ...`` line yields the
translations after the colon. Translations are split at ``,``, ``;`` and inline sense numbers,
with bracketed notes (``(...)``, ``[...]``, ``{...}``, ``<...>``) removed.

:data:`ENGLISH_DICTIONARIES` names, per language, the one database that gives its words' English
translations (:func:`english_lexicon`), so that what is read does not depend on which other
dictionaries a machine happens to have.

FreeDict dictionaries are GPL or CC BY-SA licensed: read them from the system, never copy them into
this repository.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

DICTD_DIR = Path("/usr/share/dictd")
DICTD_BASE64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
METADATA_PREFIX = "00database"

# Debian 12's dict-freedict-* packages between English and another language (ISO 639-3).
_INTO_ENGLISH = (
    "afr ara ces cym dan deu ell epo fin fra gle hrv hun isl ita jpn kha kur lat lit nld pol por "
    "slk slv spa srp swe swh tur"
).split()
_FROM_ENGLISH_ONLY = "bul hin ind nor rom rus".split()
ENGLISH_DICTIONARIES = {
    **{code: f"freedict-{code}-eng" for code in _INTO_ENGLISH},
    **{code: f"freedict-eng-{code}" for code in _FROM_ENGLISH_ONLY},
}
"""ISO 639-3 code -> the FreeDict database of its words' English translations: Debian's
``dict-freedict-<code>-eng`` where there is one, else ``dict-freedict-eng-<code>`` (read
inverted). Languages not listed (Chichewa, Khmer, Chinese, Bengali, Urdu, ...) have none."""

_SENSE_NUMBER = re.compile(r"^(\d+)\.(?:\s+|$)")
_PLURAL_OF = re.compile(r"^Plural of \{[^}]*\}:\s*")
_CROSS_REFERENCE = re.compile(r"\s*\b(?:See also|Synonym|Inflection of):.*$")
_BRACKETED = re.compile(r"\([^()]*\)|\[+[^\]]*\]+|\{[^}]*\}|<[^>]*>")
_SEPARATOR = re.compile(r"[,;]|(?:^|\s)\d+\.(?=\s|$)")
_EDGE_PUNCTUATION = " \t.:…\"'“”"


class DictionaryNotFoundError(FileNotFoundError):
    """A dictd file is missing; the message names the file and the Debian package with it."""


def decode_dictd_number(digits: str) -> int:
    """Value of a dictd base-64 numeral: sum of digit_i * 64**(n - 1 - i)."""
    value = 0
    for digit in digits:
        position = DICTD_BASE64_DIGITS.find(digit)
        if position < 0:
            raise ValueError(f"{digit!r} is not a dictd base-64 digit (in {digits!r})")
        value = value * 64 + position
    return value


def split_translations(line: str) -> list[str]:
    """Translations on one line: notes in brackets removed, split at ``,`` ``;`` and ``N.``."""
    line = _CROSS_REFERENCE.sub("", _PLURAL_OF.sub("", line.strip()))
    previous = None
    while previous != line:  # innermost brackets first, so nested notes go too
        previous, line = line, _BRACKETED.sub("", line)
    translations = []
    for part in _SEPARATOR.split(line):
        text = " ".join(part.split()).strip(_EDGE_PUNCTUATION)
        if text and text not in translations:
            translations.append(text)
    return translations


def clean_entry(entry: str) -> list[str]:
    """Translations in one dictd entry, in order and without repeats (see the module docstring)."""
    senses: list[list[str]] = [[]]
    for line in entry.split("\n")[1:]:
        sense_number = _SENSE_NUMBER.match(line)
        if sense_number:
            senses.append([line[sense_number.end() :]])
        else:
            senses[-1].append(line)
    translations: list[str] = []
    for lines in senses:
        content = [line for line in lines if line.strip()]
        if not content:
            continue
        translation_lines = [content[0]]
        for line in content[1:]:
            if not line.startswith(";"):
                break
            translation_lines.append(line)
        for line in translation_lines:
            translations += [t for t in split_translations(line) if t not in translations]
    return translations


def _is_installed(name: str, dictd_dir: Path) -> bool:
    return all((Path(dictd_dir) / f"{name}{suffix}").is_file() for suffix in (".index", ".dict.dz"))


def dictionary_files(name: str, dictd_dir: Path = DICTD_DIR) -> tuple[Path, Path]:
    """``<name>.index`` and ``<name>.dict.dz`` in ``dictd_dir``, or a clear error if missing."""
    files = (Path(dictd_dir) / f"{name}.index", Path(dictd_dir) / f"{name}.dict.dz")
    for path in files:
        if not path.is_file():
            raise DictionaryNotFoundError(
                f"dictionary file {path} not found; install it with: apt-get install dict-{name}"
            )
    return files


def read_dictionary(name: str, dictd_dir: Path = DICTD_DIR) -> dict[str, list[str]]:
    """Headword -> translations for the dictd database ``name`` (e.g. ``freedict-swh-eng``).

    Headwords are the index keys (dictd lower-cases them); entries indexed under the same
    headword (one per part of speech) are merged. Entries without translations are left out.
    """
    index_path, data_path = dictionary_files(name, dictd_dir)
    with gzip.open(data_path) as handle:
        data = handle.read()
    lexicon: dict[str, list[str]] = {}
    for line in index_path.read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")[:3]
        if headword.startswith(METADATA_PREFIX):
            continue
        start = decode_dictd_number(offset)
        entry = data[start : start + decode_dictd_number(length)].decode("utf-8")
        known = lexicon.setdefault(headword, [])
        known += [t for t in clean_entry(entry) if t not in known]
    return {headword: translations for headword, translations in lexicon.items() if translations}


def bilingual_lexicon(
    source: str, target: str, dictd_dir: Path = DICTD_DIR
) -> dict[str, list[str]]:
    """Source word -> target translations from ``freedict-<source>-<target>`` and, inverted,
    ``freedict-<target>-<source>`` (whichever are installed; both are merged).

    Keys from the inverted direction are lower-cased like dictd headwords. Raises
    :class:`DictionaryNotFoundError` naming both packages when neither is installed.
    """
    forward, backward = f"freedict-{source}-{target}", f"freedict-{target}-{source}"
    installed = [name for name in (forward, backward) if _is_installed(name, dictd_dir)]
    if not installed:
        raise DictionaryNotFoundError(
            f"no {source}-{target} dictionary in {dictd_dir}: install one with "
            f"apt-get install dict-{forward}  (or dict-{backward})"
        )
    lexicon = read_dictionary(forward, dictd_dir) if forward in installed else {}
    if backward in installed:
        for word, translations in _inverted(read_dictionary(backward, dictd_dir)).items():
            known = lexicon.setdefault(word, [])
            known += [t for t in translations if t not in known]
    return lexicon


def _inverted(lexicon: dict[str, list[str]]) -> dict[str, list[str]]:
    """Translation -> the headwords translated by it, keys lower-cased like dictd headwords."""
    inverted: dict[str, list[str]] = {}
    for headword, translations in lexicon.items():
        for translation in translations:
            known = inverted.setdefault(translation.lower(), [])
            if headword not in known:
                known.append(headword)
    return inverted


def english_lexicon(language: str, dictd_dir: Path = DICTD_DIR) -> dict[str, list[str]]:
    """Word -> English translations for ``language`` (ISO 639-3), read from its database in
    :data:`ENGLISH_DICTIONARIES` alone; :class:`DictionaryNotFoundError` names the package
    where it is not installed."""
    if language not in ENGLISH_DICTIONARIES:
        raise ValueError(f"FreeDict has no dictionary between {language!r} and English")
    name = ENGLISH_DICTIONARIES[language]
    lexicon = read_dictionary(name, dictd_dir)
    return _inverted(lexicon) if name.startswith("freedict-eng-") else lexicon
