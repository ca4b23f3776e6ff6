r"""Scoring mean-pooled embeddings, and per-query retrieval measures of a whole (Q, D) score
matrix at once.

Two scorers (:data:`SCORERS`), on L2-normalised query embeddings q_1..q_Q and document
embeddings d_1..d_D:

* ``"cosine"``: s(q, d) = q · d, as multilingual-e5 is used;
* ``"centred"``: s(q, d) = q̃ · d̃ with q̃ = (q - q̄) / |q - q̄|, q̄ the mean of the Q queries
  (and likewise d̃ with the documents' mean). The e5 states are anisotropic (every embedding
  shares a large common component, |q̄| ≈ 0.93 on the Chichewa queries): a change that moves
  every query along one direction c adds the query-independent c · d to each document's score
  and reorders documents for all queries alike. Centring removes that component (Mu &
  Viswanath, ICLR 2018, "all-but-the-top", with its first step only); it uses no relevance
  label, only the query set and the collection themselves.

Measures: the definitions and the tie order are those of :mod:`...evaluation.metrics`
(trec_eval's: score descending, then document id descending; binary relevance here), computed
from the ranks of the relevant documents alone (:func:`relevant_ranks`), for all queries at once
instead of a Python loop per query. ``test_grid`` checks every value against
:func:`...evaluation.metrics.query_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

MEASURES = ("nDCG@10", "MRR", "P@1", "MAP")


def _centred(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings - embeddings.mean(dim=0), dim=-1)


SCORERS = {
    "cosine": lambda queries, documents: queries @ documents.T,
    "centred": lambda queries, documents: _centred(queries) @ _centred(documents).T,
}
"""Name -> ``scores(queries (Q, d), documents (D, d)) -> (Q, D)`` on normalised embeddings."""
_NDCG_DEPTH = 10


def relevant_ranks(
    scores: torch.Tensor, relevant: torch.Tensor, document_ids: Sequence[str], chunk: int = 512
) -> torch.Tensor:
    """(Q, R) ranks (1-based, increasing) of each query's relevant documents, padded with inf to
    R, the most relevant documents of a query.

    A document ranks ahead of relevant document r when it scores higher, or scores the same and
    has the greater id (trec_eval's tie order). Counting those gives r's rank without sorting
    the (Q, D) scores: one comparison of a row per (query, relevant document) pair, ``chunk``
    pairs at a time.
    """
    by_id = sorted(range(len(document_ids)), key=document_ids.__getitem__, reverse=True)
    tie_rank = torch.empty(len(document_ids), dtype=torch.long)
    tie_rank[torch.tensor(by_id, dtype=torch.long)] = torch.arange(len(document_ids))
    queries, columns = relevant.nonzero(as_tuple=True)  # grouped by query
    own, own_tie = scores[queries, columns], tie_rank[columns]
    flat = torch.empty(len(queries), dtype=torch.float64)
    for start in range(0, len(queries), chunk):
        pairs = slice(start, start + chunk)
        rows, score = scores[queries[pairs]], own[pairs, None]
        ahead = (rows > score) | ((rows == score) & (tie_rank < own_tie[pairs, None]))
        flat[pairs] = ahead.sum(dim=1).double() + 1
    count = relevant.sum(dim=1)
    position = torch.arange(len(queries)) - (torch.cumsum(count, 0) - count)[queries]
    ranks = torch.full((len(scores), int(count.max())), torch.inf, dtype=torch.float64)
    ranks[queries, position] = flat
    return ranks.sort(dim=1).values


def query_measures(
    scores: torch.Tensor, relevant: torch.Tensor, document_ids: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``{measure: (Q,) float64}`` of :data:`MEASURES` for every query (each query needs at
    least one relevant document)."""
    if scores.shape != relevant.shape or scores.shape[1] != len(document_ids):
        raise ValueError(
            f"scores {tuple(scores.shape)}, relevant {tuple(relevant.shape)} and "
            f"{len(document_ids)} document ids do not match"
        )
    count = relevant.sum(dim=1)
    if not bool((count > 0).all()):
        raise ValueError("every query needs a relevant document")
    ranks = relevant_ranks(scores, relevant, document_ids)
    hits = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64)
    found = torch.isfinite(ranks)
    average_precision = torch.where(found, hits / ranks, 0.0).sum(dim=1) / count
    gains = torch.where(ranks <= _NDCG_DEPTH, 1.0 / torch.log2(ranks + 1), 0.0)
    discounts = 1.0 / torch.log2(torch.arange(2, _NDCG_DEPTH + 2, dtype=torch.float64))
    ideal = torch.cumsum(discounts, 0)[count.clamp(max=_NDCG_DEPTH) - 1]
    first = ranks[:, 0]
    return {
        "nDCG@10": gains.sum(dim=1) / ideal,
        "MRR": 1.0 / first,
        "P@1": (first == 1).double(),
        "MAP": average_precision,
    }
