r"""Token states of texts, and the two ways of scoring a query against a document with them.

A text is encoded once into its last-layer token states h_1..h_L (prefix and special tokens
included, padding excluded); each scorer (:data:`SCORERS`) derives what it needs from them:

* ``"mean"`` (dense retrieval, as multilingual-e5 is trained): q = mean_i h_i / |mean_i h_i|
  and d likewise; score(q, d) = q . d, the cosine of the mean-pooled embeddings;
* ``"maxsim"`` (late interaction, ColBERT: Khattab & Zaharia, SIGIR 2020): with u_i and v_j the
  L2-normalised query and document token states,

      score(q, d) = sum_i max_j u_i . v_j,

  every query token finds its best document token. It rewards what OPTICAL trains, the
  token-level alignment of the student's query tokens with the teacher's; mean pooling does
  not (a student may align every token and still move the mean).

MaxSim compares every query token with every document token: it keeps the (D, L, d) token states
of the whole collection in memory and costs q L_q D L_d d multiply-adds, computed in blocks of
about :data:`MAXSIM_BLOCK` similarities (one document at least). That suits the UDHR collection
(60 paragraphs) and small benchmark collections (XQuAD: 240 paragraphs), not a MIRACL corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..distillation.batching import pad
from ..models.e5_model import mean_pool

MAXSIM_BLOCK = 1 << 24  # similarities per block: 64 MiB of float32


class TokenSets(NamedTuple):
    """(N, L, d) float32 token states of N texts, right-padded, and their (N, L) mask."""

    states: torch.Tensor
    mask: torch.Tensor


class TokenEncoder:
    """``encoder(texts) -> TokenSets`` of ``prefix + text`` for each text, truncated to
    ``max_length`` tokens or the tokenizer's limit; the model is put in eval mode for the call
    and restored after."""

    def __init__(self, model: nn.Module, tokenizer, prefix: str, *, max_length: int = 512,
                 batch_size: int = 32):  # fmt: skip
        self.model, self.tokenizer, self.prefix = model, tokenizer, prefix
        self.max_length = min(max_length, tokenizer.model_max_length)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> TokenSets:
        ids = self.tokenizer(
            [self.prefix + text for text in texts], truncation=True, max_length=self.max_length
        )["input_ids"]
        width = max(len(row) for row in ids)
        device = next(self.model.parameters()).device
        states = torch.zeros((len(texts), width, self.model.config.hidden_size))
        # Batches of similar length waste little on padding.
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                input_ids, mask = pad([ids[i] for i in rows], self.tokenizer.pad_token_id)
                hidden = self.model(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device)
                ).last_hidden_state
                states[rows, : hidden.shape[1]] = hidden.float().cpu()
        finally:
            self.model.train(was_training)
        return TokenSets(states, pad(ids, self.tokenizer.pad_token_id)[1])


def mean_scores(queries: TokenSets, documents: TokenSets) -> torch.Tensor:
    """(q, D) cosines of the mean-pooled query and document embeddings."""
    pooled_queries = nn.functional.normalize(mean_pool(*queries), dim=-1)
    pooled_documents = nn.functional.normalize(mean_pool(*documents), dim=-1)
    return pooled_queries @ pooled_documents.T


@torch.inference_mode()
def maxsim_scores(queries: TokenSets, documents: TokenSets) -> torch.Tensor:
    """(q, D) MaxSim scores: per query token the best cosine in the document, summed."""
    u = nn.functional.normalize(queries.states, dim=-1)
    v = nn.functional.normalize(documents.states, dim=-1)
    query_mask, document_padding = queries.mask.to(u.dtype), ~documents.mask.bool()
    per_document = max(1, MAXSIM_BLOCK // (u.shape[0] * u.shape[1] * v.shape[1]))
    blocks = []
    for start in range(0, v.shape[0], per_document):
        stop = start + per_document
        similarity = torch.einsum("qid,cjd->qcij", u, v[start:stop])
        similarity.masked_fill_(document_padding[None, start:stop, None, :], -torch.inf)
        best = similarity.amax(dim=-1)  # (q, c, L_q)
        blocks.append((best * query_mask[:, None, :]).sum(dim=-1))
    return torch.cat(blocks, dim=1)


SCORERS: dict[str, Callable[[TokenSets, TokenSets], torch.Tensor]] = {
    "mean": mean_scores,
    "maxsim": maxsim_scores,
}
"""Scorer name -> ``scores(queries, documents) -> (q, D)``."""


def ranked_run(
    scores: torch.Tensor, query_ids: Sequence[str], doc_ids: Sequence[str], k: int
) -> dict[str, dict[str, float]]:
    """The run ``{query id: {doc id: score}}`` of the top ``k`` documents of each row of the
    (q, D) ``scores``."""
    top_scores, top_index = scores.topk(min(k, scores.shape[1]), dim=1)
    return {
        query: {doc_ids[i]: score for i, score in zip(index, row)}
        for query, index, row in zip(query_ids, top_index.tolist(), top_scores.tolist())
    }
