"""Readers and writers for the local data formats of the CLIR trainer and evaluator.

Every file is UTF-8 text with one record per line. Readers accept a leading byte-order mark,
CRLF line ends and blank lines (empty or spaces only, skipped wherever they are); any other
deviation raises :class:`DataFormatError`, whose message names the file, the 1-based line and
what was expected. Writers emit UTF-8 with LF line ends and no BOM, and raise ``ValueError`` for
a value the format cannot hold (an id with whitespace, a TSV field with a tab or a newline, a
score that is not finite).

* **TSV bitext** – one sentence pair per line, fields separated by tabs, no quoting. Either
  exactly two fields ``source<TAB>target`` and no header, or a header row naming the columns
  (e.g. the UDHR files: ``article<TAB>paragraph<TAB>english<TAB>other``) from which the caller
  picks columns by name: :func:`read_bitext` a source and a target, :func:`read_tsv_rows` any
  columns (the UDHR reader takes all four). Fields are stripped of surrounding whitespace; an
  empty field in a chosen column is an error.
* **JSONL queries** (BEIR/MIRACL topics) – one object per line, the id under ``_id``,
  ``query_id`` or ``id`` and the text under ``text``, ``query`` or ``title`` (first key present
  wins, in that order).
* **JSONL corpus** (BEIR/MIRACL) – one object per line, the id under ``_id``, ``docid`` or
  ``id``, a ``text`` string and an optional ``title``; title and text may not both be empty.
* **TREC qrels** – ``query_id iteration doc_id relevance``, whitespace-separated, relevance an
  integer; the iteration field is ignored.
* **TREC run** – ``query_id Q0 doc_id rank score tag``, whitespace-separated. Only the scores
  matter on reading (trec_eval ranks by score, not by the rank column); runs are written in
  :func:`~..evaluation.metrics.rank_documents` order with ranks from 1.

Ids are non-empty and whitespace-free (they must survive the TREC files); numeric JSON ids are
read as their decimal strings. A duplicate query id, doc id or (query, doc) pair is an error.
Languages are named by ISO 639-1 or ISO 639-3 codes, see :func:`lookup_language`.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Union

from ..evaluation.metrics import rank_documents

PathLike = Union[str, "os.PathLike[str]"]

_QUERY_ID_KEYS = ("_id", "query_id", "id")
_QUERY_TEXT_KEYS = ("text", "query", "title")
_DOC_ID_KEYS = ("_id", "docid", "id")
_INTEGER = re.compile(r"[+-]?[0-9]+")


class DataFormatError(ValueError):
    """A data file that breaks its format; ``path``, ``line`` (1-based, or None for the whole
    file) and ``reason`` are kept as attributes."""

    def __init__(self, path: PathLike, line: int | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {reason}")


class SentencePair(NamedTuple):
    source: str
    target: str


class Document(NamedTuple):
    title: str
    text: str


class Language(NamedTuple):
    iso639_1: str
    iso639_3: str
    name: str


def data_lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for the non-blank lines, without the line end or BOM.

    Files ending in ``.gz`` are decompressed on the fly.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataFormatError(
                    path, number, f"not valid UTF-8 (byte {error.start + 1} of the line)"
                ) from None
            if line.strip(" "):
                yield number, line


def _check_token(value: str, what: str) -> str:
    """``value`` if it can be written as a whitespace-separated field, else ``ValueError``."""
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"{what} {value!r} must be non-empty and contain no whitespace")
    return value


def _write_lines(path: PathLike, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line + "\n")


# --- TSV bitext -------------------------------------------------------------------------------


class TsvRow(NamedTuple):
    """The chosen fields of one TSV row and the 1-based line it came from."""

    line: int
    fields: tuple[str, ...]


def read_tsv_rows(path: PathLike, columns: Sequence[str] | None = None) -> list[TsvRow]:
    """Rows of a TSV bitext file, in file order, each field stripped and non-empty.

    With no ``columns`` the file has no header and every line is ``source<TAB>target``. With
    ``columns`` naming header columns, the first line is the header, each row must have as many
    fields as it, and each row keeps the named columns in the order asked.
    """
    lines = data_lines(path)
    if columns is None:
        width, indices, names = 2, (0, 1), ("source", "target")
    else:
        header_number, header = next(lines, (None, ""))
        if header_number is None:
            raise DataFormatError(path, None, "empty file: expected a header row of column names")
        header_names = [name.strip() for name in header.split("\t")]
        repeated = sorted({name for name in header_names if header_names.count(name) > 1})
        if repeated:
            raise DataFormatError(path, header_number, f"header repeats column(s) {repeated}")
        for name in columns:
            if name not in header_names:
                raise DataFormatError(
                    path,
                    header_number,
                    f"header has no column {name!r}; its columns: {header_names}",
                )
        width = len(header_names)
        indices = tuple(header_names.index(name) for name in columns)
        names = tuple(columns)

    rows = []
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != width:
            raise DataFormatError(
                path, number, f"expected {width} tab-separated fields, found {len(fields)}"
            )
        chosen = tuple(fields[index].strip() for index in indices)
        for name, text in zip(names, chosen):
            if not text:
                raise DataFormatError(path, number, f"empty {name!r} field")
        rows.append(TsvRow(number, chosen))
    if not rows:
        raise DataFormatError(path, None, "no sentence pairs")
    return rows


def read_bitext(
    path: PathLike, *, source: str | None = None, target: str | None = None
) -> list[SentencePair]:
    """Sentence pairs of a TSV file, in file order (see :func:`read_tsv_rows`).

    With no column names the file has no header; otherwise ``source`` and ``target`` name the
    header columns to pair.
    """
    if (source is None) != (target is None):
        raise ValueError("name both the source and the target column, or neither")
    columns = None if source is None else (source, target)
    return [SentencePair(*row.fields) for row in read_tsv_rows(path, columns)]


def write_bitext(
    path: PathLike, rows: Iterable[Sequence[str]], *, header: Sequence[str] | None = None
) -> None:
    """Write tab-separated rows (``source<TAB>target`` pairs, or rows as wide as ``header``),
    preceded by the ``header`` row if one is given."""
    lines = [] if header is None else [tuple(header)]
    lines.extend(tuple(row) for row in rows)
    width = len(lines[0]) if lines else 2
    for row in lines:
        if len(row) != width:
            raise ValueError(f"TSV row {row!r} has {len(row)} fields, expected {width}")
        for field in row:
            if not field.strip() or any(char in field for char in "\t\r\n"):
                raise ValueError(f"TSV field {field!r} must be non-empty with no tab or newline")
    _write_lines(path, ("\t".join(row) for row in lines))


# --- JSONL queries and corpus -----------------------------------------------------------------


def _json_objects(path: PathLike) -> Iterator[tuple[int, dict]]:
    for number, line in data_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(
                path, number, f"invalid JSON ({error.msg} at column {error.colno})"
            ) from None
        if not isinstance(record, dict):
            raise DataFormatError(
                path, number, f"expected a JSON object, found {type(record).__name__}"
            )
        yield number, record


def _field(path: PathLike, number: int, record: dict, keys: tuple[str, ...]) -> tuple[str, object]:
    """The first of ``keys`` present in ``record``, with its value."""
    for key in keys:
        if key in record:
            return key, record[key]
    raise DataFormatError(path, number, f"expected one of the keys {list(keys)}")


def _record_id(path: PathLike, number: int, record: dict, keys: tuple[str, ...]) -> str:
    key, value = _field(path, number, record, keys)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(
            path, number, f"{key!r} must be a string or an integer, found {json.dumps(value)}"
        )
    identifier = str(value)
    if not identifier or any(char.isspace() for char in identifier):
        raise DataFormatError(
            path, number, f"{key!r} must be non-empty with no whitespace, found {identifier!r}"
        )
    return identifier


def _string(path: PathLike, number: int, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataFormatError(path, number, f"{key!r} must be a string, found {json.dumps(value)}")
    return value


def check_new_id(path: PathLike, number: int, identifier: str, first_lines: dict[str, int]) -> None:
    if identifier in first_lines:
        raise DataFormatError(
            path, number, f"duplicate id {identifier!r} (first on line {first_lines[identifier]})"
        )
    first_lines[identifier] = number


def read_queries(path: PathLike) -> dict[str, str]:
    """``{query id: text}`` of a JSONL topics file, in file order."""
    queries: dict[str, str] = {}
    first_lines: dict[str, int] = {}
    for number, record in _json_objects(path):
        identifier = _record_id(path, number, record, _QUERY_ID_KEYS)
        key, value = _field(path, number, record, _QUERY_TEXT_KEYS)
        text = _string(path, number, key, value)
        if not text.strip():
            raise DataFormatError(path, number, f"empty query text under {key!r}")
        check_new_id(path, number, identifier, first_lines)
        queries[identifier] = text
    if not queries:
        raise DataFormatError(path, None, "no queries")
    return queries


def read_corpus(path: PathLike) -> dict[str, Document]:
    """``{doc id: Document(title, text)}`` of a JSONL corpus, in file order."""
    corpus: dict[str, Document] = {}
    first_lines: dict[str, int] = {}
    for number, record in _json_objects(path):
        identifier = _record_id(path, number, record, _DOC_ID_KEYS)
        if "text" not in record:
            raise DataFormatError(path, number, "expected a 'text' key")
        text = _string(path, number, "text", record["text"])
        title = _string(path, number, "title", record.get("title", ""))
        if not (title.strip() or text.strip()):
            raise DataFormatError(path, number, "empty document: both 'title' and 'text' are empty")
        check_new_id(path, number, identifier, first_lines)
        corpus[identifier] = Document(title=title, text=text)
    if not corpus:
        raise DataFormatError(path, None, "no documents")
    return corpus


def write_queries(path: PathLike, queries: Mapping[str, str]) -> None:
    """Write ``{"_id": ..., "text": ...}`` lines."""
    _write_lines(
        path,
        (
            json.dumps({"_id": _check_token(query, "query id"), "text": text}, ensure_ascii=False)
            for query, text in queries.items()
        ),
    )


def write_corpus(path: PathLike, corpus: Mapping[str, tuple[str, str]]) -> None:
    """Write ``{"_id": ..., "title": ..., "text": ...}`` lines; values are ``(title, text)``."""
    _write_lines(
        path,
        (
            json.dumps(
                {"_id": _check_token(doc, "doc id"), "title": title, "text": text},
                ensure_ascii=False,
            )
            for doc, (title, text) in corpus.items()
        ),
    )


# --- TREC qrels and runs ----------------------------------------------------------------------


def _check_new_pair(
    path: PathLike, number: int, query: str, doc: str, first_lines: dict[tuple[str, str], int]
) -> None:
    if (query, doc) in first_lines:
        raise DataFormatError(
            path,
            number,
            f"duplicate entry for query {query!r}, document {doc!r} "
            f"(first on line {first_lines[query, doc]})",
        )
    first_lines[query, doc] = number


def read_qrels(path: PathLike) -> dict[str, dict[str, int]]:
    """``{query id: {doc id: relevance}}`` of a TREC qrels file, in file order."""
    qrels: dict[str, dict[str, int]] = {}
    first_lines: dict[tuple[str, str], int] = {}
    for number, line in data_lines(path):
        fields = line.split()
        if len(fields) != 4:
            raise DataFormatError(
                path,
                number,
                f"expected 4 whitespace-separated fields 'query_id iteration doc_id relevance', "
                f"found {len(fields)}",
            )
        query, _, doc, relevance = fields
        if not _INTEGER.fullmatch(relevance):
            raise DataFormatError(
                path, number, f"relevance must be an integer, found {relevance!r}"
            )
        _check_new_pair(path, number, query, doc, first_lines)
        qrels.setdefault(query, {})[doc] = int(relevance)
    if not qrels:
        raise DataFormatError(path, None, "no relevance judgments")
    return qrels


def write_qrels(path: PathLike, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write ``query_id 0 doc_id relevance`` lines, in mapping order."""
    _write_lines(
        path,
        (
            f"{_check_token(query, 'query id')} 0 {_check_token(doc, 'doc id')} {int(relevance)}"
            for query, judgments in qrels.items()
            for doc, relevance in judgments.items()
        ),
    )


def read_run(path: PathLike) -> dict[str, dict[str, float]]:
    """``{query id: {doc id: score}}`` of a TREC run file; an empty file is an empty run."""
    run: dict[str, dict[str, float]] = {}
    first_lines: dict[tuple[str, str], int] = {}
    for number, line in data_lines(path):
        fields = line.split()
        if len(fields) != 6:
            raise DataFormatError(
                path,
                number,
                f"expected 6 whitespace-separated fields 'query_id Q0 doc_id rank score tag', "
                f"found {len(fields)}",
            )
        query, _, doc, rank, score_text, _ = fields
        if not _INTEGER.fullmatch(rank):
            raise DataFormatError(path, number, f"rank must be an integer, found {rank!r}")
        try:
            score = float(score_text)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise DataFormatError(
                path, number, f"score must be a finite number, found {score_text!r}"
            )
        _check_new_pair(path, number, query, doc, first_lines)
        run.setdefault(query, {})[doc] = score
    return run


def write_run(
    path: PathLike, run: Mapping[str, Mapping[str, float]], *, tag: str = "optical"
) -> None:
    """Write ``query_id Q0 doc_id rank score tag`` lines: queries in mapping order, documents
    by score (ties by doc id, both descending), ranks from 1, scores as exact float reprs."""
    _check_token(tag, "run tag")
    lines = []
    for query, scores in run.items():
        _check_token(query, "query id")
        for rank, doc in enumerate(rank_documents(scores), start=1):
            score = float(scores[doc])
            if not math.isfinite(score):
                raise ValueError(
                    f"score {score} of query {query!r}, document {doc!r} is not finite"
                )
            lines.append(f"{query} Q0 {_check_token(doc, 'doc id')} {rank} {score!r} {tag}")
    _write_lines(path, lines)


# --- language codes ---------------------------------------------------------------------------

_LANGUAGES = (
    Language("am", "amh", "Amharic"),
    Language("ar", "ara", "Arabic"),
    Language("bg", "bul", "Bulgarian"),
    Language("bn", "ben", "Bengali"),
    Language("de", "deu", "German"),
    Language("en", "eng", "English"),
    Language("es", "spa", "Spanish"),
    Language("fa", "fas", "Persian"),
    Language("fi", "fin", "Finnish"),
    Language("fr", "fra", "French"),
    Language("ka", "kat", "Georgian"),
    Language("ha", "hau", "Hausa"),
    Language("hi", "hin", "Hindi"),
    Language("id", "ind", "Indonesian"),
    Language("ig", "ibo", "Igbo"),
    Language("it", "ita", "Italian"),
    Language("ja", "jpn", "Japanese"),
    Language("kk", "kaz", "Kazakh"),
    Language("km", "khm", "Khmer"),
    Language("ko", "kor", "Korean"),
    Language("lt", "lit", "Lithuanian"),
    Language("nl", "nld", "Dutch"),
    Language("ny", "nya", "Chichewa"),
    Language("pt", "por", "Portuguese"),
    Language("ru", "rus", "Russian"),
    Language("so", "som", "Somali"),
    Language("sv", "swe", "Swedish"),
    Language("sw", "swh", "Swahili"),
    Language("te", "tel", "Telugu"),
    Language("th", "tha", "Thai"),
    Language("tl", "tgl", "Tagalog"),
    Language("tr", "tur", "Turkish"),
    Language("uk", "ukr", "Ukrainian"),
    Language("ur", "urd", "Urdu"),
    Language("vi", "vie", "Vietnamese"),
    Language("yo", "yor", "Yoruba"),
    Language("zh", "zho", "Chinese"),
    Language("zu", "zul", "Zulu"),
)
# Other ISO 639-3 codes in use for the same languages (macrolanguage vs. individual language).
_ALIASES = {"swa": "sw", "arb": "ar", "cmn": "zh", "pes": "fa"}
_BY_CODE = {
    **{language.iso639_1: language for language in _LANGUAGES},
    **{language.iso639_3: language for language in _LANGUAGES},
}
_BY_CODE.update({alias: _BY_CODE[code] for alias, code in _ALIASES.items()})


def lookup_language(code: str) -> Language:
    """The language of an ISO 639-1 or 639-3 ``code`` (any case), giving both codes; e.g.
    ``lookup_language("swh").iso639_1 == "sw"``. Unknown codes raise ``ValueError``."""
    language = _BY_CODE.get(code.strip().lower())
    if language is None:
        known = ", ".join(f"{lang.iso639_1}/{lang.iso639_3} ({lang.name})" for lang in _LANGUAGES)
        aliases = ", ".join(f"{alias}={code}" for alias, code in _ALIASES.items())
        raise ValueError(f"unknown language code {code!r}; known: {known}; aliases: {aliases}")
    return language
