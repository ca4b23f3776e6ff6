"""Token-level scoring: mean-pooled cosine and ColBERT MaxSim, by hand and against the
mean-pooled evaluation path."""

import math

import pytest
import torch

from optical_ops.training.evaluation import scoring
from optical_ops.training.evaluation.evaluate import TextEncoder
from optical_ops.training.evaluation.scoring import (
    TokenEncoder,
    TokenSets,
    maxsim_scores,
    mean_scores,
    ranked_run,
)
from optical_ops.training.models.encoders import load_teacher


def token_sets(*texts_tokens):
    """TokenSets of hand-written token lists, right-padded with a (0, 1) token that would change
    every score if it were not masked."""
    width = max(len(tokens) for tokens in texts_tokens)
    states = torch.tensor(
        [tokens + [[0.0, 1.0]] * (width - len(tokens)) for tokens in texts_tokens]
    )
    mask = torch.tensor(
        [[1] * len(tokens) + [0] * (width - len(tokens)) for tokens in texts_tokens]
    )
    return TokenSets(states, mask)


QUERIES = token_sets([[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]])
DOCUMENTS = token_sets([[1.0, 0.0]], [[0.6, 0.8], [0.0, 3.0]])


def test_maxsim_by_hand():
    # Query 1: against d1, (1,0) finds 1 and (0,1) finds 0 (the padding (0,1) is masked);
    # against d2, (1,0) finds 0.6 and (0,1) finds 1. Query 2 (one token): 1 and 0.6.
    torch.testing.assert_close(
        maxsim_scores(QUERIES, DOCUMENTS), torch.tensor([[1.0, 1.6], [1.0, 0.6]])
    )


def test_mean_scores_by_hand():
    # Means: q1 (1, 0.5), q2 (1, 0); d1 (1, 0), d2 (0.3, 1.9).
    def cos(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.hypot(*u) / math.hypot(*v)

    expected = [[cos(q, d) for d in ((1, 0), (0.3, 1.9))] for q in ((1, 0.5), (1, 0))]
    torch.testing.assert_close(mean_scores(QUERIES, DOCUMENTS), torch.tensor(expected))


def test_maxsim_blocks_give_the_same_scores(monkeypatch):
    torch.manual_seed(0)
    queries = TokenSets(torch.randn(5, 7, 4), (torch.rand(5, 7) > 0.3).long())
    documents = TokenSets(torch.randn(9, 6, 4), torch.ones(9, 6, dtype=torch.long))
    whole = maxsim_scores(queries, documents)
    monkeypatch.setattr(scoring, "MAXSIM_BLOCK", 1)  # one document per block
    torch.testing.assert_close(maxsim_scores(queries, documents), whole)


def test_ranked_run_keeps_the_top_k():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    run = ranked_run(scores, ["q1", "q2"], ["a", "b", "c"], k=2)
    assert run == {"q1": {"b": pytest.approx(0.9), "c": pytest.approx(0.5)},
                   "q2": {"a": pytest.approx(0.7), "c": pytest.approx(0.3)}}  # fmt: skip


def test_token_encoder_mean_pools_like_the_text_encoder(tiny_model):
    model, tokenizer = load_teacher(tiny_model)
    texts = ["all human beings", "watu wote wamezaliwa huru sawa kwa heshima", "haki"]
    tokens = TokenEncoder(model, tokenizer, "query: ", batch_size=2)(texts)
    assert tokens.mask.sum(dim=1).tolist() == [6, 10, 4]  # prefix and [CLS]/[SEP] included
    pooled = mean_scores(tokens, tokens)
    embeddings = TextEncoder(model, tokenizer, "query: ")(texts)
    torch.testing.assert_close(pooled, embeddings @ embeddings.T)
