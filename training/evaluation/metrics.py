"""Ranked-retrieval metrics for CLIR evaluation, and exact top-k dense retrieval.

A *run* maps a query id to ``{doc id: score}``; *qrels* map a query id to
``{doc id: graded relevance}``. Each query's documents are ranked by score, highest first, and
documents with equal scores by doc id, *descending* (string order, i.e. Unicode code points,
which is the byte order of UTF-8): exactly the order ``trec_eval`` uses, so a run scores here as
it does there. A document is relevant when its relevance is ``> 0``; unjudged documents count
as relevance 0. With ``rel_i`` the relevance at rank ``i`` (1-based), ``R`` the number of
relevant documents in the qrels and ``n`` the length of the ranking:

* ``MAP``        mean over queries of AP = (1/R) · Σ_{i : rel_i > 0} P@i (the whole ranking)
* ``MRR``        mean of 1 / (rank of the first relevant document), 0 if none is retrieved
* ``nDCG@10``    DCG@10 / IDCG@10, DCG@k = Σ_{i ≤ min(k, n)} max(rel_i, 0) / log2(i + 1);
                 IDCG@k is the DCG@k of the qrels' own relevances sorted in decreasing order
* ``P@k``        |relevant in the top k| / k, k ∈ {1, 5, 10} (divided by k even when n < k)
* ``Recall@100`` |relevant in the top 100| / R

These are trec_eval's ``map``, ``recip_rank``, ``ndcg_cut.10``, ``P.{1,5,10}`` and
``recall.100``. Averaging convention: the mean is taken over the queries of the qrels that have
at least one relevant document. Queries with no relevant document are skipped (R = 0 leaves AP,
nDCG and recall undefined; trec_eval itself would score them 0 when the run has them). Qrels
queries missing from the run score 0 on every metric (trec_eval ``-c``). Run queries absent from
the qrels are ignored.

Design: this module is the engine (numpy and the standard library only) rather than a wrapper
around ``ir-measures``/``pytrec_eval``: those would add a compiled extension (plus scipy) to the
package's dependencies for seven well-defined numbers. They serve as the reference instead: the
tests compare this implementation with both to 1e-9 on random runs full of tied scores, and skip
that comparison when they are not installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

MEASURES = ("MAP", "MRR", "nDCG@10", "P@1", "P@5", "P@10", "Recall@100")

_NDCG_DEPTH = 10
_RECALL_DEPTH = 100


class Evaluation(NamedTuple):
    """Per-query metric values (evaluated queries, in qrels order) and their means."""

    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]


def rank_documents(scores: Mapping[str, float]) -> list[str]:
    """Doc ids ordered by score descending, ties by doc id descending (trec_eval's order)."""
    if any(math.isnan(score) for score in scores.values()):
        raise ValueError("a run score is NaN; documents cannot be ranked")
    ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)
    return [doc for doc, _ in ranked]


def query_metrics(ranking: Sequence[str], judgments: Mapping[str, int]) -> dict[str, float]:
    """All of ``MEASURES`` for one query: ``ranking`` best first, ``judgments`` its qrels.

    ``judgments`` must hold at least one relevant (``> 0``) document.
    """
    judged_gains = np.array([rel for rel in judgments.values() if rel > 0], dtype=np.float64)
    num_relevant = judged_gains.size
    if num_relevant == 0:
        raise ValueError("query has no relevant document in the qrels; its metrics are undefined")

    gains = np.array([max(judgments.get(doc, 0), 0) for doc in ranking], dtype=np.float64)
    relevant = gains > 0
    hits = np.cumsum(relevant)
    ranks = np.arange(1, gains.size + 1)

    average_precision = float(np.sum(hits[relevant] / ranks[relevant])) / num_relevant
    first_hit = np.flatnonzero(relevant)
    reciprocal_rank = 1.0 / (first_hit[0] + 1) if first_hit.size else 0.0

    discounts = np.log2(np.arange(2, _NDCG_DEPTH + 2))
    top_gains = gains[:_NDCG_DEPTH]
    ideal_gains = np.sort(judged_gains)[::-1][:_NDCG_DEPTH]
    dcg = float(np.sum(top_gains / discounts[: top_gains.size]))
    ideal_dcg = float(np.sum(ideal_gains / discounts[: ideal_gains.size]))

    def precision_at(k: int) -> float:
        return int(np.count_nonzero(relevant[:k])) / k

    return {
        "MAP": average_precision,
        "MRR": float(reciprocal_rank),
        "nDCG@10": dcg / ideal_dcg,
        "P@1": precision_at(1),
        "P@5": precision_at(5),
        "P@10": precision_at(10),
        "Recall@100": int(np.count_nonzero(relevant[:_RECALL_DEPTH])) / num_relevant,
    }


def evaluate(run: Run, qrels: Qrels) -> Evaluation:
    """Score ``run`` against ``qrels`` under the averaging convention of the module docstring.

    Raises ``ValueError`` when no qrels query has a relevant document (the mean is undefined).
    """
    per_query = {
        query: query_metrics(rank_documents(run.get(query, {})), judgments)
        for query, judgments in qrels.items()
        if any(rel > 0 for rel in judgments.values())
    }
    if not per_query:
        raise ValueError("the qrels hold no query with a relevant document; nothing to evaluate")
    mean = {
        measure: math.fsum(values[measure] for values in per_query.values()) / len(per_query)
        for measure in MEASURES
    }
    return Evaluation(per_query=per_query, mean=mean)


@torch.inference_mode()
def dense_retrieve(
    query_embeddings: torch.Tensor,
    doc_embeddings: torch.Tensor,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    k: int,
    *,
    query_chunk: int = 1024,
    doc_chunk: int = 16384,
) -> dict[str, dict[str, float]]:
    """Exact top-``k`` retrieval by inner product; the cosine for L2-normalised rows.

    ``query_embeddings`` is (q, d) and ``doc_embeddings`` (D, d), on any one device. Scores are
    computed in float32 one ``query_chunk`` × ``doc_chunk`` block at a time, merging each block
    into a running top-k per query, so at most one block of the q × D matrix exists at once.
    Returns a run ``{query id: {doc id: score}}`` with ``min(k, D)`` documents per query. Which of
    several documents tied exactly at the k-th score are kept is left to ``torch.topk``; their
    order within the run is the deterministic one of :func:`rank_documents`.
    """
    if query_embeddings.dim() != 2 or doc_embeddings.dim() != 2:
        raise ValueError("query and document embeddings must be 2-D (rows are vectors)")
    if query_embeddings.shape[1] != doc_embeddings.shape[1]:
        raise ValueError(
            f"embedding sizes differ: queries {query_embeddings.shape[1]}, "
            f"documents {doc_embeddings.shape[1]}"
        )
    if len(query_ids) != query_embeddings.shape[0] or len(doc_ids) != doc_embeddings.shape[0]:
        raise ValueError(
            f"ids do not match embeddings: {len(query_ids)} query ids for "
            f"{query_embeddings.shape[0]} rows, {len(doc_ids)} doc ids for "
            f"{doc_embeddings.shape[0]} rows"
        )
    if len(set(query_ids)) != len(query_ids) or len(set(doc_ids)) != len(doc_ids):
        raise ValueError("query ids and doc ids must each be unique")
    if k < 1 or query_chunk < 1 or doc_chunk < 1:
        raise ValueError("k, query_chunk and doc_chunk must be positive")
    k = min(k, doc_embeddings.shape[0])

    run: dict[str, dict[str, float]] = {}
    for q_start in range(0, query_embeddings.shape[0], query_chunk):
        queries = query_embeddings[q_start : q_start + query_chunk].float()
        best_scores = queries.new_empty((queries.shape[0], 0))
        best_index = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
        for d_start in range(0, doc_embeddings.shape[0], doc_chunk):
            block = queries @ doc_embeddings[d_start : d_start + doc_chunk].float().T
            block_scores, block_index = block.topk(min(k, block.shape[1]), dim=1)
            merged_scores = torch.cat([best_scores, block_scores], dim=1)
            merged_index = torch.cat([best_index, block_index + d_start], dim=1)
            best_scores, position = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_index = merged_index.gather(1, position)
        for row, (scores, index) in enumerate(zip(best_scores.tolist(), best_index.tolist())):
            run[query_ids[q_start + row]] = {doc_ids[i]: s for i, s in zip(index, scores)}
    return run
