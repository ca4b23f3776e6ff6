"""A CLIR benchmark on a held-out split: queries in the other language, English candidates.

For one corpus and language, from the test split of :func:`~.splits.split_corpus`:

* documents: the English side of every test pair, id = the pair's id (a verse, a help
  paragraph): the whole held-out English side, duplicates included;
* queries: the other-language side of every test pair, id ``<lang>-<pair id>`` (as the UDHR
  collection and the benchmark readers prefix query ids with the query language); a pair whose
  two texts repeat an earlier test pair's (a stock help sentence on many pages) adds no query;
* relevant (1): every document whose English text equals the query's aligned English text, the
  aligned one included, so an identical passage elsewhere counts as a hit.

It is a :class:`~..bitext.retrieval_benchmarks.RetrievalCollection`, written in the formats the
evaluator reads (:func:`~..evaluation.evaluate.load_collection`, ``--queries/--corpus/--qrels`` on
the command line), one folder per corpus and language::

    <out>/<corpus>/<lang>/queries.jsonl   {"_id": "ny-40001001", "text": ...}
    <out>/<corpus>/<lang>/corpus.jsonl    {"_id": "40001001", "title": "", "text": ...}
    <out>/<corpus>/<lang>/qrels.txt       TREC qrels: ny-40001001 0 40001001 1
    <out>/<corpus>/<lang>/train.tsv       group  id  english  other   (the train split)
    <out>/<corpus>/<lang>/test.tsv        the same columns, the test split
    <out>/counts.json                     the counts of :func:`benchmark_counts`, by corpus/lang

The TSV files are bitext as the trainer reads it (``--bitext train.tsv --source-column english
--target-column other``: English is the teacher's side).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..bitext.formats import write_bitext, write_corpus, write_qrels, write_queries
from ..bitext.retrieval_benchmarks import RetrievalCollection
from .aligned import AlignedPair, ParallelCorpus
from .splits import Split, split_corpus

BITEXT_COLUMNS = ("group", "id", "english", "other")
ENGLISH = "en"


def clir_collection(test: Sequence[AlignedPair], language: str) -> RetrievalCollection:
    """The collection described above for the ``test`` pairs of one ``language``."""
    documents = {pair.id: pair.english for pair in test}
    by_text: dict[str, list[str]] = {}
    for identifier, text in documents.items():
        by_text.setdefault(text, []).append(identifier)
    first = {(pair.other, pair.english): pair for pair in reversed(test)}
    unique = [pair for pair in test if first[pair.other, pair.english] is pair]
    queries = {f"{language}-{pair.id}": pair.other for pair in unique}
    qrels = {f"{language}-{pair.id}": dict.fromkeys(by_text[pair.english], 1) for pair in unique}
    return RetrievalCollection(queries, documents, qrels, language, ENGLISH)


def benchmark_counts(
    corpus: ParallelCorpus, split: Split, collection: RetrievalCollection
) -> dict[str, int]:
    """What a benchmark holds and what was left out to make it (the report's numbers)."""
    return {
        "aligned pairs": len(corpus.pairs),
        "train pairs": len(split.train),
        "test pairs": len(split.test),
        "train groups": len({pair.group for pair in split.train}),
        "test groups": len({pair.group for pair in split.test}),
        "test queries": len(collection.queries),
        "distinct query texts": len(set(collection.queries.values())),
        "english candidates": len(collection.documents),
        "distinct english candidates": len(set(collection.documents.values())),
        "queries with several relevant": sum(len(j) > 1 for j in collection.qrels.values()),
        **corpus.notes,
        **split.notes,
    }


def write_benchmark(
    out_dir: Path, corpus: ParallelCorpus, split: Split, collection: RetrievalCollection
) -> Path:
    """Write one corpus/language folder (see the module docstring); returns the folder."""
    folder = Path(out_dir) / corpus.name / corpus.language
    folder.mkdir(parents=True, exist_ok=True)
    write_queries(folder / "queries.jsonl", collection.queries)
    write_corpus(
        folder / "corpus.jsonl", {d: ("", text) for d, text in collection.documents.items()}
    )
    write_qrels(folder / "qrels.txt", collection.qrels)
    for name, pairs in (("train", split.train), ("test", split.test)):
        rows = ((pair.group, pair.id, pair.english, pair.other) for pair in pairs)
        write_bitext(folder / f"{name}.tsv", rows, header=BITEXT_COLUMNS)
    return folder


def build_benchmarks(
    corpora: Sequence[ParallelCorpus], out_dir: Path | None = None
) -> dict[str, dict[str, dict[str, int]]]:
    """Split each corpus, build its collection, write it under ``out_dir`` (if given, with
    ``counts.json``) and return ``{corpus: {language: counts}}``."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for corpus in corpora:
        split = split_corpus(corpus)
        collection = clir_collection(split.test, corpus.language)
        if out_dir is not None:
            write_benchmark(out_dir, corpus, split, collection)
        counts.setdefault(corpus.name, {})[corpus.language] = benchmark_counts(
            corpus, split, collection
        )
    if out_dir is not None:
        _merge_counts(Path(out_dir) / "counts.json", counts)
    return counts


def _merge_counts(path: Path, counts: Mapping[str, Mapping[str, Mapping[str, int]]]) -> None:
    """Update ``counts.json`` with these corpora, keeping the counts of the others."""
    merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for name, by_language in counts.items():
        merged.setdefault(name, {}).update(by_language)
    path.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
