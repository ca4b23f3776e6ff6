r"""Inverse document frequency of tokens, as OT marginals (token weights).

Over N texts, with df(t) the number of texts that contain token t at least once,

    idf(t) = log((1 + N) / (1 + df(t))) + 1            (the "smooth" IDF of scikit-learn)

so a token in every text (special tokens, the "query: " prefix) weighs 1, rarer tokens more,
and a token never seen in the N texts weighs log(1 + N) + 1. A text's marginal is its tokens'
IDF normalised to sum to 1 (the loss normalises; padding is masked out there).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def idf_table(token_ids: Iterable[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """(vocab_size,) float32 IDF of every token id over the texts ``token_ids``."""
    document_frequency = torch.zeros(vocab_size, dtype=torch.float64)
    num_texts = 0
    for ids in token_ids:
        document_frequency[torch.as_tensor(sorted(set(ids)), dtype=torch.long)] += 1
        num_texts += 1
    if num_texts == 0:
        raise ValueError("IDF needs at least one text")
    return (torch.log((1 + num_texts) / (1 + document_frequency)) + 1).float()
