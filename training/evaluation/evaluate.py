"""Cross-lingual retrieval (CLIR) evaluation: student-encoded queries, teacher-encoded documents.

A query (in the student's language) is encoded by the student with ``"query: "``, a document
(English) by the frozen teacher with ``"passage: "``; both are mean-pooled over their tokens and
L2-normalised (:func:`~..models.e5_model.encode_e5`). Documents are ranked by cosine with exact
search (:func:`~.metrics.dense_retrieve`, top 100) and each language's run is scored with
:func:`~.metrics.evaluate`: MAP, MRR, nDCG@10, P@1/5/10, Recall@100.

UDHR collection (:func:`udhr_collection`):

* documents: every English paragraph of the given bitext files, id ``a<article>p<paragraph>``
  (the English side is the same in every file; ~70 paragraphs over the preamble and 30 articles);
* queries: the other-language paragraphs of the test articles
  (:data:`~..bitext.pairs.TEST_ARTICLES`), id ``<code>-a<article>p<paragraph>``;
* relevant (1): every English paragraph of the query's article, its translation included.

With fewer than 100 documents Recall@100 is always 1 on UDHR; it matters on real collections,
read from the standard local formats with :func:`load_collection`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..bitext.formats import read_corpus, read_qrels, read_queries, write_qrels, write_run
from ..bitext.pairs import TEST_ARTICLES, split_by_article
from ..bitext.udhr import BitextPair
from ..models.e5_model import encode_e5
from .metrics import MEASURES, Evaluation, dense_retrieve, evaluate

QUERY_PREFIX = "query: "
DOCUMENT_PREFIX = "passage: "
RETRIEVAL_DEPTH = 100


class TextEncoder:
    """``encoder(texts) -> (len(texts), d)`` L2-normalised mean-pooled embeddings of
    ``prefix + text``; the model is put in eval mode for the call and restored after."""

    def __init__(self, model: nn.Module, tokenizer, prefix: str, *, max_length: int = 512,
                 batch_size: int = 32):  # fmt: skip
        self.model, self.tokenizer, self.prefix = model, tokenizer, prefix
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        # Batches of similar length waste little on padding; rows go back to the input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        was_training = self.model.training
        self.model.eval()
        try:
            embeddings = encode_e5(
                self.model, self.tokenizer, [texts[i] for i in order], prefix=self.prefix,
                batch_size=self.batch_size, max_length=self.max_length,
            )  # fmt: skip
        finally:
            self.model.train(was_training)
        return embeddings[torch.argsort(torch.as_tensor(order))]


@dataclass(frozen=True)
class QuerySet:
    """One language's queries ``{id: text}`` and their judgments ``{id: {doc id: relevance}}``."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class DocumentIndex:
    """Document ids and their (D, d) embeddings, encoded once and searched by every query set."""

    ids: list[str]
    embeddings: torch.Tensor

    @classmethod
    def build(cls, documents: Mapping[str, str], encoder: Callable) -> DocumentIndex:
        return cls(list(documents), encoder(list(documents.values())))


@dataclass(frozen=True)
class LanguageResult:
    evaluation: Evaluation
    run: dict[str, dict[str, float]]


def _doc_id(pair: BitextPair) -> str:
    return f"a{pair.article}p{pair.paragraph}"


def udhr_collection(
    bitext: Mapping[str, Sequence[BitextPair]], test_articles=TEST_ARTICLES
) -> tuple[dict[str, str], dict[str, QuerySet]]:
    """``(documents, {code: query set})`` of the UDHR collection described above."""
    documents: dict[str, str] = {}
    by_article: dict[int, list[str]] = {}
    for pair in sorted(
        (pair for pairs in bitext.values() for pair in pairs),
        key=lambda pair: (pair.article, pair.paragraph),
    ):
        if _doc_id(pair) not in documents:
            documents[_doc_id(pair)] = pair.english
            by_article.setdefault(pair.article, []).append(_doc_id(pair))
    query_sets = {}
    for code, pairs in bitext.items():
        test = split_by_article(pairs, test_articles)[1]
        if not test:
            raise ValueError(f"{code}: no paragraph of the test articles {sorted(test_articles)}")
        queries = {f"{code}-{_doc_id(pair)}": pair.other for pair in test}
        qrels = {
            f"{code}-{_doc_id(pair)}": dict.fromkeys(by_article[pair.article], 1) for pair in test
        }
        query_sets[code] = QuerySet(queries, qrels)
    return documents, query_sets


def load_collection(
    queries: Path, corpus: Path, qrels: Path
) -> tuple[dict[str, str], QuerySet]:
    """``(documents, query set)`` from JSONL queries, a JSONL corpus and TREC qrels.

    A document's text is its title and text joined by a space. Judged documents missing from
    the corpus are an error (they could never be retrieved).
    """
    corpus_documents = read_corpus(corpus)
    documents = {
        doc_id: f"{document.title} {document.text}".strip()
        for doc_id, document in corpus_documents.items()
    }
    judgments = read_qrels(qrels)
    unknown = sorted({doc for judged in judgments.values() for doc in judged} - set(documents))
    if unknown:
        raise ValueError(f"{qrels}: documents not in {corpus}: {unknown[:5]}")
    return documents, QuerySet(read_queries(queries), judgments)


def evaluate_queries(
    index: DocumentIndex,
    query_sets: Mapping[str, QuerySet],
    query_encoder: Callable[[Sequence[str]], torch.Tensor],
    k: int = RETRIEVAL_DEPTH,
) -> dict[str, LanguageResult]:
    """Encode, retrieve and score each query set against ``index``."""
    results = {}
    for name, query_set in query_sets.items():
        ids = list(query_set.queries)
        embeddings = query_encoder([query_set.queries[query] for query in ids])
        run = dense_retrieve(embeddings, index.embeddings, ids, index.ids, k)
        results[name] = LanguageResult(evaluate(run, query_set.qrels), run)
    return results


def mean_metrics(results: Mapping[str, LanguageResult]) -> dict[str, float]:
    """Each measure averaged over the query sets (a macro average: languages weigh equally)."""
    return {
        measure: sum(r.evaluation.mean[measure] for r in results.values()) / len(results)
        for measure in MEASURES
    }


def write_trec_files(
    directory: Path,
    results: Mapping[str, LanguageResult],
    query_sets: Mapping[str, QuerySet],
    tag: str,
) -> tuple[Path, Path]:
    """Write every language's run to ``<directory>/run-<tag>.trec`` and the judgments to
    ``<directory>/qrels.txt``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_path, qrels_path = directory / f"run-{tag}.trec", directory / "qrels.txt"
    write_run(run_path, {q: s for r in results.values() for q, s in r.run.items()}, tag=tag)
    write_qrels(qrels_path, {q: j for qs in query_sets.values() for q, j in qs.qrels.items()})
    return run_path, qrels_path


def student_evaluator(
    index: DocumentIndex, query_sets: Mapping[str, QuerySet], tokenizer
) -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate(student) -> {measure: mean over the query sets}``, for evaluation in training."""

    def evaluate_student(student: nn.Module) -> dict[str, float]:
        encoder = TextEncoder(student, tokenizer, QUERY_PREFIX)
        return mean_metrics(evaluate_queries(index, query_sets, encoder))

    return evaluate_student
