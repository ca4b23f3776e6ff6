"""The bitext a run trains on, and the UDHR train/test split by article.

A training pair is ``(teacher text, student text)``: the teacher (frozen) encodes the first, in
English, and the student the second, in the language it learns. Pairs come either from the
shipped UDHR files ``data/udhr/eng-<code>.tsv`` (the *train* split of the chosen languages) or
from any TSV bitext (:func:`~.formats.read_bitext`).

The split is by article so that no test text is ever trained on, in either language::

    TEST_ARTICLES = {3, 6, 9, ..., 30}     (every third article: 10 of the 30)
    train split   = the preamble (article 0) and the other 20 articles

A paragraph is in the test split if and only if its article is. The same articles are held out
for every language, so one English collection serves all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .formats import DataFormatError, SentencePair, lookup_language, read_bitext
from .udhr import BitextPair, read_bitext_tsv

# Package data of optical_ops.training (training/data/udhr), beside this sub-package.
UDHR_DATA_DIR = Path(__file__).parent.parent / "data" / "udhr"
TEST_ARTICLES = frozenset(range(3, 31, 3))
_FILE_PREFIX = "eng-"


def udhr_files(data_dir: Path = UDHR_DATA_DIR) -> dict[str, Path]:
    """``{language code of the file name: path}`` for every ``eng-<code>.tsv`` in ``data_dir``.

    A file whose code is not a known language raises :class:`~.formats.DataFormatError`.
    """
    files = {}
    for path in sorted(Path(data_dir).glob(f"{_FILE_PREFIX}*.tsv")):
        code = path.stem[len(_FILE_PREFIX) :]
        try:
            lookup_language(code)
        except ValueError:
            raise DataFormatError(
                path, None, f"unknown language code {code!r} in the file name"
            ) from None
        files[code] = path
    return files


def udhr_file(language: str, data_dir: Path = UDHR_DATA_DIR) -> tuple[str, Path]:
    """The file code and path of the UDHR bitext for ``language`` (ISO 639-1 or 639-3 code).

    ``"sw"``, ``"swh"`` and ``"swa"`` all find ``eng-swh.tsv``. An unknown code raises
    ``ValueError``; a known language without a file raises ``FileNotFoundError``.
    """
    wanted = lookup_language(language)
    files = udhr_files(data_dir)
    for code, path in files.items():
        if lookup_language(code) == wanted:
            return code, path
    raise FileNotFoundError(
        f"no UDHR bitext for {wanted.name} ({language!r}) in {data_dir}; "
        f"available: {', '.join(files) or 'none'}"
    )


def load_udhr(
    languages: Iterable[str], data_dir: Path = UDHR_DATA_DIR
) -> dict[str, list[BitextPair]]:
    """``{file code: pairs}`` for the requested languages, in the order asked."""
    bitext = {}
    for language in languages:
        code, path = udhr_file(language, data_dir)
        if code in bitext:
            raise ValueError(f"language {language!r} is requested twice (as {code!r})")
        bitext[code] = read_bitext_tsv(path)
    return bitext


def split_by_article(
    pairs: Sequence[BitextPair], test_articles: Iterable[int] = TEST_ARTICLES
) -> tuple[list[BitextPair], list[BitextPair]]:
    """``(train, test)``: the pairs whose article is not / is in ``test_articles``."""
    held_out = frozenset(test_articles)
    train = [pair for pair in pairs if pair.article not in held_out]
    test = [pair for pair in pairs if pair.article in held_out]
    return train, test


def udhr_training_pairs(bitext: Mapping[str, Sequence[BitextPair]]) -> list[tuple[str, str]]:
    """``(english, other)`` pairs of the train split of every language, languages in order."""
    return [
        (pair.english, pair.other)
        for pairs in bitext.values()
        for pair in split_by_article(pairs)[0]
    ]


def tsv_training_pairs(
    path: Path, source_column: str | None = None, target_column: str | None = None
) -> list[SentencePair]:
    """``(source, target)`` pairs of a TSV bitext; the source side is the teacher's (English)."""
    return read_bitext(path, source=source_column, target=target_column)
