"""Readers for local copies of the standard (cross-lingual) retrieval benchmarks, each turned into
one :class:`RetrievalCollection`: queries, documents and graded judgments.

Layouts and formats, as distributed (a reader takes the root of the layout, or explicit paths):

* **MIRACL** v1.0 (``huggingface.co/datasets/miracl/miracl`` and ``miracl/miracl-corpus``)::

      <root>/miracl-v1.0-<lang>/topics/topics.miracl-v1.0-<lang>-<split>.tsv  qid<TAB>query
      <root>/miracl-v1.0-<lang>/qrels/qrels.miracl-v1.0-<lang>-<split>.tsv    TREC qrels:
                                                                qid<TAB>Q0<TAB>docid<TAB>rel
      <root>/miracl-corpus-v1.0-<lang>/docs-<n>.jsonl  {"docid": "39#0", "title", "text"}

  The corpus is distributed gzip-compressed (``docs-<n>.jsonl.gz``), read as it is. Topics
  may also be BEIR-style JSONL (a ``.jsonl`` path, :func:`~.formats.read_queries`). Monolingual:
  queries and documents are in ``<lang>``. A document is its title and text joined by a space.
* **XQuAD** (``github.com/deepmind/xquad``): ``<root>/xquad.<lang>.json``, SQuAD v1.1 JSON
  ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}``,
  the same 240 paragraphs and 1190 questions in every language, question ids shared. Queries: the
  questions of language A; documents: the paragraphs of language B, id ``a<i>p<j>`` (article i,
  paragraph j, from 0); relevant (1): the B paragraph holding the question's id.
* **MTOP** (``fb.me/mtop_dataset``): ``<root>/<lang>/{train,eval,test}.txt``, one utterance a line,
  8 tab-separated columns: id, intent, slots, utterance, domain, locale, decoupled form, tokens
  (JSON). The id identifies an utterance and its translations across languages. Queries: the
  utterances of language A; documents: those of language B, by id; relevant (1): the B utterance
  with the query's id. The languages' splits hold different subsets of the ids, so a query with
  no translation in B is dropped (``dangling="drop"``, the default here) and counted.
* **mMARCO** (``huggingface.co/datasets/unicamp-dl/mmarco``)::

      <root>/data/google/queries/dev/<language>_queries.dev.tsv   qid<TAB>query
      <root>/data/google/collections/<language>_collection.tsv     pid<TAB>passage
      <root>/data/qrels.dev.small.tsv                              qid<TAB>0<TAB>pid<TAB>1 (TREC)

  with ``<language>`` the English name in lower case (``portuguese``). Queries in language A,
  passages in language B (the translations share the ids).

Every reader, in the same way:

* Query ids are prefixed with the query language, ``<lang>-<id>`` (``sw-0``, as the UDHR
  collection does), so several languages' runs and judgments can share one TREC file.
* Only the queries with a relevant judgment (relevance > 0) are kept, in query-file order (so
  mMARCO's dev queries with ``qrels.dev.small.tsv`` give its 6,980 judged ones). A judgment must
  name a query and a document of the collection: ``dangling="error"`` raises
  :class:`~.formats.DataFormatError` naming the judgments file, how many there are and the first
  ids; ``dangling="drop"`` leaves them out and counts them in
  :attr:`RetrievalCollection.dropped_judgments`.
* ``limit`` keeps the first ``limit`` queries; ``max_documents`` caps the corpus at the documents
  judged for the kept queries plus the first others in corpus order, ``max_documents`` in all (more
  if the judged ones alone are more). A capped corpus makes retrieval easier: for quick runs only.
  Documents are streamed, so a capped read of a large corpus holds little of it in memory.
* Malformed records raise :class:`~.formats.DataFormatError` naming the file and 1-based line
  (a repeated doc id is caught among the documents kept). JSON files (XQuAD) are parsed whole;
  there a syntax error names the line, a misshapen record its JSON path (``data[0].paragraphs[2]``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .formats import (
    DataFormatError,
    PathLike,
    check_new_id,
    data_lines,
    lookup_language,
    read_corpus,
    read_qrels,
    read_queries,
)

DANGLING_POLICIES = ("error", "drop")
MTOP_COLUMNS = (
    "id",
    "intent",
    "slots",
    "utterance",
    "domain",
    "locale",
    "decoupled form",
    "tokens",
)
_SHOWN_IDS = 5


@dataclass(frozen=True)
class RetrievalCollection:
    """Queries ``{query id: text}``, documents ``{doc id: text}`` and judgments ``{query id:
    {doc id: relevance}}`` (every query has a relevant document), with the languages' codes as
    given to the reader and the number of dangling judgments dropped."""

    queries: dict[str, str]
    documents: dict[str, str]
    qrels: dict[str, dict[str, int]]
    query_language: str
    document_language: str
    dropped_judgments: int = 0


class _Record(NamedTuple):
    """One document or query read from ``path`` (at 1-based ``line``, when known)."""

    path: str
    line: int | None
    id: str
    text: str


# --- record readers ---------------------------------------------------------------------------


def _checked_id(path: PathLike, number: int, identifier: str, name: str) -> str:
    if not identifier or any(char.isspace() for char in identifier):
        raise DataFormatError(
            path, number, f"{name} must be non-empty with no whitespace, found {identifier!r}"
        )
    return identifier


def _id_text_rows(path: PathLike, id_name: str, text_name: str) -> Iterator[_Record]:
    """Records of an ``id<TAB>text`` file (MIRACL topics, MS MARCO queries and passages)."""
    for number, line in data_lines(path):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(
                path,
                number,
                f"expected 2 tab-separated fields '{id_name}<TAB>{text_name}', found {len(fields)}",
            )
        identifier = _checked_id(path, number, fields[0].strip(), id_name)
        text = fields[1].strip()
        if not text:
            raise DataFormatError(path, number, f"empty {text_name}")
        yield _Record(os.fspath(path), number, identifier, text)


def _mtop_utterances(path: PathLike) -> Iterator[_Record]:
    """Records (id, utterance) of an MTOP split file."""
    for number, line in data_lines(path):
        fields = line.split("\t")
        if len(fields) != len(MTOP_COLUMNS):
            raise DataFormatError(
                path,
                number,
                f"expected {len(MTOP_COLUMNS)} tab-separated fields ({', '.join(MTOP_COLUMNS)}), "
                f"found {len(fields)}",
            )
        identifier = _checked_id(path, number, fields[0].strip(), "id")
        utterance = fields[MTOP_COLUMNS.index("utterance")].strip()
        if not utterance:
            raise DataFormatError(path, number, "empty utterance")
        yield _Record(os.fspath(path), number, identifier, utterance)


def _by_id(records: Iterable[_Record]) -> dict[str, str]:
    """``{id: text}`` in record order; a repeated id is an error at its second line."""
    texts: dict[str, str] = {}
    first_lines: dict[str, int] = {}
    for record in records:
        check_new_id(record.path, record.line, record.id, first_lines)
        texts[record.id] = record.text
    return texts


def _miracl_documents(shards: Sequence[PathLike]) -> Iterator[_Record]:
    """Records of MIRACL corpus shards, in order; a document is ``title + " " + text``."""
    for shard in shards:
        for identifier, document in read_corpus(shard).items():
            text = f"{document.title} {document.text}".strip()
            yield _Record(os.fspath(shard), None, identifier, text)


# --- the common assembly ----------------------------------------------------------------------


def _check_options(limit: int | None, max_documents: int | None, dangling: str) -> None:
    for name, value in (("limit", limit), ("max_documents", max_documents)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    if dangling not in DANGLING_POLICIES:
        raise ValueError(f"dangling must be one of {DANGLING_POLICIES}, got {dangling!r}")


def _check_language(code: str) -> str:
    if not code or any(char.isspace() for char in code):
        raise ValueError(f"language code {code!r} must be non-empty with no whitespace")
    return code


def _examples(ids: Iterable[str]) -> str:
    ids = sorted(set(ids))
    more = f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
    return f"{ids[:_SHOWN_IDS]}{more}"


def _keep_documents(
    records: Iterable[_Record], judged: set[str], max_documents: int | None
) -> dict[str, _Record]:
    """Every judged document and the first ``max_documents`` others (all, with no cap), in
    corpus order; a doc id repeated among them is an error."""
    kept: dict[str, _Record] = {}
    others = 0
    for record in records:
        if record.id in kept:
            first = kept[record.id]
            where = first.path if first.line is None else f"{first.path}, line {first.line}"
            raise DataFormatError(
                record.path, record.line, f"duplicate doc id {record.id!r} (first in {where})"
            )
        if record.id in judged:
            kept[record.id] = record
        elif max_documents is None or others < max_documents:
            kept[record.id] = record
            others += 1
    return kept


def _dangling_judgments(
    qrels: Mapping[str, Mapping[str, int]],
    queries: Mapping[str, str],
    documents: Mapping[str, object],
    judgments_path: PathLike,
    dangling: str,
) -> int:
    """How many judgments name a query or document not read; an error if ``dangling="error"``."""
    unknown_queries = {query for query in qrels if query not in queries}
    unknown_docs = {doc for judgments in qrels.values() for doc in judgments} - set(documents)
    missing = sum(
        query in unknown_queries or doc in unknown_docs
        for query, judgments in qrels.items()
        for doc in judgments
    )
    if missing and dangling == "error":
        total = sum(len(judgments) for judgments in qrels.values())
        unknown = [
            f"{len(ids)} {kind} ids {_examples(ids)}"
            for kind, ids in (("query", unknown_queries), ("doc", unknown_docs))
            if ids
        ]
        raise DataFormatError(
            judgments_path,
            None,
            f"{missing} of {total} judgments name ids missing from the collection: "
            f"{', '.join(unknown)}; pass dangling='drop' to leave them out",
        )
    return missing


def _collect(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    documents: Iterable[_Record],
    *,
    languages: tuple[str, str],
    judgments_path: PathLike,
    limit: int | None,
    max_documents: int | None,
    dangling: str,
) -> RetrievalCollection:
    """The collection of the module docstring's common rules, from raw ids."""
    _check_options(limit, max_documents, dangling)
    query_language, document_language = map(_check_language, languages)
    judged = {doc for judgments in qrels.values() for doc in judgments}
    kept = _keep_documents(documents, judged, max_documents)
    dropped = _dangling_judgments(qrels, queries, kept, judgments_path, dangling)
    valid = {
        query: {doc: relevance for doc, relevance in judgments.items() if doc in kept}
        for query, judgments in qrels.items()
    }
    selected = [q for q in queries if any(rel > 0 for rel in valid.get(q, {}).values())][:limit]
    if not selected:
        raise DataFormatError(
            judgments_path, None, "no query has a relevant judgment for a document read"
        )
    needed = {doc for query in selected for doc in valid[query]}
    room = len(kept) if max_documents is None else max_documents - len(needed)
    texts: dict[str, str] = {}
    for doc, record in kept.items():
        if doc in needed:
            texts[doc] = record.text
        elif room > 0:
            texts[doc] = record.text
            room -= 1
    return RetrievalCollection(
        queries={f"{query_language}-{query}": queries[query] for query in selected},
        documents=texts,
        qrels={f"{query_language}-{query}": valid[query] for query in selected},
        query_language=query_language,
        document_language=document_language,
        dropped_judgments=dropped,
    )


def _in_layout(root: PathLike | None, relative: str, what: str) -> Path:
    """``root / relative``, for a file not given explicitly."""
    if root is None:
        raise ValueError(f"no {what}: give the benchmark's root folder or the file's path")
    return Path(root) / relative


# --- MIRACL -----------------------------------------------------------------------------------


def miracl_corpus_files(directory: PathLike) -> list[Path]:
    """``docs-<n>.jsonl`` or ``docs-<n>.jsonl.gz`` shards of a MIRACL corpus folder, by shard
    number (``docs-2`` before ``docs-10``)."""
    directory = Path(directory)
    shards = [*directory.glob("docs-*.jsonl"), *directory.glob("docs-*.jsonl.gz")]
    if not shards:
        raise FileNotFoundError(f"no MIRACL corpus files docs-<n>.jsonl(.gz) in {directory}")
    return sorted(shards, key=lambda path: (len(path.name), path.name))


def read_miracl(
    root: PathLike | None,
    language: str,
    split: str = "dev",
    *,
    topics: PathLike | None = None,
    qrels: PathLike | None = None,
    corpus: PathLike | Sequence[PathLike] | None = None,
    limit: int | None = None,
    max_documents: int | None = None,
    dangling: str = "error",
) -> RetrievalCollection:
    """MIRACL ``language``'s ``split`` ("dev", "train") from the layout under ``root``; each of
    ``topics``, ``qrels`` and ``corpus`` (a folder of shards, a shard, or a list of shards) may
    be given explicitly instead."""
    name = f"miracl-v1.0-{language}"
    if topics is None:
        topics = _in_layout(root, f"{name}/topics/topics.{name}-{split}.tsv", "topics")
    if qrels is None:
        qrels = _in_layout(root, f"{name}/qrels/qrels.{name}-{split}.tsv", "qrels")
    if corpus is None:
        corpus = _in_layout(root, f"miracl-corpus-v1.0-{language}", "corpus")
    if isinstance(corpus, (str, os.PathLike)):
        shards = miracl_corpus_files(corpus) if Path(corpus).is_dir() else [Path(corpus)]
    else:
        shards = [Path(shard) for shard in corpus]
    if Path(topics).suffix == ".jsonl":
        queries = read_queries(topics)
    else:
        queries = _by_id(_id_text_rows(topics, "query id", "query"))
    return _collect(
        queries,
        read_qrels(qrels),
        _miracl_documents(shards),
        languages=(language, language),
        judgments_path=qrels,
        limit=limit,
        max_documents=max_documents,
        dangling=dangling,
    )


# --- XQuAD ------------------------------------------------------------------------------------


class _SquadFile(NamedTuple):
    questions: dict[str, str]  # question id -> question
    paragraphs: dict[str, str]  # a<i>p<j> -> context
    paragraph_of: dict[str, str]  # question id -> a<i>p<j>


def _json_member(path: PathLike, where: str, value: object, key: str, kind: type) -> object:
    member = value.get(key) if isinstance(value, dict) else None
    if not isinstance(member, kind) or (kind is str and not member.strip()):
        found = "nothing" if member is None else json.dumps(member, ensure_ascii=False)[:60]
        expected = "a non-empty string" if kind is str else "a list"
        raise DataFormatError(
            path, None, f"{where}: expected {expected} under {key!r}, found {found}"
        )
    return member


def _read_squad(path: PathLike) -> _SquadFile:
    """Questions, paragraphs and each question's paragraph of a SQuAD v1.1 JSON file."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            path, error.lineno, f"invalid JSON ({error.msg} at column {error.colno})"
        ) from None
    except UnicodeDecodeError:
        raise DataFormatError(path, None, "not valid UTF-8") from None
    squad = _SquadFile({}, {}, {})
    locations: dict[str, str] = {}
    articles = _json_member(path, "top level", content, "data", list)
    for i, article in enumerate(articles):
        paragraphs = _json_member(path, f"data[{i}]", article, "paragraphs", list)
        for j, paragraph in enumerate(paragraphs):
            where, doc = f"data[{i}].paragraphs[{j}]", f"a{i}p{j}"
            squad.paragraphs[doc] = _json_member(path, where, paragraph, "context", str).strip()
            for k, qa in enumerate(_json_member(path, where, paragraph, "qas", list)):
                at = f"{where}.qas[{k}]"
                question = _json_member(path, at, qa, "question", str).strip()
                identifier = _json_member(path, at, qa, "id", str).strip()
                if any(char.isspace() for char in identifier):
                    raise DataFormatError(path, None, f"{at}: id {identifier!r} has whitespace")
                if identifier in locations:
                    raise DataFormatError(
                        path,
                        None,
                        f"{at}: duplicate question id {identifier!r} "
                        f"(first at {locations[identifier]})",
                    )
                locations[identifier] = at
                squad.questions[identifier] = question
                squad.paragraph_of[identifier] = doc
    return squad


def read_xquad(
    root: PathLike | None,
    query_language: str,
    document_language: str,
    *,
    queries: PathLike | None = None,
    documents: PathLike | None = None,
    limit: int | None = None,
    max_documents: int | None = None,
) -> RetrievalCollection:
    """Questions of ``xquad.<query_language>.json`` against the paragraphs of
    ``xquad.<document_language>.json`` (under ``root``, or the explicit paths). The files must
    be parallel: a question id missing from the document file is an error."""
    if queries is None:
        queries = _in_layout(root, f"xquad.{query_language}.json", "question file")
    if documents is None:
        documents = _in_layout(root, f"xquad.{document_language}.json", "paragraph file")
    asked, answered = _read_squad(queries), _read_squad(documents)
    unmatched = [question for question in asked.questions if question not in answered.paragraph_of]
    if unmatched:
        raise DataFormatError(
            documents,
            None,
            f"{len(unmatched)} question ids of {queries} are not in this file "
            f"{_examples(unmatched)}: XQuAD files must be parallel",
        )
    paragraphs = answered.paragraphs.items()
    return _collect(
        asked.questions,
        {question: {answered.paragraph_of[question]: 1} for question in asked.questions},
        (_Record(os.fspath(documents), None, doc, text) for doc, text in paragraphs),
        languages=(query_language, document_language),
        judgments_path=documents,
        limit=limit,
        max_documents=max_documents,
        dangling="error",
    )


# --- MTOP -------------------------------------------------------------------------------------


def read_mtop(
    root: PathLike | None,
    query_language: str,
    document_language: str,
    split: str = "test",
    *,
    queries: PathLike | None = None,
    documents: PathLike | None = None,
    limit: int | None = None,
    max_documents: int | None = None,
    dangling: str = "drop",
) -> RetrievalCollection:
    """Utterances of ``<root>/<query_language>/<split>.txt`` against those of
    ``<root>/<document_language>/<split>.txt`` ("train", "eval", "test"), or the explicit
    paths; the relevant document of a query is the utterance with its id."""
    if queries is None:
        queries = _in_layout(root, f"{query_language}/{split}.txt", "query utterance file")
    if documents is None:
        documents = _in_layout(root, f"{document_language}/{split}.txt", "utterance file")
    utterances = _by_id(_mtop_utterances(queries))
    return _collect(
        utterances,
        {identifier: {identifier: 1} for identifier in utterances},
        _mtop_utterances(documents),
        languages=(query_language, document_language),
        judgments_path=documents,
        limit=limit,
        max_documents=max_documents,
        dangling=dangling,
    )


# --- mMARCO -----------------------------------------------------------------------------------


def _mmarco_name(code: str) -> str:
    return lookup_language(code).name.lower()


def read_mmarco(
    root: PathLike | None,
    query_language: str,
    document_language: str = "en",
    *,
    queries: PathLike | None = None,
    collection: PathLike | None = None,
    qrels: PathLike | None = None,
    limit: int | None = None,
    max_documents: int | None = None,
    dangling: str = "error",
) -> RetrievalCollection:
    """mMARCO dev queries in ``query_language`` against the passages in ``document_language``
    (ISO codes) from the layout under ``root``, judged by ``qrels.dev.small.tsv``; each file may
    be given explicitly instead (any MS MARCO-style ``queries.tsv``, ``collection.tsv``, qrels)."""
    if queries is None:
        name = _mmarco_name(query_language)
        queries = _in_layout(root, f"data/google/queries/dev/{name}_queries.dev.tsv", "queries")
    if collection is None:
        name = _mmarco_name(document_language)
        collection = _in_layout(root, f"data/google/collections/{name}_collection.tsv", "passages")
    if qrels is None:
        qrels = _in_layout(root, "data/qrels.dev.small.tsv", "qrels")
    return _collect(
        _by_id(_id_text_rows(queries, "qid", "query")),
        read_qrels(qrels),
        _id_text_rows(collection, "pid", "passage"),
        languages=(query_language, document_language),
        judgments_path=qrels,
        limit=limit,
        max_documents=max_documents,
        dangling=dangling,
    )
