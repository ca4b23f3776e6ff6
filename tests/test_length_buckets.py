"""The length-bucket search against an exhaustive statement of its rule, and the extents it
reads."""

import itertools

import pytest
import torch

import optical_ops.ragged as ragged
from optical_ops.ragged import BUCKET_OVERHEAD, MAX_BUCKETS, MIN_SAVING, length_buckets


def buckets_by_definition(rows: list[int], cols: list[int]) -> list[tuple[list[int], int, int]]:
    """The rule of ``length_buckets``, spelled out problem by problem: every ordering (by
    n_b m_b, n_b, m_b; descending, ties in batch order) cut into 2..MAX_BUCKETS equal-count
    groups; fewest padded entries + overhead per group; kept only if it saves MIN_SAVING."""
    batch = len(rows)
    whole = batch * max(rows) * max(cols)
    keys = (lambda i: rows[i] * cols[i], lambda i: rows[i], lambda i: cols[i])
    candidates = []
    for key, groups in itertools.product(keys, range(2, min(MAX_BUCKETS, batch) + 1)):
        order = sorted(range(batch), key=key, reverse=True)
        bounds = [round(g * batch / groups) for g in range(groups + 1)]
        parts = [order[lo:hi] for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        candidates.append([(sorted(p), max(rows[i] for i in p), max(cols[i] for i in p))
                           for p in parts])
    if not candidates:
        return [(list(range(batch)), max(rows), max(cols))]
    best = min(candidates, key=lambda c: sum(len(p) * n * m for p, n, m in c)
               + BUCKET_OVERHEAD * len(c))
    if sum(len(p) * n * m for p, n, m in best) > (1 - MIN_SAVING) * whole:
        return [(list(range(batch)), max(rows), max(cols))]
    return best


def weights(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).double()


@pytest.mark.parametrize("seed", range(60))
def test_search_matches_its_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 70, (1,), generator=gen))
    n, m = (int(torch.randint(8, 200, (1,), generator=gen)) for _ in range(2))
    low = int(torch.randint(1, 4, (1,), generator=gen))  # 1: lengths spread widely
    rows = torch.randint(max(1, n // low // 4), n + 1, (batch,), generator=gen).tolist()
    cols = torch.randint(max(1, m // low // 4), m + 1, (batch,), generator=gen).tolist()
    found = [(list(range(batch)) if k.index is None else k.index.tolist(), k.n, k.m)
             for k in length_buckets(weights(rows, n), weights(cols, m))]
    assert found == buckets_by_definition(rows, cols)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_extents_native_equal_the_torch_ops(monkeypatch, dtype):
    """One past the last positive weight per problem, holes and a problem without mass
    included, natively and as PyTorch ops."""
    a = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 2]],
                     dtype=dtype)
    b = torch.tensor([[0, 3], [1, 0], [1, 1], [0, 0]], dtype=dtype)
    expected = ([3, 0, 5, 5], [2, 1, 2, 0])
    assert ragged.host_extents(a, b) == expected
    monkeypatch.setattr(ragged, "native_dense_cost_available", lambda t: False)
    assert ragged.host_extents(a, b) == expected
